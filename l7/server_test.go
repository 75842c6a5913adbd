package l7

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestUpdateValidation(t *testing.T) {
	be := netip.MustParseAddrPort("127.0.0.1:9")
	good := func() ServiceConfig { return svcConf("web", listenA, be) }
	for _, tc := range []struct {
		name string
		mod  func(*[]ServiceConfig)
		want string
	}{
		{"no name", func(s *[]ServiceConfig) { (*s)[0].Name = "" }, "no name"},
		{"duplicate service", func(s *[]ServiceConfig) { *s = append(*s, good()) }, "defined twice"},
		{"no listen port", func(s *[]ServiceConfig) { (*s)[0].Listen = netip.AddrPortFrom(listenA.Addr(), 0) }, "listen address"},
		{"unknown policy", func(s *[]ServiceConfig) { (*s)[0].Policy = "fastest" }, "unknown balancing policy"},
		{"duplicate backend", func(s *[]ServiceConfig) {
			(*s)[0].Backends = append((*s)[0].Backends, (*s)[0].Backends[0])
		}, "twice"},
		{"backend without port", func(s *[]ServiceConfig) { (*s)[0].Backends[0].Addr = netip.AddrPortFrom(be.Addr(), 0) }, "needs an address and a port"},
		{"negative weight", func(s *[]ServiceConfig) { (*s)[0].Backends[0].Weight = -1 }, "negative"},
		{"bad state", func(s *[]ServiceConfig) { (*s)[0].Backends[0].State = 7 }, "unknown state"},
		{"bad prefix", func(s *[]ServiceConfig) { (*s)[0].PathPrefix = "api" }, "must start with /"},
		{"bad host", func(s *[]ServiceConfig) { (*s)[0].Hosts = []string{"a/b"} }, "neither a host name"},
		{"host with port", func(s *[]ServiceConfig) { (*s)[0].Hosts = []string{"a.example:80"} }, "neither a host name"},
		{"route conflict", func(s *[]ServiceConfig) {
			o := good()
			o.Name = "other"
			*s = append(*s, o)
		}, "already routed"},
		{"negative timeout", func(s *[]ServiceConfig) { (*s)[0].RequestTimeout = -time.Second }, "negative"},
		{"short sticky ttl", func(s *[]ServiceConfig) { (*s)[0].Sticky = &StickyConfig{TTL: time.Second} }, "sticky TTL"},
		{"bad header rule", func(s *[]ServiceConfig) { (*s)[0].Headers.RequestSet = map[string]string{"Transfer-Encoding": "x"} }, "managed by the proxy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.update(svcConf("keep", listenB, be))
			svcs := []ServiceConfig{good()}
			tc.mod(&svcs)
			err := h.srv.Update(svcs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Update: %v, want an error with %q", err, tc.want)
			}
			// Nothing changed: the old service is still there, alone.
			if _, err := h.srv.Metrics("keep"); err != nil {
				t.Errorf("old service gone: %v", err)
			}
			if _, err := h.srv.Metrics("web"); err == nil {
				t.Error("new service applied despite the error")
			}
		})
	}
}

func TestUpdateListenFailureChangesNothing(t *testing.T) {
	be := startBackend(t, named("b"))
	h := newHarness(t)
	h.update(svcConf("web", listenA, be))
	h.fail = listenB.String()
	web2 := svcConf("web", listenA, be)
	web2.Headers.ResponseSet = map[string]string{"X-Gen": "2"}
	err := h.srv.Update([]ServiceConfig{web2, svcConf("other", listenB, be)})
	if err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("Update: %v", err)
	}
	_, _, hdr := get(t, testClient(t), h.url(listenA, "/"))
	if hdr.Get("X-Gen") != "" {
		t.Error("a failed Update changed the running service")
	}
}

// TestUpdateDiff: an Update keeps an open keep-alive connection and a long
// request alive, reuses Upstreams, applies new rules to the same
// connection, opens and closes listeners.
func TestUpdateDiff(t *testing.T) {
	bl := newBlocker(t)
	mux := http.NewServeMux()
	mux.Handle("/slow", bl)
	mux.Handle("/", named("b1"))
	b1 := startBackend(t, mux)
	b2 := startBackendOn(t, "127.0.0.2", named("b2"))
	h := newHarness(t)
	c1 := svcConf("web", listenA, b1)
	h.update(c1)
	id1 := "web@" + b1.String()
	u1 := h.srv.Upstream("web", id1)

	cl := testClient(t)
	if _, body, _ := get(t, cl, h.url(listenA, "/")); body != "b1" {
		t.Fatalf("first request: %q", body)
	}
	slow := make(chan string, 1)
	go func() {
		_, body, _ := get(t, testClient(t), h.url(listenA, "/slow"))
		slow <- body
	}()
	<-bl.entered

	c2 := svcConf("web", listenA, b1, b2)
	c2.Headers.ResponseSet = map[string]string{"X-Gen": "2"}
	h.update(c2, svcConf("other", listenB, b2))
	if h.srv.Upstream("web", id1) != u1 {
		t.Error("unchanged backend got a new Upstream")
	}
	if u1.InFlight.Load() != 1 || u1.Requests.Load() != 1 {
		t.Errorf("Upstream counters not kept: in flight %d requests %d", u1.InFlight.Load(), u1.Requests.Load())
	}
	if !reusedGet(t, cl, h.url(listenA, "/")) {
		t.Error("keep-alive connection was cut by the Update")
	}
	if _, _, hdr := get(t, cl, h.url(listenA, "/")); hdr.Get("X-Gen") != "2" {
		t.Error("new rules not applied")
	}
	if _, body, _ := get(t, cl, h.url(listenB, "/")); body != "b2" {
		t.Errorf("new listener: %q", body)
	}
	addrB := h.real(listenB)

	// Remove listener B, drain b1 through the configuration.
	c3 := svcConf("web", listenA, b1, b2)
	c3.Backends[0].State = StateDraining
	h.update(c3)
	if u1.State() != StateDraining {
		t.Errorf("state %v, want draining", u1.State())
	}
	waitFor(t, "listener B closed", func() bool {
		c, err := net.DialTimeout("tcp", addrB, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	for range 4 {
		if _, body, _ := get(t, cl, h.url(listenA, "/")); body != "b2" {
			t.Errorf("request went to %q while b1 drains", body)
		}
	}
	bl.open()
	if body := <-slow; body != "released" {
		t.Errorf("long request across Updates: %q", body)
	}
	waitFor(t, "in flight back to 0", func() bool { return u1.InFlight.Load() == 0 })

	// A new weight is a new Upstream; the round robin keeps going.
	c4 := svcConf("web", listenA, b1, b2)
	c4.Backends[0].Weight = 2
	h.update(c4)
	if h.srv.Upstream("web", id1) == u1 {
		t.Error("weight change kept the Upstream")
	}
	if !h.srv.SetBackendState("web", id1, StateDown) || h.srv.Upstream("web", id1).State() != StateDown {
		t.Error("SetBackendState")
	}
	if h.srv.SetBackendState("web", "nope", StateDown) || h.srv.SetBackendState("nope", id1, StateDown) {
		t.Error("SetBackendState of unknown backend reported success")
	}

	// A second backend on b1's address changes b1's Maglev name (address
	// alone -> address:port): that makes a new Upstream too.
	u1 = h.srv.Upstream("web", id1)
	b3 := startBackend(t, named("b3"))
	c5 := svcConf("web", listenA, b1, b2, b3)
	c5.Backends[0].Weight = 2
	h.update(c5)
	if h.srv.Upstream("web", id1) == u1 {
		t.Error("a Maglev name change kept the Upstream")
	}
}

// loadResult counts a load generator's outcomes.
type loadResult struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
}

// runLoad sends GETs from workers until stop is closed.
func runLoad(t testing.TB, url string, workers int, stop <-chan struct{}) *loadResult {
	res := &loadResult{}
	var wg sync.WaitGroup
	cl := testClient(t)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := cl.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					res.failed.Add(1)
					res.mu.Lock()
					if len(res.errs) < 5 {
						res.errs = append(res.errs, err.Error())
					}
					res.mu.Unlock()
					continue
				}
				res.ok.Add(1)
			}
		}()
	}
	t.Cleanup(wg.Wait)
	return res
}

// TestDrainAndReloadUnderLoad: a backend drained, taken down, removed and
// re-added, and configuration reloads, all under concurrent load, without a
// single failed request (and without retries to hide one).
func TestDrainAndReloadUnderLoad(t *testing.T) {
	var hits [3]atomic.Int64
	var addrs []netip.AddrPort
	for i := range 3 {
		addrs = append(addrs, startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			time.Sleep(time.Millisecond)
			io.WriteString(w, "ok")
		})))
	}
	h := newHarness(t)
	conf := func(states ...State) ServiceConfig {
		c := svcConf("web", listenA)
		c.RetryIdempotent = false
		c.Policy = PolicyLeastConnections
		for i, st := range states {
			if st < 0 {
				continue // removed
			}
			c.Backends = append(c.Backends, BackendConfig{ID: fmt.Sprint("b", i), Addr: addrs[i], Weight: 1, State: st})
		}
		return c
	}
	h.update(conf(StateUp, StateUp, StateUp))
	stop := make(chan struct{})
	res := runLoad(t, h.url(listenA, "/"), 8, stop)
	step := func(what string, f func()) {
		time.Sleep(150 * time.Millisecond)
		f()
		t.Logf("%s at %d ok", what, res.ok.Load())
	}

	step("drain b0 (fast path)", func() { h.srv.SetBackendState("web", "b0", StateDraining) })
	u0 := h.srv.Upstream("web", "b0")
	waitFor(t, "b0 drained", func() bool { return u0.InFlight.Load() == 0 })
	drained := hits[0].Load()
	step("remove b0", func() { h.update(conf(-1, StateUp, StateUp)) })
	if hits[0].Load() != drained {
		t.Errorf("b0 got %d requests while draining", hits[0].Load()-drained)
	}
	step("re-add b0", func() { h.update(conf(StateUp, StateUp, StateUp)) })
	step("b1 down (health check)", func() { h.srv.SetBackendState("web", "b1", StateDown) })
	step("b1 up again", func() { h.srv.SetBackendState("web", "b1", StateUp) })
	step("reloads", func() {
		for i := range 20 {
			c := conf(StateUp, StateUp, StateUp)
			c.Headers.ResponseSet = map[string]string{"X-Gen": fmt.Sprint(i)}
			if i%2 == 1 {
				c.Policy = PolicyRoundRobin
			}
			h.update(c)
			time.Sleep(5 * time.Millisecond)
		}
	})
	time.Sleep(100 * time.Millisecond)
	close(stop)
	time.Sleep(50 * time.Millisecond)
	if res.failed.Load() != 0 || res.ok.Load() < 100 {
		t.Errorf("%d ok, %d failed: %v", res.ok.Load(), res.failed.Load(), res.errs)
	}
	if hits[0].Load() == drained {
		t.Error("re-added b0 got no requests")
	}
}

func TestShutdownFinishesInFlight(t *testing.T) {
	bl := newBlocker(t)
	be := startBackend(t, bl)
	h := newHarness(t)
	h.update(svcConf("web", listenA, be))
	addr := h.real(listenA)
	done := make(chan string, 1)
	go func() {
		_, body, _ := get(t, testClient(t), h.url(listenA, "/"))
		done <- body
	}()
	<-bl.entered
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		errc <- h.srv.Shutdown(ctx)
	}()
	waitFor(t, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case err := <-errc:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	bl.open()
	if body := <-done; body != "released" {
		t.Errorf("in-flight request: %q", body)
	}
	if err := <-errc; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := h.srv.Update(nil); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Update after Shutdown: %v", err)
	}
}

func TestShutdownDeadlineCutsRequestsAndTunnels(t *testing.T) {
	bl := newBlocker(t)
	mux := http.NewServeMux()
	mux.Handle("/slow", bl)
	mux.HandleFunc("/ws", wsEcho)
	be := startBackend(t, mux)
	h := newHarness(t)
	h.update(svcConf("web", listenA, be))

	conn, err := net.Dial("tcp", h.real(listenA))
	mustf(t, err, "dial")
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", key)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	slowErr := make(chan error, 1)
	go func() {
		resp, err := testClient(t).Get(h.url(listenA, "/slow"))
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		slowErr <- err
	}()
	<-bl.entered

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := h.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	if err := <-slowErr; err == nil {
		t.Error("the blocked request completed after a forced shutdown")
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("tunnel still open after the deadline")
	}
}

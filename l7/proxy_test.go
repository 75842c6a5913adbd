package l7

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xlb-dev/xlb/internal/promtest"
)

// promValue is the value of one series of reg (0 if absent).
func promValue(t testing.TB, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	v, _, err := promtest.Value(reg, name, labels)
	mustf(t, err, "gather")
	return v
}

// blocker is a backend handler that holds requests until released.
type blocker struct {
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func newBlocker(t testing.TB) *blocker {
	b := &blocker{entered: make(chan struct{}, 100), release: make(chan struct{})}
	t.Cleanup(b.open)
	return b
}

func (b *blocker) open() { b.once.Do(func() { close(b.release) }) }

func (b *blocker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.entered <- struct{}{}
	select {
	case <-b.release:
	case <-r.Context().Done():
		return
	}
	io.WriteString(w, "released")
}

func TestGatewayErrors(t *testing.T) {
	ok := startBackend(t, named("ok"))
	slow := newBlocker(t)
	slowAddr := startBackend(t, slow)
	broken := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close()
		}
	}))
	dead := deadAddr(t)
	silent := silentAddr(t)

	for _, tc := range []struct {
		name   string
		conf   func(*ServiceConfig)
		status int
		body   string
		kind   string
		label  string // backend label of the error
	}{
		{"dead backend", func(c *ServiceConfig) { *c = svcConf("s", listenA, dead) },
			502, "the backend could not be reached", "connect", dead.String()},
		{"backend breaks the connection", func(c *ServiceConfig) { *c = svcConf("s", listenA, broken) },
			502, "the backend closed the connection", "broken", broken.String()},
		{"no backend at all", func(c *ServiceConfig) { *c = svcConf("s", listenA) },
			503, "no backend available", "no_backend", ""},
		{"all backends down", func(c *ServiceConfig) {
			*c = svcConf("s", listenA, ok)
			c.Backends[0].State = StateDown
		}, 503, "no backend available", "no_backend", ""},
		{"only backend draining", func(c *ServiceConfig) {
			*c = svcConf("s", listenA, ok)
			c.Backends[0].State = StateDraining
		}, 503, "no backend available", "no_backend", ""},
		{"slow backend, response header timeout", func(c *ServiceConfig) {
			*c = svcConf("s", listenA, slowAddr)
			c.ResponseHeaderTimeout = 100 * time.Millisecond
		}, 504, "the backend did not answer in time", "timeout", slowAddr.String()},
		{"slow backend, request timeout", func(c *ServiceConfig) {
			*c = svcConf("s", listenA, slowAddr)
			c.RequestTimeout = 100 * time.Millisecond
		}, 504, "the backend did not answer in time", "timeout", slowAddr.String()},
		{"connect hangs, connect timeout", func(c *ServiceConfig) {
			*c = svcConf("s", listenA, silent)
			c.ConnectTimeout = 200 * time.Millisecond
		}, 502, "the backend could not be reached", "connect", silent.String()},
		{"connect hangs, request timeout first", func(c *ServiceConfig) {
			*c = svcConf("s", listenA, silent)
			c.RequestTimeout = 200 * time.Millisecond // the connect timeout stays 5 s
		}, 504, "the backend did not answer in time", "timeout", silent.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			var c ServiceConfig
			tc.conf(&c)
			h.update(c)
			start := time.Now()
			code, body, hdr := get(t, testClient(t), h.url(listenA, "/x"))
			if code != tc.status || !strings.Contains(body, tc.body) {
				t.Errorf("got %d %q, want %d ...%q", code, body, tc.status, tc.body)
			}
			if !strings.HasPrefix(body, fmt.Sprint(tc.status)) || !strings.HasSuffix(body, "\n") || len(body) > 100 {
				t.Errorf("body %q is not a short status line", body)
			}
			if ct := hdr.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type %q", ct)
			}
			if !uuidRE.MatchString(hdr.Get("X-Request-Id")) || hdr.Get("X-Response-Time") == "" {
				t.Errorf("proxy headers missing: %v", hdr)
			}
			if time.Since(start) > 3*time.Second {
				t.Errorf("took %v", time.Since(start))
			}
			labels := map[string]string{"service": "s", "backend": tc.label, "kind": tc.kind}
			if v := promValue(t, h.reg, "xlb_l7_upstream_errors_total", labels); v != 1 {
				t.Errorf("upstream_errors_total%v = %v, want 1", labels, v)
			}
			if v := promValue(t, h.reg, "xlb_l7_requests_total", map[string]string{"service": "s", "backend": tc.label, "code": fmt.Sprint(tc.status)}); v != 1 {
				t.Errorf("requests_total = %v, want 1", v)
			}
			m, _ := h.srv.Metrics("s")
			if m.TotalRequests != 1 || m.TotalErrors != 1 {
				t.Errorf("metrics: %d requests %d errors, want 1 and 1", m.TotalRequests, m.TotalErrors)
			}
		})
	}
}

func TestOverloaded(t *testing.T) {
	bl := newBlocker(t)
	be := startBackend(t, bl)
	h := newHarness(t)
	c := svcConf("s", listenA, be)
	c.MaxInFlight = 1
	h.update(c)
	cl := testClient(t)
	done := make(chan int)
	go func() {
		code, _, _ := get(t, cl, h.url(listenA, "/"))
		done <- code
	}()
	<-bl.entered
	code, body, _ := get(t, cl, h.url(listenA, "/"))
	if code != 503 || !strings.Contains(body, "in-flight limit") {
		t.Errorf("second request: %d %q, want 503 overloaded", code, body)
	}
	bl.open()
	if code := <-done; code != 200 {
		t.Errorf("first request: %d", code)
	}
	if v := promValue(t, h.reg, "xlb_l7_upstream_errors_total", map[string]string{"backend": "", "kind": "overloaded"}); v != 1 {
		t.Errorf("overloaded errors = %v", v)
	}
}

func TestRetryOnConnectFailure(t *testing.T) {
	var got atomic.Int64
	var bodies sync.Map
	alive := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Add(1)
		bodies.Store(r.Method, string(b))
		io.WriteString(w, "alive")
	}))
	dead := deadAddr(t)
	for _, tc := range []struct {
		method, body string
		retry        bool
		want         int
	}{
		{"GET", "", true, 200},
		{"HEAD", "", true, 200},
		{"DELETE", "", true, 200},
		{"PUT", "put body", true, 200}, // body not read before the failed dial: replayed
		{"POST", "", true, 502},
		{"POST", "post body", true, 502},
		{"PATCH", "x", true, 502},
		{"GET", "", false, 502},
	} {
		t.Run(fmt.Sprintf("%s body=%v retry=%v", tc.method, tc.body != "", tc.retry), func(t *testing.T) {
			got.Store(0)
			h := newHarness(t)
			c := svcConf("s", listenA, dead, alive) // round robin starts with dead
			c.RetryIdempotent = tc.retry
			h.update(c)
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, _ := http.NewRequest(tc.method, h.url(listenA, "/"), body)
			resp, err := testClient(t).Do(req)
			mustf(t, err, "request")
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			wantHits := int64(0)
			if tc.want == 200 {
				wantHits = 1
			}
			if got.Load() != wantHits {
				t.Errorf("alive backend got %d requests, want %d", got.Load(), wantHits)
			}
			if tc.body != "" && tc.want == 200 {
				if b, _ := bodies.Load(tc.method); b != tc.body {
					t.Errorf("retried body %q, want %q", b, tc.body)
				}
			}
			if v := promValue(t, h.reg, "xlb_l7_upstream_errors_total", map[string]string{"backend": dead.String(), "kind": "connect"}); v != 1 {
				t.Errorf("connect errors on the dead backend = %v, want 1", v)
			}
			if tc.want == 200 {
				if v := promValue(t, h.reg, "xlb_l7_requests_total", map[string]string{"backend": alive.String(), "code": "200"}); v != 1 {
					t.Errorf("requests_total on alive = %v", v)
				}
			}
			up := h.srv.Upstream("s", "s@"+dead.String())
			if up.InFlight.Load() != 0 || up.Errors.Load() != 1 {
				t.Errorf("dead upstream: in flight %d errors %d", up.InFlight.Load(), up.Errors.Load())
			}
		})
	}
}

// A request is retried once, never twice: with the first two picks dead,
// the answer is the second failure's 502 though a live backend is left.
func TestRetryOnlyOnce(t *testing.T) {
	var got atomic.Int64
	alive := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got.Add(1) }))
	dead1, dead2 := deadAddr(t), deadAddr(t)
	h := newHarness(t)
	c := svcConf("s", listenA, dead1, dead2, alive) // round robin: dead1, then dead2
	c.RetryIdempotent = true
	h.update(c)
	code, body, _ := get(t, testClient(t), h.url(listenA, "/"))
	if code != 502 || !strings.Contains(body, "could not be reached") {
		t.Errorf("got %d %q, want 502: tried twice, both dead", code, body)
	}
	if got.Load() != 0 {
		t.Errorf("the live backend got %d requests: a third attempt", got.Load())
	}
	for _, d := range []netip.AddrPort{dead1, dead2} {
		if v := promValue(t, h.reg, "xlb_l7_upstream_errors_total", map[string]string{"backend": d.String(), "kind": "connect"}); v != 1 {
			t.Errorf("connect errors on %s = %v, want 1", d, v)
		}
	}
}

func TestStreamingResponse(t *testing.T) {
	release := make(chan struct{})
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", r.URL.Query().Get("ct"))
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "data: second\n\n")
	}))
	h := newHarness(t)
	h.update(svcConf("s", listenA, be))
	for _, ct := range []string{"text/event-stream", "application/octet-stream"} {
		t.Run(ct, func(t *testing.T) {
			resp, err := testClient(t).Get(h.url(listenA, "/?ct="+ct))
			mustf(t, err, "GET")
			defer resp.Body.Close()
			// The first event arrives while the backend is still blocked
			// before the second: nothing waits for the end of the body.
			br := bufio.NewReader(resp.Body)
			if line, err := br.ReadString('\n'); err != nil || line != "data: first\n" {
				t.Fatalf("first line %q %v", line, err)
			}
			release <- struct{}{}
			rest, err := io.ReadAll(br)
			if err != nil || string(rest) != "\ndata: second\n\n" {
				t.Errorf("rest %q %v", rest, err)
			}
		})
	}
}

// TestStreamingBothWays: a full-duplex echo through the proxy. Each chunk
// comes back before the next one is sent, so neither body is buffered.
func TestStreamingBothWays(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		w.WriteHeader(200)
		rc.Flush()
		buf := make([]byte, 1024)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				rc.Flush()
			}
			if err != nil {
				return
			}
		}
	}))
	for _, proto := range []string{"http1", "h2c"} {
		t.Run(proto, func(t *testing.T) {
			h := newHarness(t)
			h.update(svcConf("s", listenA, be))
			cl := testClient(t)
			if proto == "h2c" {
				cl = h2cClient(t)
			}
			pr, pw := io.Pipe()
			req, _ := http.NewRequest("POST", h.url(listenA, "/echo"), pr)
			respc := make(chan *http.Response, 1)
			go func() {
				resp, err := cl.Do(req)
				if err != nil {
					t.Error(err)
					pr.CloseWithError(err)
					close(respc)
					return
				}
				respc <- resp
			}()
			var resp *http.Response
			buf := make([]byte, 64)
			for i := range 5 {
				msg := fmt.Sprintf("ping %d;", i)
				if _, err := pw.Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				if resp == nil {
					resp = <-respc
					if resp == nil {
						t.FailNow()
					}
					defer resp.Body.Close()
				}
				n, err := io.ReadAtLeast(resp.Body, buf, len(msg))
				if err != nil || string(buf[:n]) != msg {
					t.Fatalf("echo %d: %q %v", i, buf[:n], err)
				}
			}
			pw.Close()
			if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
				t.Errorf("after close: %q %v", rest, err)
			}
		})
	}
}

// TestLargeBodiesStream moves 64 MiB each way and checks the process
// allocated much less than that meanwhile.
func TestLargeBodiesStream(t *testing.T) {
	const size = 64 << 20
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			n, err := io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "%d %v", n, err)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(size))
		io.CopyN(w, zeros{}, size)
	}))
	h := newHarness(t)
	h.update(svcConf("s", listenA, be))
	cl := testClient(t)
	get(t, cl, h.url(listenA, "/warmup"))

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	resp, err := cl.Post(h.url(listenA, "/up"), "application/octet-stream", io.LimitReader(zeros{}, size))
	mustf(t, err, "POST")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != fmt.Sprintf("%d <nil>", size) {
		t.Errorf("upload: backend says %q", b)
	}
	resp, err = cl.Get(h.url(listenA, "/down"))
	mustf(t, err, "GET")
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if n != size || err != nil {
		t.Errorf("download: %d bytes, %v", n, err)
	}
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > size/2 {
		t.Errorf("allocated %d MiB while moving 2 x 64 MiB: something buffers bodies", alloc>>20)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func h2cClient(t testing.TB) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func TestH2C(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Proto, r.Host, b)
	}))
	h := newHarness(t)
	h.update(svcConf("s", listenA, be))

	t.Run("prior knowledge", func(t *testing.T) {
		resp, err := h2cClient(t).Post(h.url(listenA, "/"), "text/plain", strings.NewReader("body"))
		mustf(t, err, "POST")
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
			t.Errorf("client got %s %d", resp.Proto, resp.StatusCode)
		}
		if want := "HTTP/1.1 " + h.real(listenA) + " body"; string(b) != want {
			t.Errorf("backend saw %q, want %q", b, want)
		}
		if resp.Header.Get("X-Request-Id") == "" {
			t.Error("no X-Request-Id over h2")
		}
	})
	t.Run("upgrade is answered in HTTP/1.1", func(t *testing.T) {
		resp, body := rawRequest(t, h.real(listenA), "GET / HTTP/1.1\nHost: x\nConnection: Upgrade, HTTP2-Settings\n"+
			"Upgrade: h2c\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\n\n")
		if resp.StatusCode != 200 || resp.ProtoMajor != 1 || body != "HTTP/1.1 x " {
			t.Errorf("got %s %d %q", resp.Proto, resp.StatusCode, body)
		}
	})
}

func TestRoutingEndToEnd(t *testing.T) {
	h := newHarness(t)
	var svcs []ServiceConfig
	add := func(name string, listen netip.AddrPort, hosts []string, prefix string) {
		c := svcConf(name, listen, startBackend(t, named(name)))
		c.Hosts, c.PathPrefix = hosts, prefix
		svcs = append(svcs, c)
	}
	add("catchall", listenA, nil, "")
	add("api", listenA, nil, "/api")
	add("exact", listenA, []string{"Example.com"}, "")
	add("exact-v2", listenA, []string{"example.com"}, "/api/v2/")
	add("wild", listenA, []string{"*.example.com"}, "")
	add("only", listenB, []string{"only.example"}, "")
	h.update(svcs...)
	for _, tc := range []struct {
		listen     netip.AddrPort
		host, path string
		want       string
	}{
		{listenA, "other.test", "/", "catchall"},
		{listenA, "other.test", "/api", "api"},
		{listenA, "other.test", "/api/x", "api"},
		{listenA, "other.test", "/apix", "catchall"},
		{listenA, "EXAMPLE.com:8080", "/api/x", "exact"},
		{listenA, "example.com", "/api/v2/users", "exact-v2"},
		{listenA, "a.b.example.com", "/api/v2", "wild"},
		{listenA, "example.com.", "/", "exact"},
		{listenB, "only.example", "/", "only"},
		{listenB, "elsewhere", "/", "404"},
	} {
		resp, body := rawRequest(t, h.real(tc.listen), "GET "+tc.path+" HTTP/1.1\nHost: "+tc.host+"\n\n")
		got := resp.Header.Get("X-Backend")
		if resp.StatusCode == 404 {
			got = "404"
			if !strings.Contains(body, "no service") {
				t.Errorf("404 body %q", body)
			}
		}
		if got != tc.want {
			t.Errorf("%s %s%s -> %s, want %s", tc.listen, tc.host, tc.path, got, tc.want)
		}
	}
}

func TestRouteMatch(t *testing.T) {
	mk := func(name string, hosts []string, prefix string) *service {
		return &service{name: name, cfg: ServiceConfig{Hosts: hosts, PathPrefix: prefix}}
	}
	rt := newRouteTable([]*service{
		mk("root", nil, "/"),
		mk("static", nil, "/static/"),
		mk("v6", []string{"::1"}, ""),
		mk("wild", []string{"*.example.com"}, "/x"),
		mk("deeper", []string{"*.a.example.com"}, "/x"),
	})
	for _, tc := range []struct{ host, path, want string }{
		{"", "/", "root"},
		{"h", "/static", "static"},
		{"h", "/static/a.css", "static"},
		{"h", "/staticx", "root"},
		{"[::1]:80", "/", "v6"},
		{"[::1]", "/", "v6"},
		{"q.example.com", "/x/y", "wild"},
		{"q.example.com", "/y", "root"},
		{"example.com", "/x", "root"},
		{"q.a.example.com", "/x", "deeper"},
	} {
		got := "nil"
		if s := rt.match(tc.host, tc.path); s != nil {
			got = s.name
		}
		if got != tc.want {
			t.Errorf("match(%q, %q) = %s, want %s", tc.host, tc.path, got, tc.want)
		}
	}
	if s := (&routeTable{}).match("x", "/"); s != nil {
		t.Error("empty table matched")
	}
}

// --- WebSocket: a minimal RFC 6455 echo server and client.

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// wsEcho upgrades and echoes every frame back (unmasked) until a close frame.
func wsEcho(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "want websocket", 400)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: %s\r\nX-Backend-Upgrade: yes\r\n\r\n", wsAccept(r.Header.Get("Sec-WebSocket-Key")))
	brw.Flush()
	for {
		op, payload, err := wsRead(brw.Reader)
		if err != nil {
			return
		}
		wsWrite(conn, op, payload, false)
		if op == 8 {
			return
		}
	}
}

func wsWrite(w io.Writer, op byte, payload []byte, mask bool) error {
	var hdr []byte
	hdr = append(hdr, 0x80|op)
	var mbit byte
	if mask {
		mbit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, mbit|byte(n))
	default:
		hdr = append(hdr, mbit|126)
		hdr = binary.BigEndian.AppendUint16(hdr, uint16(n))
	}
	p := payload
	if mask {
		key := [4]byte{1, 2, 3, 4}
		hdr = append(hdr, key[:]...)
		p = make([]byte, len(payload))
		for i := range payload {
			p[i] = payload[i] ^ key[i%4]
		}
	}
	_, err := w.Write(append(hdr, p...))
	return err
}

func wsRead(r io.Reader) (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return
	}
	op = h[0] & 0x0f
	n := int(h[1] & 0x7f)
	if n == 126 {
		var ext [2]byte
		if _, err = io.ReadFull(r, ext[:]); err != nil {
			return
		}
		n = int(binary.BigEndian.Uint16(ext[:]))
	} else if n == 127 {
		return 0, nil, errors.New("frame too long for this test")
	}
	var key [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err = io.ReadFull(r, key[:]); err != nil {
			return
		}
	}
	payload = make([]byte, n)
	if _, err = io.ReadFull(r, payload); err != nil {
		return
	}
	if masked {
		for i := range payload {
			payload[i] ^= key[i%4]
		}
	}
	return op, payload, nil
}

func TestWebSocketEcho(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(wsEcho))
	h := newHarness(t)
	c := svcConf("ws", listenA, be)
	c.RequestTimeout = 200 * time.Millisecond // a tunnel outlives it
	h.update(c)

	conn, err := net.Dial("tcp", h.real(listenA))
	mustf(t, err, "dial")
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	fmt.Fprintf(conn, "GET /chat HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", key)
	// A frame sent right behind the handshake, before the 101 arrives.
	mustf(t, wsWrite(conn, 1, []byte("early"), true), "write")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	mustf(t, err, "handshake")
	if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != wsAccept(key) ||
		!strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") || resp.Header.Get("X-Backend-Upgrade") != "yes" {
		t.Fatalf("handshake: %d %v", resp.StatusCode, resp.Header)
	}
	if resp.Header.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id on the 101")
	}
	if v := h.srv.Upstream("ws", "ws@"+be.String()).InFlight.Load(); v != 1 {
		t.Errorf("tunnel in flight = %d, want 1", v)
	}
	for i, msg := range []string{"early", "hello", strings.Repeat("x", 300), "after the request timeout"} {
		if i == 3 {
			time.Sleep(300 * time.Millisecond)
		}
		if i > 0 {
			mustf(t, wsWrite(conn, 1, []byte(msg), true), "write %d", i)
		}
		op, p, err := wsRead(br)
		if err != nil || op != 1 || string(p) != msg {
			t.Fatalf("echo %d: op %d %q %v", i, op, p, err)
		}
	}
	mustf(t, wsWrite(conn, 8, nil, true), "close")
	if op, _, err := wsRead(br); err != nil || op != 8 {
		t.Fatalf("close echo: %d %v", op, err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after close: %v, want EOF", err)
	}
	waitFor(t, "tunnel accounted", func() bool {
		return promValue(t, h.reg, "xlb_l7_requests_total", map[string]string{"code": "101"}) == 1
	})
	if v := h.srv.Upstream("ws", "ws@"+be.String()).InFlight.Load(); v != 0 {
		t.Errorf("in flight after close = %d", v)
	}
}

func TestWebSocketRefused(t *testing.T) {
	// A backend that answers the upgrade with a plain 200: passed through.
	be := startBackend(t, named("plain"))
	h := newHarness(t)
	h.update(svcConf("ws", listenA, be))
	resp, body := rawRequest(t, h.real(listenA), "GET / HTTP/1.1\nHost: x\nUpgrade: websocket\nConnection: Upgrade\n\n")
	if resp.StatusCode != 200 || body != "plain" {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
}

func TestTrailers(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc")
		w.Header().Set(http.TrailerPrefix+"X-Late", "late")
	}))
	h := newHarness(t)
	h.update(svcConf("s", listenA, be))
	resp, err := testClient(t).Get(h.url(listenA, "/"))
	mustf(t, err, "GET")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "body" || resp.Trailer.Get("X-Checksum") != "abc" || resp.Trailer.Get("X-Late") != "late" {
		t.Errorf("body %q trailers %v", b, resp.Trailer)
	}
}

// TestBackendBreaksMidBody: the client must see a truncated response, not a
// complete-looking one, and the error is counted.
func TestBackendBreaksMidBody(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		c, _, _ := http.NewResponseController(w).Hijack()
		c.Close()
	}))
	h := newHarness(t)
	h.update(svcConf("s", listenA, be))
	// The abort comes before or after the header reached the client,
	// depending on buffering; either way the client sees an error.
	resp, err := testClient(t).Get(h.url(listenA, "/"))
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Error("truncated response read without error")
	}
	waitFor(t, "broken counted", func() bool {
		return promValue(t, h.reg, "xlb_l7_upstream_errors_total", map[string]string{"kind": "broken"}) == 1
	})
}

func TestKeepAliveToBackends(t *testing.T) {
	var conns atomic.Int64
	be := httpBackendCountingConns(t, &conns)
	h := newHarness(t)
	h.update(svcConf("s", listenA, be))
	cl := testClient(t)
	for range 50 {
		if code, _, _ := get(t, cl, h.url(listenA, "/")); code != 200 {
			t.Fatal(code)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("backend saw %d connections for 50 sequential requests, want 1", n)
	}
}

func httpBackendCountingConns(t testing.TB, n *atomic.Int64) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	mustf(t, err, "listen")
	srv := &http.Server{
		Handler: named("b"),
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateNew {
				n.Add(1)
			}
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(ln.Addr().String())
}

func TestConnectNotProxied(t *testing.T) {
	be := startBackend(t, named("b"))
	h := newHarness(t)
	h.update(svcConf("s", listenA, be))
	resp, _ := rawRequest(t, h.real(listenA), "CONNECT example.com:443 HTTP/1.1\nHost: example.com:443\n\n")
	if resp.StatusCode != 405 {
		t.Errorf("CONNECT: %d", resp.StatusCode)
	}
}

func TestClientGoneIsNotABackendError(t *testing.T) {
	bl := newBlocker(t)
	be := startBackend(t, bl)
	h := newHarness(t)
	h.update(svcConf("s", listenA, be))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", h.url(listenA, "/"), nil)
	errc := make(chan error, 1)
	go func() {
		_, err := testClient(t).Do(req)
		errc <- err
	}()
	<-bl.entered
	cancel()
	<-errc
	waitFor(t, "request accounted", func() bool {
		return promValue(t, h.reg, "xlb_l7_requests_total", map[string]string{"code": "499"}) == 1
	})
	u := h.srv.Upstream("s", "s@"+be.String())
	if u.Errors.Load() != 0 || u.InFlight.Load() != 0 {
		t.Errorf("backend errors %d in flight %d", u.Errors.Load(), u.InFlight.Load())
	}
	if m, _ := h.srv.Metrics("s"); m.TotalErrors != 0 {
		t.Errorf("service errors %d", m.TotalErrors)
	}
}

func TestKeepAliveSurvivesWithTrace(t *testing.T) {
	// Sanity check of the client-side reuse detection used by the update
	// tests.
	be := startBackend(t, named("b"))
	h := newHarness(t)
	h.update(svcConf("s", listenA, be))
	cl := testClient(t)
	get(t, cl, h.url(listenA, "/"))
	if !reusedGet(t, cl, h.url(listenA, "/")) {
		t.Error("second request did not reuse the connection")
	}
}

// reusedGet does a GET and reports whether it reused a connection.
func reusedGet(t testing.TB, cl *http.Client, url string) bool {
	t.Helper()
	var reused bool
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
	})
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := cl.Do(req)
	mustf(t, err, "GET")
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET %s: %d", url, resp.StatusCode)
	}
	return reused
}

// BenchmarkProxy: GETs of a 100-byte body over one keep-alive connection,
// straight to the backend ("direct") and through the proxy. Allocations are
// counted process-wide (client and backend included): the proxy's own are
// the difference between the two.
func BenchmarkProxy(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 100)
	be := startBackend(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	}))
	h := newHarness(b)
	h.update(svcConf("bench", listenA, be))
	for _, bc := range []struct{ name, url string }{
		{"direct", "http://" + be.String() + "/"},
		{"proxy", h.url(listenA, "/")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cl := testClient(b)
			req, _ := http.NewRequest("GET", bc.url, nil)
			b.ReportAllocs()
			for b.Loop() {
				resp, err := cl.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatal(resp.StatusCode)
				}
			}
		})
	}
	b.Run("proxy-parallel", func(b *testing.B) {
		cl := testClient(b)
		url := h.url(listenA, "/")
		b.ReportAllocs()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			req, _ := http.NewRequest("GET", url, nil)
			for pb.Next() {
				resp, err := cl.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	})
}

func TestStickyThroughProxy(t *testing.T) {
	a := startBackend(t, named("a"))
	b := startBackendOn(t, "127.0.0.2", named("b"))
	for _, removeCookie := range []bool{false, true} {
		t.Run(fmt.Sprint("remove cookie rule=", removeCookie), func(t *testing.T) {
			h := newHarness(t)
			c := svcConf("s", listenA, a, b)
			c.Sticky = &StickyConfig{Cookie: "lb", TTL: time.Hour}
			if removeCookie {
				c.Headers.RequestRemove = []string{"Cookie"}
			}
			h.update(c)
			cl := testClient(t)
			_, first, hdr := get(t, cl, h.url(listenA, "/"))
			cookie := hdr.Get("Set-Cookie")
			if !strings.HasPrefix(cookie, "lb=") || !strings.Contains(cookie, "Max-Age=3600") {
				t.Fatalf("Set-Cookie %q", cookie)
			}
			for range 6 {
				req, _ := http.NewRequest("GET", h.url(listenA, "/"), nil)
				req.Header.Set("Cookie", strings.SplitN(cookie, ";", 2)[0])
				resp, err := cl.Do(req)
				mustf(t, err, "GET")
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(body) != first || resp.Header.Get("Set-Cookie") != "" {
					t.Errorf("pinned request went to %q (cookie %q), want %q", body, resp.Header.Get("Set-Cookie"), first)
				}
			}
		})
	}
}

// TestIPHashUsesTrustedClient: behind a trusted proxy, ip_hash hashes the
// client from X-Forwarded-For, not the proxy's address.
func TestIPHashUsesTrustedClient(t *testing.T) {
	var addrs []netip.AddrPort
	for i := range 4 {
		addrs = append(addrs, startBackendOn(t, fmt.Sprintf("127.0.0.%d", i+1), named(fmt.Sprint(i))))
	}
	for _, trusted := range []bool{true, false} {
		t.Run(fmt.Sprint("trusted=", trusted), func(t *testing.T) {
			h := newHarness(t)
			c := svcConf("s", listenA, addrs...)
			c.Policy = PolicyIPHash
			if trusted {
				c.Headers.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
			}
			h.update(c)
			cl := testClient(t)
			seen := map[string]bool{}
			for i := range 32 {
				client := fmt.Sprintf("198.51.100.%d", i)
				var first string
				for j := range 3 {
					req, _ := http.NewRequest("GET", h.url(listenA, "/"), nil)
					req.Header.Set("X-Forwarded-For", client)
					resp, err := cl.Do(req)
					mustf(t, err, "GET")
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if j == 0 {
						first = string(body)
					} else if string(body) != first {
						t.Errorf("client %s moved from %s to %s", client, first, body)
					}
				}
				seen[first] = true
			}
			if trusted && len(seen) < 3 || !trusted && len(seen) != 1 {
				t.Errorf("32 clients reached %d backends", len(seen))
			}
		})
	}
}

func TestPassiveEjectionThroughProxy(t *testing.T) {
	bad := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", 503)
	}))
	good := startBackendOn(t, "127.0.0.2", named("good"))
	ejected := make(chan string, 4)
	h := newHarness(t, func(o *Options) {
		o.OnEject = func(service string, u *Upstream, until time.Time, reason string) { ejected <- service + " " + u.ID }
	})
	c := svcConf("s", listenA, bad, good)
	c.Passive = PassiveConfig{MaxFails: 2, BaseEjection: time.Minute}
	h.update(c)
	cl := testClient(t)
	codes := map[int]int{}
	for range 8 {
		code, _, _ := get(t, cl, h.url(listenA, "/"))
		codes[code]++
	}
	select {
	case got := <-ejected:
		if got != "s s@"+bad.String() {
			t.Errorf("ejected %q", got)
		}
	default:
		t.Fatal("no ejection reported")
	}
	if codes[503] != 2 || codes[200] != 6 {
		t.Errorf("codes %v: want the 2 failures that eject, then only the good backend", codes)
	}
	m, _ := h.srv.Metrics("s")
	for _, b := range m.Backends {
		if b.Address == bad.String() && b.State != "ejected" {
			t.Errorf("bad backend state %q", b.State)
		}
	}
}

// TestOutgoingSetsEveryField: outgoing copies the client's request and then
// sets every exported field; a field a new Go release adds to http.Request
// must be looked at there (and added to this list).
func TestOutgoingSetsEveryField(t *testing.T) {
	known := []string{"Method", "URL", "Proto", "ProtoMajor", "ProtoMinor", "Header", "Body", "GetBody",
		"ContentLength", "TransferEncoding", "Close", "Host", "Form", "PostForm", "MultipartForm", "Trailer",
		"RemoteAddr", "RequestURI", "TLS", "Cancel", "Response", "Pattern"}
	var fields []string
	for f := range reflect.TypeFor[http.Request]().Fields() {
		if f.IsExported() {
			fields = append(fields, f.Name)
		}
	}
	if !slices.Equal(fields, known) {
		t.Fatalf("http.Request's exported fields are %v; outgoing knows %v", fields, known)
	}
	in := httptest.NewRequest("POST", "http://a/b?c", strings.NewReader("x"))
	in.Close, in.RequestURI, in.Pattern = true, "/b?c", "/b"
	in.Form = url.Values{"k": {"v"}}
	ctx := context.WithValue(context.Background(), listenerKey{}, 1)
	out := outgoing(in, ctx, nil, nil, "")
	if out.Body != nil || out.Close || out.RequestURI != "" || out.Form != nil || out.Pattern != "" || out.URL != nil ||
		out.Context() != ctx || out.Method != "POST" || out.ContentLength != 1 || out.RemoteAddr != in.RemoteAddr {
		t.Errorf("outgoing kept or lost a field: %+v", out)
	}
}

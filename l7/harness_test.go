package l7

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// harness runs a Server whose listeners are mapped from the configured
// addresses (fixed, fake ports) to real ephemeral loopback ports.
type harness struct {
	t   testing.TB
	srv *Server
	reg *prometheus.Registry

	mu    sync.Mutex
	addrs map[string]string // configured listen address -> real one
	fail  string            // a configured address whose listen fails
}

func newHarness(t testing.TB, opts ...func(*Options)) *harness {
	t.Helper()
	h := &harness{t: t, reg: prometheus.NewRegistry(), addrs: map[string]string{}}
	o := Options{
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer:  h.reg,
		ListenFunc:  h.listen,
		RetireGrace: 5 * time.Second,
	}
	for _, f := range opts {
		f(&o)
	}
	h.srv = NewServer(o)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return h
}

func (h *harness) listen(network, addr string) (net.Listener, error) {
	h.mu.Lock()
	fail := h.fail
	h.mu.Unlock()
	if addr == fail {
		return nil, fmt.Errorf("listen %s: address already in use (test)", addr)
	}
	ap := netip.MustParseAddrPort(addr)
	ln, err := net.Listen(network, netip.AddrPortFrom(ap.Addr(), 0).String())
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.addrs[addr] = ln.Addr().String()
	h.mu.Unlock()
	return ln, nil
}

// real is the actual address of a configured listener.
func (h *harness) real(listen netip.AddrPort) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	a, ok := h.addrs[listen.String()]
	if !ok {
		h.t.Fatalf("no listener for %s", listen)
	}
	return a
}

func (h *harness) url(listen netip.AddrPort, path string) string {
	return "http://" + h.real(listen) + path
}

func (h *harness) update(svcs ...ServiceConfig) {
	h.t.Helper()
	if err := h.srv.Update(svcs); err != nil {
		h.t.Fatalf("Update: %v", err)
	}
}

// Configured listen addresses (mapped to ephemeral ports by the harness).
var (
	listenA = netip.MustParseAddrPort("127.0.0.1:1001")
	listenB = netip.MustParseAddrPort("127.0.0.1:1002")
)

// svcConf is a service on listen with one backend per address, weight 1.
func svcConf(name string, listen netip.AddrPort, addrs ...netip.AddrPort) ServiceConfig {
	c := ServiceConfig{
		Name: name, Listen: listen, RetryIdempotent: true,
		ResponseHeaderTimeout: 5 * time.Second,
		Headers: HeaderRules{
			ResponseTimeHeader: DefaultResponseTimeHeader,
			ProxyHeader:        DefaultProxyHeader,
		},
	}
	for _, a := range addrs {
		c.Backends = append(c.Backends, BackendConfig{ID: name + "@" + a.String(), Addr: a, Weight: 1})
	}
	return c
}

// startBackend runs handler on a loopback HTTP server.
func startBackend(t testing.TB, handler http.Handler) netip.AddrPort {
	t.Helper()
	return startBackendOn(t, "127.0.0.1", handler)
}

// startBackendOn runs handler on a loopback address of its own (backends on
// one address share a Maglev name with their port; see AssignNames).
func startBackendOn(t testing.TB, ip string, handler http.Handler) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(handler)
	ts.Listener.Close()
	ts.Listener = ln
	ts.Start()
	t.Cleanup(ts.Close)
	return netip.MustParseAddrPort(ts.Listener.Addr().String())
}

// deadAddr is a loopback port nothing listens on.
func deadAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return a
}

// silentAddr is an address where connecting hangs: a listener whose accept
// queue (backlog 0) is full and never accepted from, so the kernel drops
// further SYNs.
func silentAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	mustf(t, err, "socket")
	t.Cleanup(func() { syscall.Close(fd) })
	mustf(t, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}), "bind")
	mustf(t, syscall.Listen(fd, 0), "listen")
	sa, err := syscall.Getsockname(fd)
	mustf(t, err, "getsockname")
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port))
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr.String(), 200*time.Millisecond)
		if err != nil {
			if isTimeoutErr(err) {
				return addr // the queue is full
			}
			t.Fatalf("filling the accept queue: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		if i == 8 {
			t.Fatalf("accept queue of %s not full after %d connections", addr, i+1)
		}
	}
}

// named answers with its name, for telling backends apart.
func named(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Backend", name)
		io.WriteString(w, name)
	})
}

// testClient is a client of its own (no shared keep-alive pool).
func testClient(t testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// get does a GET and returns status, body and header.
func get(t testing.TB, c *http.Client, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// rawRequest sends a hand-written HTTP/1.1 request (\n is turned into
// \r\n) and reads the response.
func rawRequest(t testing.TB, addr, req string) (*http.Response, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var wire []byte
	for i := 0; i < len(req); i++ {
		if req[i] == '\n' {
			wire = append(wire, '\r')
		}
		wire = append(wire, req[i])
	}
	if _, err := conn.Write(wire); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	resp.Body.Close()
	return resp, string(b)
}

// checkGolden compares got with testdata/name, or rewrites it with -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs (run with -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func mustf(t testing.TB, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

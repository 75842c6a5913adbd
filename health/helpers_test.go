package health

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// addrOf is a listener's address as a netip.AddrPort.
func addrOf(t testing.TB, ln net.Listener) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// closedPort is a loopback port nothing listens on.
func closedPort(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := addrOf(t, ln)
	ln.Close()
	return ap
}

// tcpServer accepts connections and closes them.
func tcpServer(t testing.TB) netip.AddrPort {
	t.Helper()
	ln := listen(t, "tcp", "127.0.0.1:0")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return addrOf(t, ln)
}

// rawServer accepts connections, reads an HTTP request head and calls fn
// with the connection, which it closes afterwards. The cleanup closes the
// listener and every connection still open, and waits for the handlers.
func rawServer(t testing.TB, fn func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln := listen(t, "tcp", "127.0.0.1:0")
	var (
		mu     sync.Mutex
		conns  = map[net.Conn]bool{}
		closed bool
		wg     sync.WaitGroup
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			conns[c] = true
			wg.Add(1)
			mu.Unlock()
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" {
						break
					}
				}
				fn(c)
			}()
		}
	}()
	return addrOf(t, ln)
}

// hangServer accepts connections, reads the request and never answers.
func hangServer(t testing.TB) netip.AddrPort {
	return rawServer(t, func(c net.Conn) {
		var b [1]byte
		c.Read(b[:]) // until the client or the cleanup closes it
	})
}

// recServer is an HTTP server on 127.0.0.1 that records the time each request
// arrives, per path, answers with a settable status and can be switched off
// (listener and connections closed: connection refused) and on again on the
// same port.
type recServer struct {
	t      testing.TB
	addr   netip.AddrPort
	mu     sync.Mutex
	status int
	hits   map[string][]time.Time
	srv    *http.Server
}

func newRecServer(t testing.TB) *recServer {
	t.Helper()
	s := &recServer{t: t, status: http.StatusOK, hits: make(map[string][]time.Time)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = addrOf(t, ln)
	s.serve(ln)
	t.Cleanup(s.off)
	return s
}

func (s *recServer) serve(ln net.Listener) {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	go srv.Serve(ln)
}

func (s *recServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.hits[r.URL.Path] = append(s.hits[r.URL.Path], time.Now())
	status := s.status
	s.mu.Unlock()
	w.WriteHeader(status)
}

func (s *recServer) setStatus(code int) {
	s.mu.Lock()
	s.status = code
	s.mu.Unlock()
}

// times returns the arrival times of path.
func (s *recServer) times(path string) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.hits[path]...)
}

func (s *recServer) count(path string) int { return len(s.times(path)) }

func (s *recServer) off() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

func (s *recServer) on() {
	s.t.Helper()
	ln, err := net.Listen("tcp", s.addr.String())
	if err != nil {
		s.t.Fatal(err)
	}
	s.serve(ln)
}

// logRecorder is a slog.Handler that keeps every record at debug and above.
type logRecorder struct {
	mu   *sync.Mutex
	recs *[]logRec
}

type logRec struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func newLogRecorder() logRecorder {
	return logRecorder{mu: new(sync.Mutex), recs: new([]logRec)}
}

func (h logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h logRecorder) Handle(_ context.Context, r slog.Record) error {
	rec := logRec{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	*h.recs = append(*h.recs, rec)
	h.mu.Unlock()
	return nil
}

func (h logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h logRecorder) WithGroup(string) slog.Handler      { return h }

// records returns the records at level or above.
func (h logRecorder) records(min slog.Level) []logRec {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []logRec
	for _, r := range *h.recs {
		if r.level >= min {
			out = append(out, r)
		}
	}
	return out
}

var _ slog.Handler = logRecorder{}

// newTestManager returns a Manager logging to a recorder, closed at cleanup.
func newTestManager(t testing.TB, metrics *Metrics) (*Manager, logRecorder) {
	t.Helper()
	logs := newLogRecorder()
	m := NewManager(slog.New(logs), metrics)
	t.Cleanup(m.Close)
	return m, logs
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: still waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// recv receives one transition within d.
func recv(t testing.TB, ch <-chan Transition, d time.Duration) Transition {
	t.Helper()
	select {
	case tr, ok := <-ch:
		if !ok {
			t.Fatal("subscription channel closed")
		}
		return tr
	case <-time.After(d):
		t.Fatalf("no transition within %v", d)
	}
	panic("unreachable")
}

// mustNormalize is Spec.Normalize for valid specs.
func mustNormalize(t testing.TB, s Spec) Spec {
	t.Helper()
	n, err := s.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func reasonOfErr(err error) string {
	if ce, ok := errors.AsType[*CheckError](err); ok {
		return ce.Reason
	}
	if err == nil {
		return ""
	}
	return "not a CheckError: " + err.Error()
}

func joinSubjects(ss []Subject) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = s.String()
	}
	return strings.Join(parts, " ")
}

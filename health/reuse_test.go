package health

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countServer is an HTTP server on 127.0.0.1 that counts connections and
// requests; its handler can be replaced. Its listener can be closed alone
// (the open connections keep being served, as by a server that stops
// accepting) or with the connections.
type countServer struct {
	addr     netip.AddrPort
	ln       net.Listener
	srv      *httptest.Server
	conns    atomic.Int64
	hits     atomic.Int64 // requests received
	answered atomic.Int64 // requests whose handler returned
	closes   atomic.Int64 // requests with "Connection: close"
	handler  atomic.Pointer[http.HandlerFunc]
	released chan struct{} // closed at cleanup: ends hanging handlers
}

func newCountServer(t *testing.T, tls bool, h http.HandlerFunc) *countServer {
	t.Helper()
	s := &countServer{released: make(chan struct{})}
	s.setHandler(h)
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if r.Close {
			s.closes.Add(1)
		}
		(*s.handler.Load())(w, r)
		s.answered.Add(1)
	}))
	s.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	if tls {
		s.srv.StartTLS()
	} else {
		s.srv.Start()
	}
	s.ln = s.srv.Listener
	s.addr = netip.MustParseAddrPort(s.ln.Addr().String())
	t.Cleanup(func() {
		close(s.released)
		s.srv.Close()
	})
	return s
}

func (s *countServer) setHandler(h http.HandlerFunc) { s.handler.Store(&h) }

func ok200(http.ResponseWriter, *http.Request) {}

// HTTP checks keep their connection for ChecksPerConnection checks, the last
// of which asks the server to close it; answers that cannot be delimited or
// are too long to read end the connection.
func TestChecksReuseConnections(t *testing.T) {
	big := strings.Repeat("x", 2*maxDrainBytes)
	tests := []struct {
		name    string
		tls     bool
		perConn int
		handler http.HandlerFunc
		reused  bool // connections serve perConn checks; else one each
	}{
		{name: "default", handler: ok200, reused: true},
		{name: "one per connection", perConn: 1, handler: ok200},
		{name: "three", perConn: 3, handler: ok200, reused: true},
		{name: "https", tls: true, perConn: 3, handler: ok200, reused: true},
		{name: "short chunked body", perConn: 4, reused: true, handler: func(w http.ResponseWriter, _ *http.Request) {
			w.Write([]byte("ok\n"))
			w.(http.Flusher).Flush() // chunked
			w.Write([]byte("still ok\n"))
		}},
		{name: "long body", perConn: 4, handler: func(w http.ResponseWriter, _ *http.Request) {
			w.Write([]byte(big))
		}},
		{name: "server closes", perConn: 4, handler: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Connection", "close")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newCountServer(t, tt.tls, tt.handler)
			m, _ := newTestManager(t, nil)
			kind := KindHTTP
			if tt.tls {
				kind = KindHTTPS
			}
			spec := Spec{Kind: kind, Target: srv.addr, Interval: 5 * time.Millisecond, ChecksPerConnection: tt.perConn}
			if err := m.Set([]Target{{Spec: spec}}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "30 checks", func() bool { return srv.hits.Load() >= 30 })
			m.Close()
			if st, _ := m.State(spec); st != Healthy {
				t.Errorf("state %v", st)
			}
			m.Close()
			hits, conns, closes := srv.hits.Load(), srv.conns.Load(), srv.closes.Load()
			per := int64(tt.perConn)
			if per == 0 {
				per = DefaultChecksPerConnection
			}
			if !tt.reused {
				per = 1
			}
			// Connections opened: one per per checks (the last maybe cut
			// short by Close); the last check of each asked to close it.
			if lo, hi := hits/per, (hits+per-1)/per; conns < lo || conns > hi {
				t.Errorf("%d connections for %d checks, want %d..%d", conns, hits, lo, hi)
			}
			if tt.reused && closes != hits/per {
				t.Errorf("%d of %d checks asked to close the connection, want %d", closes, hits, hits/per)
			}
		})
	}
}

// A kept connection does not hide a backend that stops accepting
// connections, stops answering or goes away: the check fails within a
// bounded number of checks (ChecksPerConnection-1 successes at most on the
// open connection, then UnhealthyThreshold failures), here with the default
// ChecksPerConnection.
func TestReusedConnectionDoesNotHideFailure(t *testing.T) {
	const (
		perConn   = DefaultChecksPerConnection
		unhealthy = 2
		interval  = 20 * time.Millisecond
		timeout   = 100 * time.Millisecond
	)
	tests := []struct {
		name   string
		fail   func(s *countServer)
		reason string
		// at most this many checks answered after the failure began
		maxAnswered int64
	}{
		{
			name:        "listener closed, open connection still served",
			fail:        func(s *countServer) { s.ln.Close() },
			reason:      "refused",
			maxAnswered: perConn - 1,
		},
		{
			name: "stops answering",
			fail: func(s *countServer) {
				s.setHandler(func(http.ResponseWriter, *http.Request) { <-s.released })
			},
			reason:      "timeout",
			maxAnswered: 0,
		},
		{
			name:        "server gone, connections closed",
			fail:        func(s *countServer) { s.srv.CloseClientConnections(); s.ln.Close() },
			reason:      "refused",
			maxAnswered: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newCountServer(t, false, ok200)
			m, _ := newTestManager(t, nil)
			ch, _ := m.Subscribe(4)
			spec := Spec{Kind: KindHTTP, Target: srv.addr, Interval: interval, Timeout: timeout,
				UnhealthyThreshold: unhealthy, Jitter: NoJitter} // ChecksPerConnection: the default
			if err := m.Set([]Target{{Spec: spec}}); err != nil {
				t.Fatal(err)
			}
			// Mid-connection: some checks on it, not its last.
			waitFor(t, 5*time.Second, "checks on a kept connection", func() bool {
				h := srv.hits.Load()
				return h >= 2*perConn && h%perConn == 2
			})
			if c, h := srv.conns.Load(), srv.hits.Load(); c >= h {
				t.Fatalf("%d connections for %d checks: no reuse to test", c, h)
			}
			start := time.Now()
			tt.fail(srv)
			answeredBefore := srv.answered.Load()

			tr := recv(t, ch, 5*time.Second)
			elapsed := time.Since(start)
			if tr.To != Unhealthy || tr.Reason != tt.reason {
				t.Fatalf("transition %+v, want unhealthy by %s", tr, tt.reason)
			}
			answered := srv.answered.Load() - answeredBefore
			if answered > tt.maxAnswered {
				t.Errorf("%d checks answered after the failure, want at most %d", answered, tt.maxAnswered)
			}
			// Bounded in checks: the answered ones, then the threshold.
			checks := tt.maxAnswered + unhealthy
			limit := time.Duration(checks)*(interval+timeout) + 200*time.Millisecond
			if elapsed > limit {
				t.Errorf("unhealthy %v after the failure, want within %v (%d checks)", elapsed, limit, checks)
			}
			t.Logf("unhealthy after %v, %d checks answered on the kept connection", elapsed.Round(time.Millisecond), answered)
		})
	}
}

package l7

import (
	"github.com/xlb-dev/xlb/l7/h1"
	"io"

	"bufio"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// scriptedBackend accepts connections and answers each request read on a
// connection with answer(connection number, request number on it, request);
// an empty answer closes the connection without one. It records every
// request's head as received.
type scriptedBackend struct {
	addr   netip.AddrPort
	answer func(conn, n int, req *http.Request) string

	mu    sync.Mutex
	conns int
	heads []string
}

func startScripted(t *testing.T, answer func(conn, n int, req *http.Request) string) *scriptedBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	mustf(t, err, "listen")
	b := &scriptedBackend{addr: netip.MustParseAddrPort(ln.Addr().String()), answer: answer}
	var wg sync.WaitGroup
	var open sync.Map
	t.Cleanup(func() {
		ln.Close()
		open.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			open.Store(c, true)
			b.mu.Lock()
			b.conns++
			id := b.conns
			b.mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for n := 1; ; n++ {
					var head strings.Builder
					req, err := http.ReadRequest(bufio.NewReader(teeHead{br, &head}))
					if err != nil {
						return
					}
					b.mu.Lock()
					b.heads = append(b.heads, head.String())
					b.mu.Unlock()
					a := answer(id, n, req)
					if a == "" {
						return
					}
					a, closeAfter := strings.CutSuffix(a, closeAfterAnswer)
					if _, err := c.Write([]byte(strings.ReplaceAll(a, "\n", "\r\n"))); err != nil || closeAfter {
						return
					}
				}
			})
		}
	})
	return b
}

func (b *scriptedBackend) stats() (conns int, heads []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conns, append([]string(nil), b.heads...)
}

// teeHead copies what the request parser reads, one byte at a time so that
// it reads no further than the request head (the requests have no body).
type teeHead struct {
	r   *bufio.Reader
	out *strings.Builder
}

func (t teeHead) Read(p []byte) (int, error) {
	c, err := t.r.ReadByte()
	if err != nil {
		return 0, err
	}
	p[0] = c
	t.out.WriteByte(c)
	return 1, nil
}

const (
	okAnswer         = "HTTP/1.1 200 OK\nContent-Length: 2\n\nok"
	closeAfterAnswer = "\x00close"
)

func TestTransportReusesOneConnection(t *testing.T) {
	be := startScripted(t, func(_, _ int, _ *http.Request) string { return okAnswer })
	h := newHarness(t)
	h.update(svcConf("s", listenA, be.addr))
	cl := testClient(t)
	for range 20 {
		if code, body, _ := get(t, cl, h.url(listenA, "/x?a=1")); code != 200 || body != "ok" {
			t.Fatalf("got %d %q", code, body)
		}
	}
	if conns, heads := be.stats(); conns != 1 || len(heads) != 20 {
		t.Errorf("20 sequential requests took %d connections and %d requests at the backend, want 1 and 20", conns, len(heads))
	}
}

// The request head the backend gets: request line with the query, Host
// first, no User-Agent the client did not send, no Connection, and
// Content-Length: 0 only for methods that carry a body.
func TestTransportRequestHead(t *testing.T) {
	be := startScripted(t, func(_, _ int, _ *http.Request) string { return okAnswer })
	h := newHarness(t)
	h.update(svcConf("s", listenA, be.addr))
	for _, tc := range []struct{ req, line string }{
		{"GET /p/a%20b?q=1&r=%2F HTTP/1.1\nHost: example.test\nConnection: close\n\n", "GET /p/a%20b?q=1&r=%2F HTTP/1.1"},
		{"POST /form HTTP/1.1\nHost: example.test\nContent-Length: 0\nConnection: close\n\n", "POST /form HTTP/1.1"},
		{"DELETE /x HTTP/1.1\nHost: example.test\nUser-Agent: probe/1\nConnection: close\n\n", "DELETE /x HTTP/1.1"},
	} {
		res, _ := rawRequest(t, h.real(listenA), tc.req)
		if res.StatusCode != 200 {
			t.Fatalf("%q: %d", tc.req, res.StatusCode)
		}
		_, heads := be.stats()
		head := heads[len(heads)-1]
		lines := strings.Split(strings.TrimSuffix(head, "\r\n\r\n"), "\r\n")
		if lines[0] != tc.line || lines[1] != "Host: example.test" {
			t.Errorf("%q reached the backend as %q", tc.req, head)
		}
		ua := strings.Contains(tc.req, "User-Agent")
		if strings.Contains(head, "User-Agent") != ua || strings.Contains(head, "Connection:") {
			t.Errorf("%q: User-Agent or Connection wrong in %q", tc.req, head)
		}
		if cl := strings.Contains(head, "Content-Length: 0\r\n"); cl != strings.HasPrefix(tc.req, "POST") {
			t.Errorf("%q: Content-Length: 0 present %v in %q", tc.req, cl, head)
		}
		if !strings.Contains(head, "X-Forwarded-For: 127.0.0.1\r\n") {
			t.Errorf("%q: no X-Forwarded-For in %q", tc.req, head)
		}
	}
}

// The backend closes a connection without a byte of answer: a kept one
// (after one request, reading the next: a close that raced the request,
// which no idle check can see coming) or a new one (a listener shut with
// the connection still in its accept queue). A GET goes again on a new
// connection and succeeds; a POST is not resent and gets a 502.
func TestTransportClosedUnanswered(t *testing.T) {
	for _, tc := range []struct {
		name     string
		warm     bool // a first request answered on the connection
		closesAt int  // request number on connection 1 closed unanswered
		method   string
		status   int
		conns    int
	}{
		{"kept connection, GET", true, 2, "GET", 200, 2},
		{"kept connection, POST", true, 2, "POST", 502, 1},
		{"new connection, GET", false, 1, "GET", 200, 2},
		{"new connection, POST", false, 1, "POST", 502, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := startScripted(t, func(conn, n int, _ *http.Request) string {
				if conn == 1 && n == tc.closesAt {
					return ""
				}
				return okAnswer
			})
			h := newHarness(t)
			h.update(svcConf("s", listenA, be.addr))
			cl := testClient(t)
			if tc.warm {
				if code, _, _ := get(t, cl, h.url(listenA, "/")); code != 200 {
					t.Fatal(code)
				}
			}
			req, _ := http.NewRequest(tc.method, h.url(listenA, "/"), nil)
			res, err := cl.Do(req)
			mustf(t, err, "request")
			res.Body.Close()
			if conns, _ := be.stats(); res.StatusCode != tc.status || conns != tc.conns {
				t.Errorf("%d over %d connections, want %d over %d", res.StatusCode, conns, tc.status, tc.conns)
			}
		})
	}
}

// An idle connection the backend has closed is noticed before use (after
// peekAfterIdle) and not used, whatever the method.
func TestTransportIdleClosedNotUsed(t *testing.T) {
	closed := make(chan struct{})
	be := startScripted(t, func(conn, n int, _ *http.Request) string {
		if conn == 1 {
			defer close(closed)
			return okAnswer + closeAfterAnswer
		}
		return okAnswer
	})
	h := newHarness(t)
	h.update(svcConf("s", listenA, be.addr))
	cl := testClient(t)
	if code, _, _ := get(t, cl, h.url(listenA, "/")); code != 200 {
		t.Fatal(code)
	}
	<-closed
	time.Sleep(50 * time.Millisecond)
	req, _ := http.NewRequest("POST", h.url(listenA, "/"), nil)
	res, err := cl.Do(req)
	mustf(t, err, "POST")
	res.Body.Close()
	if conns, _ := be.stats(); res.StatusCode != 200 || conns != 2 {
		t.Errorf("POST after the idle connection was closed: %d over %d connections, want 200 over 2", res.StatusCode, conns)
	}
}

// Connection: close, a body the client did not read to its end, and 1xx
// interim answers.
func TestTransportAnswers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer string
		body   string
		conns  int // for three requests
	}{
		{"keep-alive", okAnswer, "ok", 1},
		{"Connection: close", "HTTP/1.1 200 OK\nConnection: close\nContent-Length: 2\n\nok", "ok", 3},
		{"HTTP/1.0 answer", "HTTP/1.0 200 OK\nContent-Length: 2\n\nok", "ok", 3},
		{"chunked", "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nok\n0\n\n", "ok", 1},
		{"103 then 200", "HTTP/1.1 103 Early Hints\nLink: </s.css>; rel=preload\n\n" + okAnswer, "ok", 1},
		{"204", "HTTP/1.1 204 No Content\n\n", "", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := startScripted(t, func(_, _ int, _ *http.Request) string { return tc.answer })
			h := newHarness(t)
			h.update(svcConf("s", listenA, be.addr))
			cl := testClient(t)
			for range 3 {
				code, body, hdr := get(t, cl, h.url(listenA, "/"))
				if code/100 != 2 || body != tc.body || hdr.Get("Link") != "" {
					t.Fatalf("got %d %q %v", code, body, hdr)
				}
			}
			if conns, _ := be.stats(); conns != tc.conns {
				t.Errorf("3 requests took %d connections, want %d", conns, tc.conns)
			}
		})
	}
}

// A request whose client goes away mid-body leaves the connection closed,
// not in the pool with the rest of that body unread.
func TestTransportUnfinishedBodyClosesConnection(t *testing.T) {
	be := startScripted(t, func(_, n int, req *http.Request) string {
		if req.URL.Path == "/big" {
			return "HTTP/1.1 200 OK\nContent-Length: 10000000\n\n" + strings.Repeat("x", 1<<20)
		}
		return okAnswer
	})
	h := newHarness(t)
	h.update(svcConf("s", listenA, be.addr))
	conn, err := net.Dial("tcp", h.real(listenA))
	mustf(t, err, "dial")
	conn.Write([]byte("GET /big HTTP/1.1\r\nHost: x\r\n\r\n"))
	buf := make([]byte, 1024)
	if _, err := conn.Read(buf); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	waitFor(t, "the request to end", func() bool {
		m, _ := h.srv.Metrics("s")
		return m.TotalRequests == 1
	})
	if code, body, _ := get(t, testClient(t), h.url(listenA, "/small")); code != 200 || body != "ok" {
		t.Fatalf("after an unfinished body: %d %q", code, body)
	}
	if conns, _ := be.stats(); conns != 2 {
		t.Errorf("%d connections, want 2 (the unfinished one not reused)", conns)
	}
}

func TestConnPoolCloseIdle(t *testing.T) {
	be := startScripted(t, func(_, _ int, _ *http.Request) string { return okAnswer })
	tr := &h1.Transport{ConnectTimeout: time.Second, HeaderTimeout: time.Second}
	o := h1.NewOwner()
	for range 3 {
		req, _ := http.NewRequestWithContext(h1.WithOwner(t.Context(), o), "GET", "http://"+be.addr.String()+"/", nil)
		res, err := tr.RoundTrip(req, time.Time{})
		mustf(t, err, "RoundTrip")
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	o.Close()
	if n := tr.IdleConns(be.addr.String()); n != 1 {
		t.Errorf("%d idle connections after their owner closed, want 1", n)
	}
	tr.CloseIdleConnections()
	if n := tr.IdleConns(be.addr.String()); n != 0 {
		t.Errorf("%d idle connections left after CloseIdleConnections, want 0", n)
	}
	if conns, _ := be.stats(); conns != 1 {
		t.Errorf("%d connections for 3 sequential requests, want 1", conns)
	}
}

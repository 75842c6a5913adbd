package h1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawBackend accepts connections and answers the n-th request of the
// c-th connection (both from 1) with script(c, n, req): the bytes to
// write, each element one write (a delay before a write when it starts
// with "\x00sleep:DURATION\x00"); nil closes the connection unanswered.
// It records each request line and body.
type rawBackend struct {
	addr   string
	script func(c, n int, req *http.Request) []string

	written chan string // each request's path once its writes are done

	mu     sync.Mutex
	conns  int
	lines  []string
	bodies []string
}

func startRaw(t *testing.T, script func(c, n int, req *http.Request) []string) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBackend{addr: ln.Addr().String(), script: script, written: make(chan string, 1000)}
	var wg sync.WaitGroup
	var open sync.Map
	t.Cleanup(func() {
		ln.Close()
		open.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			open.Store(nc, true)
			b.mu.Lock()
			b.conns++
			id := b.conns
			b.mu.Unlock()
			wg.Go(func() {
				defer nc.Close()
				br := bufio.NewReader(nc)
				for n := 1; ; n++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					body, _ := io.ReadAll(req.Body)
					b.mu.Lock()
					b.lines = append(b.lines, req.Method+" "+req.RequestURI)
					b.bodies = append(b.bodies, string(body))
					b.mu.Unlock()
					writes := script(id, n, req)
					if writes == nil {
						return
					}
					for _, w := range writes {
						if rest, ok := strings.CutPrefix(w, "\x00sleep:"); ok {
							d, after, _ := strings.Cut(rest, "\x00")
							pause, _ := time.ParseDuration(d)
							time.Sleep(pause)
							w = after
						}
						if _, err := nc.Write([]byte(w)); err != nil {
							return
						}
					}
					b.written <- req.URL.Path
				}
			})
		}
	})
	return b
}

func (b *rawBackend) stats() (conns int, lines []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conns, append([]string(nil), b.lines...)
}

// answerFor is the well-behaved answer to a request: its own path in the
// body, so that a client can tell its answer from another's.
func answerFor(req *http.Request) string {
	body := "answer to " + req.URL.Path
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// testOwner is the one client connection of the tests' requests, so that
// they reuse backend connections.
var testOwner = NewOwner()

func do(t *testing.T, tr *Transport, method, url string) (*http.Response, string, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(WithOwner(t.Context(), testOwner), method, url, nil)
	res, err := tr.RoundTrip(req, time.Now().Add(5*time.Second))
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	return res, string(b), err
}

// A backend that sends more than its framing said never has those bytes
// read as the answer to the next request on the connection: the leftover
// is seen when the answer ends, or before the connection is used again,
// or the connection is not reused at all (a bodyless answer announcing a
// body). Each case runs back to back and with a gap.
func TestTransportNeverHandsLeftoversToTheNextRequest(t *testing.T) {
	const smuggled = "HTTP/1.1 200 OK\r\nSet-Cookie: session=victim\r\nContent-Length: 8\r\n\r\nSMUGGLED"
	for _, tc := range []struct {
		name   string
		method string
		first  []string // the answer to the first request (/first)
	}{
		{"HEAD answered with a body, one write", "HEAD", []string{"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n" + smuggled}},
		{"HEAD answered with a body, second write", "HEAD", []string{"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n", smuggled}},
		{"HEAD, body 20 ms later", "HEAD", []string{"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n", "\x00sleep:20ms\x00" + smuggled}},
		{"204 with a body", "GET", []string{"HTTP/1.1 204 No Content\r\nContent-Length: 77\r\n\r\n", smuggled}},
		{"304 with a chunked body", "GET", []string{"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", smuggled}},
		{"body longer than its length", "GET", []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + smuggled}},
		{"body longer than its length, second write", "GET", []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", smuggled}},
		{"chunked body with extra", "GET", []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + smuggled}},
		{"unsolicited answer while idle", "GET", []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "\x00sleep:10ms\x00" + smuggled}},
	} {
		for _, gap := range []time.Duration{0, 50 * time.Millisecond} {
			t.Run(fmt.Sprintf("%s/gap %v", tc.name, gap), func(t *testing.T) {
				be := startRaw(t, func(_, _ int, req *http.Request) []string {
					if req.URL.Path == "/first" {
						return tc.first
					}
					return []string{answerFor(req)}
				})
				tr := &Transport{ConnectTimeout: time.Second, HeaderTimeout: 2 * time.Second}
				defer tr.CloseIdleConnections()
				for trial := range 10 {
					if _, _, err := do(t, tr, tc.method, "http://"+be.addr+"/first"); err != nil && !errors.Is(err, ErrBadResponse) {
						t.Logf("first request: %v", err)
					}
					if len(tc.first) > 1 {
						// Bytes sent out of turn after the next request went
						// out cannot be told from its answer, by any HTTP/1.1
						// client: the next request waits until they are sent.
						for p := ""; p != "/first"; {
							select {
							case p = <-be.written:
							case <-time.After(5 * time.Second):
								t.Fatal("the backend did not send its answer")
							}
						}
					}
					time.Sleep(gap)
					path := fmt.Sprintf("/next%d", trial)
					res, body, err := do(t, tr, "GET", "http://"+be.addr+path)
					if err != nil {
						t.Fatalf("trial %d: %v", trial, err)
					}
					if body != "answer to "+path || res.Header.Get("Set-Cookie") != "" {
						t.Fatalf("trial %d: the next request got %q (Set-Cookie %q)", trial, body, res.Header.Get("Set-Cookie"))
					}
				}
			})
		}
	}
}

// A framing the Transport does not read exactly is ErrBadResponse and the
// connection is closed, never reused.
func TestTransportBadAnswerClosesConnection(t *testing.T) {
	for _, bad := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
	} {
		be := startRaw(t, func(_, _ int, req *http.Request) []string {
			if req.URL.Path == "/bad" {
				return []string{bad}
			}
			return []string{answerFor(req)}
		})
		tr := &Transport{ConnectTimeout: time.Second, HeaderTimeout: time.Second}
		if _, _, err := do(t, tr, "GET", "http://"+be.addr+"/bad"); !errors.Is(err, ErrBadResponse) {
			t.Errorf("%q: %v, want ErrBadResponse", bad, err)
		}
		if _, body, err := do(t, tr, "GET", "http://"+be.addr+"/ok"); err != nil || body != "answer to /ok" {
			t.Errorf("%q, then: %q %v", bad, body, err)
		}
		if conns, lines := be.stats(); conns != 2 || len(lines) != 2 {
			t.Errorf("%q: %d connections, %d requests; want 2 and 2 (no resend)", bad, conns, len(lines))
		}
		tr.CloseIdleConnections()
	}
}

// A header timeout ends the request within 100 ms of its setting and is
// never resent (a resend would double it), on a new or a kept connection.
func TestTransportHeaderTimeoutOnTime(t *testing.T) {
	const timeout = 400 * time.Millisecond
	be := startRaw(t, func(_, n int, req *http.Request) []string {
		if req.URL.Path == "/slow" {
			return []string{"\x00sleep:2s\x00" + answerFor(req)}
		}
		return []string{answerFor(req)}
	})
	tr := &Transport{ConnectTimeout: time.Second, HeaderTimeout: timeout}
	defer tr.CloseIdleConnections()
	for _, warm := range []bool{false, true} {
		if warm {
			if _, _, err := do(t, tr, "GET", "http://"+be.addr+"/warm"); err != nil {
				t.Fatal(err)
			}
		}
		_, before := be.stats()
		start := time.Now()
		_, _, err := do(t, tr, "GET", "http://"+be.addr+"/slow")
		took := time.Since(start)
		if !isTimeout(err) {
			t.Fatalf("warm %v: %v, want a timeout", warm, err)
		}
		if took < timeout-Slack(timeout) || took > timeout+100*time.Millisecond {
			t.Errorf("warm %v: timed out after %v, want %v within 100 ms", warm, took, timeout)
		}
		if _, after := be.stats(); len(after)-len(before) != 1 {
			t.Errorf("warm %v: the request reached the backend %d times, want once", warm, len(after)-len(before))
		}
	}
}

// A request body goes out with its length, or chunked when unknown, while
// the answer may already be coming.
func TestTransportBodies(t *testing.T) {
	be := startRaw(t, func(_, _ int, req *http.Request) []string { return []string{answerFor(req)} })
	tr := &Transport{ConnectTimeout: time.Second, HeaderTimeout: time.Second}
	defer tr.CloseIdleConnections()
	for i, tc := range []struct {
		length int64
		body   string
	}{{5, "hello"}, {-1, "chunked body"}, {0, "unknown length too"}} {
		req, _ := http.NewRequestWithContext(WithOwner(t.Context(), testOwner), "POST", "http://"+be.addr+"/up", io.NopCloser(strings.NewReader(tc.body)))
		req.ContentLength = tc.length
		res, err := tr.RoundTrip(req, time.Now().Add(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		if _, lines := be.stats(); len(lines) != i+1 {
			t.Fatalf("%d requests at the backend", len(lines))
		}
		be.mu.Lock()
		got := be.bodies[i]
		be.mu.Unlock()
		if got != tc.body {
			t.Errorf("backend got body %q, want %q", got, tc.body)
		}
	}
	if conns, _ := be.stats(); conns != 1 {
		t.Errorf("%d connections for 3 requests with bodies, want 1", conns)
	}
}

// A client body that fails is a *BodyError, not the backend's fault, and
// it ends the exchange at once rather than at a timeout.
func TestTransportClientBodyError(t *testing.T) {
	be := startRaw(t, func(_, _ int, req *http.Request) []string { return []string{answerFor(req)} })
	tr := &Transport{ConnectTimeout: time.Second, HeaderTimeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	boom := errors.New("bad chunk size")
	req, _ := http.NewRequest("POST", "http://"+be.addr+"/up", io.NopCloser(io.MultiReader(strings.NewReader("part"), errReader{boom})))
	req.ContentLength = -1
	start := time.Now()
	_, err := tr.RoundTrip(req, time.Now().Add(10*time.Second))
	var be2 *BodyError
	if !errors.As(err, &be2) || !errors.Is(err, boom) {
		t.Fatalf("%v, want a BodyError with the client's error", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("took %v", took)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// A backend connection serves one client connection; another client gets
// it only after ShareAfter idle, and after its owner closed.
func TestTransportOwnership(t *testing.T) {
	be := startRaw(t, func(_, _ int, req *http.Request) []string { return []string{answerFor(req)} })
	tr := &Transport{ConnectTimeout: time.Second, HeaderTimeout: time.Second}
	defer tr.CloseIdleConnections()
	a, b := NewOwner(), NewOwner()
	get := func(o *Owner) {
		ctx := t.Context()
		if o != nil {
			ctx = WithOwner(ctx, o)
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+be.addr+"/", nil)
		res, err := tr.RoundTrip(req, time.Now().Add(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
	}
	conns := func() int { n, _ := be.stats(); return n }
	get(a)
	get(a)
	if conns() != 1 {
		t.Fatalf("one owner, two requests: %d connections, want 1", conns())
	}
	get(b)
	if conns() != 2 {
		t.Fatalf("a second owner: %d connections, want 2 (a's is a's)", conns())
	}
	a.Close()
	get(nil)
	if conns() != 3 {
		t.Fatalf("right after its owner closed: %d connections, want 3 (a's idles for ShareAfter first)", conns())
	}
	time.Sleep(ShareAfter + 50*time.Millisecond)
	get(nil)
	if conns() != 3 {
		t.Fatalf("after ShareAfter: %d connections, want 3 (a's connection shared)", conns())
	}
}

package l7

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The hostile-peer kit: raw client inputs and raw backend answers, each
// with what the other side must see. A proxy's first duties: never hand one
// client another's bytes; never let a client harm others or get a backend
// blamed for its own fault; a deadline on every wait; strict framing.

// recorder is a backend that records each request line with its body and
// answers "ok <path> <body>".
type recorder struct {
	mu   sync.Mutex
	seen []string
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.seen = append(rc.seen, r.Method+" "+r.RequestURI+" "+string(b))
	rc.mu.Unlock()
	if err != nil {
		return
	}
	io.WriteString(w, "ok "+r.URL.Path+" "+string(b))
}

func (rc *recorder) saw() string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return strings.Join(rc.seen, "\n")
}

// hostileHarness is a service "s" with one recording backend, passive
// health on (two failures eject), short client-side limits.
func hostileHarness(t *testing.T) (*harness, *recorder, *Upstream) {
	rc := &recorder{}
	be := startBackend(t, rc)
	h := newHarness(t, func(o *Options) {
		o.HeadTimeout = 300 * time.Millisecond
		o.ClientTimeout = 400 * time.Millisecond
	})
	c := svcConf("s", listenA, be)
	c.Passive = PassiveConfig{MaxFails: 2, BaseEjection: time.Minute}
	c.RequestTimeout = 2 * time.Second
	h.update(c)
	return h, rc, h.srv.Upstream("s", c.Backends[0].ID)
}

// sendRaw writes parts on a new connection (a part "\x00sleep:D" pauses),
// reads one answer and reports whether the connection closed after it.
func sendRaw(t *testing.T, addr string, parts ...string) (res *http.Response, body string, closed bool) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	mustf(t, err, "dial")
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	for _, p := range parts {
		if d, ok := strings.CutPrefix(p, "\x00sleep:"); ok {
			pause, _ := time.ParseDuration(d)
			time.Sleep(pause)
			continue
		}
		if p == "\x00closewrite" {
			conn.(*net.TCPConn).CloseWrite()
			continue
		}
		conn.Write([]byte(p))
	}
	br := bufio.NewReader(conn)
	res, err = http.ReadResponse(br, nil)
	mustf(t, err, "answer")
	b, err := io.ReadAll(res.Body)
	mustf(t, err, "body")
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = br.ReadByte()
	closed = errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err)
	return res, string(b), closed
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && strings.Contains(op.Err.Error(), "reset")
}

// Client inputs: the status the client gets, whether its connection
// closes, what the backend must and must not see; none of them counts
// against the backend.
func TestHostileClients(t *testing.T) {
	const chunkedPOST = "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	for _, tc := range []struct {
		name     string
		parts    []string
		status   int
		closed   bool
		mustSee  string // a line the backend saw ("" none required)
		mustNot  string // a path the backend must never see
		noneSeen bool   // the backend sees nothing at all
	}{
		{"bad chunk size", []string{chunkedPOST + "zz\r\n"}, 400, true, "", "", false},
		{"smuggling in a broken chunk", []string{"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"00000000000000000023\r\nGET /SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n\r\n0\r\n\r\n"}, 400, true, "", "/SMUGGLED", false},
		{"length and chunked", []string{"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"5\r\nhello\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n"}, 200, true, "POST /p hello", "/after", false},
		{"HTTP/1.0 chunked", []string{"POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"}, 400, true, "", "", true},
		{"unknown coding", []string{"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"}, 501, true, "", "", true},
		{"space before colon", []string{"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc"}, 400, true, "", "", true},
		{"folded header", []string{"GET /f HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n"}, 400, true, "", "", true},
		{"bare LF", []string{"GET /lf HTTP/1.1\nHost: a\n\n"}, 400, true, "", "", true},
		{"request line over 8 KiB", []string{"GET /" + strings.Repeat("a", 9<<10) + " HTTP/1.1\r\nHost: a\r\n\r\n"}, 414, true, "", "", true},
		{"head over 64 KiB", []string{"GET /big HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 1000)+"\r\n", 70) + "\r\n"}, 431, true, "", "", true},
		{"head too slow", []string{"GET /slow HTTP/1.1\r\nHo", "\x00sleep:1s"}, 408, true, "", "", true},
		{"body too slow", []string{"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"}, 408, true, "", "", false},
		{"body cut short", []string{"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc", "\x00closewrite"}, 400, true, "", "", false},
		{"chunked body cut short", []string{chunkedPOST + "5\r\nab", "\x00closewrite"}, 400, true, "", "", false},
		{"two Hosts", []string{"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"}, 400, true, "", "", true},
		{"HTTP/2.0 request line", []string{"GET / HTTP/2.0\r\nHost: a\r\n\r\n"}, 505, true, "", "", true},
		{"polite keep-alive", []string{"POST /k HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"}, 200, false, "POST /k hi", "", false},
		{"polite chunked", []string{chunkedPOST + "2\r\nhi\r\n3;e=1\r\nyou\r\n0\r\nX-T: 1\r\n\r\n"}, 200, false, "POST /x hiyou", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, rc, up := hostileHarness(t)
			for range 3 { // three times: passive health ejects after two backend failures
				res, body, closed := sendRaw(t, h.real(listenA), tc.parts...)
				if res.StatusCode != tc.status || closed != tc.closed {
					t.Fatalf("got %d (closed %v) %q, want %d (closed %v)", res.StatusCode, closed, body, tc.status, tc.closed)
				}
			}
			time.Sleep(20 * time.Millisecond) // the backend's handler records after the proxy's answer
			saw := rc.saw()
			switch {
			case tc.noneSeen && saw != "":
				t.Errorf("the backend saw %q", saw)
			case tc.mustSee != "" && !strings.Contains(saw, tc.mustSee):
				t.Errorf("the backend saw %q, want %q", saw, tc.mustSee)
			case tc.mustNot != "" && strings.Contains(saw, tc.mustNot):
				t.Errorf("the backend saw %q", saw)
			}
			if up.Ejected(time.Now()) || up.consecutiveFails.Load() != 0 {
				t.Errorf("the backend was blamed: ejected %v, %d failures", up.Ejected(time.Now()), up.consecutiveFails.Load())
			}
			if code, body, _ := get(t, testClient(t), h.url(listenA, "/next")); code != 200 || body != "ok /next " {
				t.Errorf("the next client got %d %q", code, body)
			}
		})
	}
}

// Expect: 100-continue gets its interim answer before the body is sent.
func TestExpectContinue(t *testing.T) {
	h, rc, _ := hostileHarness(t)
	conn, err := net.Dial("tcp", h.real(listenA))
	mustf(t, err, "dial")
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	conn.Write([]byte("POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"))
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("%q, %v; want 100 Continue first", line, err)
	}
	br.ReadString('\n')
	conn.Write([]byte("hello"))
	res, err := http.ReadResponse(br, nil)
	mustf(t, err, "answer")
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || string(b) != "ok /c hello" || !strings.Contains(rc.saw(), "POST /c hello") {
		t.Errorf("%d %q; backend saw %q", res.StatusCode, b, rc.saw())
	}
}

// A client that does not read its answer holds its request at most
// ClientTimeout: the request ends, is counted, and frees its slot.
func TestClientThatDoesNotRead(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/huge" {
			io.WriteString(w, "ok")
			return
		}
		chunk := []byte(strings.Repeat("z", 64<<10))
		for range 1024 { // 64 MB: more than every socket buffer on the way
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	h := newHarness(t, func(o *Options) { o.ClientTimeout = 300 * time.Millisecond })
	c := svcConf("s", listenA, be)
	c.MaxInFlight = 1
	h.update(c)
	conn, err := net.Dial("tcp", h.real(listenA))
	mustf(t, err, "dial")
	defer conn.Close()
	conn.(*net.TCPConn).SetReadBuffer(4096)
	conn.Write([]byte("GET /huge HTTP/1.1\r\nHost: a\r\n\r\n"))
	up := h.srv.Upstream("s", c.Backends[0].ID)
	waitFor(t, "the stalled request to end", func() bool {
		m, _ := h.srv.Metrics("s")
		return m.TotalRequests == 1 && up.InFlight.Load() == 0
	})
	if code, _, _ := get(t, testClient(t), h.url(listenA, "/")); code != 200 {
		t.Errorf("with max_in_flight 1, the next request got %d", code)
	}
}

// rawScript is a backend of raw answers: answer(n, req) for the n-th
// request overall (from 1) is written as it is.
func rawScript(t *testing.T, answer func(n int, req *http.Request) []string) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	mustf(t, err, "listen")
	var wg sync.WaitGroup
	var open sync.Map
	var count atomic.Int64
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
			wg.Go(func() {
				defer nc.Close()
				br := bufio.NewReader(nc)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					parts := answer(int(count.Add(1)), req)
					if parts == nil {
						return
					}
					for _, p := range parts {
						if d, ok := strings.CutPrefix(p, "\x00sleep:"); ok {
							pause, _ := time.ParseDuration(d)
							time.Sleep(pause)
							continue
						}
						if _, err := nc.Write([]byte(p)); err != nil {
							return
						}
					}
				}
			})
		}
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}

// Backend answers that break their framing: 502 for the request, the
// connection to the backend closed, and the next client gets its own
// answer.
func TestHostileBackends(t *testing.T) {
	const victim = "HTTP/1.1 200 OK\r\nSet-Cookie: session=victim\r\nContent-Length: 6\r\n\r\nVICTIM"
	for _, tc := range []struct {
		name   string
		method string
		answer []string
		status int
	}{
		{"HEAD with a body", "HEAD", []string{"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n", victim}, 200},
		{"204 with a body", "GET", []string{"HTTP/1.1 204 No Content\r\n\r\n" + victim}, 204},
		{"304 with a body", "GET", []string{"HTTP/1.1 304 Not Modified\r\nContent-Length: 6\r\n\r\n", victim}, 304},
		{"body longer than its length", "GET", []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + victim}, 200},
		{"length and chunked", "GET", []string{"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + victim}, 502},
		{"space before colon", "GET", []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc"}, 502},
		{"bad chunk", "GET", []string{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"}, 200},
		{"folded line", "GET", []string{"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n"}, 502},
		{"NUL in a value", "GET", []string{"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n"}, 502},
		{"101 unasked", "GET", []string{"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n" + victim}, 502},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := rawScript(t, func(_ int, req *http.Request) []string {
				if req.URL.Path == "/bad" {
					return tc.answer
				}
				body := "own " + req.URL.Path
				return []string{fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)}
			})
			h := newHarness(t)
			h.update(svcConf("s", listenA, be))
			cl := testClient(t)
			for i := range 5 {
				req, _ := http.NewRequest(tc.method, h.url(listenA, "/bad"), nil)
				res, err := cl.Do(req)
				mustf(t, err, "bad request")
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != tc.status || strings.Contains(string(b), "VICTIM") || res.Header.Get("Set-Cookie") != "" {
					t.Fatalf("%d %q %v, want %d without the leftover", res.StatusCode, b, res.Header, tc.status)
				}
				path := fmt.Sprintf("/next%d", i)
				code, body, hdr := get(t, cl, h.url(listenA, path))
				if code != 200 || body != "own "+path || hdr.Get("Set-Cookie") != "" {
					t.Fatalf("the next client got %d %q %v", code, body, hdr)
				}
			}
		})
	}
}

// TestNoCrossedAnswers: backends that misbehave at random answer thousands
// of concurrent requests from many client connections. No client ever
// receives an answer meant for another client (checked by request id);
// a backend's answer that overtakes its time (late, or more than its
// framing) can only ever confuse the client that caused it, and is counted.
func TestNoCrossedAnswers(t *testing.T) {
	var seed atomic.Uint64
	answer := func(_ int, req *http.Request) []string {
		id := req.Header.Get("X-Request-Id")
		own := func(extra string) string {
			if req.Method == http.MethodHead {
				return "HTTP/1.1 200 OK\r\nX-Echo: " + id + "\r\nContent-Length: 40\r\n\r\n" + extra
			}
			return fmt.Sprintf("HTTP/1.1 200 OK\r\nX-Echo: %s\r\nContent-Length: %d\r\n\r\n%s%s", id, len(id), id, extra)
		}
		// An answer nobody asked for, naming the request it came after.
		late := fmt.Sprintf("HTTP/1.1 200 OK\r\nX-Echo: late-%s\r\nContent-Length: %d\r\n\r\nlate-%s", id, len(id)+5, id)
		r := rand.New(rand.NewPCG(seed.Add(1), 7))
		switch r.IntN(10) {
		case 0:
			return []string{own(late)} // more than the framing says
		case 1:
			return []string{own(""), "\x00sleep:1ms", late} // late extra
		case 2:
			return []string{"HTTP/1.1 204 No Content\r\nX-Echo: " + id + "\r\n\r\n" + late}
		case 3:
			return []string{"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nevil\r\n0\r\n\r\n"}
		case 4:
			return []string{own("")[:20]} // cut off
		case 5:
			return []string{"\x00sleep:3ms", own("")}
		case 6:
			if req.Method != http.MethodHead {
				return []string{fmt.Sprintf("HTTP/1.1 200 OK\r\nX-Echo: %s\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", id, len(id), id)}
			}
		}
		return []string{own("")}
	}
	bes := []netip.AddrPort{rawScript(t, answer), rawScript(t, answer)}
	h := newHarness(t)
	c := svcConf("s", listenA, bes...)
	c.ResponseHeaderTimeout = 300 * time.Millisecond
	h.update(c)
	const clients, perClient = 16, 100
	var wg sync.WaitGroup
	var crossed, confused, served atomic.Int64
	for cl := range clients {
		wg.Go(func() {
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			mine := fmt.Sprintf("req-%d-", cl)
			for i := range perClient {
				id := fmt.Sprintf("%s%d", mine, i)
				method := http.MethodGet
				if i%5 == 0 {
					method = http.MethodHead
				}
				req, _ := http.NewRequest(method, h.url(listenA, "/"), nil)
				req.Header.Set("X-Request-Id", id)
				res, err := client.Do(req)
				if err != nil {
					continue // a backend that broke off mid-body: the client sees a cut answer
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode >= 500 {
					continue
				}
				served.Add(1)
				echo := strings.TrimPrefix(res.Header.Get("X-Echo"), "late-")
				body := strings.TrimPrefix(string(b), "late-")
				switch {
				case !strings.HasPrefix(echo, mine) || body != "" && !strings.HasPrefix(body, mine) || res.Header.Get("X-Request-Id") != id:
					crossed.Add(1)
					t.Errorf("%s %s got %d X-Echo %q body %q: another client's", method, id, res.StatusCode, res.Header.Get("X-Echo"), b)
				case echo != id:
					confused.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if served.Load() < clients*perClient/2 {
		t.Errorf("only %d of %d requests were answered by a backend", served.Load(), clients*perClient)
	}
	t.Logf("%d requests answered by a backend, %d with another client's answer, %d with an earlier answer of their own client's", served.Load(), crossed.Load(), confused.Load())
}

// A response header timeout ends the request within 100 ms of its setting,
// once (never resent), for HTTP/1 and HTTP/2 clients, with and without a
// request body; the backend is blamed (504, a timeout).
func TestHeaderTimeoutOnTime(t *testing.T) {
	const timeout = 500 * time.Millisecond
	var hits atomic.Int64
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/slow" {
			hits.Add(1)
			time.Sleep(3 * timeout)
		}
		io.WriteString(w, "ok")
	}))
	h := newHarness(t)
	c := svcConf("s", listenA, be)
	c.ResponseHeaderTimeout = timeout
	h.update(c)
	for _, tc := range []struct {
		name   string
		client *http.Client
		body   bool
	}{
		{"HTTP/1.1 GET", testClient(t), false},
		{"HTTP/1.1 POST", testClient(t), true},
		{"HTTP/2 GET", h2cClient(t), false},
		{"HTTP/2 POST", h2cClient(t), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			get(t, tc.client, h.url(listenA, "/warm")) // a kept connection to the backend
			before := hits.Load()
			var body io.Reader
			method := "GET"
			if tc.body {
				method, body = "POST", strings.NewReader("payload")
			}
			req, _ := http.NewRequest(method, h.url(listenA, "/slow"), body)
			start := time.Now()
			res, err := tc.client.Do(req)
			mustf(t, err, "request")
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			took := time.Since(start)
			if res.StatusCode != http.StatusGatewayTimeout {
				t.Fatalf("got %d, want 504", res.StatusCode)
			}
			if took < timeout-100*time.Millisecond || took > timeout+100*time.Millisecond {
				t.Errorf("504 after %v, want %v within 100 ms", took, timeout)
			}
			if n := hits.Load() - before; n != 1 {
				t.Errorf("the backend got the request %d times, want once", n)
			}
		})
	}
}

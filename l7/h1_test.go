package l7

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// wire sends raw (\n turned into \r\n unless keepLF) on a new connection to
// addr and reads n answers to requests with methods.
func wire(t *testing.T, addr, raw string, keepLF bool, methods ...string) []*http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	mustf(t, err, "dial")
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if !keepLF {
		raw = strings.ReplaceAll(raw, "\n", "\r\n")
	}
	if _, err := conn.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	var out []*http.Response
	for _, m := range methods {
		res, err := http.ReadResponse(br, &http.Request{Method: m})
		mustf(t, err, "answer %d to %q", len(out)+1, raw)
		b, err := io.ReadAll(res.Body)
		mustf(t, err, "body of answer %d", len(out)+1)
		res.Body = io.NopCloser(strings.NewReader(string(b)))
		out = append(out, res)
	}
	return out
}

// holdBytes is h1's: a body of unknown length up to it gets a Content-Length.
const holdBytes = 4 << 10

func bodyOf(r *http.Response) string {
	b, _ := io.ReadAll(r.Body)
	return string(b)
}

// The listener's own HTTP/1.1 path and what it hands to net/http: every
// kind of request gets the answer net/http would give.
func TestH1Requests(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big": // unknown length, more than holdBytes: chunked
			w.Write([]byte(strings.Repeat("x", 3*holdBytes)))
		case "/notype": // no Content-Type: sniffed, as net/http does
			w.Header()["Content-Type"] = nil
			io.WriteString(w, "<html><body>hi</body></html>")
		default:
			b, _ := io.ReadAll(r.Body)
			w.Header().Set("X-Method", r.Method)
			w.Header().Set("X-Proto", r.Proto)
			io.WriteString(w, r.URL.Path+":"+string(b))
		}
	}))
	h := newHarness(t)
	h.update(svcConf("s", listenA, be))
	addr := h.real(listenA)

	t.Run("pipelined GETs answered in order", func(t *testing.T) {
		rs := wire(t, addr, "GET /a HTTP/1.1\nHost: x\n\nGET /b HTTP/1.1\nHost: x\n\nHEAD /c HTTP/1.1\nHost: x\n\n", false, "GET", "GET", "HEAD")
		for i, want := range []string{"/a:", "/b:", ""} {
			if rs[i].StatusCode != 200 || bodyOf(rs[i]) != want {
				t.Errorf("answer %d: %d %q, want 200 %q", i+1, rs[i].StatusCode, bodyOf(rs[i]), want)
			}
		}
		if rs[2].Header.Get("X-Method") != "HEAD" || rs[0].Header.Get("Date") == "" || rs[0].ContentLength != 3 {
			t.Errorf("HEAD went as %q; first answer Date %q, length %d", rs[2].Header.Get("X-Method"), rs[0].Header.Get("Date"), rs[0].ContentLength)
		}
	})
	t.Run("a body between bodiless requests on one connection", func(t *testing.T) {
		rs := wire(t, addr, "GET /a HTTP/1.1\nHost: x\n\nPOST /p HTTP/1.1\nHost: x\nContent-Length: 5\n\nhelloGET /z HTTP/1.1\nHost: x\n\n", false, "GET", "POST", "GET")
		for i, want := range []string{"/a:", "/p:hello", "/z:"} {
			if got := bodyOf(rs[i]); rs[i].StatusCode != 200 || got != want {
				t.Errorf("answer %d: %d %q, want 200 %q", i+1, rs[i].StatusCode, got, want)
			}
		}
	})
	t.Run("chunked answer of unknown length", func(t *testing.T) {
		rs := wire(t, addr, "GET /big HTTP/1.1\nHost: x\n\n", false, "GET")
		if got := bodyOf(rs[0]); len(got) != 3*holdBytes || len(rs[0].TransferEncoding) == 0 && rs[0].ContentLength != int64(3*holdBytes) {
			t.Errorf("got %d bytes, framing %v / %d", len(got), rs[0].TransferEncoding, rs[0].ContentLength)
		}
	})
	t.Run("missing Content-Type is sniffed", func(t *testing.T) {
		rs := wire(t, addr, "GET /notype HTTP/1.1\nHost: x\n\n", false, "GET")
		if ct := rs[0].Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
			t.Errorf("Content-Type %q, want text/html sniffed", ct)
		}
	})
	t.Run("Connection: close", func(t *testing.T) {
		rs := wire(t, addr, "GET /a HTTP/1.1\nHost: x\nConnection: close\n\n", false, "GET")
		if !rs[0].Close {
			t.Errorf("answer without Connection: close: %v", rs[0].Header)
		}
	})
	for _, tc := range []struct {
		name, raw string
		keepLF    bool
		status    int
		body      string
	}{
		{"HTTP/1.0", "GET /ten HTTP/1.0\nHost: x\n\n", false, 200, "/ten:"},
		{"bare LF line ends", "GET /lf HTTP/1.1\nHost: x\n\n", true, 400, ""},
		{"no Host", "GET / HTTP/1.1\n\n", false, 400, ""},
		{"bad Host", "GET / HTTP/1.1\nHost: a b\n\n", false, 400, ""},
		{"two Hosts", "GET / HTTP/1.1\nHost: a\nHost: b\n\n", false, 400, ""},
		{"malformed request line", "THIS-IS-NOT-A-REQUEST-LINE\n\n", false, 400, ""}, // over 24 bytes: net/http first peeks for the HTTP/2 preface
		{"unsupported Expect", "GET / HTTP/1.1\nHost: x\nExpect: magic\n\n", false, 417, ""},
		{"head longer than the fast path's buffer", "GET /long HTTP/1.1\nHost: x\nX-Long: " + strings.Repeat("y", 20<<10) + "\n\n", false, 200, "/long:"},
		{"absolute-form target", "GET http://x/abs?q=1 HTTP/1.1\nHost: x\n\n", false, 200, "/abs:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := wire(t, addr, tc.raw, tc.keepLF, "GET")
			got := bodyOf(rs[0])
			if rs[0].StatusCode != tc.status || tc.body != "" && got != tc.body {
				t.Errorf("got %d %q, want %d %q", rs[0].StatusCode, got, tc.status, tc.body)
			}
		})
	}
}

// A client that closes its connection while its request waits on a slow
// backend ends the request (the client watch), counted as 499.
func TestH1ClientGoneDuringRequest(t *testing.T) {
	bl := newBlocker(t)
	be := startBackend(t, bl)
	h := newHarness(t)
	h.update(svcConf("s", listenA, be))
	conn, err := net.Dial("tcp", h.real(listenA))
	mustf(t, err, "dial")
	conn.Write([]byte("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"))
	<-bl.entered
	time.Sleep(100 * time.Millisecond) // twice h1's client watch delay
	conn.Close()
	waitFor(t, "the request to end as 499", func() bool {
		return promValue(t, h.reg, "xlb_l7_requests_total", map[string]string{"code": "499"}) == 1
	})
}

// Shutdown closes idle fast-path connections at once and lets an active
// request finish.
func TestH1Shutdown(t *testing.T) {
	bl := newBlocker(t)
	be := startBackend(t, bl)
	h := newHarness(t)
	h.update(svcConf("s", listenA, be))
	idle, err := net.Dial("tcp", h.real(listenA))
	mustf(t, err, "dial")
	defer idle.Close()
	idle.Write([]byte("GET /first HTTP/1.1\r\nHost: x\r\n\r\n"))
	<-bl.entered
	bl.open()
	br := bufio.NewReader(idle)
	res, err := http.ReadResponse(br, nil)
	mustf(t, err, "first answer")
	io.Copy(io.Discard, res.Body)

	bl2 := newBlocker(t)
	be2 := startBackend(t, bl2)
	h.update(svcConf("s", listenA, be2))
	active, err := net.Dial("tcp", h.real(listenA))
	mustf(t, err, "dial")
	defer active.Close()
	active.Write([]byte("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"))
	<-bl2.entered

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- h.srv.Shutdown(ctx)
	}()
	idle.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Error("the idle connection got bytes after Shutdown, want it closed")
	}
	bl2.open()
	active.SetReadDeadline(time.Now().Add(3 * time.Second))
	res, err = http.ReadResponse(bufio.NewReader(active), nil)
	if err != nil || res.StatusCode != 200 || !res.Close {
		t.Fatalf("the active request across Shutdown: %v %v, want 200 with Connection: close", err, res)
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// FuzzH1Connection sends arbitrary bytes on a client connection: the
// listener answers or closes it within its timeouts, never panics, and keeps
// serving the next client.
func FuzzH1Connection(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
		"GET / HTTP/1.1\nHost: x\n\n",
		"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: \x00\r\n\r\n",
		"\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	be := startBackend(f, named("b"))
	h := newHarness(f, func(o *Options) { o.HeadTimeout = 200 * time.Millisecond })
	h.update(svcConf("s", listenA, be))
	addr := h.real(listenA)
	f.Fuzz(func(t *testing.T, in []byte) {
		conn, err := net.Dial("tcp", addr)
		mustf(t, err, "dial")
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		conn.Write(in)
		conn.(*net.TCPConn).CloseWrite()
		if _, err := io.Copy(io.Discard, conn); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("after %q: %v, want the connection answered and closed", in, err)
		}
		conn.Close()
		if code, body, _ := get(t, testClient(t), h.url(listenA, "/")); code != 200 || body != "b" {
			t.Fatalf("after %q the next client got %d %q", in, code, body)
		}
	})
}

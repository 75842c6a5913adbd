package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, url string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestHeadersEndpoint(t *testing.T) {
	addr := startServe(t, "h1")
	resp, body := get(t, "http://"+addr+"/headers?a=1&b=2", map[string]string{
		"Authorization": "Bearer x", "X-Forwarded-For": "203.0.113.7",
	})
	if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "h1" || resp.Header.Get("Server") != "xlbtest" {
		t.Fatalf("GET /headers: %d %v", resp.StatusCode, resp.Header)
	}
	var rep headersReply
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if rep.Backend != "h1" || rep.Client != "127.0.0.1" || rep.Method != "GET" || rep.Proto != "HTTP/1.1" ||
		rep.Host != addr || rep.URI != "/headers?a=1&b=2" {
		t.Errorf("reply = %+v", rep)
	}
	if got := rep.Headers["Authorization"]; len(got) != 1 || got[0] != "Bearer x" {
		t.Errorf("Authorization = %q", got)
	}
	if got := rep.Headers["X-Forwarded-For"]; len(got) != 1 || got[0] != "203.0.113.7" {
		t.Errorf("X-Forwarded-For = %q", got)
	}
	// Counted like any request.
	_, sb := get(t, "http://"+addr+"/stats", nil)
	if !strings.Contains(string(sb), `"127.0.0.1":1`) {
		t.Errorf("stats = %s", sb)
	}
}

func TestSlowEndpoint(t *testing.T) {
	addr := startServe(t, "s1")
	start := time.Now()
	resp, body := get(t, "http://"+addr+"/slow?ms=150", nil)
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("answered after %v, want at least 150ms", d)
	}
	var r reply
	if resp.StatusCode != 200 || json.Unmarshal(body, &r) != nil || r.Backend != "s1" {
		t.Errorf("GET /slow: %d %s", resp.StatusCode, body)
	}
	for _, q := range []string{"ms=-1", "ms=60001", "ms=x"} {
		if resp, body := get(t, "http://"+addr+"/slow?"+q, nil); resp.StatusCode != 400 {
			t.Errorf("GET /slow?%s: %d %s, want 400", q, resp.StatusCode, body)
		}
	}
}

// TestSlowCutAtShutdown: a /slow request that shutdown interrupts gets no
// answer at all, never an empty 200.
func TestSlowCutAtShutdown(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	readyc := make(chan []string, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- serve(ctx, serveConfig{Name: "s2", Listen: []string{"127.0.0.1:0"}}, func(a []string) { readyc <- a })
	}()
	addr := (<-readyc)[0]
	res := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/slow?ms=5000")
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("got an answer: %d", resp.StatusCode)
		}
		res <- err
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-res:
		if err == nil || strings.Contains(err.Error(), "got an answer") {
			t.Errorf("slow request at shutdown: %v, want a cut connection", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("slow request still running after shutdown")
	}
	if err := <-errc; err != nil {
		t.Errorf("serve: %v", err)
	}
}

func TestStatusEndpoint(t *testing.T) {
	addr := startServe(t, "st")
	resp, body := get(t, "http://"+addr+"/status?code=418&body=short+and+stout%0A", nil)
	if resp.StatusCode != 418 || string(body) != "short and stout\n" || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Errorf("GET /status?code=418: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	resp, body = get(t, "http://"+addr+"/status?code=503", nil)
	if resp.StatusCode != 503 || string(body) != "status 503 from st\n" {
		t.Errorf("GET /status?code=503: %d %q", resp.StatusCode, body)
	}
	resp, body = get(t, "http://"+addr+"/status?code=204&body=", nil)
	if resp.StatusCode != 204 || len(body) != 0 {
		t.Errorf("GET /status?code=204: %d %q", resp.StatusCode, body)
	}
	for _, q := range []string{"code=99", "code=600", "code=101", "code=abc"} {
		if resp, body := get(t, "http://"+addr+"/status?"+q, nil); resp.StatusCode != 400 {
			t.Errorf("GET /status?%s: %d %s, want 400", q, resp.StatusCode, body)
		}
	}
}

func TestSSEEndpoint(t *testing.T) {
	addr := startServe(t, "e1")
	start := time.Now()
	resp, err := http.Get("http://" + addr + "/sse?n=3&ms=100")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /sse: %d %v", resp.StatusCode, resp.Header)
	}
	sc := bufio.NewScanner(resp.Body)
	n := 0
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev sseEvent
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			t.Fatalf("event %q: %v", data, err)
		}
		n++
		if ev.I != n || ev.N != 3 || ev.Backend != "e1" {
			t.Errorf("event %d = %+v", n, ev)
		}
		// Each event arrives when it is sent, not at the end of the stream.
		if lag := time.Since(ev.Sent); lag > 50*time.Millisecond {
			t.Errorf("event %d arrived %v after it was sent", n, lag)
		}
		if at := time.Since(start); at < time.Duration(n)*100*time.Millisecond-20*time.Millisecond {
			t.Errorf("event %d at %v, before its time", n, at)
		}
	}
	if n != 3 {
		t.Errorf("%d events, want 3 (%v)", n, sc.Err())
	}
	if resp, body := get(t, "http://"+addr+"/sse?n=0", nil); resp.StatusCode != 400 {
		t.Errorf("GET /sse?n=0: %d %s, want 400", resp.StatusCode, body)
	}
}

func TestWSFrames(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 70000} {
		payload := make([]byte, n)
		rand.Read(payload)
		for _, mask := range []*[4]byte{nil, {1, 2, 3, 4}} {
			in := wsFrame{Fin: n%2 == 0, Op: wsBinary, Payload: payload}
			b := appendWSFrame(nil, in, mask)
			out, err := readWSFrame(bufio.NewReader(bytes.NewReader(b)), mask != nil)
			if err != nil {
				t.Fatalf("%d bytes, mask %v: %v", n, mask, err)
			}
			if out.Fin != in.Fin || out.Op != in.Op || !bytes.Equal(out.Payload, payload) {
				t.Errorf("%d bytes, mask %v: frame changed", n, mask)
			}
		}
	}
	if _, err := readWSFrame(bufio.NewReader(bytes.NewReader(appendWSFrame(nil, wsFrame{Fin: true, Op: wsText}, nil))), true); err == nil {
		t.Error("an unmasked frame was accepted from a client")
	}
	// RFC 6455 section 1.3's example.
	if got := wsAccept("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("wsAccept = %q", got)
	}
}

// wsDial opens a WebSocket to /ws at addr: the handshake, checked.
func wsDial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	k := make([]byte, 16)
	rand.Read(k)
	key := base64.StdEncoding.EncodeToString(k)
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", addr, key)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != wsAccept(key) ||
		!strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		t.Fatalf("handshake: %d %v", resp.StatusCode, resp.Header)
	}
	return c, br
}

func TestWebSocketEcho(t *testing.T) {
	addr := startServe(t, "w1")
	c, br := wsDial(t, addr)
	mask := &[4]byte{9, 8, 7, 6}
	big := bytes.Repeat([]byte("0123456789"), 7000)
	for _, f := range []wsFrame{
		{Fin: true, Op: wsText, Payload: []byte("hello")},
		{Fin: true, Op: wsBinary, Payload: big},
		{Fin: true, Op: wsPing, Payload: []byte("p")},
	} {
		if _, err := c.Write(appendWSFrame(nil, f, mask)); err != nil {
			t.Fatal(err)
		}
		got, err := readWSFrame(br, false)
		if err != nil {
			t.Fatal(err)
		}
		wantOp := f.Op
		if f.Op == wsPing {
			wantOp = wsPong
		}
		if got.Op != wantOp || !got.Fin || !bytes.Equal(got.Payload, f.Payload) {
			t.Errorf("sent op %d (%d bytes), got op %d (%d bytes)", f.Op, len(f.Payload), got.Op, len(got.Payload))
		}
	}
	c.Write(appendWSFrame(nil, wsFrame{Fin: true, Op: wsClose, Payload: []byte{0x03, 0xe8}}, mask))
	got, err := readWSFrame(br, false)
	if err != nil || got.Op != wsClose || !bytes.Equal(got.Payload, []byte{0x03, 0xe8}) {
		t.Errorf("close: %+v %v", got, err)
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("after close: %v, want EOF", err)
	}

	// Not an upgrade: 400.
	if resp, body := get(t, "http://"+addr+"/ws", nil); resp.StatusCode != 400 {
		t.Errorf("GET /ws without upgrade: %d %s", resp.StatusCode, body)
	}
}

package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// A handler that writes more than its Content-Length gets
// http.ErrContentLength for the excess, as from net/http's server, and the
// answer on the wire keeps its framing.
func TestResponseContentLengthOverrun(t *testing.T) {
	var out bytes.Buffer
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	s := &Server{}
	s.once.Do(s.init)
	c := &clientConn{srv: s, nc: server, bw: bufio.NewWriter(&out)}
	w := &response{c: c, req: httptest.NewRequest("GET", "/", nil), h: http.Header{}, clen: -1}
	w.Header().Set("Content-Length", "3")
	if n, err := w.Write([]byte("ab")); n != 2 || err != nil {
		t.Fatalf("first write: %d, %v", n, err)
	}
	if n, err := w.Write([]byte("cd")); n != 0 || !errors.Is(err, http.ErrContentLength) {
		t.Fatalf("write past Content-Length: %d, %v; want 0, ErrContentLength", n, err)
	}
	w.Write([]byte("c"))
	w.finish()
	res, err := http.ReadResponse(bufio.NewReader(&out), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	if err != nil || string(body) != "abc" {
		t.Errorf("body %q, %v; want abc", body, err)
	}
}

// HTTP/1.0 clients get no chunks: a body of unknown length ends with the
// connection; HEAD, 204 and 304 carry no body whatever is written.
func TestResponseFraming(t *testing.T) {
	for _, tc := range []struct {
		name, method string
		minor, code  int
		write        string
		want         string // what follows the head
		keep         bool
	}{
		{"HTTP/1.0, unknown length", "GET", 0, 200, string(bytes.Repeat([]byte("x"), 5000)), string(bytes.Repeat([]byte("x"), 5000)), false},
		{"HTTP/1.1, unknown length", "GET", 1, 200, string(bytes.Repeat([]byte("x"), 5000)), "1388\r\n" + string(bytes.Repeat([]byte("x"), 5000)) + "\r\n0\r\n\r\n", true},
		{"HEAD", "HEAD", 1, 200, "body", "", true},
		{"204", "GET", 1, 204, "body", "", true},
		{"304", "GET", 1, 304, "body", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			_, server := net.Pipe()
			defer server.Close()
			s := &Server{}
			s.once.Do(s.init)
			c := &clientConn{srv: s, nc: server, bw: bufio.NewWriter(&out)}
			req := httptest.NewRequest(tc.method, "/", nil)
			req.ProtoMinor = tc.minor
			w := &response{c: c, req: req, h: http.Header{}, clen: -1}
			w.WriteHeader(tc.code)
			w.Write([]byte(tc.write))
			keep := w.finish() && !w.close
			_, rest, _ := bytes.Cut(out.Bytes(), crlfCRLF)
			if string(rest) != tc.want || keep != tc.keep {
				t.Errorf("after the head %q (keep %v), want %q (keep %v)", rest, keep, tc.want, tc.keep)
			}
		})
	}
}

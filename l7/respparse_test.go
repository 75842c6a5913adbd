package l7

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

const (
	nginxHead = "HTTP/1.1 200 OK\r\nServer: nginx/1.27.4\r\nDate: Mon, 02 Jun 2025 10:00:00 GMT\r\n" +
		"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
	goHead = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n" +
		"Date: Mon, 02 Jun 2025 10:00:00 GMT\r\nContent-Length: 5\r\n\r\n"
	nodeHead = "HTTP/1.1 404 Not Found\r\nX-Powered-By: Express\r\nContent-Type: text/html; charset=utf-8\r\n" +
		"Content-Length: 5\r\nETag: W/\"5-abc\"\r\nDate: Mon, 02 Jun 2025 10:00:00 GMT\r\n" +
		"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n"
)

var nginxAnswer = nginxHead + strings.Repeat("x", 100)

// chunkedReader returns its first n bytes on the first Read, then the rest:
// a head that arrives in two segments.
type chunkedReader struct {
	b     []byte
	first int
}

func (r *chunkedReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := len(r.b)
	if r.first > 0 {
		n, r.first = min(n, r.first), 0
	}
	n = copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

func TestReadSimpleResponse(t *testing.T) {
	for _, tc := range []struct {
		name, in, method string
		status           string
		code             int
		clen             int64
		close            bool
		header           http.Header
		body             string // "" with noBody: http.NoBody
		noBody           bool
	}{
		{name: "nginx", in: nginxAnswer, status: "200 OK", code: 200, clen: 100,
			header: http.Header{"Server": {"nginx/1.27.4"}, "Date": {"Mon, 02 Jun 2025 10:00:00 GMT"},
				"Content-Type": {"text/plain"}, "Content-Length": {"100"}, "Connection": {"keep-alive"}},
			body: strings.Repeat("x", 100)},
		{name: "go", in: goHead + "hello" + "HTTP/1.1 200 OK\r\n", status: "200 OK", code: 200, clen: 5,
			header: http.Header{"Content-Type": {"text/plain; charset=utf-8"},
				"Date": {"Mon, 02 Jun 2025 10:00:00 GMT"}, "Content-Length": {"5"}},
			body: "hello"},
		{name: "node", in: nodeHead + "nope!", status: "404 Not Found", code: 404, clen: 5,
			header: http.Header{"X-Powered-By": {"Express"}, "Content-Type": {"text/html; charset=utf-8"},
				"Content-Length": {"5"}, "Etag": {`W/"5-abc"`}, "Date": {"Mon, 02 Jun 2025 10:00:00 GMT"},
				"Connection": {"keep-alive"}, "Keep-Alive": {"timeout=5"}},
			body: "nope!"},
		{name: "connection close is taken out of the header",
			in:     "HTTP/1.1 503 Service Unavailable\r\nConnection: keep-alive, CLOSE\r\nContent-Length: 2\r\n\r\nno",
			status: "503 Service Unavailable", code: 503, clen: 2, close: true,
			header: http.Header{"Content-Length": {"2"}}, body: "no"},
		{name: "lower-case names canonicalized",
			in:     "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nx-request-id: a\r\nWWW-authenticate: b\r\n\r\nz",
			status: "200 OK", code: 200, clen: 1,
			header: http.Header{"Content-Length": {"1"}, "X-Request-Id": {"a"}, "Www-Authenticate": {"b"}},
			body:   "z"},
		{name: "no reason", in: "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", status: "200", code: 200,
			header: http.Header{"Content-Length": {"0"}}, noBody: true},
		{name: "empty reason", in: "HTTP/1.1 500 \r\nContent-Length: 0\r\n\r\n", status: "500 ", code: 500,
			header: http.Header{"Content-Length": {"0"}}, noBody: true},
		{name: "HEAD keeps the length", in: "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", method: "HEAD",
			status: "200 OK", code: 200, clen: 1234, header: http.Header{"Content-Length": {"1234"}}, noBody: true},
		{name: "HEAD without length", in: "HTTP/1.1 200 OK\r\nServer: s\r\n\r\n", method: "HEAD",
			status: "200 OK", code: 200, clen: -1, header: http.Header{"Server": {"s"}}, noBody: true},
		{name: "204 without length", in: "HTTP/1.1 204 No Content\r\n\r\n", status: "204 No Content", code: 204,
			header: http.Header{}, noBody: true},
		{name: "304 with a length", in: "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
			status: "304 Not Modified", code: 304, header: http.Header{"Content-Length": {"50"}}, noBody: true},
		{name: "pragma no-cache adds cache-control",
			in: "HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 0\r\n\r\n", status: "200 OK", code: 200,
			header: http.Header{"Pragma": {"no-cache"}, "Cache-Control": {"no-cache"}, "Content-Length": {"0"}},
			noBody: true},
		{name: "repeated header",
			in:     "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nContent-Length: 1\r\nSet-Cookie: b=2\r\n\r\nz",
			status: "200 OK", code: 200, clen: 1,
			header: http.Header{"Set-Cookie": {"a=1", "b=2"}, "Content-Length": {"1"}}, body: "z"},
		{name: "blanks around values, obs-text, empty value",
			in:     "HTTP/1.1 200 OK\r\nX-A:\t a b \t\r\nX-B:caf\xc3\xa9\r\nX-C:\r\nContent-Length: 007\r\n\r\n1234567",
			status: "200 OK", code: 200, clen: 7,
			header: http.Header{"X-A": {"a b"}, "X-B": {"caf\xc3\xa9"}, "X-C": {""}, "Content-Length": {"007"}},
			body:   "1234567"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &http.Request{Method: tc.method}
			if req.Method == "" {
				req.Method = "GET"
			}
			br := bufio.NewReader(strings.NewReader(tc.in))
			res, ok, err := readSimpleResponse(br, req)
			if !ok || err != nil {
				t.Fatalf("not read (%v), want it read in place", err)
			}
			if res.Status != tc.status || res.StatusCode != tc.code || res.ContentLength != tc.clen || res.Close != tc.close {
				t.Errorf("got %q %d length %d close %v, want %q %d length %d close %v",
					res.Status, res.StatusCode, res.ContentLength, res.Close, tc.status, tc.code, tc.clen, tc.close)
			}
			if !reflect.DeepEqual(res.Header, tc.header) {
				t.Errorf("header %v, want %v", res.Header, tc.header)
			}
			if (res.Body == http.NoBody) != tc.noBody {
				t.Errorf("body is NoBody: %v, want %v", res.Body == http.NoBody, tc.noBody)
			}
			want, err := http.ReadResponse(bufio.NewReader(strings.NewReader(tc.in)), req)
			mustf(t, err, "net/http")
			if b := compareAnswers(t, res, want); string(b) != tc.body {
				t.Errorf("body %q, want %q", b, tc.body)
			}
		})
	}
}

func TestReadSimpleResponseFallsBack(t *testing.T) {
	for _, tc := range []struct{ name, in, method string }{
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", ""},
		{"interim", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", ""},
		{"early hints", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", ""},
		{"switching protocols", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", ""},
		{"status 600", "HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n", ""},
		{"status 199", "HTTP/1.1 199 X\r\nContent-Length: 0\r\n\r\n", ""},
		{"no space after the code", "HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n", ""},
		{"two spaces before the code", "HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n", ""},
		{"short code", "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", ""},
		{"signed code", "HTTP/1.1 +20 OK\r\nContent-Length: 0\r\n\r\n", ""},
		{"lower-case proto", "http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", ""},
		{"control in the reason", "HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n", ""},
		{"obs-text in the reason", "HTTP/1.1 200 \xc3\xa9\r\nContent-Length: 0\r\n\r\n", ""},
		{"space before the colon", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", ""},
		{"name not a token", "HTTP/1.1 200 OK\r\nX(y): 1\r\nContent-Length: 0\r\n\r\n", ""},
		{"empty name", "HTTP/1.1 200 OK\r\n: 1\r\nContent-Length: 0\r\n\r\n", ""},
		{"no colon", "HTTP/1.1 200 OK\r\nX-A\r\nContent-Length: 0\r\n\r\n", ""},
		{"obs-fold", "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n", ""},
		{"tab fold", "HTTP/1.1 200 OK\r\nX-A: 1\r\n\t2\r\nContent-Length: 0\r\n\r\n", ""},
		{"bare LF line end", "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", ""},
		{"bare LF head end", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n\r\n\r\n", ""},
		{"bare LF in a value", "HTTP/1.1 200 OK\r\nX-A: 1\n2\r\nContent-Length: 0\r\n\r\n", ""},
		{"CR in a value", "HTTP/1.1 200 OK\r\nX-A: 1\r2\r\nContent-Length: 0\r\n\r\n", ""},
		{"NUL in a value", "HTTP/1.1 200 OK\r\nX-A: 1\x002\r\nContent-Length: 0\r\n\r\n", ""},
		{"DEL in a value", "HTTP/1.1 200 OK\r\nX-A: 1\x7f\r\nContent-Length: 0\r\n\r\n", ""},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", ""},
		{"identity encoding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 1\r\n\r\na", ""},
		{"encoding and length", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", ""},
		{"two equal lengths", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na", ""},
		{"two lengths", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", ""},
		{"length list", "HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\na", ""},
		{"empty length", "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", ""},
		{"negative length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", ""},
		{"plus length", "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\na", ""},
		{"hex length", "HTTP/1.1 200 OK\r\nContent-Length: 0x1\r\n\r\na", ""},
		{"huge length", "HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n", ""},
		{"bad length on HEAD", "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "HEAD"},
		{"bad length on 304", "HTTP/1.1 304 Not Modified\r\nContent-Length: x\r\n\r\n", ""},
		{"trailer", "HTTP/1.1 200 OK\r\nTrailer: X-T\r\nContent-Length: 1\r\n\r\na", ""},
		{"body to EOF", "HTTP/1.1 200 OK\r\nServer: s\r\n\r\nuntil close", ""},
		{"non-ASCII connection", "HTTP/1.1 200 OK\r\nConnection: clo\xc5\xbfe\r\nContent-Length: 0\r\n\r\n", ""},
		{"head not in yet", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = "GET"
			}
			checkFallback(t, []byte(tc.in), &http.Request{Method: method}, 0)
		})
	}
	t.Run("head split over two reads", func(t *testing.T) {
		for _, n := range []int{1, 20, len(nginxHead) - 1} {
			checkFallback(t, []byte(nginxAnswer), &http.Request{Method: "GET"}, n)
		}
	})
}

// checkFallback checks that readSimpleResponse leaves in (arriving in two
// reads, of first bytes then the rest, with first > 0) to
// http.ReadResponse, untouched.
func checkFallback(t *testing.T, in []byte, req *http.Request, first int) {
	t.Helper()
	br := bufio.NewReader(&chunkedReader{b: in, first: first})
	if _, ok, err := readSimpleResponse(br, req); ok {
		t.Fatalf("%q read in place (%v), want it left to net/http", in, err)
	}
	res, err := http.ReadResponse(br, req)
	want, werr := http.ReadResponse(bufio.NewReader(bytes.NewReader(in)), req)
	if !sameError(err, werr) {
		t.Fatalf("%q after the attempt: %v, want %v", in, err, werr)
	}
	if err == nil {
		compareAnswers(t, res, want)
	}
}

// compareAnswers fails t unless got and want are the same answer, body
// included, and returns got's body.
func compareAnswers(t *testing.T, got, want *http.Response) []byte {
	t.Helper()
	if got.Status != want.Status || got.StatusCode != want.StatusCode || got.Proto != want.Proto ||
		got.ProtoMajor != want.ProtoMajor || got.ProtoMinor != want.ProtoMinor {
		t.Errorf("status line %q %d %q %d.%d, want %q %d %q %d.%d", got.Status, got.StatusCode, got.Proto,
			got.ProtoMajor, got.ProtoMinor, want.Status, want.StatusCode, want.Proto, want.ProtoMajor, want.ProtoMinor)
	}
	if !reflect.DeepEqual(got.Header, want.Header) {
		t.Errorf("header %#v, want %#v", got.Header, want.Header)
	}
	if got.ContentLength != want.ContentLength || got.Close != want.Close || got.Uncompressed != want.Uncompressed ||
		!reflect.DeepEqual(got.TransferEncoding, want.TransferEncoding) || !reflect.DeepEqual(got.Trailer, want.Trailer) {
		t.Errorf("length %d close %v uncompressed %v encoding %q trailer %v, want %d %v %v %q %v",
			got.ContentLength, got.Close, got.Uncompressed, got.TransferEncoding, got.Trailer,
			want.ContentLength, want.Close, want.Uncompressed, want.TransferEncoding, want.Trailer)
	}
	if got.Request != want.Request || got.TLS != nil {
		t.Errorf("request %p TLS %v, want %p and none", got.Request, got.TLS, want.Request)
	}
	if (got.Body == http.NoBody) != (want.Body == http.NoBody) {
		t.Errorf("body NoBody: %v, want %v", got.Body == http.NoBody, want.Body == http.NoBody)
	}
	gb, gerr := io.ReadAll(got.Body)
	wb, werr := io.ReadAll(want.Body)
	if !bytes.Equal(gb, wb) || !sameError(gerr, werr) {
		t.Errorf("body %q, %v; want %q, %v", gb, gerr, wb, werr)
	}
	return gb
}

// sameError: the same sentinel, or errors that read the same.
func sameError(a, b error) bool {
	return a == b || a != nil && b != nil && a.Error() == b.Error()
}

// errThenEOF fails its first read with err, then reads as closed.
type errThenEOF struct {
	err   error
	reads int
}

func (r *errThenEOF) Read([]byte) (int, error) {
	r.reads++
	if r.reads == 1 {
		return 0, r.err
	}
	return 0, io.EOF
}

func TestReadSimpleResponseReadError(t *testing.T) {
	reset := errors.New("connection reset by peer")
	for _, tc := range []struct {
		name string
		err  error
	}{{"closed", io.EOF}, {"reset", reset}} {
		t.Run(tc.name, func(t *testing.T) {
			req := &http.Request{Method: "GET"}
			_, werr := http.ReadResponse(bufio.NewReader(&errThenEOF{err: tc.err}), req)
			r := &errThenEOF{err: tc.err}
			res, ok, err := readSimpleResponse(bufio.NewReader(r), req)
			if !ok || res != nil || err != werr || r.reads != 1 {
				t.Errorf("got %v, %v, %v after %d reads; want the error net/http gives, %v, after one read",
					res, ok, err, r.reads, werr)
			}
		})
	}
}

func TestLengthBody(t *testing.T) {
	t.Run("cut short", func(t *testing.T) {
		br := bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
		res, ok, _ := readSimpleResponse(br, &http.Request{Method: "GET"})
		if !ok {
			t.Fatal("not read")
		}
		b, err := io.ReadAll(res.Body)
		if string(b) != "abc" || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("got %q, %v; want abc, unexpected EOF", b, err)
		}
		if n, err := res.Body.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Errorf("read after the end: %d, %v; want 0, EOF", n, err)
		}
	})
	t.Run("EOF with the last bytes", func(t *testing.T) {
		br := bufio.NewReader(strings.NewReader(goHead + "hello"))
		res, _, _ := readSimpleResponse(br, &http.Request{Method: "GET"})
		p := make([]byte, 16)
		if n, err := res.Body.Read(p); n != 5 || err != io.EOF {
			t.Errorf("got %d, %v; want 5, EOF", n, err)
		}
	})
	t.Run("close drains for the next answer", func(t *testing.T) {
		br := bufio.NewReader(strings.NewReader(goHead + "hello" + nodeHead + "nope!"))
		req := &http.Request{Method: "GET"}
		res, _, _ := readSimpleResponse(br, req)
		res.Body.Read(make([]byte, 2))
		if err := res.Body.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := res.Body.Read(make([]byte, 1)); err != http.ErrBodyReadAfterClose {
			t.Errorf("read after close: %v, want %v", err, http.ErrBodyReadAfterClose)
		}
		if res, ok, _ := readSimpleResponse(br, req); !ok || res.StatusCode != 404 {
			t.Errorf("next answer not read (%v)", ok)
		}
	})
	t.Run("close does not drain a closing connection", func(t *testing.T) {
		br := bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"))
		res, _, _ := readSimpleResponse(br, &http.Request{Method: "GET"})
		res.Body.Close()
		if br.Buffered() != 3 {
			t.Errorf("%d bytes left, want the body's 3", br.Buffered())
		}
	})
}

func TestReadSimpleResponseAllocs(t *testing.T) {
	in := []byte(nginxAnswer)
	r := bytes.NewReader(in)
	br := bufio.NewReader(r)
	req := &http.Request{Method: "GET"}
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(in)
		br.Reset(r)
		if _, ok, _ := readSimpleResponse(br, req); !ok {
			t.Fatal("not read")
		}
	})
	if allocs > 5 {
		t.Errorf("%v allocations per answer, want at most 5", allocs)
	}
}

// FuzzSimpleResponse checks readSimpleResponse against http.ReadResponse:
// whatever it reads in place, net/http reads the same way, body and what
// follows it included; whatever it leaves, net/http still reads as if it
// had not been tried. split > 0 has the input arrive in two reads. Each
// input also goes framed as header lines (see framed): mutated whole
// answers seldom stay simple, framed lines more often do, which keeps the
// comparison busy.
func FuzzSimpleResponse(f *testing.F) {
	for _, s := range []string{
		nginxAnswer,
		goHead + "hello",
		nodeHead + "nope!",
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nEtag: \"x\"\r\nContent-Length: 12\r\n\r\n",
		"HTTP/1.1 200\r\nconnection: Close\r\ncontent-length: 3\r\n\r\nabcdef",
		"HTTP/1.1 301 Moved Permanently\r\nLocation: /a\r\nContent-Length: 0\r\nPragma: no-cache\r\n\r\n",
		"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-A:\t a \t\r\nX-B:\xff\r\nContent-Length: 01\r\n\r\nz",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
		"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nServer: s\r\n\r\nuntil close",
		// Header lines, to be framed.
		"Server: nginx\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc",
		"content-type: text/plain\r\nCONTENT-LENGTH: 2\r\nConnection: Keep-Alive, close\r\n\r\nab",
		"Pragma: no-cache\r\nCache-Control: max-age=0\r\nContent-Length: 1\r\nX-Y:\x80\r\n\r\n",
		"A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 8\r\nA: 9\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add([]byte(s), uint16(0))
		f.Add([]byte(s), uint16(len(s)/2))
	}
	f.Fuzz(func(t *testing.T, in []byte, split uint16) {
		for _, method := range []string{"GET", "HEAD"} {
			checkSimpleResponse(t, in, &http.Request{Method: method}, int(split))
			checkSimpleResponse(t, framed(in, split), &http.Request{Method: method}, 0)
		}
	})
}

// framed makes an answer of in's lines: a status line picked by pick, in's
// lines each ended by CRLF, a blank line and a body.
func framed(in []byte, pick uint16) []byte {
	statuses := []string{"200 OK", "204 No Content", "304 Not Modified", "404 Not Found"}
	b := []byte("HTTP/1.1 " + statuses[pick%4] + "\r\n")
	for line := range bytes.Lines(in) {
		b = append(append(b, bytes.TrimRight(line, "\r\n")...), "\r\n"...)
	}
	return append(b, "\r\n0123456789"...)
}

// checkSimpleResponse checks readSimpleResponse against http.ReadResponse
// on in, arriving in two reads with first > 0.
func checkSimpleResponse(t *testing.T, in []byte, req *http.Request, first int) {
	t.Helper()
	br := bufio.NewReader(&chunkedReader{b: in, first: first})
	got, ok, err := readSimpleResponse(br, req)
	if !ok {
		checkFallback(t, in, req, first)
		return
	}
	wbr := bufio.NewReader(bytes.NewReader(in))
	want, werr := http.ReadResponse(wbr, req)
	if err != nil || werr != nil {
		if !sameError(err, werr) {
			t.Fatalf("%s %q: %v, net/http: %v", req.Method, in, err, werr)
		}
		return
	}
	compareAnswers(t, got, want)
	rest, _ := io.ReadAll(br)
	wrest, _ := io.ReadAll(wbr)
	if !bytes.Equal(rest, wrest) {
		t.Errorf("%q after the answer, want %q", rest, wrest)
	}
	if t.Failed() {
		t.Fatalf("%s %q", req.Method, in)
	}
}

// BenchmarkReadResponse reads an nginx answer with a 100-byte body.
func BenchmarkReadResponse(b *testing.B) {
	in := []byte(nginxAnswer)
	for _, bc := range []struct {
		name string
		read func(*bufio.Reader, *http.Request) (*http.Response, error)
	}{
		{"simple", func(br *bufio.Reader, req *http.Request) (*http.Response, error) {
			if res, ok, err := readSimpleResponse(br, req); ok {
				return res, err
			}
			return nil, errors.New("not read in place")
		}},
		{"net-http", http.ReadResponse},
	} {
		b.Run(bc.name, func(b *testing.B) {
			r := bytes.NewReader(in)
			br := bufio.NewReader(r)
			req := &http.Request{Method: "GET"}
			var buf [128]byte
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(in)
				br.Reset(r)
				res, err := bc.read(br, req)
				if err != nil {
					b.Fatal(err)
				}
				for err == nil {
					_, err = res.Body.Read(buf[:])
				}
				if err != io.EOF {
					b.Fatal(err)
				}
			}
		})
	}
}

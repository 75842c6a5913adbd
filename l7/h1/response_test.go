package h1

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

// splitReader returns its first n bytes on the first Read, then the rest:
// an answer that arrives in two segments.
type splitReader struct {
	b     []byte
	first int
}

func (r *splitReader) Read(p []byte) (int, error) {
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

// Answers read as net/http reads them: the same answer, body and what
// follows it included.
func TestReadResponseAsNetHTTP(t *testing.T) {
	for _, tc := range []struct {
		name, in, method string
	}{
		{"nginx", nginxAnswer, "GET"},
		{"go", goHead + "hello", "GET"},
		{"node 404", nodeHead + "nope!", "GET"},
		{"two answers", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", "GET"},
		{"304 with length", "HTTP/1.1 304 Not Modified\r\nEtag: \"x\"\r\nContent-Length: 12\r\n\r\n", "GET"},
		{"HEAD with length", "HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n", "HEAD"},
		{"no reason, lower case", "HTTP/1.1 200\r\nconnection: Close\r\ncontent-length: 3\r\n\r\nabcdef", "GET"},
		{"pragma", "HTTP/1.1 301 Moved Permanently\r\nLocation: /a\r\nContent-Length: 0\r\nPragma: no-cache\r\n\r\n", "GET"},
		{"repeated field", "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 1\r\n\r\nz", "GET"},
		{"blanks, obs-text", "HTTP/1.1 200 OK\r\nX-A:\t a \t\r\nX-B:\xff\r\nContent-Length: 01\r\n\r\nz", "GET"},
		{"same length twice", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab", "GET"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n3;ext=1\r\nbcd\r\n0\r\n\r\nnext", "GET"},
		{"chunked, trailers", "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: Chunked\r\n\r\n1\r\na\r\n0\r\nX-Sum: 1\r\n\r\n", "GET"},
		{"HTTP/1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", "GET"},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nz", "GET"},
		{"until close", "HTTP/1.1 200 OK\r\nServer: s\r\n\r\nuntil close", "GET"},
		{"100 continue", "HTTP/1.1 100 Continue\r\n\r\n", "GET"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &http.Request{Method: tc.method}
			for _, first := range []int{0, 5, len(tc.in) / 2} {
				checkAgainstNetHTTP(t, []byte(tc.in), req, first, true)
			}
		})
	}
}

// Answers whose framing or syntax is not certain: refused, whatever
// net/http would make of them.
func TestReadResponseRejects(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"length and chunked", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"chunked and length", "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"},
		{"gzip coding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"},
		{"chunked twice", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"identity", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n"},
		{"chunked in HTTP/1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"space before colon", "HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc"},
		{"folded line", "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n"},
		{"bare LF", "HTTP/1.1 200 OK\nContent-Length: 0\n\n"},
		{"bare LF in a line", "HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\nContent-Length: 0\r\n\r\n"},
		{"bare CR", "HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2\r\nContent-Length: 0\r\n\r\n"},
		{"NUL in value", "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n"},
		{"lengths differ", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"},
		{"length list", "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc"},
		{"signed length", "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc"},
		{"empty length", "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n"},
		{"HTTP/2.0", "HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{"HTTP/1.2", "HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{"status 99", "HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n"},
		{"status 600", "HTTP/1.1 600 High\r\nContent-Length: 0\r\n\r\n"},
		{"two-digit status", "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n"},
		{"leading blank line", "\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{"not HTTP", "SSH-2.0-OpenSSH_9.2\r\n\r\n"},
		{"trailer declares length", "HTTP/1.1 200 OK\r\nTrailer: Content-Length\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"head too large", "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("b", DefaultMaxResponseHead) + "\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, first := range []int{0, 7} {
				br := bufio.NewReader(&splitReader{b: []byte(tc.in), first: first})
				res, err := ReadResponse(br, &http.Request{Method: "GET"}, 0)
				if !errors.Is(err, ErrBadResponse) {
					t.Fatalf("%q: %v, %v; want ErrBadResponse", tc.in, res, err)
				}
			}
		})
	}
}

// Bodies that break their framing fail as ErrBadResponse, or as a short
// read when the connection ends early.
func TestReadResponseBadBodies(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     error
	}{
		{"chunk size not hex", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", ErrBadResponse},
		{"chunk size too long", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000000023\r\n", ErrBadResponse},
		{"chunk without CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n", ErrBadResponse},
		{"bad trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX A: 1\r\n\r\n", ErrBadResponse},
		{"chunked cut short", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", io.ErrUnexpectedEOF},
		{"length cut short", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := ReadResponse(bufio.NewReader(strings.NewReader(tc.in)), &http.Request{Method: "GET"}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadAll(res.Body); !errors.Is(err, tc.want) {
				t.Errorf("body: %v, want %v", err, tc.want)
			}
		})
	}
}

// A head longer than the reader's buffer is gathered; the body follows.
func TestReadResponseLongHead(t *testing.T) {
	in := "HTTP/1.1 200 OK\r\nSet-Cookie: " + strings.Repeat("c", 10000) + "\r\nContent-Length: 3\r\n\r\nabcNEXT"
	br := bufio.NewReaderSize(strings.NewReader(in), 4096)
	res, err := ReadResponse(br, &http.Request{Method: "GET"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	if len(res.Header.Get("Set-Cookie")) != 10000 || string(b) != "abc" {
		t.Errorf("cookie %d bytes, body %q", len(res.Header.Get("Set-Cookie")), b)
	}
	if rest, _ := io.ReadAll(br); string(rest) != "NEXT" {
		t.Errorf("%q after the answer, want NEXT", rest)
	}
}

func TestReadResponseReadError(t *testing.T) {
	for _, in := range []string{"", "HTTP/1.1 200 OK\r\nContent-Le"} {
		_, err := ReadResponse(bufio.NewReader(strings.NewReader(in)), &http.Request{Method: "GET"}, 0)
		if err != io.ErrUnexpectedEOF {
			t.Errorf("%q: %v, want unexpected EOF", in, err)
		}
	}
}

func TestReadResponseAllocs(t *testing.T) {
	in := []byte(nginxAnswer)
	r := bytes.NewReader(in)
	br := bufio.NewReader(r)
	req := &http.Request{Method: "GET"}
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(in)
		br.Reset(r)
		if _, err := ReadResponse(br, req, 0); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 5 {
		t.Errorf("%v allocations per answer, want at most 5", allocs)
	}
}

// FuzzReadResponse checks ReadResponse against http.ReadResponse: whatever
// it accepts, net/http reads the same way, body and what follows it
// included (net/http is the oracle; ReadResponse may refuse more). split >
// 0 has the input arrive in two reads. Each input also goes framed as
// header lines (see framed), which keeps the comparison busy.
func FuzzReadResponse(f *testing.F) {
	for _, s := range []string{
		nginxAnswer,
		goHead + "hello",
		nodeHead + "nope!",
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nEtag: \"x\"\r\nContent-Length: 12\r\n\r\n",
		"HTTP/1.1 200\r\nconnection: Close\r\ncontent-length: 3\r\n\r\nabcdef",
		"HTTP/1.1 200 OK\r\nX-A:\t a \t\r\nX-B:\xff\r\nContent-Length: 01\r\n\r\nz",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTrailer: A, B\r\nTransfer-Encoding: chunked\r\n\r\n1;x=\"y\"\r\na\r\n0\r\nA: 1\r\nB: 2\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nServer: s\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"Server: nginx\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc",
		"content-type: text/plain\r\nCONTENT-LENGTH: 2\r\nConnection: Keep-Alive, close\r\n\r\nab",
		"Transfer-Encoding: chunked\r\nTrailer: X\r\n\r\n2\r\nab\r\n0\r\nX: y\r\n\r\n",
	} {
		f.Add([]byte(s), uint16(0))
		f.Add([]byte(s), uint16(len(s)/2))
	}
	f.Fuzz(func(t *testing.T, in []byte, split uint16) {
		for _, method := range []string{"GET", "HEAD"} {
			checkAgainstNetHTTP(t, in, &http.Request{Method: method}, int(split), false)
			checkAgainstNetHTTP(t, framed(in, split), &http.Request{Method: method}, 0, false)
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

// checkAgainstNetHTTP: if ReadResponse reads in (or must, with mustRead),
// http.ReadResponse reads the same answer, body, trailers and rest.
func checkAgainstNetHTTP(t *testing.T, in []byte, req *http.Request, first int, mustRead bool) {
	t.Helper()
	br := bufio.NewReader(&splitReader{b: in, first: first})
	got, err := ReadResponse(br, req, 0)
	if err != nil {
		if mustRead {
			t.Fatalf("%q: %v", in, err)
		}
		return
	}
	wbr := bufio.NewReader(bytes.NewReader(in))
	want, werr := http.ReadResponse(wbr, req)
	if werr != nil {
		t.Fatalf("%s %q read, net/http refuses it: %v", req.Method, in, werr)
	}
	if got.Status != want.Status || got.StatusCode != want.StatusCode || got.Proto != want.Proto ||
		got.ProtoMajor != want.ProtoMajor || got.ProtoMinor != want.ProtoMinor {
		t.Errorf("status line %q %d %q, want %q %d %q", got.Status, got.StatusCode, got.Proto, want.Status, want.StatusCode, want.Proto)
	}
	if !reflect.DeepEqual(got.Header, want.Header) {
		t.Errorf("header %#v, want %#v", got.Header, want.Header)
	}
	if got.ContentLength != want.ContentLength || got.Close != want.Close ||
		!reflect.DeepEqual(got.TransferEncoding, want.TransferEncoding) {
		t.Errorf("length %d close %v encoding %q, want %d %v %q", got.ContentLength, got.Close, got.TransferEncoding,
			want.ContentLength, want.Close, want.TransferEncoding)
	}
	if (got.Body == http.NoBody) != (want.Body == http.NoBody) {
		t.Errorf("body NoBody: %v, want %v", got.Body == http.NoBody, want.Body == http.NoBody)
	}
	gb, gerr := io.ReadAll(got.Body)
	wb, werr := io.ReadAll(want.Body)
	if !bytes.Equal(gb, wb) {
		t.Errorf("body %q, want %q", gb, wb)
	}
	if gerr == nil && werr != nil {
		t.Errorf("body read whole, net/http: %v", werr)
	}
	if gerr == nil && werr == nil {
		for _, k := range []string{"Host", "Content-Length", "Transfer-Encoding", "Trailer"} {
			delete(want.Trailer, k) // framing and routing fields are not taken from a trailer
		}
		if len(got.Trailer)+len(want.Trailer) > 0 && !reflect.DeepEqual(got.Trailer, want.Trailer) {
			t.Errorf("trailer %v, want %v", got.Trailer, want.Trailer)
		}
		rest, _ := io.ReadAll(br)
		wrest, _ := io.ReadAll(wbr)
		if !bytes.Equal(rest, wrest) {
			t.Errorf("%q after the answer, want %q", rest, wrest)
		}
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
		{"h1", func(br *bufio.Reader, req *http.Request) (*http.Response, error) { return ReadResponse(br, req, 0) }},
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

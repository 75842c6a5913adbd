package h1

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

var parseTmpl = (&http.Request{RemoteAddr: "198.18.0.1:40000"}).WithContext(context.Background())

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		name, head string
		status     int // 0: served
	}{
		{"minimal", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"wrk", "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", 0},
		{"browser", "GET /a/b.css?v=3&x=%20y HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0 (X11)\r\n" +
			"Accept: text/css,*/*;q=0.1\r\naccept-language: en-GB,en;q=0.5\r\nCookie: a=1; b=2\r\nConnection: keep-alive\r\n\r\n", 0},
		{"repeated field", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\nX-B: 3\r\n\r\n", 0},
		{"escaped path", "GET /a%2Fb/%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"path net/url escapes", "GET /it's(1)! HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"empty query", "GET /? HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"empty value and OWS", "DELETE /x HTTP/1.1\r\nHost:x\r\nX-Empty:\r\nX-T: \t v \t\r\n\r\n", 0},
		{"obs-text value", "GET / HTTP/1.1\r\nHost: x\r\nX-U: caf\xc3\xa9\r\n\r\n", 0},
		{"connection close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n", 0},
		{"close look-alike", "GET / HTTP/1.1\r\nHost: x\r\nConnection: clo\u017fe\r\n\r\n", 0},
		{"pragma", "GET / HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\n\r\n", 0},
		{"extension method", "PURGE /x HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"HTTP/1.0", "GET / HTTP/1.0\r\nHost: x\r\n\r\n", 0},
		{"HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", 0},
		{"HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0},
		{"asterisk", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n", 0},
		{"empty body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 0},
		{"chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 0},
		{"upgrade", "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 0},

		{"no Host", "GET / HTTP/1.1\r\nX: y\r\n\r\n", 400},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"bad Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  2\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n", 400},
		{"TE with space before colon", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", 400},
		{"no colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n", 400},
		{"control in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400},
		{"bare CR in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400},
		{"bad method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"double space", "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"control in target", "GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"non-ASCII target", "GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"asterisk for GET", "GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"lengths differ", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400},
		{"length list", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n", 400},
		{"negative length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400},
		{"HTTP/1.0 chunked", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"gzip coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
		{"chunked twice", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501},
		{"unknown Expect", "GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 417},
		{"HTTP/2.0 line", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
		{"HTTP/1.2", "GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505},
		{"lower-case version", "GET / http/1.1\r\nHost: x\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _, status, reason := parseRequest(tc.head, parseTmpl)
			if status != tc.status {
				t.Fatalf("status %d (%s), want %d", status, reason, tc.status)
			}
			if status == 0 {
				sameAsNetHTTP(t, []byte(tc.head), r)
			}
		})
	}
}

// Content-Length and Transfer-Encoding together: read as chunked, the
// length dropped, and the connection closes after the answer.
func TestParseRequestLengthAndChunked(t *testing.T) {
	r, f, status, _ := parseRequest("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", parseTmpl)
	if status != 0 || !f.chunked || r.ContentLength != -1 || !r.Close || r.Header["Content-Length"] != nil {
		t.Errorf("status %d, chunked %v, length %d, close %v, header %v", status, f.chunked, r.ContentLength, r.Close, r.Header)
	}
}

// sameAsNetHTTP fails t unless r is what http.ReadRequest makes of head,
// and net/http's server would serve it (it does not answer 400).
func sameAsNetHTTP(t *testing.T, head []byte, r *http.Request) {
	t.Helper()
	want, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		t.Fatalf("parsed %q, which http.ReadRequest refuses: %v", head, err)
	}
	for k, vv := range want.Header {
		for _, v := range vv {
			if !ValidValue(v) || !ValidToken(k) {
				t.Fatalf("parsed %q, which net/http's server refuses (field %q: %q)", head, k, v)
			}
		}
	}
	if want.URL.Host == "" && !reflect.DeepEqual(r.URL, want.URL) {
		t.Errorf("URL %#v, net/http %#v", r.URL, want.URL)
	}
	if want.URL.Host != "" && (r.URL.Path != want.URL.Path || r.URL.RawQuery != want.URL.RawQuery || r.Host != want.URL.Host) {
		t.Errorf("absolute form: URL %#v host %q, net/http %#v", r.URL, r.Host, want.URL)
	}
	if !reflect.DeepEqual(r.Header, want.Header) {
		t.Errorf("Header %q, net/http %q", r.Header, want.Header)
	}
	got := [...]any{r.Method, r.RequestURI, r.Proto, r.ProtoMajor, r.ProtoMinor, r.ContentLength, r.TransferEncoding}
	exp := [...]any{want.Method, want.RequestURI, want.Proto, want.ProtoMajor, want.ProtoMinor, want.ContentLength, want.TransferEncoding}
	if !reflect.DeepEqual(got, exp) {
		t.Errorf("fields %v, net/http %v", got, exp)
	}
	if want.URL.Host == "" && r.Host != want.Host {
		t.Errorf("Host %q, net/http %q", r.Host, want.Host)
	}
	// net/http decides closing in its server; an HTTP/1.1 request closes
	// on "close", an HTTP/1.0 one unless "keep-alive".
	if r.Close != (want.Close || want.ProtoMinor == 0 && !HasToken(want.Header["Connection"], "keep-alive")) {
		t.Errorf("Close %v", r.Close)
	}
	if r.RemoteAddr != parseTmpl.RemoteAddr || r.Context() != parseTmpl.Context() {
		t.Errorf("request does not carry the connection's address and context")
	}
}

// FuzzParseRequest: whatever parseRequest accepts, net/http reads the
// same way (net/http is the oracle; parseRequest may refuse more).
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a/b?c=d HTTP/1.1\r\nHost: example.com:80\r\nuser-agent: curl/8\r\nAccept: */*\r\n\r\n",
		"HEAD /%41 HTTP/1.1\r\nHost: [2001:db8::1]:80\r\nCookie: a=b\r\nCookie: c=d\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\nConnection: close\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET http://a.example/x?y HTTP/1.1\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		i := bytes.Index(in, crlfCRLF)
		if i < 0 || bareLF(in[:i+4]) {
			return // readHead refuses these before parsing
		}
		head := in[:i+4]
		r, f, status, _ := parseRequest(string(head), parseTmpl)
		if status != 0 {
			return
		}
		if f.chunked && bytes.Contains(bytes.ToLower(head), []byte("content-length")) {
			return // net/http keeps the length; parseRequest drops it and closes
		}
		sameAsNetHTTP(t, head, r)
		if strings.ContainsAny(r.Host, " \t\r\n") || strings.ContainsAny(r.URL.RequestURI(), " \t\r\n") {
			t.Errorf("Host %q, target %q", r.Host, r.URL.RequestURI())
		}
	})
}

func BenchmarkParseRequest(b *testing.B) {
	head := "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
	b.Run("parseRequest", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			parseRequest(head, parseTmpl)
		}
	})
	b.Run("http.ReadRequest", func(b *testing.B) {
		var r bytes.Reader
		br := bufio.NewReader(&r)
		b.ReportAllocs()
		for b.Loop() {
			r.Reset([]byte(head))
			br.Reset(&r)
			http.ReadRequest(br)
		}
	})
}

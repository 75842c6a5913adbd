package l7

import (
	"github.com/xlb-dev/xlb/l7/h1"

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
		fast       bool
	}{
		{"minimal", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", true},
		{"wrk", "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", true},
		{"browser", "GET /a/b.css?v=3&x=%20y HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0 (X11)\r\n" +
			"Accept: text/css,*/*;q=0.1\r\naccept-language: en-GB,en;q=0.5\r\nCookie: a=1; b=2\r\nConnection: keep-alive\r\n\r\n", true},
		{"repeated field", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\nX-B: 3\r\n\r\n", true},
		{"escaped path", "GET /a%2Fb/%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n", true},
		{"path net/url escapes", "GET /it's(1)! HTTP/1.1\r\nHost: x\r\n\r\n", true},
		{"empty query", "GET /? HTTP/1.1\r\nHost: x\r\n\r\n", true},
		{"empty value and OWS", "DELETE /x HTTP/1.1\r\nHost:x\r\nX-Empty:\r\nX-T: \t v \t\r\n\r\n", true},
		{"obs-text value", "GET / HTTP/1.1\r\nHost: x\r\nX-U: caf\xc3\xa9\r\n\r\n", true},
		{"connection close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n", true},
		{"close look-alike", "GET / HTTP/1.1\r\nHost: x\r\nConnection: clo\u017fe\r\n\r\n", true},
		{"pragma", "GET / HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\n\r\n", true},
		{"extension method", "PURGE /x HTTP/1.1\r\nHost: x\r\n\r\n", true},

		{"HTTP/1.0", "GET / HTTP/1.0\r\nHost: x\r\n\r\n", false},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\n", false},
		{"no Host", "GET / HTTP/1.1\r\nX: y\r\n\r\n", false},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false},
		{"bad Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", false},
		{"absolute form", "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"asterisk", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"CONNECT", "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", false},
		{"body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", false},
		{"chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"expect", "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n", false},
		{"upgrade", "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", false},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  2\r\n\r\n", false},
		{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n", false},
		{"no colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n", false},
		{"control in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", false},
		{"bare CR in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", false},
		{"bad method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"double space", "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"control in target", "GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, fast := parseRequest([]byte(tc.head), parseTmpl)
			if fast != tc.fast {
				t.Fatalf("fast = %v, want %v", fast, tc.fast)
			}
			if fast {
				sameAsNetHTTP(t, []byte(tc.head), r)
			}
		})
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
			if !h1.ValidValue(v) || !h1.ValidToken(k) {
				t.Fatalf("parsed %q, which net/http's server refuses (field %q: %q)", head, k, v)
			}
		}
	}
	if !reflect.DeepEqual(r.URL, want.URL) {
		t.Errorf("URL %#v, net/http %#v", r.URL, want.URL)
	}
	if !reflect.DeepEqual(r.Header, want.Header) {
		t.Errorf("Header %q, net/http %q", r.Header, want.Header)
	}
	got := [...]any{r.Method, r.RequestURI, r.Proto, r.ProtoMajor, r.ProtoMinor, r.Host, r.Close, r.ContentLength, r.TransferEncoding, r.Body}
	exp := [...]any{want.Method, want.RequestURI, want.Proto, want.ProtoMajor, want.ProtoMinor, want.Host, want.Close, want.ContentLength, want.TransferEncoding, want.Body}
	if !reflect.DeepEqual(got, exp) {
		t.Errorf("fields %v, net/http %v", got, exp)
	}
	if r.RemoteAddr != parseTmpl.RemoteAddr || r.Context() != parseTmpl.Context() {
		t.Errorf("request does not carry the connection's address and context")
	}
}

// FuzzParseRequest: whatever the fast path parses, net/http parses the same.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a/b?c=d HTTP/1.1\r\nHost: example.com:80\r\nuser-agent: curl/8\r\nAccept: */*\r\n\r\n",
		"HEAD /%41 HTTP/1.1\r\nHost: [2001:db8::1]:80\r\nCookie: a=b\r\nCookie: c=d\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\nConnection: close\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		i := bytes.Index(in, []byte("\r\n\r\n"))
		if i < 0 || bytes.Contains(in[:i], []byte("\n\n")) {
			return // readRequest hands these over before parsing
		}
		head := in[:i+4]
		if r, fast := parseRequest(head, parseTmpl); fast {
			sameAsNetHTTP(t, head, r)
			if strings.Contains(r.Host, " ") {
				t.Errorf("Host %q", r.Host)
			}
		}
	})
}

func BenchmarkParseRequest(b *testing.B) {
	head := []byte("GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n")
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
			r.Reset(head)
			br.Reset(&r)
			http.ReadRequest(br)
		}
	})
}

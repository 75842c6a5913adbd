package l7

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// dumpRequest answers with the request as the backend saw it: request line,
// Host and the sorted headers. Generated values are replaced by
// placeholders after their format is checked.
func dumpRequest(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	host := r.Host
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && host == la.String() {
		host = "<backend address>"
	}
	fmt.Fprintf(&b, "%s %s %s\nHost: %s\n", r.Method, r.RequestURI, r.Proto, host)
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := strings.Join(r.Header[k], " | ")
		switch {
		case k == "X-Timestamp":
			ms, err := strconv.ParseInt(v, 10, 64)
			if err != nil || time.Since(time.UnixMilli(ms)).Abs() > time.Minute {
				v = "BAD " + v
			} else {
				v = "<unix-ms>"
			}
		case k == "X-Request-Id" && uuidRE.MatchString(v):
			v = "<uuid>"
		}
		fmt.Fprintf(&b, "%s: %s\n", k, v)
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Write([]byte(b.String()))
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestRequestHeadersGolden checks the headers a backend receives, for
// requests written byte for byte, against testdata/request_headers.golden.
func TestRequestHeadersGolden(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(dumpRequest))
	h := newHarness(t)
	listen6 := netip.MustParseAddrPort("[::1]:1003")

	plain := svcConf("plain", listenA, be)
	trusted := svcConf("trusted", listenA, be)
	trusted.Hosts = []string{"trusted.example"}
	trusted.Headers.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}
	trusted.Headers.Forwarded = true
	trusted.Headers.XTimestamp = true
	rules := svcConf("rules", listenA, be)
	rules.Hosts = []string{"rules.example"}
	rules.Headers.RequestSet = map[string]string{"x-env": "prod", "Host": "internal.example", "User-Agent": "xlb-test"}
	rules.Headers.RequestAdd = map[string]string{"X-Tag": "added"}
	rules.Headers.RequestRemove = []string{"cookie", "X-Forwarded-Host"}
	v6 := svcConf("v6", listen6, be)
	v6.Headers.Forwarded = true
	h.update(plain, trusted, rules, v6)

	cases := []struct {
		name, listen, req string
	}{
		{"basic", listenA.String(), "GET /path/x?q=1&r=%2F HTTP/1.1\nHost: example.com\n" +
			"Authorization: Bearer secret\nCookie: a=b\nUser-Agent: curl/8\nAccept: */*\n" +
			"X-Request-Id: client-chosen-id\n\n"},
		{"generated request id, no user agent", listenA.String(), "GET / HTTP/1.1\nHost: example.com\n\n"},
		{"hop-by-hop", listenA.String(), "GET / HTTP/1.1\nHost: example.com\n" +
			"Connection: keep-alive, X-Secret, Upgrade, HTTP2-Settings\nX-Secret: s\nKeep-Alive: timeout=5\n" +
			"Proxy-Authorization: Basic eno=\nProxy-Connection: keep-alive\nTe: trailers, deflate\n" +
			"Upgrade: h2c\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\nX-Request-Id: hop\n\n"},
		{"untrusted peer: forwarding headers replaced", listenA.String(), "GET / HTTP/1.1\nHost: example.com:8080\n" +
			"X-Forwarded-For: 198.51.100.1\nX-Forwarded-For: 198.51.100.2\nX-Real-IP: 198.51.100.3\n" +
			"X-Forwarded-Host: evil.example\nX-Forwarded-Proto: https\nForwarded: for=198.51.100.4\n" +
			"X-Request-Id: untrusted\n\n"},
		{"trusted peer: chain extended", listenA.String(), "GET /t HTTP/1.1\nHost: trusted.example\n" +
			"X-Forwarded-For: 203.0.113.9, 10.1.2.3\nX-Forwarded-Host: public.example\nX-Forwarded-Proto: https\n" +
			"Forwarded: for=203.0.113.9;proto=https, for=\"10.1.2.3\"\nX-Request-Id: trusted\n\n"},
		{"trusted peer without forwarding headers", listenA.String(), "GET /t HTTP/1.1\nHost: trusted.example\n" +
			"X-Request-Id: trusted-direct\n\n"},
		{"rules", listenA.String(), "POST /r HTTP/1.1\nHost: rules.example\nContent-Length: 4\nContent-Type: text/plain\n" +
			"Cookie: session=1\nX-Tag: client\nX-Env: dev\nX-Request-Id: rules\n\nbody"},
		// No Host from the client: the backend's address, as net/http's
		// transport sends (nginx refuses an empty Host in HTTP/1.1).
		{"HTTP/1.0 without Host", listenA.String(), "GET /old HTTP/1.0\nX-Request-Id: old\n\n"},
		{"HTTP/1.0 without Host, with a body", listenA.String(), "POST /old HTTP/1.0\nContent-Length: 2\n" +
			"X-Request-Id: old-body\n\nhi"},
		{"ipv6 client", listen6.String(), "GET / HTTP/1.1\nHost: [::1]:1003\nX-Request-Id: v6\n\n"},
	}
	var golden bytes.Buffer
	for _, c := range cases {
		resp, body := rawRequest(t, h.real(netip.MustParseAddrPort(c.listen)), c.req)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d: %s", c.name, resp.StatusCode, body)
		}
		fmt.Fprintf(&golden, "== %s\n%s\n", c.name, body)
	}
	checkGolden(t, "request_headers.golden", golden.Bytes())
}

func TestResponseHeaders(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Connection", "X-Hop")
		hd.Set("X-Hop", "1")
		hd.Set("Keep-Alive", "timeout=1")
		hd.Set("X-Powered-By", "php")
		hd.Set("Server", "backend")
		hd.Add("Set-Cookie", "a=1")
		hd.Set("X-Backend", "b")
		w.WriteHeader(http.StatusTeapot)
		w.Write([]byte("teapot"))
	}))
	h := newHarness(t)
	c := svcConf("web", listenA, be)
	c.Headers.ResponseSet = map[string]string{"server": "xlb-test"}
	c.Headers.ResponseRemove = []string{"X-Powered-By"}
	c.Headers.ResponseAdd = map[string]string{"Set-Cookie": "b=2"}
	h.update(c)

	for _, tc := range []struct {
		name, reqID string
	}{{"kept id", "abc-123"}, {"generated id", ""}} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", h.url(listenA, "/"), nil)
			if tc.reqID != "" {
				req.Header.Set("X-Request-Id", tc.reqID)
			}
			resp, err := testClient(t).Do(req)
			mustf(t, err, "GET")
			resp.Body.Close()
			hd := resp.Header
			if resp.StatusCode != http.StatusTeapot {
				t.Errorf("status %d, want 418 passed through", resp.StatusCode)
			}
			for k, want := range map[string]string{
				"X-Backend": "b", "Server": "xlb-test", "X-Proxy": "xlb", "X-Hop": "", "Keep-Alive": "",
				"X-Powered-By": "", "Content-Length": "6",
			} {
				if got := hd.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if got := hd.Values("Set-Cookie"); !slices.Equal(got, []string{"a=1", "b=2"}) {
				t.Errorf("Set-Cookie = %q", got)
			}
			if rt := hd.Get("X-Response-Time"); !regexp.MustCompile(`^\d+(\.\d{1,2})?ms$`).MatchString(rt) {
				t.Errorf("X-Response-Time = %q", rt)
			}
			id := hd.Get("X-Request-Id")
			if tc.reqID != "" && id != tc.reqID || tc.reqID == "" && !uuidRE.MatchString(id) {
				t.Errorf("X-Request-Id = %q (sent %q)", id, tc.reqID)
			}
		})
	}
}

func TestClientFromXFF(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	peer := netip.MustParseAddr("10.0.0.1")
	for _, tc := range []struct {
		name string
		xff  []string
		want string
	}{
		{"single", []string{"203.0.113.1"}, "203.0.113.1"},
		{"rightmost untrusted wins", []string{"198.51.100.1, 203.0.113.1, 10.2.3.4"}, "203.0.113.1"},
		{"several header lines", []string{"198.51.100.1", "203.0.113.1", "10.2.3.4"}, "203.0.113.1"},
		{"all trusted: leftmost", []string{"10.9.9.9, 10.8.8.8"}, "10.9.9.9"},
		{"garbage stops at last trusted", []string{"203.0.113.1, nonsense, 10.2.3.4"}, "10.2.3.4"},
		{"garbage first", []string{"nonsense"}, "10.0.0.1"},
		{"ports and brackets", []string{"[2001:db8::5]:443, 203.0.113.7:8080"}, "203.0.113.7"},
		{"ipv6 trusted then v4", []string{"192.0.2.1, [2001:db8::5]"}, "192.0.2.1"},
		{"bare ipv6", []string{"2001:db8:1::1, 2001:db9::1"}, "2001:db9::1"},
		{"mapped v4 is unmapped", []string{"::ffff:203.0.113.9"}, "203.0.113.9"},
		{"empty elements", []string{" , 203.0.113.1 ,, "}, "203.0.113.1"},
		{"zone dropped", []string{"fe80::1%eth0"}, "fe80::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := clientFromXFF(tc.xff, trusted, peer); got.String() != tc.want {
				t.Errorf("clientFromXFF(%q) = %v, want %s", tc.xff, got, tc.want)
			}
		})
	}
}

func TestOrigin(t *testing.T) {
	hp, err := compileHeaders(HeaderRules{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	mustf(t, err, "compile")
	for _, tc := range []struct {
		name, remote string
		hdr          http.Header
		client       string
		trusted      bool
	}{
		{"untrusted peer ignores xff", "192.0.2.1:5555", http.Header{"X-Forwarded-For": {"203.0.113.1"}}, "192.0.2.1", false},
		{"trusted peer xff", "10.0.0.1:5555", http.Header{"X-Forwarded-For": {"203.0.113.1"}}, "203.0.113.1", true},
		{"xff wins over forwarded", "10.0.0.1:1", http.Header{"X-Forwarded-For": {"203.0.113.1"}, "Forwarded": {"for=198.51.100.1"}}, "203.0.113.1", true},
		{"forwarded", "10.0.0.1:1", http.Header{"Forwarded": {`for=198.51.100.1;proto=https, for="[2001:db8::1]:80";by=x`}}, "2001:db8::1", true},
		{"forwarded chain through trusted", "10.0.0.1:1", http.Header{"Forwarded": {`for=198.51.100.1, for=10.3.3.3`}}, "198.51.100.1", true},
		{"forwarded obfuscated stops", "10.0.0.1:1", http.Header{"Forwarded": {`for=198.51.100.1, for=_hidden, for=10.3.3.3`}}, "10.3.3.3", true},
		{"forwarded syntax error", "10.0.0.1:1", http.Header{"Forwarded": {`for=198.51.100.1;;=`}}, "10.0.0.1", true},
		{"mapped peer", "[::ffff:10.0.0.1]:1", http.Header{"X-Forwarded-For": {"203.0.113.1"}}, "203.0.113.1", true},
		{"no peer", "@", nil, "invalid IP", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := hp.origin(tc.remote, tc.hdr)
			if o.client.String() != tc.client || o.trusted != tc.trusted {
				t.Errorf("origin = client %v trusted %v, want %s %v", o.client, o.trusted, tc.client, tc.trusted)
			}
		})
	}
}

func TestForwardedFors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		ok   bool
	}{
		{`for=192.0.2.43`, []string{"192.0.2.43"}, true},
		{`for="[2001:db8:cafe::17]:4711"`, []string{"[2001:db8:cafe::17]:4711"}, true},
		{`for=192.0.2.60;proto=http;by=203.0.113.43`, []string{"192.0.2.60"}, true},
		{`for=192.0.2.43, for=198.51.100.17`, []string{"192.0.2.43", "198.51.100.17"}, true},
		{`proto=https, FOR=1.2.3.4`, []string{"", "1.2.3.4"}, true},
		{`for="a\"b"`, []string{`a"b`}, true},
		{`for=;`, nil, false},
		{`for="unterminated`, nil, false},
		{`=x`, nil, false},
		{`for=1.2.3.4 junk`, nil, false},
		{`host="a,b";for=1.2.3.4`, []string{"1.2.3.4"}, true},
		{` ; for=1.2.3.4 ; `, []string{"1.2.3.4"}, true},
	} {
		got, ok := forwardedFors([]string{tc.in}, nil)
		if ok != tc.ok || ok && !slices.Equal(got, tc.want) {
			t.Errorf("forwardedFors(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestForwardedElement(t *testing.T) {
	for _, tc := range []struct {
		peer, host, proto, want string
	}{
		{"192.0.2.1", "example.com", "http", "for=192.0.2.1;host=example.com;proto=http"},
		{"2001:db8::1", "example.com:8080", "https", `for="[2001:db8::1]";host="example.com:8080";proto=https`},
		{"", "", "http", "for=unknown;proto=http"},
		{"192.0.2.1", `we"ird\`, "http", `for=192.0.2.1;host="we\"ird\\";proto=http`},
	} {
		var peer netip.Addr
		if tc.peer != "" {
			peer = netip.MustParseAddr(tc.peer)
		}
		if got := string(appendForwardedElement(nil, peer, tc.host, tc.proto)); got != tc.want {
			t.Errorf("element(%s, %s) = %s, want %s", tc.peer, tc.host, got, tc.want)
		}
	}
}

func TestCompileHeadersErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		hr   HeaderRules
	}{
		{"bad name", HeaderRules{RequestSet: map[string]string{"a b": "x"}}},
		{"hop-by-hop", HeaderRules{RequestAdd: map[string]string{"Connection": "x"}}},
		{"framing", HeaderRules{ResponseSet: map[string]string{"content-length": "1"}}},
		{"control char", HeaderRules{ResponseAdd: map[string]string{"X-A": "a\r\nb"}}},
		{"host add", HeaderRules{RequestAdd: map[string]string{"Host": "x"}}},
		{"bad prefix", HeaderRules{TrustedProxies: []netip.Prefix{{}}}},
		{"bad proxy header", HeaderRules{ProxyHeader: "X:Y"}},
	} {
		if _, err := compileHeaders(tc.hr); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}

func TestFormatMillis(t *testing.T) {
	for d, want := range map[time.Duration]string{
		12 * time.Millisecond:       "12ms",
		420 * time.Microsecond:      "0.42ms",
		1500 * time.Millisecond:     "1500ms",
		12345 * time.Microsecond:    "12.35ms",
		3 * time.Microsecond:        "0ms",
		12*time.Millisecond + 1e3*5: "12.01ms",
	} {
		if got := formatMillis(d); got != want {
			t.Errorf("formatMillis(%v) = %q, want %q", d, got, want)
		}
	}
}

// FuzzClientAddr checks the trusted-proxy walk over arbitrary
// X-Forwarded-For and Forwarded values: no panic, an untrusted peer is the
// client whatever the headers say, the client is a valid address, and for
// X-Forwarded-For the result matches a naive reference implementation.
func FuzzClientAddr(f *testing.F) {
	f.Add("203.0.113.1, 10.0.0.2", `for=198.51.100.1;proto=https, for="[2001:db8::1]:80"`, true)
	f.Add("nonsense, 10.1.1.1", `for=unknown`, true)
	f.Add("[::1]:80,,", `for="\"`, false)
	f.Add("", `host="a,b";for=1.2.3.4;;`, true)
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	f.Fuzz(func(t *testing.T, xff, fwd string, peerTrusted bool) {
		peer := netip.MustParseAddr("192.0.2.1")
		if peerTrusted {
			peer = netip.MustParseAddr("10.0.0.1")
		}
		hp := &headerPlan{trusted: trusted}
		hdr := http.Header{}
		if xff != "" {
			hdr["X-Forwarded-For"] = []string{xff}
		}
		if fwd != "" {
			hdr["Forwarded"] = []string{fwd}
		}
		o := hp.origin(netip.AddrPortFrom(peer, 1234).String(), hdr)
		if !o.client.IsValid() {
			t.Fatalf("invalid client for %q / %q", xff, fwd)
		}
		if !peerTrusted && o.client != peer {
			t.Fatalf("untrusted peer: client %v from %q / %q", o.client, xff, fwd)
		}
		if peerTrusted && xff != "" {
			if want := naiveXFF(xff, trusted, peer); o.client != want {
				t.Fatalf("xff %q: client %v, reference %v", xff, o.client, want)
			}
		}
		// Our own Forwarded element parses back to the peer.
		elem := appendForwardedElement(nil, peer, fwd, "http")
		fors, ok := forwardedFors([]string{string(elem)}, nil)
		if !ok || len(fors) != 1 {
			t.Fatalf("own element %q does not parse: %q %v", elem, fors, ok)
		}
		if a, ok := parseNode(fors[0]); !ok || a != peer {
			t.Fatalf("own element %q gives for=%q", elem, fors[0])
		}
	})
}

func naiveXFF(xff string, trusted []netip.Prefix, peer netip.Addr) netip.Addr {
	parts := strings.Split(xff, ",")
	client := peer
	for i := len(parts) - 1; i >= 0; i-- {
		p := strings.Trim(parts[i], " \t\r\n") // OWS, and what textproto trims
		if p == "" {
			continue
		}
		a, ok := parseNode(p)
		if !ok {
			return client
		}
		client = a
		if !isTrusted(a, trusted) {
			return a
		}
	}
	return client
}

// The requests of one client connection share the fast path's scratch (the
// outgoing header map, the exchange): each must reach the backend exactly
// as it would on a connection of its own.
func TestRequestHeadersPerRequestOnOneConnection(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(dumpRequest))
	h := newHarness(t)
	h.update(svcConf("plain", listenA, be))
	addr := h.real(listenA)
	reqs := []string{
		"GET /1 HTTP/1.1\nHost: one.example\nX-One: 1\nCookie: a=b\nX-Forwarded-For: 198.51.100.1\nUser-Agent: one\n\n",
		"GET /2 HTTP/1.1\nHost: two.example\n\n",
		"HEAD /3 HTTP/1.1\nHost: three.example\nX-Three: 3\nConnection: keep-alive, X-Three\nX-Request-Id: three\n\n",
		"GET /4 HTTP/1.1\nHost: four.example\nX-Request-Id: four\nAccept: */*\n\n",
	}
	methods := []string{"GET", "GET", "HEAD", "GET"}
	together := wire(t, addr, strings.Join(reqs, ""), false, methods...)
	for i, req := range reqs {
		alone := wire(t, addr, req, false, methods[i])[0]
		got, want := bodyOf(together[i]), bodyOf(alone)
		if methods[i] == "HEAD" {
			got, want = together[i].Header.Get("Content-Length"), alone.Header.Get("Content-Length")
		}
		if got != want || got == "" {
			t.Errorf("request %d on a shared connection reached the backend as\n%s\nalone as\n%s", i+1, got, want)
		}
	}
}

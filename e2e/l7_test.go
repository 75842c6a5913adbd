package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/l7"
)

var (
	uuidRE         = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	responseTimeRE = regexp.MustCompile(`^[0-9]+(\.[0-9]{1,2})?ms$`)
)

// TestL7Headers checks, through `xlb run` (L7 tier alone) and an xlbtest
// backend that echoes what it got, every header the proxy adds, keeps,
// replaces or strips, the per-service rules in both directions, and the
// response headers of three services: custom rules and proxy header,
// defaults, and proxy and response-time headers turned off.
func TestL7Headers(t *testing.T) {
	t.Parallel()
	e := newL7Env(t)
	back := e.addr(t, 2)
	e.backend(t, "h1", back)
	custom, dflt, off := e.addr(t, 1), e.addr(t, 1), e.addr(t, 1)
	trusted, untrusted := e.ip(10), e.ip(11)
	cfg := e.header(t, 5*time.Second, false) + l7HC +
		l7Service("custom", custom, fmt.Sprintf(`
  [service.headers]
  request_add = { "X-Env" = "prod" }
  request_set = { "X-Team" = "core" }
  request_remove = ["X-Debug"]
  response_add = { "X-Added" = "yes" }
  response_set = { "Cache-Control" = "no-store" }
  response_remove = ["Server"]
  forwarded = true
  x_timestamp = true
  trusted_proxies = [%q]
  proxy_header = "X-Served-By"
  proxy_header_value = "edge-1"
`, trusted), back) +
		l7Service("dflt", dflt, "", back) +
		l7Service("off", off, `
  [service.headers]
  proxy_header = ""
  response_time_header = ""
`, back)
	e.runXLB(t, e.writeConfig(t, cfg))
	if logLine(e.stderr(), "no XDP interface configured: the L4 datapath is off, only the L7 tier runs") == "" {
		t.Errorf("xlb did not say, in one log line, that only the L7 tier runs:\n%s", e.stderr())
	}

	// Everything a client may send that the proxy must act on.
	request := func(addr, extra string) string {
		return "GET /headers?q=1 HTTP/1.1\r\n" +
			"Host: app.example:8080\r\n" +
			"User-Agent: e2e-client\r\n" +
			"Authorization: Bearer s3cret\r\n" +
			"Cookie: session=abc\r\n" +
			"X-Forwarded-For: 203.0.113.7\r\n" +
			"X-Forwarded-Host: evil.example\r\n" +
			"X-Forwarded-Proto: https\r\n" +
			"X-Real-IP: 203.0.113.8\r\n" +
			"Forwarded: for=203.0.113.7;proto=https\r\n" +
			"Connection: keep-alive, X-Hop\r\n" +
			"X-Hop: must-go\r\n" +
			"Keep-Alive: timeout=5\r\n" +
			"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n" +
			"Proxy-Connection: keep-alive\r\n" +
			"Te: trailers, deflate\r\n" +
			"X-Debug: 1\r\n" +
			"X-Team: client\r\n" +
			"X-Env: client\r\n" +
			extra + "\r\n"
	}
	hopByHop := []string{"Connection", "X-Hop", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "Transfer-Encoding", "Upgrade"}

	t.Run("untrusted client, custom rules", func(t *testing.T) {
		before := time.Now().UnixMilli()
		r := rawHTTP(t, untrusted, custom, request(custom, ""))
		after := time.Now().UnixMilli()
		s := parseSeen(t, r)
		id := s.one(t, "X-Request-Id")
		if len(id) != 36 || !uuidRE.MatchString(id) {
			t.Errorf("X-Request-Id %q: want a generated 36-character UUID", id)
		}
		if got := r.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != id {
			t.Errorf("response X-Request-Id %q, want the one the backend saw, %q", got, id)
		}
		want := map[string]string{
			"X-Forwarded-For":   untrusted, // the client's replaced: the peer is not trusted
			"X-Real-Ip":         untrusted,
			"X-Forwarded-Host":  "app.example:8080",
			"X-Forwarded-Proto": "http",
			"Forwarded":         fmt.Sprintf(`for=%s;host="app.example:8080";proto=http`, untrusted),
			"Authorization":     "Bearer s3cret",
			"Cookie":            "session=abc",
			"User-Agent":        "e2e-client",
			"X-Team":            "core", // set replaces the client's
		}
		for k, v := range want {
			if got := s.one(t, k); got != v {
				t.Errorf("backend saw %s %q, want %q", k, got, v)
			}
		}
		if got := s.get("X-Env"); strings.Join(got, "|") != "client|prod" {
			t.Errorf("backend saw X-Env %q, want the client's then the added one", got)
		}
		for _, k := range append(hopByHop, "X-Debug") {
			if v, ok := s.Headers[http.CanonicalHeaderKey(k)]; ok {
				t.Errorf("backend saw %s %q: it must be stripped", k, v)
			}
		}
		if te := s.get("Te"); len(te) > 0 && strings.Join(te, ",") != "trailers" {
			t.Errorf("backend saw Te %q: only \"trailers\" may pass", te)
		}
		ts, err := strconv.ParseInt(s.one(t, "X-Timestamp"), 10, 64)
		if err != nil || ts < before || ts > after {
			t.Errorf("X-Timestamp %q, want Unix milliseconds in [%d, %d]", s.one(t, "X-Timestamp"), before, after)
		}
		if s.Host != "app.example:8080" || s.URI != "/headers?q=1" || s.Method != "GET" || s.Proto != "HTTP/1.1" {
			t.Errorf("backend saw %s %s %s host %q", s.Method, s.URI, s.Proto, s.Host)
		}
		if s.Client == untrusted {
			t.Errorf("the backend's peer is the client: the request did not go through the proxy")
		}

		// The response: the proxy's headers and the response rules.
		if v := r.Header.Get("X-Response-Time"); !responseTimeRE.MatchString(v) {
			t.Errorf("X-Response-Time %q, want like 12ms", v)
		}
		if v := r.Header.Get("X-Served-By"); v != "edge-1" {
			t.Errorf("X-Served-By %q, want the configured proxy header edge-1", v)
		}
		if v, ok := r.Header["X-Proxy"]; ok {
			t.Errorf("X-Proxy %q sent although proxy_header names another header", v)
		}
		if r.Header.Get("X-Added") != "yes" || r.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("response rules not applied: X-Added %q, Cache-Control %q", r.Header.Get("X-Added"), r.Header.Get("Cache-Control"))
		}
		if v, ok := r.Header["Server"]; ok {
			t.Errorf("Server %q passed although response_remove has it", v)
		}
		if r.Header.Get("X-Backend") != "h1" {
			t.Errorf("the backend's own X-Backend header did not pass: %v", r.Header)
		}
	})

	t.Run("trusted proxy, request id kept", func(t *testing.T) {
		r := rawHTTP(t, trusted, custom, request(custom, "X-Request-Id: my-request-42\r\n"))
		s := parseSeen(t, r)
		want := map[string]string{
			"X-Request-Id":      "my-request-42",
			"X-Forwarded-For":   "203.0.113.7, " + trusted, // appended
			"X-Real-Ip":         "203.0.113.7",
			"X-Forwarded-Host":  "evil.example", // a trusted proxy's are believed
			"X-Forwarded-Proto": "https",
			"Forwarded":         fmt.Sprintf(`for=203.0.113.7;proto=https, for=%s;host="app.example:8080";proto=http`, trusted),
		}
		for k, v := range want {
			if got := s.one(t, k); got != v {
				t.Errorf("backend saw %s %q, want %q", k, got, v)
			}
		}
		if got := r.Header.Get("X-Request-Id"); got != "my-request-42" {
			t.Errorf("response X-Request-Id %q, want the client's my-request-42", got)
		}
	})

	t.Run("defaults", func(t *testing.T) {
		c := newClient(untrusted, 10*time.Second)
		ids := map[string]bool{}
		for range 3 {
			r := do(t, c, "GET", "http://"+dflt+"/headers", "Forwarded: for=203.0.113.9", "X-Forwarded-For: 203.0.113.9")
			s := parseSeen(t, r)
			id := s.one(t, "X-Request-Id")
			if !uuidRE.MatchString(id) || ids[id] || r.Header.Get("X-Request-Id") != id {
				t.Errorf("X-Request-Id %q (response %q): want a new UUID per request", id, r.Header.Get("X-Request-Id"))
			}
			ids[id] = true
			if got := s.one(t, "X-Forwarded-For"); got != untrusted {
				t.Errorf("X-Forwarded-For %q, want %s", got, untrusted)
			}
			for _, k := range []string{"Forwarded", "X-Timestamp"} {
				if v, ok := s.Headers[k]; ok {
					t.Errorf("backend saw %s %q; it is off by default (and an untrusted client's goes)", k, v)
				}
			}
			if r.Header.Get("X-Proxy") != "xlb" || !responseTimeRE.MatchString(r.Header.Get("X-Response-Time")) {
				t.Errorf("default response headers: X-Proxy %q, X-Response-Time %q", r.Header.Get("X-Proxy"), r.Header.Get("X-Response-Time"))
			}
			if r.Header.Get("Server") != "xlbtest" {
				t.Errorf("the backend's Server header did not pass: %q", r.Header.Get("Server"))
			}
		}
	})

	t.Run("proxy and response-time headers off", func(t *testing.T) {
		r := do(t, newClient(untrusted, 10*time.Second), "GET", "http://"+off+"/headers")
		parseSeen(t, r)
		for _, k := range []string{"X-Proxy", "X-Response-Time"} {
			if v, ok := r.Header[k]; ok {
				t.Errorf("%s %q sent although turned off", k, v)
			}
		}
		if !uuidRE.MatchString(r.Header.Get("X-Request-Id")) {
			t.Errorf("X-Request-Id %q not echoed", r.Header.Get("X-Request-Id"))
		}
	})
}

// gatewayBody is the proxy's own answer for status: a short plain-text line.
func checkGateway(t *testing.T, what string, r httpResult, code int, msg string) {
	t.Helper()
	want := fmt.Sprintf("%d %s: %s\n", code, http.StatusText(code), msg)
	if r.Code != code || string(r.Body) != want {
		t.Errorf("%s: %d %q, want %d %q", what, r.Code, r.Body, code, want)
	}
	if ct := r.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("%s: Content-Type %q, want text/plain", what, ct)
	}
	if !uuidRE.MatchString(r.Header.Get("X-Request-Id")) || r.Header.Get("X-Proxy") != "xlb" {
		t.Errorf("%s: the proxy's headers are missing: %v", what, r.Header)
	}
	if r.Header.Get("X-Backend") != "" {
		t.Errorf("%s: came from backend %s", what, r.Header.Get("X-Backend"))
	}
}

// TestL7Errors: 502 for a backend whose port is closed, 503 when no backend
// is usable (down from the start, or drained), 504 for one slower than the
// response header timeout, each the proxy's short plain-text answer and
// counted; a backend's own statuses and bodies pass through exactly.
func TestL7Errors(t *testing.T) {
	t.Parallel()
	e := newL7Env(t)
	back := e.addr(t, 2)
	e.backend(t, "b1", back)
	dead := e.addr(t, 3) // nothing listens there
	deadSvc, downSvc, drainSvc, slowSvc := e.addr(t, 1), e.addr(t, 1), e.addr(t, 1), e.addr(t, 1)
	noPassive := "\n  [service.passive_health]\n  max_fails = 0\n"
	cfg := e.header(t, 5*time.Second, true) + l7HC +
		l7Service("dead", deadSvc, "  [service.health_check]\n  enabled = false\n"+noPassive, dead) +
		l7Service("down", downSvc, `
  [service.health_check]
  initial_state = "down"
  path = "/status?code=503"
`, back) +
		l7Service("drain", drainSvc, "", back) +
		l7Service("slow", slowSvc, `response_header_timeout = "300ms"`+noPassive, back)
	e.runXLB(t, e.writeConfig(t, cfg))
	c := newClient(e.ip(11), 10*time.Second)

	t.Run("502 dead backend", func(t *testing.T) {
		for _, m := range []string{"GET", "POST", "DELETE"} {
			checkGateway(t, m+" to a closed port", do(t, c, m, "http://"+deadSvc+"/"), 502, "the backend could not be reached")
		}
	})
	t.Run("503 no usable backend", func(t *testing.T) {
		for range 2 {
			checkGateway(t, "backend down", do(t, c, "GET", "http://"+downSvc+"/"), 503, "no backend available")
		}
		if r := do(t, c, "GET", "http://"+drainSvc+"/"); r.Code != 200 || backendOf(r.Body) != "b1" {
			t.Fatalf("before the drain: %d %q", r.Code, r.Body)
		}
		id := "drain@" + back
		if r := e.adminCall(t, "PUT", "/lb/admin/backends/"+id+"/drain"); r.Code != 200 {
			t.Fatalf("drain %s: %d %s", id, r.Code, r.Body)
		}
		waitFor(t, "backend draining", 5*time.Second, 20*time.Millisecond, func() bool {
			b := backendMetrics(lbMetrics(t, "http://"+e.admin, "drain"), back)
			return b != nil && b.State == "draining"
		})
		checkGateway(t, "backend drained", do(t, c, "GET", "http://"+drainSvc+"/"), 503, "no backend available")
	})
	t.Run("504 slow backend", func(t *testing.T) {
		start := time.Now()
		r := do(t, c, "GET", "http://"+slowSvc+"/slow?ms=3000")
		took := time.Since(start)
		checkGateway(t, "backend slower than 300ms", r, 504, "the backend did not answer in time")
		if took < 300*time.Millisecond || took > 2*time.Second {
			t.Errorf("504 after %v, want soon after the 300ms response header timeout", took)
		}
		if r := do(t, c, "GET", "http://"+slowSvc+"/slow?ms=50"); r.Code != 200 || backendOf(r.Body) != "b1" {
			t.Errorf("a request within the timeout: %d %q", r.Code, r.Body)
		}
	})
	t.Run("backend statuses pass through", func(t *testing.T) {
		for _, tc := range []struct {
			code int
			body string
		}{
			{418, "I'm a teapot, short and stout\n"},
			{500, "the backend's own 500\n"},
			{503, "backend busy, retry later"},
			{404, "no such thing\n"},
			{204, ""},
		} {
			r := do(t, c, "GET", "http://"+slowSvc+"/status?code="+strconv.Itoa(tc.code)+"&body="+urlQueryEscape(tc.body))
			if r.Code != tc.code || string(r.Body) != tc.body || r.Header.Get("X-Backend") != "b1" {
				t.Errorf("backend's %d %q came out as %d %q (X-Backend %q)", tc.code, tc.body, r.Code, r.Body, r.Header.Get("X-Backend"))
			}
		}
	})
	t.Run("counted", func(t *testing.T) {
		for _, tc := range []struct {
			svc    string
			codes  map[string]uint64
			errors uint64
		}{
			{"dead", map[string]uint64{"502": 3}, 3},
			{"down", map[string]uint64{"503": 2}, 2},
			{"drain", map[string]uint64{"200": 1, "503": 1}, 1},
			{"slow", map[string]uint64{"504": 1, "200": 1, "418": 1, "500": 1, "503": 1, "404": 1, "204": 1}, 3},
		} {
			m := lbMetrics(t, "http://"+e.admin, tc.svc)
			var total uint64
			for _, n := range tc.codes {
				total += n
			}
			if !mapsEqualU64(m.StatusCodes, tc.codes) || m.TotalRequests != total || m.TotalErrors != tc.errors {
				t.Errorf("%s: status_codes %v, total %d, errors %d; want %v, %d, %d",
					tc.svc, m.StatusCodes, m.TotalRequests, m.TotalErrors, tc.codes, total, tc.errors)
			}
		}
	})
}

func mapsEqualU64(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// urlQueryEscape escapes s for a query value.
func urlQueryEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// TestL7Protocols: a WebSocket echo through the proxy, a server-sent event
// stream whose events reach the client as the backend sends them, and
// HTTP/2 with prior knowledge (h2c) from the client, HTTP/1.1 to the backend.
func TestL7Protocols(t *testing.T) {
	t.Parallel()
	e := newL7Env(t)
	back := e.addr(t, 2)
	e.backend(t, "b1", back)
	svc := e.addr(t, 1)
	e.runXLB(t, e.writeConfig(t, e.header(t, 5*time.Second, false)+l7HC+l7Service("proto", svc, "", back)))

	t.Run("websocket", func(t *testing.T) {
		ws := wsDial(t, svc, "/ws", "Authorization: Bearer ws-token")
		if ws.Resp.Header.Get("X-Backend") != "b1" || !uuidRE.MatchString(ws.Resp.Header.Get("X-Request-Id")) {
			t.Errorf("101 headers: %v", ws.Resp.Header)
		}
		big := bytes.Repeat([]byte("xlb websocket "), 5000) // 70000 bytes: a 64-bit length
		for i, f := range []struct {
			op      byte
			payload []byte
		}{{0x1, []byte("hello through xlb")}, {0x2, big}, {0x2, big[:300]}, {0x9, []byte("ping")}, {0x1, []byte("again")}} {
			if err := ws.send(f.op, f.payload); err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
			op, got, err := ws.recv()
			want := f.op
			if f.op == 0x9 {
				want = 0xa
			}
			if err != nil || op != want || !bytes.Equal(got, f.payload) {
				t.Fatalf("frame %d: sent op %d, %d bytes; got op %d, %d bytes, %v", i, f.op, len(f.payload), op, len(got), err)
			}
		}
		if err := ws.send(0x8, []byte{0x03, 0xe8}); err != nil {
			t.Fatal(err)
		}
		if op, got, err := ws.recv(); err != nil || op != 0x8 || !bytes.Equal(got, []byte{0x03, 0xe8}) {
			t.Errorf("close: op %d %v %v", op, got, err)
		}
		// Counted when the tunnel ends, which the backend's close starts.
		waitFor(t, "the WebSocket counted as a 101", 2*time.Second, 10*time.Millisecond, func() bool {
			return lbMetrics(t, "http://"+svc, "proto").StatusCodes["101"] == 1
		})
	})

	t.Run("server-sent events", func(t *testing.T) {
		const n, gap = 5, 200
		start := time.Now()
		resp, err := newClient("", 10*time.Second).Get(fmt.Sprintf("http://%s/sse?n=%d&ms=%d", svc, n, gap))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("GET /sse: %d %v", resp.StatusCode, resp.Header)
		}
		sc := bufio.NewScanner(resp.Body)
		i := 0
		var worst time.Duration
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev struct {
				I    int       `json:"i"`
				Sent time.Time `json:"sent"`
			}
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Fatalf("event %q: %v", data, err)
			}
			i++
			lag := time.Since(ev.Sent)
			worst = max(worst, lag)
			if ev.I != i || lag > 100*time.Millisecond {
				t.Errorf("event %d (i=%d) reached the client %v after the backend sent it: want at once", i, ev.I, lag)
			}
			if i == 1 && time.Since(start) > time.Duration(n-1)*gap*time.Millisecond {
				t.Errorf("first event after %v: the stream was buffered", time.Since(start))
			}
		}
		if i != n {
			t.Errorf("%d events, want %d (%v)", i, n, sc.Err())
		}
		t.Logf("SSE: %d events, worst lag %v", i, worst)
	})

	t.Run("h2c prior knowledge", func(t *testing.T) {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		var dials int
		var mu sync.Mutex
		tr := &http.Transport{
			Protocols: &protos, Proxy: nil,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				mu.Lock()
				dials++
				mu.Unlock()
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(e.ip(12))}}
				return d.DialContext(ctx, network, addr)
			},
		}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		// One request opens the connection; the next ones, concurrent, are
		// streams on it.
		ids := make([]string, 9)
		one := func(i int) {
			req, _ := http.NewRequest("GET", "http://"+svc+"/headers", nil)
			req.Header.Set("Authorization", "Bearer h2")
			resp, err := c.Do(req)
			if err != nil {
				t.Errorf("h2c request: %v", err)
				return
			}
			defer resp.Body.Close()
			var body bytes.Buffer
			body.ReadFrom(resp.Body)
			if resp.ProtoMajor != 2 {
				t.Errorf("answer in %s, want HTTP/2", resp.Proto)
			}
			var s seen
			if resp.StatusCode != 200 || json.Unmarshal(body.Bytes(), &s) != nil {
				t.Errorf("h2c: %d %q", resp.StatusCode, body.Bytes())
				return
			}
			if s.Proto != "HTTP/1.1" || s.one(t, "X-Forwarded-For") != e.ip(12) || s.one(t, "Authorization") != "Bearer h2" ||
				s.one(t, "X-Forwarded-Proto") != "http" || s.Host != svc {
				t.Errorf("backend saw %s, headers %v, host %q", s.Proto, s.Headers, s.Host)
			}
			id := s.one(t, "X-Request-Id")
			if !uuidRE.MatchString(id) || resp.Header.Get("X-Request-Id") != id || resp.Header.Get("X-Proxy") != "xlb" {
				t.Errorf("h2c response headers %v, backend's request id %q", resp.Header, id)
			}
			ids[i] = id
		}
		one(0)
		var wg sync.WaitGroup
		for i := 1; i < len(ids); i++ {
			wg.Go(func() { one(i) })
		}
		wg.Wait()
		if dials != 1 {
			t.Errorf("%d connections for 9 HTTP/2 requests (8 concurrent), want 1", dials)
		}
		if uniq := map[string]bool{}; true {
			for _, id := range ids {
				uniq[id] = true
			}
			if len(uniq) != len(ids) {
				t.Errorf("request ids of the HTTP/2 streams are not all distinct: %v", ids)
			}
		}
		m := lbMetrics(t, "http://"+svc, "proto")
		if m.StatusCodes["200"] < 9 {
			t.Errorf("h2c requests not counted: %v", m.StatusCodes)
		}
	})
}

// TestSidecar runs `xlb sidecar`: the same request headers (and the --header
// ones), the backend's answers passed through, 504 past --timeout, 502 with
// the backend gone, and /lb/metrics counting all of it.
func TestSidecar(t *testing.T) {
	t.Parallel()
	e := newL7Env(t)
	back := e.addr(t, 2)
	e.backend(t, "b1", back)
	listen := e.addr(t, 1)
	sc := e.start(t, t, "sidecar", Binary(t, "xlb"), "sidecar", "--listen", listen, "--backend", "http://"+back,
		"--timeout", "500ms", "--header", "X-Env=sidecar", "--header", "x-team=core")
	e.procs.WaitStderr(t, sc, "xlb sidecar running", 10*time.Second)
	client := e.ip(11)
	c := newClient(client, 10*time.Second)
	base := "http://" + listen

	for range 3 {
		r := do(t, c, "GET", base+"/headers", "Authorization: Bearer side", "X-Env: client", "Connection: X-Hop", "X-Hop: 1")
		s := parseSeen(t, r)
		for k, v := range map[string]string{
			"X-Env": "sidecar", "X-Team": "core", "X-Forwarded-For": client, "X-Real-Ip": client,
			"X-Forwarded-Host": listen, "X-Forwarded-Proto": "http", "Authorization": "Bearer side",
		} {
			if got := s.one(t, k); got != v {
				t.Errorf("backend saw %s %q, want %q", k, got, v)
			}
		}
		if _, ok := s.Headers["X-Hop"]; ok {
			t.Errorf("hop-by-hop X-Hop reached the backend")
		}
		id := s.one(t, "X-Request-Id")
		if !uuidRE.MatchString(id) || r.Header.Get("X-Request-Id") != id || r.Header.Get("X-Proxy") != "xlb" ||
			!responseTimeRE.MatchString(r.Header.Get("X-Response-Time")) {
			t.Errorf("response headers %v (backend's request id %q)", r.Header, id)
		}
	}
	if r := do(t, c, "GET", base+"/status?code=418&body=teapot%0A"); r.Code != 418 || string(r.Body) != "teapot\n" {
		t.Errorf("418 passed through as %d %q", r.Code, r.Body)
	}
	start := time.Now()
	checkGateway(t, "sidecar, slow backend", do(t, c, "GET", base+"/slow?ms=3000"), 504, "the backend did not answer in time")
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("504 after %v, want soon after --timeout 500ms", took)
	}
	e.stopBackend(t, "b1")
	checkGateway(t, "sidecar, backend down", do(t, c, "GET", base+"/"), 502, "the backend could not be reached")

	m := lbMetrics(t, base, "")
	want := map[string]uint64{"200": 3, "418": 1, "504": 1, "502": 1}
	if m.TotalRequests != 6 || m.SuccessfulRequests != 4 || m.TotalErrors != 2 || !mapsEqualU64(m.StatusCodes, want) ||
		m.SuccessRate != 0.6667 || m.AvgLatencyUs <= 0 || len(m.Backends) != 1 || m.Backends[0].Address != back {
		b, _ := json.MarshalIndent(m, "", " ")
		t.Errorf("/lb/metrics: want 6 requests, 4 successful, 2 failed, success rate 0.6667, codes %v, a latency, backend %s; got\n%s", want, back, b)
	}
	if err := e.procs.Stop(sc); err != nil {
		t.Errorf("sidecar after SIGTERM: %v, want exit 0", err)
	}
}

// TestL7SIGTERM: a slow request in flight when xlb gets SIGTERM finishes
// with its answer, new connections are refused at once, and xlb exits 0.
func TestL7SIGTERM(t *testing.T) {
	t.Parallel()
	e := newL7Env(t)
	back := e.addr(t, 2)
	e.backend(t, "b1", back)
	svc := e.addr(t, 1)
	e.runXLB(t, e.writeConfig(t, e.header(t, 5*time.Second, false)+l7HC+l7Service("web", svc, "", back)))
	c := newClient(e.ip(11), 10*time.Second)
	if r := do(t, c, "GET", "http://"+svc+"/"); r.Code != 200 {
		t.Fatalf("GET /: %d %q", r.Code, r.Body)
	}

	type answer struct {
		r   httpResult
		err error
		at  time.Time
	}
	done := make(chan answer, 1)
	go func() {
		r, err := tryDo(newClient(e.ip(12), 10*time.Second), "GET", "http://"+svc+"/slow?ms=1500")
		done <- answer{r, err, time.Now()}
	}()
	waitFor(t, "the slow request in flight", 5*time.Second, 10*time.Millisecond, func() bool {
		b := backendMetrics(lbMetrics(t, "http://"+svc, ""), back)
		return b != nil && b.ActiveConnections == 1
	})
	sig := time.Now()
	if err := e.xlb.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var refused time.Time
	waitFor(t, "new connections refused", 2*time.Second, 5*time.Millisecond, func() bool {
		cn, err := net.DialTimeout("tcp", svc, time.Second)
		if err == nil {
			cn.Close()
			return false
		}
		// A SYN that raced the listener's close is answered with a reset
		// instead: not served either, so keep dialling until refused.
		if errors.Is(err, syscall.ECONNRESET) {
			return false
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial after SIGTERM: %v, want connection refused", err)
		}
		refused = time.Now()
		return true
	})
	a := <-done
	if a.err != nil || a.r.Code != 200 || backendOf(a.r.Body) != "b1" {
		t.Fatalf("slow request across SIGTERM: %v %d %q, want its answer", a.err, a.r.Code, a.r.Body)
	}
	if !refused.Before(a.at) {
		t.Errorf("connections refused %v after SIGTERM, the slow request ended %v after it: want refused while it ran",
			refused.Sub(sig), a.at.Sub(sig))
	}
	if err := e.procs.Wait(e.xlb, 10*time.Second); err != nil {
		t.Errorf("xlb after SIGTERM: %v, want exit 0", err)
	}
	t.Logf("SIGTERM: refused after %v, slow request answered after %v", refused.Sub(sig).Round(time.Millisecond), a.at.Sub(sig).Round(time.Millisecond))
	if strings.Contains(e.stderr(), "level=ERROR") || strings.Contains(e.stderr(), "requests still running") {
		t.Errorf("xlb logged errors on a clean shutdown:\n%s", e.stderr())
	}
}

// legacyConfig is the compatibility config of issue 4, verbatim.
const legacyConfig = `[loadbalancer]
listen_address = "0.0.0.0"
listen_port = 8080
algorithm = "round_robin"  # round_robin | least_connections | ip_hash

[health_check]
interval_secs = 5
timeout_secs = 2
unhealthy_threshold = 3
healthy_threshold = 2

[[backends]]
address = "127.0.0.1"
port = 3001
weight = 1
health_check_path = "/health"

[[backends]]
address = "127.0.0.1"
port = 3002
weight = 2
health_check_path = "/health"
`

// TestLegacyConfig runs config/testdata/legacy.toml, the original
// specification's config, unchanged, in a network namespace of its own (its
// ports are fixed): round robin with weights 1:2, /lb/health and /lb/metrics
// on the listener and on the admin API's default address.
func TestLegacyConfig(t *testing.T) {
	t.Parallel()
	path := filepath.Join(repoRoot(t), "config", "testdata", "legacy.toml")
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(text) != legacyConfig {
		t.Fatalf("%s is not the issue's compatibility config verbatim:\n%s", path, text)
	}
	tp := newNetns(t, "xlg")
	for _, port := range []string{"3001", "3002"} {
		tp.StartReady(t, "lb", "ready ", 10*time.Second, Binary(t, "xlbtest"), "serve", "--name", "b"+port, "--listen", "127.0.0.1:"+port)
	}
	xlb := tp.Start(t, "lb", Binary(t, "xlb"), "run", "-c", path)
	tp.WaitStderr(t, xlb, `msg="xlb running"`, 20*time.Second)
	c := nsClient(tp.Namespace("lb"), 10*time.Second)

	var seq []string
	counts := map[string]int{}
	for range 30 {
		r := do(t, c, "GET", "http://127.0.0.1:8080/")
		b := backendOf(r.Body)
		if r.Code != 200 || b == "" {
			t.Fatalf("GET /: %d %q", r.Code, r.Body)
		}
		seq = append(seq, b)
		counts[b]++
	}
	if counts["b3001"] != 10 || counts["b3002"] != 20 {
		t.Errorf("30 requests went %v, want 10 to :3001 (weight 1) and 20 to :3002 (weight 2)", counts)
	}
	for i := 0; i+3 <= len(seq); i += 3 {
		if n := strings.Count(strings.Join(seq[i:i+3], ","), "b3001"); n != 1 {
			t.Errorf("requests %d..%d went to %v: smooth round robin gives :3001 one of every three", i, i+2, seq[i:i+3])
		}
	}
	t.Logf("sequence: %v", seq)

	for _, base := range []string{"http://127.0.0.1:8080", "http://127.0.0.1:9090"} {
		r := do(t, c, "GET", base+"/lb/health")
		var h l7.HealthReport
		if r.Code != 200 || json.Unmarshal(r.Body, &h) != nil || h.Status != "healthy" || h.HealthyBackends != 2 || h.TotalBackends != 2 {
			t.Errorf("GET %s/lb/health: %d %s", base, r.Code, r.Body)
		}
		m := lbMetricsWith(t, c, base, "")
		if m.TotalRequests != 30 || m.TotalErrors != 0 || m.StatusCodes["200"] != 30 || len(m.Backends) != 2 {
			t.Errorf("GET %s/lb/metrics: %+v, want 30 requests, no error, two backends", base, m)
			continue
		}
		for _, b := range m.Backends {
			want := map[string]uint64{"127.0.0.1:3001": 10, "127.0.0.1:3002": 20}[b.Address]
			if b.TotalRequests != want || b.State != "up" || b.Service != "default" {
				t.Errorf("GET %s/lb/metrics: backend %+v, want %d requests, up, service default", base, b, want)
			}
		}
	}
	if err := tp.Stop(xlb); err != nil {
		t.Errorf("xlb after SIGTERM: %v, want exit 0", err)
	}
}

// TestL7RuntimeSettings: daemon.threads sets GOMAXPROCS and the daemon runs
// with its GC target (GOGC 400) unless the environment sets GOGC, as the
// Go runtime's own metrics on /metrics show; and it re-executed itself, same
// PID, with the scheduler monitor kept awake (GODEBUG schedtrace).
func TestL7RuntimeSettings(t *testing.T) {
	t.Parallel()
	e := newL7Env(t)
	back := e.addr(t, 2)
	e.backend(t, "b1", back)
	svc := e.addr(t, 1)
	hdr := strings.Replace(e.header(t, 5*time.Second, true), "[daemon]\n", "[daemon]\nthreads = 1\n", 1)
	e.runXLB(t, e.writeConfig(t, hdr+l7HC+l7Service("web", svc, "", back)))
	if r := do(t, newClient(e.ip(11), 10*time.Second), "GET", "http://"+svc+"/"); r.Code != 200 {
		t.Fatalf("GET /: %d %q", r.Code, r.Body)
	}
	r := do(t, pollClient, "GET", "http://"+e.admin+"/metrics")
	for _, want := range []string{"go_sched_gomaxprocs_threads 1\n", "go_gc_gogc_percent 400\n"} {
		if !strings.Contains(string(r.Body), want) {
			t.Errorf("/metrics has no %q", strings.TrimSpace(want))
		}
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", e.xlb.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(strings.Split(string(env), "\x00"), func(kv string) bool {
		return strings.HasPrefix(kv, "GODEBUG=") && strings.Contains(kv, "schedtrace=2147483647")
	}) {
		t.Errorf("xlb (pid %d) runs without GODEBUG=schedtrace=2147483647", e.xlb.Process.Pid)
	}
}

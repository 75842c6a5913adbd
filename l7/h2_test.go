package l7

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// countingBackend is a loopback HTTP/1.1 backend that counts the
// connections it accepted and the requests it got.
type countingBackend struct {
	addr  netip.AddrPort
	conns atomic.Int64
	reqs  atomic.Int64
}

func startCountingBackend(t *testing.T, handler http.HandlerFunc) *countingBackend {
	t.Helper()
	b := &countingBackend{}
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.reqs.Add(1)
		handler(w, r)
	}))
	ts.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			b.conns.Add(1)
		}
	}
	ts.Start()
	t.Cleanup(ts.Close)
	b.addr = netip.MustParseAddrPort(ts.Listener.Addr().String())
	return b
}

// h2Raw is an HTTP/2 client connection written frame by frame.
type h2Raw struct {
	t    testing.TB
	nc   net.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	buf  bytes.Buffer
	dec  *hpack.Decoder
	next uint32 // the next stream ID
}

func dialH2Raw(t testing.TB, addr string, deadline time.Time) *h2Raw {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	mustf(t, err, "dial")
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(deadline)
	c := &h2Raw{t: t, nc: nc, fr: http2.NewFramer(nc, nc), dec: hpack.NewDecoder(4096, nil), next: 1}
	c.enc = hpack.NewEncoder(&c.buf)
	_, err = io.WriteString(nc, http2.ClientPreface)
	mustf(t, err, "preface")
	mustf(t, c.fr.WriteSettings(), "settings")
	// The server's SETTINGS is already on its way: acknowledge it now
	// (the reads below skip it), so that the server runs with its
	// advertised limits.
	mustf(t, c.fr.WriteSettingsAck(), "settings ack")
	return c
}

// headers sends a HEADERS frame of fields (pairs of name and value) on a
// new stream, ending the stream, and returns its ID.
func (c *h2Raw) headers(fields ...string) uint32 {
	c.buf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		c.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	id := c.next
	c.next += 2
	mustf(c.t, c.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: c.buf.Bytes(), EndStream: true, EndHeaders: true,
	}), "HEADERS")
	return id
}

// h2Answer is how the server answered a stream.
type h2Answer struct {
	status int
	body   string
	rst    http2.ErrCode // RST_STREAM's code, if it was reset
	reset  bool
}

// answer reads frames until stream id ends (by END_STREAM or RST_STREAM).
func (c *h2Raw) answer(id uint32) h2Answer {
	c.t.Helper()
	var a h2Answer
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("stream %d: reading: %v", id, err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			c.t.Fatalf("stream %d: GOAWAY %v", id, f.ErrCode)
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				a.rst, a.reset = f.ErrCode, true
				return a
			}
		case *http2.HeadersFrame:
			if f.StreamID != id {
				continue
			}
			hf, err := c.dec.DecodeFull(f.HeaderBlockFragment())
			mustf(c.t, err, "hpack")
			for _, h := range hf {
				if h.Name == ":status" {
					a.status, _ = strconv.Atoi(h.Value)
				}
			}
			if f.StreamEnded() {
				return a
			}
		case *http2.DataFrame:
			if f.StreamID != id {
				continue
			}
			a.body += string(f.Data())
			if f.StreamEnded() {
				return a
			}
		}
	}
}

func TestH2MalformedRequests(t *testing.T) {
	be := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Method+" "+r.RequestURI+" "+r.Host)
	})
	h := newHarness(t)
	h.update(svcConf("s", listenA, be.addr))
	addr := h.real(listenA)

	// req is a request's fields with some replaced (a value of "-" drops
	// the field) and extra ones appended.
	req := func(set map[string]string, extra ...string) []string {
		base := []string{":method", "GET", ":scheme", "http", ":authority", "example.com", ":path", "/ok"}
		var out []string
		for i := 0; i < len(base); i += 2 {
			v, ok := set[base[i]]
			switch {
			case !ok:
				out = append(out, base[i], base[i+1])
			case v != "-":
				out = append(out, base[i], v)
			}
		}
		return append(out, extra...)
	}
	const (
		ours  = "400 from xlb" // validHTTP2Request
		go400 = "400 from Go"  // Go's server answers it
		goRST = "RST from Go"  // Go's server resets the stream: PROTOCOL_ERROR
	)
	for _, tc := range []struct {
		name   string
		fields []string
		want   string
	}{
		// What Go's server lets through and xlb rejects.
		{"space in path", req(map[string]string{":path": "/a b"}), ours},
		{"space in query", req(map[string]string{":path": "/a?x y"}), ours},
		{"request line injection", req(map[string]string{":path": "/a?q HTTP/1.0"}), ours},
		{"non-ASCII path", req(map[string]string{":path": "/caf\xc3\xa9"}), ours},
		{"non-ASCII query", req(map[string]string{":path": "/?\xff"}), ours},
		{"absolute-form path", req(map[string]string{":path": "http://evil.test/x"}), ours},
		{"asterisk for GET", req(map[string]string{":path": "*"}), ours},
		{"authority with space", req(map[string]string{":authority": "a b"}), ours},
		{"authority with slash", req(map[string]string{":authority": "a/b"}), ours},
		{"authority with non-ASCII", req(map[string]string{":authority": "caf\xc3\xa9.test"}), ours},
		{"host header with space", req(map[string]string{":authority": "-"}, "host", "a b"), ours},
		{"no authority, no host", req(map[string]string{":authority": "-"}), ours},
		{"host differs from authority", req(nil, "host", "other.test"), ours},
		{"two host headers", req(map[string]string{":authority": "-"}, "host", "a.test", "host", "b.test"), ours},
		{"method with space", req(map[string]string{":method": "GE T"}), ours},
		{"method with slash", req(map[string]string{":method": "GET/1"}), ours},
		// What Go's server rejects itself (pinned: if a Go release stops,
		// these fail and xlb must check them).
		{"control in path", req(map[string]string{":path": "/a\x01"}), goRST},
		{"CRLF in path", req(map[string]string{":path": "/a\r\nX-Evil: 1"}), goRST},
		{"tab in path", req(map[string]string{":path": "/a?x\ty"}), goRST},
		{"path without slash", req(map[string]string{":path": "ok"}), goRST},
		{"DEL in path", req(map[string]string{":path": "/a\x7f"}), goRST},
		{"CRLF in authority", req(map[string]string{":authority": "a\r\nX-Evil: 1"}), goRST},
		{"missing path", req(map[string]string{":path": "-"}), goRST},
		{"empty path", req(map[string]string{":path": ""}), goRST},
		{"bad escape in path", req(map[string]string{":path": "/%zz"}), goRST},
		{"missing method", req(map[string]string{":method": "-"}), goRST},
		{"scheme ftp", req(map[string]string{":scheme": "ftp"}), goRST},
		{"userinfo in authority", req(map[string]string{":authority": "user@example.com"}), goRST},
		{"upper-case header name", req(nil, "X-Upper", "1"), goRST},
		{"space in header name", req(nil, "x a", "1"), goRST},
		{"NUL in header value", req(nil, "x-v", "a\x00b"), goRST},
		{"CR in header value", req(nil, "x-v", "a\rb"), goRST},
		{"LF in header value", req(nil, "x-v", "a\nb"), goRST},
		{"unknown pseudo-header", req(nil, ":foo", "1"), goRST},
		{"pseudo-header after a regular one", append(req(map[string]string{":path": "-"}), "x-a", "1", ":path", "/"), goRST},
		{"connection header", req(nil, "connection", "close"), go400},
		{"te other than trailers", req(nil, "te", "gzip"), go400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialH2Raw(t, addr, time.Now().Add(5*time.Second))
			a := c.answer(c.headers(tc.fields...))
			switch tc.want {
			case ours:
				if a.reset || a.status != 400 || !strings.HasPrefix(a.body, "400 Bad Request: malformed HTTP/2 request: ") {
					t.Errorf("got %+v, want xlb's 400", a)
				}
			case go400:
				if a.reset || a.status != 400 || strings.Contains(a.body, "malformed") {
					t.Errorf("got %+v, want Go's 400", a)
				}
			case goRST:
				if !a.reset || a.rst != http2.ErrCodeProtocol {
					t.Errorf("got %+v, want RST_STREAM PROTOCOL_ERROR", a)
				}
			}
		})
	}
	if n := be.reqs.Load(); n != 0 {
		t.Fatalf("the backend got %d of the malformed requests", n)
	}

	// Well-formed requests that look odd still go through, as sent.
	for _, tc := range []struct {
		fields []string
		want   string
	}{
		{req(nil), "GET /ok example.com"},
		{req(map[string]string{":path": "/a%20b?x=%20&y=|"}), "GET /a%20b?x=%20&y=| example.com"},
		{req(map[string]string{":authority": "Example.COM:8080"}), "GET /ok Example.COM:8080"},
		{req(map[string]string{":authority": "[::1]:80"}), "GET /ok [::1]:80"},
		{req(map[string]string{":authority": "-"}, "host", "example.com"), "GET /ok example.com"},
		{req(nil, "host", "EXAMPLE.com"), "GET /ok example.com"},
		{req(map[string]string{":method": "PURGE"}), "PURGE /ok example.com"},
		{req(map[string]string{":method": "OPTIONS", ":path": "*"}), ""}, // net/http answers OPTIONS * itself
	} {
		c := dialH2Raw(t, addr, time.Now().Add(5*time.Second))
		if a := c.answer(c.headers(tc.fields...)); a.reset || a.status != 200 || a.body != tc.want {
			t.Errorf("%q: got %+v, want 200 %q", tc.fields, a, tc.want)
		}
	}
}

// TestH2RapidReset is CVE-2023-44487 against the proxy: one connection
// opens and at once resets stream after stream. The proxy must not pass
// them on to backends, must end the connection with a GOAWAY, and must go
// on serving other clients.
func TestH2RapidReset(t *testing.T) {
	be := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		select { // a backend that takes a moment: requests are cut mid-flight
		case <-time.After(20 * time.Millisecond):
		case <-r.Context().Done():
		}
		io.WriteString(w, "ok")
	})
	h := newHarness(t)
	h.update(svcConf("s", listenA, be.addr))
	addr := h.real(listenA)

	// The measurement: 35,000 streams in 1.5 s. Much faster, Go's
	// server ends the connection by itself: its handlers cannot keep up
	// and its queue of streams overflows.
	const maxStreams, maxTime = 20000, 3 * time.Second
	const perMs = 35000 / 1500
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A polite client on its own connection, all along.
	polite := h2cClient(t)
	var politeOK, politeBad atomic.Int64
	politeCtx, stopPolite := context.WithCancel(ctx)
	var politeWG sync.WaitGroup
	politeWG.Add(1)
	go func() {
		defer politeWG.Done()
		for politeCtx.Err() == nil {
			req, _ := http.NewRequestWithContext(ctx, "GET", h.url(listenA, "/polite"), nil)
			resp, err := polite.Do(req)
			if err != nil {
				politeBad.Add(1)
				t.Errorf("polite client: %v", err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				politeOK.Add(1)
			} else {
				politeBad.Add(1)
				t.Errorf("polite client got %d", resp.StatusCode)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	deadline, _ := ctx.Deadline()
	c := dialH2Raw(t, addr, deadline)
	type goAway struct {
		code http2.ErrCode
		err  error
		at   time.Time
	}
	gotAway := make(chan goAway, 1)
	go func() { // the attacker reads everything, to the GOAWAY
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				gotAway <- goAway{err: err, at: time.Now()}
				return
			}
			if ga, ok := f.(*http2.GoAwayFrame); ok {
				gotAway <- goAway{code: ga.ErrCode, at: time.Now()}
				return
			}
		}
	}()

	start := time.Now()
	sent := 0
	var writeErr error
	var away *goAway
attack:
	for sent < maxStreams && time.Since(start) < maxTime {
		select {
		case g := <-gotAway:
			away = &g
			break attack
		default:
		}
		if ahead := time.Duration(sent/perMs)*time.Millisecond - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
		c.buf.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "example.com"}, {":path", "/attack"}} {
			c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		id := c.next
		c.next += 2
		if writeErr = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.buf.Bytes(), EndStream: true, EndHeaders: true}); writeErr != nil {
			break
		}
		if writeErr = c.fr.WriteRSTStream(id, http2.ErrCodeCancel); writeErr != nil {
			break
		}
		sent++
	}
	attackTime := time.Since(start)
	if away == nil {
		select {
		case g := <-gotAway:
			away = &g
		case <-ctx.Done():
			t.Fatalf("no GOAWAY nor EOF within the deadline (sent %d streams in %v); backend: %d connections, %d requests",
				sent, attackTime, be.conns.Load(), be.reqs.Load())
		}
	}
	stopPolite()
	politeWG.Wait()

	conns := be.conns.Load()
	t.Logf("sent %d streams in %v (write error: %v); GOAWAY %v after %v (read error: %v); backend: %d connections, %d requests; polite client: %d ok",
		sent, attackTime.Round(time.Millisecond), writeErr, away.code, away.at.Sub(start).Round(time.Millisecond), away.err,
		conns, be.reqs.Load(), politeOK.Load())
	if away.err != nil {
		t.Errorf("the connection ended without a GOAWAY: %v", away.err)
	} else if away.code != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM", away.code)
	}
	if sent >= maxStreams {
		t.Errorf("the server took all %d streams", sent)
	}
	// Until the connection is suspect, its requests reach backends, and
	// each one cut costs a backend connection; then few do.
	if limit := int64(h2SuspectResets + h2BackendSlots); conns > limit {
		t.Errorf("the backend accepted %d connections, want at most %d", conns, limit)
	}
	if politeOK.Load() == 0 || politeBad.Load() > 0 {
		t.Errorf("polite client during the attack: %d ok, %d failed", politeOK.Load(), politeBad.Load())
	}

	// And after it, on a new connection.
	status, body, _ := get(t, polite, h.url(listenA, "/after"))
	if status != 200 || body != "ok" {
		t.Errorf("after the attack: %d %q", status, body)
	}

	// The abusive connection is gone: the server closes it after the GOAWAY.
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := c.fr.ReadFrame(); err != nil {
			if isTimeoutErr(err) {
				t.Errorf("the abusive connection stays open after its GOAWAY")
			}
			break
		}
	}
}

// TestH2BackendSlots: a connection has at most h2BackendSlots requests at
// backends; the rest wait for a slot, and one whose stream ends while it
// waits never reaches a backend.
func TestH2BackendSlots(t *testing.T) {
	release := make(chan struct{})
	var inFlight, peak atomic.Int64
	be := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		io.WriteString(w, "ok")
	})
	h := newHarness(t)
	h.update(svcConf("s", listenA, be.addr))
	cl := h2cClient(t)

	const n = h2BackendSlots + 8
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, n)
	for range n {
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", h.url(listenA, "/"), nil)
			resp, err := cl.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = errors.New(resp.Status)
				}
			}
			errc <- err
		}()
	}
	waitFor(t, "the backend slots to fill", func() bool { return inFlight.Load() == h2BackendSlots })
	time.Sleep(50 * time.Millisecond) // the others wait, rather than arrive late
	if got := inFlight.Load(); got != h2BackendSlots {
		t.Errorf("%d requests at the backend, want %d", got, h2BackendSlots)
	}
	// One more, given up while it waits: it never reaches the backend.
	gctx, gcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	req, _ := http.NewRequestWithContext(gctx, "GET", h.url(listenA, "/given-up"), nil)
	if resp, err := cl.Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("a request over the limit got %s while the slots were taken", resp.Status)
	}
	gcancel()
	// Do returns before the client's RST_STREAM is out: give the server
	// time to see it before the slots come free.
	time.Sleep(200 * time.Millisecond)
	close(release)
	for range n {
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("request: %v", err)
			}
		case <-ctx.Done():
			t.Fatal("requests did not finish")
		}
	}
	if p := peak.Load(); p > h2BackendSlots {
		t.Errorf("peak %d requests in flight, want at most %d", p, h2BackendSlots)
	}
	if got := be.reqs.Load(); got != n {
		t.Errorf("the backend got %d requests, want %d", got, n)
	}
	if got := be.conns.Load(); got > h2BackendSlots {
		t.Errorf("%d backend connections for one client connection, want at most %d", got, h2BackendSlots)
	}
}

// TestH2AbusiveConnectionGoesQuiet: a client found abusive that stops
// opening streams (so the server's queue never fills) is cut after
// h2AbuseGrace.
func TestH2AbusiveConnectionGoesQuiet(t *testing.T) {
	be := startCountingBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	h := newHarness(t)
	h.update(svcConf("s", listenA, be.addr))
	c := dialH2Raw(t, h.real(listenA), time.Now().Add(h2AbuseGrace+5*time.Second))
	// Enough resets to be found abusive, too few to fill the queue behind
	// the handlers it then holds.
	const n = h2MaxResets + h2MaxStreams/2
	start := time.Now()
	for i := range n {
		if ahead := time.Duration(i/20)*time.Millisecond - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
		id := c.headers(":method", "GET", ":scheme", "http", ":authority", "example.com", ":path", "/")
		mustf(t, c.fr.WriteRSTStream(id, http2.ErrCodeCancel), "RST_STREAM")
	}
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			if isTimeoutErr(err) {
				t.Fatalf("the connection is still open %v after the attack", time.Since(start))
			}
			t.Logf("closed after %v: %v", time.Since(start).Round(time.Millisecond), err)
			break
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			t.Logf("GOAWAY %v after %v", ga.ErrCode, time.Since(start).Round(time.Millisecond))
		}
	}
	if d := time.Since(start); d < h2AbuseGrace/2 || d > h2AbuseGrace+2*time.Second {
		t.Errorf("closed after %v, want about %v", d, h2AbuseGrace)
	}
}

func TestH2ResetBudget(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	for _, tc := range []struct {
		resets, answered int
		suspect, abusive bool
	}{
		{h2SuspectResets, 0, false, false},
		{h2SuspectResets + 1, 0, true, false},
		{h2SuspectResets + 1, h2SuspectResets + 1, false, false},
		{h2MaxResets, 0, true, false},
		{h2MaxResets + 1, 0, true, true},
		{h2MaxResets + 1, h2MaxResets + 1, false, false}, // a busy connection that cancels some
		{3 * h2MaxResets, 3*h2MaxResets + 1, false, false},
	} {
		c := &h2Conn{nc: a, log: slog.New(slog.NewTextHandler(io.Discard, nil)), done: make(chan struct{})}
		for range tc.answered {
			c.record(false)
		}
		for range tc.resets {
			c.record(true)
		}
		if c.suspect.Load() != tc.suspect || c.abusive.Load() != tc.abusive {
			t.Errorf("%d resets, %d answered: suspect %v, abusive %v; want %v, %v",
				tc.resets, tc.answered, c.suspect.Load(), c.abusive.Load(), tc.suspect, tc.abusive)
		}
		c.end()
	}
}

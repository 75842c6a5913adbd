package l7

import (
	"context"
	"github.com/xlb-dev/xlb/l7/h1"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// HTTP/2 (cleartext, prior knowledge) reaches the listener's http.Server,
// whose bundled HTTP/2 server hands requests to the listener's ServeHTTP.
// This file adds what that server leaves to the handler, for a proxy that
// speaks HTTP/1.1 to its backends:
//
// Validation (RFC 9113 section 8.3). Go's server already rejects, with
// RST_STREAM PROTOCOL_ERROR, header names that are not lower-case tokens,
// values with a control character other than HTAB (CR, LF, NUL included,
// pseudo-headers too), a missing :method, :scheme or :path, a :scheme other
// than http or https, userinfo in :authority and a :path that
// url.ParseRequestURI rejects; and it answers connection-specific headers
// (Connection, Keep-Alive, Upgrade, ...) and a TE other than "trailers"
// with a 400. It passes on, though, anything else: a :path with spaces
// ("/a?x y", whose query goes to the backend's request line verbatim),
// bytes above 0x7e, an absolute URI or "*" for any method; an :authority
// (or Host) "a b" that becomes the backend's Host; a :method that is no
// token. validHTTP2Request rejects those with a 400 before routing.
//
// Stream abuse (rapid reset, CVE-2023-44487). Go's server runs at most
// MaxConcurrentStreams handlers per connection and queues the streams
// beyond; when the queue holds more than 4 x MaxConcurrentStreams streams
// (which only happens while handlers are slow to finish) it ends the
// connection with GOAWAY ENHANCE_YOUR_CALM. A proxy's handlers end as soon
// as the client resets their stream, so a client that opens and resets
// streams in a loop never fills the queue: each stream costs a handler and,
// when the reset comes while the request is at a backend, that backend
// connection (a request cut off mid-answer cannot be reused). So:
//
//   - MaxConcurrentStreams is h2MaxStreams, explicitly.
//   - Each client connection has h2BackendSlots slots: a request takes one
//     before it is proxied and waits for it at most until its stream ends.
//     A stream already reset when its handler starts goes nowhere.
//   - A connection whose client resets many streams (h2SuspectResets),
//     more than it lets finish, is suspect: its requests wait a moment
//     (h2SuspectDelay) before they are proxied, so that those its client
//     resets at once never reach a backend.
//   - A connection whose client reset more than h2MaxResets streams before
//     their answer within h2ResetWindow, and more than it let finish, is
//     abusive. Its handlers from then on do not return: they hold the
//     server's handler slots until the connection is gone, so the server's
//     queue fills with the client's next streams and the server itself
//     sends GOAWAY ENHANCE_YOUR_CALM and closes the connection (1 s later,
//     its goAwayTimeout). A client that stops sending after being found
//     abusive is cut (closed, without a GOAWAY) after h2AbuseGrace.

// HTTP/2 limits. They are per client connection.
const (
	// h2MaxStreams is the SETTINGS_MAX_CONCURRENT_STREAMS the server
	// announces (Go's default, and what browsers and Go's client expect).
	h2MaxStreams = 100
	// h2BackendSlots bounds a connection's requests in flight to backends:
	// about what five HTTP/1.1 browsers (six connections each) would have.
	h2BackendSlots = 32
	// h2MaxResets streams reset by the client before their answer, within
	// h2ResetWindow and outnumbering those answered, make a connection
	// abusive. A browser that leaves a page cancels its pending requests:
	// up to h2MaxStreams at once, so the budget is twice that.
	h2MaxResets   = 2 * h2MaxStreams
	h2ResetWindow = 10 * time.Second
	// Past h2SuspectResets resets in the window, while they outnumber the
	// answers, a connection's requests wait h2SuspectDelay before they go
	// to a backend: a stream reset right after it was opened ends in the
	// wait instead of cutting a backend connection.
	h2SuspectResets = h2BackendSlots
	h2SuspectDelay  = 5 * time.Millisecond
	// h2AbuseGrace is how long an abusive connection has to fill the
	// server's queue (and get its GOAWAY) before it is closed outright.
	h2AbuseGrace = 2 * time.Second
)

// configureHTTP2 sets the HTTP/2 limits of a listener's http.Server and
// gives each of its connections an h2Conn (in the connection's context).
func configureHTTP2(hs *http.Server, log *slog.Logger) {
	hs.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: h2MaxStreams}
	g := &h2Guard{log: log}
	next := hs.ConnContext
	hs.ConnContext = func(ctx context.Context, nc net.Conn) context.Context {
		if next != nil {
			ctx = next(ctx, nc)
		}
		return g.connContext(ctx, nc)
	}
	hs.ConnState = g.connState
}

// h2Guard keeps a listener's connection states, by connection.
type h2Guard struct {
	log   *slog.Logger
	conns sync.Map // net.Conn -> *h2Conn
}

type h2ConnKey struct{}

func (g *h2Guard) connContext(ctx context.Context, nc net.Conn) context.Context {
	c := &h2Conn{nc: nc, log: g.log, done: make(chan struct{})}
	g.conns.Store(nc, c)
	return context.WithValue(ctx, h2ConnKey{}, c)
}

func (g *h2Guard) connState(nc net.Conn, s http.ConnState) {
	if s != http.StateClosed && s != http.StateHijacked {
		return
	}
	if v, ok := g.conns.LoadAndDelete(nc); ok {
		v.(*h2Conn).end()
	}
}

// h2Conn is the state of one client connection of the listener's
// http.Server; only HTTP/2 requests use it.
type h2Conn struct {
	nc  net.Conn
	log *slog.Logger

	slotsOnce sync.Once
	slots     chan struct{} // the backend slots taken

	mu          sync.Mutex
	windowStart time.Time
	resets      int // in the window: streams reset before their answer
	answered    int // in the window: streams answered

	suspect atomic.Bool // resets are many, and more than answers: see h2SuspectResets
	abusive atomic.Bool
	kill    *time.Timer // set with abusive, under mu

	endOnce sync.Once
	done    chan struct{} // closed when the connection is gone
}

func (c *h2Conn) end() {
	c.endOnce.Do(func() { close(c.done) })
	c.mu.Lock()
	if c.kill != nil {
		c.kill.Stop()
	}
	c.mu.Unlock()
}

// admitHTTP2 is the listener's gate for an HTTP/2 request: false means the
// request was answered (400) or is to be dropped; true means proxy it and
// call c.release(r) at the end (c may be nil).
func admitHTTP2(w http.ResponseWriter, r *http.Request) (c *h2Conn, ok bool) {
	c, _ = r.Context().Value(h2ConnKey{}).(*h2Conn)
	if c != nil && c.abusive.Load() {
		<-c.done // hold the server's handler slot: see the top of the file
		return nil, false
	}
	if msg := validHTTP2Request(r); msg != "" {
		g := h2BadRequest[msg]
		g.write(w, w.Header())
		return nil, false
	}
	if c == nil {
		return nil, true
	}
	ctx := r.Context()
	if ctx.Err() != nil { // reset before its handler ran
		c.record(true)
		return nil, false
	}
	if c.suspect.Load() {
		// A stream that its client resets at once ends here, before it
		// costs a backend connection.
		t := time.NewTimer(h2SuspectDelay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			c.record(true)
			return nil, false
		}
		if c.abusive.Load() {
			<-c.done
			return nil, false
		}
	}
	c.slotsOnce.Do(func() { c.slots = make(chan struct{}, h2BackendSlots) })
	select {
	case c.slots <- struct{}{}:
		return c, true
	default:
	}
	select {
	case c.slots <- struct{}{}:
		if ctx.Err() == nil {
			return c, true
		}
		<-c.slots // the stream ended as the slot came free
	case <-ctx.Done():
	}
	c.record(true)
	return nil, false
}

// release ends a request admitted on c: it frees the slot and counts the
// stream as answered or reset.
func (c *h2Conn) release(r *http.Request) {
	if c == nil {
		return
	}
	<-c.slots
	c.record(r.Context().Err() != nil)
}

// record counts a stream that ended; reset: by the client, before its
// answer was complete. It marks the connection abusive when resets pass
// the budget.
func (c *h2Conn) record(reset bool) {
	select {
	case <-c.done:
		return // the connection is gone, not the stream
	default:
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Sub(c.windowStart) > h2ResetWindow {
		c.windowStart, c.resets, c.answered = now, 0, 0
	}
	if reset {
		c.resets++
	} else {
		c.answered++
	}
	c.suspect.Store(c.resets > h2SuspectResets && c.resets > c.answered)
	if !reset || c.resets <= h2MaxResets || c.resets <= c.answered || c.abusive.Load() {
		return
	}
	c.abusive.Store(true)
	c.log.Warn("l7: HTTP/2 client resets its streams in bulk, ending the connection",
		"remote", c.nc.RemoteAddr().String(), "resets", c.resets, "answered", c.answered, "window", h2ResetWindow)
	c.kill = time.AfterFunc(h2AbuseGrace, func() {
		c.nc.Close()
		c.endOnce.Do(func() { close(c.done) })
	})
}

// validHTTP2Request checks what Go's HTTP/2 server lets through (see the
// top of the file) and returns why r is malformed, or "".
func validHTTP2Request(r *http.Request) string {
	if !h1.ValidToken(r.Method) {
		return h2BadMethod
	}
	if !h1.ValidHost(r.Host) {
		return h2BadAuthority
	}
	if hv, ok := r.Header["Host"]; ok {
		// RFC 9113 section 8.3.1: a Host that differs from :authority
		// makes the request malformed. Without :authority, r.Host is it.
		if len(hv) != 1 || !strings.EqualFold(hv[0], r.Host) {
			return h2BadAuthority
		}
	}
	if r.Method == http.MethodConnect {
		return "" // no :path; the proxy answers 405
	}
	// r.RequestURI is :path as the client sent it; the backend's request
	// line gets its query verbatim (and its path, if validly escaped).
	p := r.RequestURI
	switch {
	case p == "*":
		if r.Method != http.MethodOptions {
			return h2BadPath
		}
	case p == "" || p[0] != '/':
		return h2BadPath // empty, or absolute form: RFC 9113 section 8.3.1
	case !allBytes(p, func(b byte) bool { return '!' <= b && b <= '~' }):
		return h2BadPath // a space, a control character, a byte above 0x7e
	}
	return ""
}

// Why an HTTP/2 request is malformed, and its 400 answers.
const (
	h2BadMethod    = ":method is not a token"
	h2BadAuthority = ":authority or Host is not a valid host[:port], or they differ"
	h2BadPath      = ":path is not an origin-form target of printable ASCII (or * for OPTIONS)"
)

var h2BadRequest = map[string]gatewayResponse{
	h2BadMethod:    newGatewayResponse(http.StatusBadRequest, "malformed HTTP/2 request: "+h2BadMethod),
	h2BadAuthority: newGatewayResponse(http.StatusBadRequest, "malformed HTTP/2 request: "+h2BadAuthority),
	h2BadPath:      newGatewayResponse(http.StatusBadRequest, "malformed HTTP/2 request: "+h2BadPath),
}

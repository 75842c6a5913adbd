package l7

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"
)

// transport sends proxied requests to backends. Requests without a body and
// without an Upgrade go over its own HTTP/1.1 keep-alive pools: the request
// is written and the answer read in the request's goroutine. net/http's
// Transport, which the rest goes through (bodies stream in both directions
// at once, 100-continue, WebSocket), spends two goroutines per connection
// and four goroutine hand-offs per request on that, which on a loaded
// 2-core host cost more CPU than the proxying itself.
type transport struct {
	key    transportKey
	dialer *net.Dialer
	slow   *http.Transport

	mu    sync.Mutex
	pools map[string]*connPool // by backend host:port
}

func newProxyTransport(k transportKey) *transport {
	return &transport{
		key:    k,
		dialer: &net.Dialer{Timeout: k.connect, KeepAlive: 30 * time.Second},
		slow:   newTransport(k),
		pools:  map[string]*connPool{},
	}
}

// peekAfterIdle: a connection idle longer than this is checked before use
// (see alive). Backends close idle connections after seconds (nginx 75 s,
// Apache and Node.js 5 s), not within this; under load connections are
// reused within microseconds and skip the syscall. A connection closed in
// the window anyway costs a replayable request a resend, as with net/http.
const peekAfterIdle = 250 * time.Millisecond

// idleConnTimeout closes keep-alive connections unused this long, as
// net/http's IdleConnTimeout does for the other path.
const idleConnTimeout = 90 * time.Second

// RoundTrip is roundTrip without a deadline.
func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.roundTrip(req, time.Time{})
}

// direct reports whether req goes over the transport's own pools.
func (t *transport) direct(req *http.Request) bool {
	return req.Body == nil && req.Header["Upgrade"] == nil
}

// roundTrip sends req (whose URL.Host is the backend) and returns the
// answer. deadline (zero: none) bounds the whole exchange on the direct
// path; for the other one it must be in req's context. Errors are those of
// net/http's Transport as classify expects: a *dialError when nothing
// reached the backend, a timeout when the response header or the body did
// not come in time.
func (t *transport) roundTrip(req *http.Request, deadline time.Time) (*http.Response, error) {
	if !t.direct(req) {
		return t.slow.RoundTrip(req)
	}
	ctx := req.Context()
	p := t.pool(req.URL.Host)
	resentFresh := false
	for {
		c, err := p.get(ctx, t.dialer, deadline)
		if err != nil {
			return nil, err
		}
		res, err := c.roundTrip(ctx, req, t.key.header, deadline)
		if err == nil {
			return res, nil
		}
		c.close()
		// The backend closed the connection without a byte of answer: a
		// kept one it closed while idle (as net/http's Transport does), or
		// a new one it had not accepted yet when it shut its listener
		// (the kernel resets those). A replayable request goes again on a
		// new connection, once for a new one; a refused dial then sends it
		// to another backend.
		if !c.answered && replayable(req) && ctx.Err() == nil && (c.served > 0 || !resentFresh) {
			resentFresh = resentFresh || c.served == 0
			continue
		}
		return nil, err
	}
}

// CloseIdleConnections closes every idle connection of both paths.
func (t *transport) CloseIdleConnections() {
	t.slow.CloseIdleConnections()
	t.mu.Lock()
	pools := make([]*connPool, 0, len(t.pools))
	for _, p := range t.pools {
		pools = append(pools, p)
	}
	t.mu.Unlock()
	for _, p := range pools {
		p.closeIdle(time.Time{})
	}
}

func (t *transport) pool(addr string) *connPool {
	t.mu.Lock()
	p := t.pools[addr]
	if p == nil {
		p = &connPool{addr: addr}
		t.pools[addr] = p
	}
	t.mu.Unlock()
	return p
}

// replayable: a request that may be sent again after a kept connection
// turned out closed (RFC 9110 section 9.2.2: idempotent and without a body,
// which the fast path's requests are).
func replayable(req *http.Request) bool {
	return idempotent(req.Method) || req.Header["Idempotency-Key"] != nil || req.Header["X-Idempotency-Key"] != nil
}

// connPool holds one backend's idle keep-alive connections, most recently
// used first out (so a burst's extra connections age out).
type connPool struct {
	addr string

	mu   sync.Mutex
	idle []*backendConn // oldest first
	reap *time.Timer
}

// get takes an idle connection or dials one. A dial ends at the connect
// timeout (the dialer's) or at deadline (the request's; zero: none),
// whichever comes first; the request's running out is a timeout, not a
// connect error (504, not retried), as on net/http's path.
func (p *connPool) get(ctx context.Context, d *net.Dialer, deadline time.Time) (*backendConn, error) {
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			break
		}
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		idle := time.Since(c.idleSince)
		if idle < peekAfterIdle {
			return c, nil
		}
		if idle < idleConnTimeout {
			c.setReadDeadline(time.Time{}, 0) // a past one would fail the peek
			if c.alive() {
				return c, nil
			}
		}
		c.close()
	}
	dctx := ctx
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		dctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	nc, err := d.DialContext(dctx, "tcp", p.addr)
	if err != nil {
		// The dialer's own deadline (the earlier of the two) may fire before
		// dctx's timer: the clock decides which timeout it was.
		if ctx.Err() == nil && !deadline.IsZero() && (dctx.Err() != nil || !time.Now().Before(deadline)) {
			return nil, errRequestTimeout
		}
		return nil, &dialError{err}
	}
	c := &backendConn{pool: p, nc: nc}
	c.interrupt = func() { nc.SetDeadline(aLongTimeAgo) }
	c.br = bufio.NewReaderSize(countingReader{nc, &c.read}, 4<<10)
	c.bw = bufio.NewWriterSize(nc, 4<<10)
	return c, nil
}

// maxIdlePerBackend bounds the idle connections kept to one backend.
const maxIdlePerBackend = maxIdleConnsPerHost

func (p *connPool) put(c *backendConn) {
	c.idleSince = time.Now()
	p.mu.Lock()
	if len(p.idle) >= maxIdlePerBackend {
		p.mu.Unlock()
		c.close()
		return
	}
	p.idle = append(p.idle, c)
	if p.reap == nil {
		p.reap = time.AfterFunc(idleConnTimeout, p.reapIdle)
	}
	p.mu.Unlock()
}

// reapIdle closes connections idle longer than idleConnTimeout and comes
// back while any are left.
func (p *connPool) reapIdle() {
	left := p.closeIdle(time.Now().Add(-idleConnTimeout))
	p.mu.Lock()
	p.reap = nil
	if left > 0 {
		p.reap = time.AfterFunc(idleConnTimeout/2, p.reapIdle)
	}
	p.mu.Unlock()
}

// closeIdle closes the idle connections unused since before (all of them
// with a zero before) and returns how many stay.
func (p *connPool) closeIdle(before time.Time) int {
	p.mu.Lock()
	var stale []*backendConn
	keep := p.idle[:0]
	for _, c := range p.idle {
		if before.IsZero() || c.idleSince.Before(before) {
			stale = append(stale, c)
		} else {
			keep = append(keep, c)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	left := len(keep)
	p.mu.Unlock()
	for _, c := range stale {
		c.close()
	}
	return left
}

// backendConn is one HTTP/1.1 connection to a backend, used by one request
// at a time.
type backendConn struct {
	pool      *connPool
	nc        net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	read      int64 // bytes read from nc, ever
	served    int   // requests answered on it before this one
	answered  bool  // this request got bytes back
	idleSince time.Time
	// readDeadline is the read deadline last set on nc; the hook that
	// interrupts an exchange sets one of its own, and closes the
	// connection.
	readDeadline readDeadline
	interrupt    func() // makes blocked I/O on nc return at once
}

// countingReader counts what the backend sent, so that a failure can tell
// "closed before answering" (safe to resend) from a broken answer.
type countingReader struct {
	r io.Reader
	n *int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

// aLongTimeAgo is a deadline that makes blocked I/O return at once.
var aLongTimeAgo = time.Unix(1, 0)

// roundTrip sends req on c and reads the answer's header. Reads are bounded
// by headerTimeout until the header is in, then by deadline (zero: none).
// The read deadline is set once per request when the whole answer arrived
// with its header (the common case for small answers), twice otherwise; a
// connection in the pool may keep a stale one, which the next request
// replaces before it reads.
func (c *backendConn) roundTrip(ctx context.Context, req *http.Request, headerTimeout time.Duration, deadline time.Time) (*http.Response, error) {
	c.answered = false
	// The context (client gone) interrupts blocked I/O by putting the
	// deadline in the past; stop undoes the hook when the answer has been
	// read.
	stop := context.AfterFunc(ctx, c.interrupt)
	if err := writeRequest(c.bw, req); err != nil {
		stop()
		return nil, err
	}
	headerBy := deadline
	if headerTimeout > 0 {
		if t := time.Now().Add(headerTimeout); headerBy.IsZero() || t.Before(headerBy) {
			headerBy = t
		}
	}
	c.setReadDeadline(headerBy, headerTimeout)
	before := c.read
	var res *http.Response
	var err error
	for {
		var ok bool // a plain answer is read in place, anything else by net/http
		if res, ok, err = readSimpleResponse(c.br, req); !ok {
			res, err = http.ReadResponse(c.br, req)
		}
		if err != nil || res.StatusCode >= 200 || res.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// 1xx interim answers (103 Early Hints, a stray 100) are not passed on.
	}
	c.answered = c.read > before
	if err != nil {
		stop()
		return nil, err
	}
	buffered := res.Body == http.NoBody || res.ContentLength >= 0 && int64(c.br.Buffered()) >= res.ContentLength
	if !buffered && !headerBy.Equal(deadline) && c.setReadDeadline(deadline, deadline.Sub(headerBy)) {
		if ctx.Err() != nil { // the hook ran before the line above
			c.nc.SetDeadline(aLongTimeAgo)
		}
	}
	reuse := !res.Close && res.StatusCode != http.StatusSwitchingProtocols
	if res.Body == http.NoBody {
		c.release(stop, reuse)
		return res, nil
	}
	res.Body = &backendBody{rc: res.Body, c: c, stop: stop, reuse: reuse}
	return res, nil
}

// setReadDeadline bounds reads on c by t (zero: none); a timeout may end up
// to timeout/32 (at most 100 ms) early (see readDeadline).
func (c *backendConn) setReadDeadline(t time.Time, timeout time.Duration) bool {
	return c.readDeadline.set(c.nc, t, min(timeout/32, 100*time.Millisecond))
}

// readDeadline is a connection's read deadline as last set. A deadline
// already set up to slack before the one wanted is kept: a busy connection
// does not rearm a runtime timer on every request.
type readDeadline struct{ t time.Time }

// set makes nc's read deadline t (zero: none), unless the one set is the
// same or up to slack before it, and reports whether it changed it.
func (d *readDeadline) set(nc net.Conn, t time.Time, slack time.Duration) bool {
	if d.t.Equal(t) || !d.t.IsZero() && !t.IsZero() && !d.t.After(t) && t.Sub(d.t) <= slack {
		return false
	}
	d.t = t
	nc.SetReadDeadline(t)
	return true
}

// release ends a request on c: the connection goes back to its pool when
// the answer ended cleanly and nothing interrupted it, else it is closed.
func (c *backendConn) release(stop func() bool, reuse bool) {
	if stop() && reuse && c.br.Buffered() == 0 {
		c.served++
		c.pool.put(c)
		return
	}
	c.close()
}

func (c *backendConn) close() { c.nc.Close() }

// alive reports whether an idle connection can carry a request: the
// backend has neither closed it nor sent anything unasked. One non-blocking
// peek instead of a reader goroutine per idle connection.
func (c *backendConn) alive() bool {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ok = errors.Is(rerr, syscall.EAGAIN)
		return true
	})
	return ok && err == nil
}

// backendBody is the body of a fast-path answer: at its end the connection
// goes back to the pool; closed early, the connection is closed.
type backendBody struct {
	rc    io.ReadCloser
	c     *backendConn
	stop  func() bool
	reuse bool
	done  bool
}

func (b *backendBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.done = true
		b.c.release(b.stop, b.reuse)
	}
	return n, err
}

func (b *backendBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	b.stop()
	b.c.close()
	return nil
}

// writeRequest writes req's request line and header (it has no body) and
// flushes. Header values are written as they are: the server validated the
// client's, and config validation the rules' (a CR or LF is replaced all
// the same, as net/http does).
func writeRequest(w *bufio.Writer, req *http.Request) error {
	w.WriteString(req.Method)
	w.WriteByte(' ')
	w.WriteString(req.URL.RequestURI())
	w.WriteString(" HTTP/1.1\r\nHost: ")
	host := req.Host
	if host == "" {
		// No Host from the client (HTTP/1.0): the backend's address, as
		// net/http's transport writes on the other path. An empty Host,
		// which RFC 9112 allows, gets a 400 from nginx.
		host = req.URL.Host
	}
	writeHeaderValue(w, host)
	w.WriteString("\r\n")
	for k, vv := range req.Header {
		if k == "Host" || k == "Content-Length" || k == "Transfer-Encoding" || k == "Connection" {
			continue
		}
		for _, v := range vv {
			if v == "" && k == "User-Agent" {
				continue // no User-Agent rather than an empty one
			}
			w.WriteString(k)
			w.WriteString(": ")
			writeHeaderValue(w, v)
			w.WriteString("\r\n")
		}
	}
	switch req.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		w.WriteString("Content-Length: 0\r\n")
	}
	w.WriteString("\r\n")
	return w.Flush()
}

// writeHeaderValue writes v trimmed, with any CR or LF as a space (as
// net/http does: a value never ends the header line early).
func writeHeaderValue(w io.StringWriter, v string) {
	if strings.IndexByte(v, '\r') >= 0 || strings.IndexByte(v, '\n') >= 0 {
		v = newlineToSpace.Replace(v)
	}
	w.WriteString(strings.TrimSpace(v))
}

var newlineToSpace = strings.NewReplacer("\r", " ", "\n", " ")

var (
	_ http.RoundTripper = (*transport)(nil)
	_ io.ReadCloser     = (*backendBody)(nil)
)

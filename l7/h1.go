package l7

import (
	"github.com/xlb-dev/xlb/l7/h1"

	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The listener serves the common request itself: HTTP/1.1, no body, no
// Upgrade, no Expect. net/http's server spends a goroutine and several
// scheduler hand-offs on every request (it reads the connection in the
// background to notice a client that goes away), which at one connection
// was 10-20 us of the median and a fifth of the CPU per request. The first
// request on a connection that is anything else (a body, a WebSocket
// upgrade, HTTP/2 with prior knowledge, HTTP/1.0, a malformed one) hands
// the connection, with every byte read so far, to the listener's
// http.Server, which keeps it to the end.

// h1Conns tracks the connections the listener serves itself, for shutdown.
type h1Conns struct {
	mu       sync.Mutex
	conns    map[*h1Conn]struct{}
	shutting atomic.Bool // set under mu
	wg       sync.WaitGroup
}

// add registers c; false once shutdown began.
func (t *h1Conns) add(c *h1Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.shutting.Load() {
		return false
	}
	if t.conns == nil {
		t.conns = map[*h1Conn]struct{}{}
	}
	t.conns[c] = struct{}{}
	t.wg.Add(1)
	return true
}

func (t *h1Conns) remove(c *h1Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	t.wg.Done()
}

// shutdown closes the idle connections (all of them with active) and makes
// the others close after their request; wg.Wait then returns when all are
// gone.
func (t *h1Conns) shutdown(active bool) {
	t.mu.Lock()
	t.shutting.Store(true)
	for c := range t.conns {
		if active || c.state.Load() == h1Idle {
			c.nc.Close()
		}
	}
	t.mu.Unlock()
}

func (t *h1Conns) isShutting() bool { return t.shutting.Load() }

// handoff is the net.Listener the listener's http.Server serves: it yields
// the connections the fast path gave up on.
type handoff struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newHandoff(addr net.Addr) *handoff {
	return &handoff{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.ch:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

func (h *handoff) Close() error {
	h.once.Do(func() { close(h.done) })
	return nil
}

func (h *handoff) Addr() net.Addr { return h.addr }

// give passes c to the http.Server; false if it is shutting down.
func (h *handoff) give(c net.Conn) bool {
	select {
	case h.ch <- c:
		return true
	case <-h.done:
		return false
	}
}

// replayConn is a connection handed over: its reads return the bytes the
// fast path had read first.
type replayConn struct {
	net.Conn
	buf []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// h1Conn states.
const (
	h1Idle int32 = iota
	h1Active
)

// h1Conn is one client connection served by the fast path.
type h1Conn struct {
	l     *listener
	nc    net.Conn
	br    *bufio.Reader // reads the connection through stash
	bw    *bufio.Writer
	state atomic.Int32
	// tmpl is what every request of the connection starts from: it holds
	// the connection's context and the client address.
	tmpl *http.Request

	// The client watch: a request that takes longer than clientWatchDelay
	// gets a read on the connection, to notice a client that went away
	// (as net/http does for every request, from its start).
	watchTimer *time.Timer
	watchMu    sync.Mutex
	watchState int // watchOff, watchArmed, watchRunning
	watchDone  chan struct{}
	// ctx is the context of the connection's requests: the watch cancels
	// it when the client has gone (the connection is closed then).
	ctx        context.Context
	cancel     context.CancelFunc
	clientGone atomic.Bool // the watch found the connection closed
	stash      []byte      // a byte the watch read: the next request's

	readDeadline h1.Deadline // last set on nc by setReadDeadline
	resp         h1Response  // the answer being written
}

// connScratch is what the fast path lends each request of a client
// connection in turn: the peer, parsed once, and storage reused from one
// request to the next. The requests are served one at a time, and nothing
// keeps a request's exchange or outgoing header after its ServeHTTP has
// returned, except net/http's transport (requests with a body or an
// Upgrade), which the fast path's requests do not take; a header that went
// that way anyway is not given back.
type connScratch struct {
	peer   peer
	header http.Header // the outgoing header's map; nil while lent or not given back
	ex     exchange
}

type connScratchKey struct{}

// scratchOf is the connScratch of a fast-path request's context, or nil.
func scratchOf(ctx context.Context) *connScratch {
	sc, _ := ctx.Value(connScratchKey{}).(*connScratch)
	return sc
}

const (
	watchOff = iota
	watchArmed
	watchRunning
)

// clientWatchDelay: requests answered sooner never start the client watch.
const clientWatchDelay = 50 * time.Millisecond

// maxHeadBytes bounds a request head on the fast path; a longer one is
// handed to net/http (which allows 1 MB).
const maxHeadBytes = 8 << 10

// stashReader is what the connection's bufio.Reader reads: first a byte
// the client watch took, then the connection.
type stashReader struct{ c *h1Conn }

func (r stashReader) Read(p []byte) (int, error) {
	if len(r.c.stash) > 0 {
		n := copy(p, r.c.stash)
		r.c.stash = r.c.stash[n:]
		return n, nil
	}
	return r.c.nc.Read(p)
}

// serveConn serves nc until it closes, or hands it to the http.Server.
func (l *listener) serveConn(nc net.Conn) {
	c := &h1Conn{l: l, nc: nc}
	if !l.h1.add(c) {
		nc.Close()
		return
	}
	defer l.h1.remove(c)
	c.ctx, c.cancel = context.WithCancel(l.baseCtx)
	defer c.cancel()
	c.br = bufio.NewReaderSize(stashReader{c}, maxHeadBytes)
	c.bw = bufio.NewWriterSize(nc, 4<<10)
	remote := nc.RemoteAddr().String()
	sc := &connScratch{peer: parsePeer(remote), header: make(http.Header, 16)}
	c.tmpl = (&http.Request{RemoteAddr: remote}).WithContext(context.WithValue(c.ctx, connScratchKey{}, sc))
	c.watchTimer = time.AfterFunc(time.Hour, c.watch)
	c.watchTimer.Stop()
	defer c.watchTimer.Stop()
	first := true
	for {
		req, head, ok := c.readRequest(first)
		if !ok {
			nc.Close()
			return
		}
		if req == nil { // not for the fast path
			c.handOver()
			return
		}
		first = false
		c.br.Discard(head)
		if !c.serve(req) {
			nc.Close()
			return
		}
		c.state.Store(h1Idle)
		if l.h1.isShutting() {
			nc.Close()
			return
		}
	}
}

// readRequest waits for the next request head and parses it. ok false: the
// connection is to be closed; req nil (ok true): hand it over. head is the
// number of bytes of the head.
func (c *h1Conn) readRequest(first bool) (req *http.Request, head int, ok bool) {
	o := &c.l.srv.opts
	wait := o.IdleTimeout
	if first {
		wait = o.ReadHeaderTimeout
	}
	c.setReadDeadline(time.Now().Add(wait), wait)
	if _, err := c.br.Peek(1); err != nil {
		return nil, 0, false
	}
	c.state.Store(h1Active)
	for waited := false; ; waited = true {
		buf, _ := c.br.Peek(c.br.Buffered())
		if i := bytes.Index(buf, []byte("\r\n\r\n")); i >= 0 {
			if bytes.Contains(buf[:i], []byte("\n\n")) {
				return nil, 0, true // bare LF line ends: net/http's to judge
			}
			head = i + 4
			break
		}
		if bytes.Contains(buf, []byte("\n\n")) || len(buf) >= maxHeadBytes {
			return nil, 0, true
		}
		if !waited && !first {
			// The head did not come in one piece: from here it has
			// ReadHeaderTimeout, not the idle timeout.
			c.setReadDeadline(time.Now().Add(o.ReadHeaderTimeout), 0)
		}
		if _, err := c.br.Peek(len(buf) + 1); err != nil {
			if len(buf) > 0 && !errors.Is(err, io.EOF) && !isTimeoutErr(err) {
				return nil, 0, false
			}
			if len(buf) > 0 {
				return nil, 0, true // cut short: net/http answers it
			}
			return nil, 0, false
		}
	}
	buf, _ := c.br.Peek(head)
	if bytes.HasPrefix(buf, []byte("PRI * HTTP/2.0\r\n")) {
		return nil, 0, true
	}
	r, fast := parseRequest(buf, c.tmpl)
	if !fast {
		return nil, 0, true
	}
	return r, head, true
}

// setReadDeadline sets the connection's read deadline to t; a timeout may
// end up to timeout/32 (at most 1 s) early (see readDeadline). The deadline
// stays while a request is served (no read waits on it then, and the client
// watch takes a timeout for "still there").
func (c *h1Conn) setReadDeadline(t time.Time, timeout time.Duration) {
	c.readDeadline.SetRead(c.nc, t, min(timeout/32, time.Second))
}

// handOver gives the connection, with what was read of it, to net/http.
func (c *h1Conn) handOver() {
	c.nc.SetReadDeadline(time.Time{})
	n := c.br.Buffered()
	buf, _ := c.br.Peek(n)
	rc := &replayConn{Conn: c.nc, buf: append(append([]byte(nil), c.stash...), buf...)}
	if c.l.h1.isShutting() || !c.l.handoff.give(rc) {
		c.nc.Close()
	}
}

// serve answers one request; false: close the connection.
func (c *h1Conn) serve(req *http.Request) (keep bool) {
	// The writer and its header map are the connection's, reset per
	// request: nothing keeps them after the handler returns.
	h := c.resp.h
	if h == nil {
		h = make(http.Header, 16)
	}
	clear(h)
	c.resp = h1Response{c: c, req: req, h: h, clen: -1}
	w := &c.resp
	w.close = req.Close
	c.armWatch()
	defer func() {
		watchRead := c.disarmWatch()
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				c.l.srv.log.Error("l7: panic serving a request", "panic", p, "remote", req.RemoteAddr)
			}
			keep = false
			return
		}
		keep = !watchRead && w.finish() && !w.close
	}()
	c.l.ServeHTTP(w, req)
	return // keep is decided by the deferred call
}

// armWatch starts the timer of the client watch.
func (c *h1Conn) armWatch() {
	c.watchMu.Lock()
	c.watchState = watchArmed
	c.watchMu.Unlock()
	c.watchTimer.Reset(clientWatchDelay)
}

// watch runs when a request is still going after clientWatchDelay: one
// read on the client connection ends the request's context if the client
// closed it. A byte read (the client sent its next request early) is kept.
func (c *h1Conn) watch() {
	c.watchMu.Lock()
	if c.watchState != watchArmed || c.br.Buffered() > 0 || len(c.stash) > 0 {
		c.watchMu.Unlock()
		return
	}
	c.watchState = watchRunning
	c.watchDone = make(chan struct{})
	done := c.watchDone
	c.watchMu.Unlock()
	defer close(done)
	var b [1]byte
	n, err := c.nc.Read(b[:])
	if n == 1 {
		c.stash = append(c.stash[:0], b[0])
		return
	}
	if err != nil && !isTimeoutErr(err) {
		c.clientGone.Store(true)
		c.cancel()
	}
}

// disarmWatch stops the client watch, interrupting its read if it runs,
// and reports whether that read found the connection closed.
func (c *h1Conn) disarmWatch() (closed bool) {
	c.watchTimer.Stop()
	c.watchMu.Lock()
	state, done := c.watchState, c.watchDone
	c.watchState = watchOff
	c.watchMu.Unlock()
	if state != watchRunning {
		return false
	}
	c.readDeadline.SetRead(c.nc, h1.ALongTimeAgo, 0)
	<-done
	c.readDeadline.SetRead(c.nc, time.Time{}, 0)
	return c.clientGone.Load()
}

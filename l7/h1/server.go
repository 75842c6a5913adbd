package h1

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Server serves HTTP/1.0 and HTTP/1.1 client connections itself: it reads
// each request head strictly (request.go), hands the request to Handler
// with a body reader that enforces its framing (body.go), writes the
// answer (writer.go) and keeps the connection for the next request only
// while that is certain to be safe. A connection that opens with the
// HTTP/2 preface goes to HandOff.
//
// net/http's server spends a goroutine and several scheduler hand-offs on
// every request (it reads the connection in the background to notice a
// client that goes away); this one reads and answers in the connection's
// goroutine and watches for a departed client only when a request runs
// longer than clientWatchDelay.
//
// Fields are set before the first ServeConn.
type Server struct {
	Handler http.Handler

	// HeadTimeout bounds a request head from its first byte (and the first
	// request's wait for that byte): 408 when it runs out with part of a
	// head read. 0: DefaultHeadTimeout.
	HeadTimeout time.Duration
	// IdleTimeout closes a kept connection that sends nothing. 0:
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// ClientTimeout bounds every write to the client and every read of a
	// request body: a client that takes nothing (or sends nothing of its
	// body) for this long loses its request. 0: DefaultClientTimeout.
	ClientTimeout time.Duration
	// MaxRequestLine bounds the request line (414 beyond), MaxRequestHead
	// the whole head (431 beyond). 0: the defaults.
	MaxRequestLine int
	MaxRequestHead int

	// BaseContext is the parent of every connection's context (nil:
	// context.Background()); ConnContext, if set, derives the context of a
	// connection's requests from it.
	BaseContext context.Context
	ConnContext func(ctx context.Context, nc net.Conn) context.Context
	// HandOff takes a connection that opens with the HTTP/2 preface; its
	// reads return the bytes read so far first. false, or nil: closed.
	HandOff func(nc net.Conn) bool
	// OnReject, if set, is told the status of every answer the Server gave
	// itself to a request it refused (400, 408, 414, 417, 431, 501, 505).
	OnReject func(status int)
	Logger   *slog.Logger

	once     sync.Once
	mu       sync.Mutex
	conns    map[*clientConn]struct{}
	shutting atomic.Bool // set under mu
	wg       sync.WaitGroup
}

// Defaults of the Server's limits.
const (
	DefaultHeadTimeout    = 30 * time.Second
	DefaultIdleTimeout    = 120 * time.Second
	DefaultClientTimeout  = 60 * time.Second
	DefaultMaxRequestLine = 8 << 10
	DefaultMaxRequestHead = 64 << 10
)

func (s *Server) init() {
	if s.HeadTimeout <= 0 {
		s.HeadTimeout = DefaultHeadTimeout
	}
	if s.IdleTimeout <= 0 {
		s.IdleTimeout = DefaultIdleTimeout
	}
	if s.ClientTimeout <= 0 {
		s.ClientTimeout = DefaultClientTimeout
	}
	if s.MaxRequestLine <= 0 {
		s.MaxRequestLine = DefaultMaxRequestLine
	}
	if s.MaxRequestHead <= 0 {
		s.MaxRequestHead = DefaultMaxRequestHead
	}
	if s.MaxRequestLine > s.MaxRequestHead {
		s.MaxRequestLine = s.MaxRequestHead
	}
	if s.BaseContext == nil {
		s.BaseContext = context.Background()
	}
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	s.conns = map[*clientConn]struct{}{}
}

// add registers c; false once shutdown began.
func (s *Server) add(c *clientConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) remove(c *clientConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Shutdown closes the idle connections (all of them with active) and makes
// the others close after their request; Wait then returns when all are
// gone.
func (s *Server) Shutdown(active bool) {
	s.once.Do(s.init)
	s.mu.Lock()
	s.shutting.Store(true)
	for c := range s.conns {
		if active || c.state.Load() == stateIdle {
			c.nc.Close()
		}
	}
	s.mu.Unlock()
}

// Wait returns when every connection is closed (after Shutdown).
func (s *Server) Wait() { s.wg.Wait() }

// Shutting reports whether Shutdown was called.
func (s *Server) Shutting() bool { return s.shutting.Load() }

// reject counts a refusal.
func (s *Server) reject(status int) {
	if s.OnReject != nil {
		s.OnReject(status)
	}
}

// Connection states.
const (
	stateIdle int32 = iota
	stateActive
)

// clientConn is one client connection.
type clientConn struct {
	srv   *Server
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
	reqOpen    bool // a request is being served (guarded by watchMu)
	// cancel ends the context of the connection's requests: the watch
	// calls it when the client has gone (the connection is closed then).
	cancel     context.CancelFunc
	clientGone atomic.Bool // the watch found the connection closed
	stash      []byte      // a byte the watch read: the next request's

	rdl, wdl Deadline // the deadlines last set on nc
	// wmu serialises writes: a request body's reader (another goroutine)
	// sends "100 Continue" while the answer may be starting.
	wmu      sync.Mutex
	resp     response // the answer being written
	hijacked bool     // the handler took the connection
}

const (
	watchOff = iota
	watchArmed
	watchRunning
)

// clientWatchDelay: requests answered sooner never start the client watch.
const clientWatchDelay = 50 * time.Millisecond

// readBufSize is the connection's read buffer: heads up to it are parsed
// where they lie; longer ones are gathered (up to MaxRequestHead).
const readBufSize = 8 << 10

// stashReader is what the connection's bufio.Reader reads: first a byte
// the client watch took, then the connection.
type stashReader struct{ c *clientConn }

func (r stashReader) Read(p []byte) (int, error) {
	if len(r.c.stash) > 0 {
		n := copy(p, r.c.stash)
		r.c.stash = r.c.stash[n:]
		return n, nil
	}
	return r.c.nc.Read(p)
}

// ServeConn serves nc until it closes, the handler hijacks it, or it is
// handed off.
func (s *Server) ServeConn(nc net.Conn) {
	s.once.Do(s.init)
	c := &clientConn{srv: s, nc: nc}
	if !s.add(c) {
		nc.Close()
		return
	}
	defer s.remove(c)
	ctx, cancel := context.WithCancel(s.BaseContext)
	defer cancel()
	c.cancel = cancel
	if s.ConnContext != nil {
		ctx = s.ConnContext(ctx, nc)
	}
	c.br = bufio.NewReaderSize(stashReader{c}, readBufSize)
	c.bw = bufio.NewWriterSize(nc, 4<<10)
	c.tmpl = (&http.Request{RemoteAddr: nc.RemoteAddr().String()}).WithContext(ctx)
	c.watchTimer = time.AfterFunc(time.Hour, c.watch)
	c.watchTimer.Stop()
	defer c.watchTimer.Stop()
	for first := true; ; first = false {
		req, ok := c.readRequest(first)
		if !ok {
			nc.Close()
			return
		}
		if req == nil {
			c.handOff()
			return
		}
		keep := c.serve(req)
		if c.hijacked {
			return
		}
		if !keep || s.shutting.Load() {
			nc.Close()
			return
		}
		c.state.Store(stateIdle)
	}
}

// handOff gives the connection, with what was read of it, to HandOff.
func (c *clientConn) handOff() {
	c.nc.SetDeadline(time.Time{})
	buf, _ := c.br.Peek(c.br.Buffered())
	rc := &replayConn{Conn: c.nc, buf: append(append([]byte(nil), c.stash...), buf...)}
	if c.srv.HandOff == nil || c.srv.shutting.Load() || !c.srv.HandOff(rc) {
		c.nc.Close()
	}
}

// replayConn is a connection handed off: its reads return the bytes read
// before first.
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

// serve answers one request; false: close the connection.
func (c *clientConn) serve(req *http.Request) (keep bool) {
	// The writer and its header map are the connection's, reset per
	// request: nothing keeps them after the handler returns.
	h := c.resp.h
	if h == nil {
		h = make(http.Header, 16)
	}
	clear(h)
	c.resp = response{c: c, req: req, h: h, clen: -1, close: req.Close}
	w := &c.resp
	body, _ := req.Body.(*requestBody)
	c.watchMu.Lock()
	c.reqOpen = true
	c.watchMu.Unlock()
	if body == nil {
		c.armWatch() // with a body, once it has been read (bodyRead)
	}
	defer func() {
		watchRead := c.disarmWatch()
		if body != nil {
			body.finish()
		}
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				c.srv.Logger.Error("h1: panic serving a request", "panic", p, "remote", req.RemoteAddr)
			}
			keep = false
			return
		}
		if c.hijacked {
			return
		}
		// A body not read to its end leaves bytes that are not a request
		// (and maybe a goroutine still reading them): the connection ends.
		keep = !watchRead && w.finish() && !w.close && (body == nil || body.complete())
	}()
	c.srv.Handler.ServeHTTP(w, req)
	return // keep is decided by the deferred call
}

// armWatch starts the timer of the client watch.
func (c *clientConn) armWatch() {
	c.watchMu.Lock()
	c.watchState = watchArmed
	c.watchMu.Unlock()
	c.watchTimer.Reset(clientWatchDelay)
}

// watch runs when a request is still going after clientWatchDelay: one
// read on the client connection ends the request's context if the client
// closed it. A byte read (the client sent its next request early) is kept.
func (c *clientConn) watch() {
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
	if err != nil && !isTimeout(err) {
		c.clientGone.Store(true)
		c.cancel()
	}
}

// disarmWatch stops the client watch, interrupting its read if it runs,
// and reports whether that read found the connection closed.
func (c *clientConn) disarmWatch() (closed bool) {
	c.watchMu.Lock()
	state, done := c.watchState, c.watchDone
	c.watchState = watchOff
	c.reqOpen = false
	c.watchTimer.Stop()
	c.watchMu.Unlock()
	if state != watchRunning {
		return false
	}
	c.rdl.SetRead(c.nc, ALongTimeAgo, 0)
	<-done
	c.rdl.SetRead(c.nc, time.Time{}, 0)
	return c.clientGone.Load()
}

// refuse answers a request the Server will not serve with status and a
// short reason, and the connection closes after it.
func (c *clientConn) refuse(status int, reason string) {
	c.srv.reject(status)
	body := strconv.Itoa(status) + " " + http.StatusText(status) + ": " + reason + "\n"
	c.wdl.SetWrite(c.nc, time.Now().Add(c.srv.ClientTimeout), 0)
	bw := c.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(status))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(status))
	bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n")
	bw.WriteString(dateLine())
	bw.WriteString("Content-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	bw.WriteString("\r\n\r\n")
	bw.WriteString(body)
	bw.Flush()
}

package h1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Transport sends requests to backends over HTTP/1.1 keep-alive pools, one
// per backend address. The request is written and the answer read in the
// caller's goroutine; a request body is sent by a goroutine of its own
// while the answer is awaited (an answer may come before the body has
// gone: an echo, an early 413), so both directions stream at once.
//
// A Transport is safe for concurrent use. Its fields are set before first
// use.
type Transport struct {
	// ConnectTimeout bounds a dial (0: none but the request's deadline).
	ConnectTimeout time.Duration
	// HeaderTimeout bounds the wait for an answer head once the request
	// (with its body) has been sent, and each write to the backend
	// (0: none but the request's deadline).
	HeaderTimeout time.Duration
	// MaxResponseHead bounds an answer's head (0: DefaultMaxResponseHead).
	MaxResponseHead int
	// MaxIdlePerBackend bounds the idle connections kept to one backend
	// (0: DefaultMaxIdlePerBackend).
	MaxIdlePerBackend int

	once   sync.Once
	dialer *net.Dialer
	mu     sync.Mutex
	pools  map[string]*connPool // by backend host:port
}

// DefaultMaxIdlePerBackend: Go's default of 2 makes a busy proxy dial for
// almost every request.
const DefaultMaxIdlePerBackend = 1024

// IdleConnTimeout closes keep-alive connections unused this long.
const IdleConnTimeout = 90 * time.Second

func (t *Transport) init() {
	t.dialer = &net.Dialer{Timeout: t.ConnectTimeout, KeepAlive: 30 * time.Second}
	t.pools = map[string]*connPool{}
	if t.MaxIdlePerBackend <= 0 {
		t.MaxIdlePerBackend = DefaultMaxIdlePerBackend
	}
	if t.MaxResponseHead <= 0 {
		t.MaxResponseHead = DefaultMaxResponseHead
	}
}

// RoundTrip sends req, whose URL.Host is the backend, and returns the
// answer. deadline (zero: none) bounds the whole exchange, body included.
// req.Body, if not nil or http.NoBody, is sent with req.ContentLength as
// Content-Length when positive, else chunked. A request with an Upgrade
// header answered 101 returns the connection as the answer's Body (an
// io.ReadWriteCloser), no longer the pool's.
//
// Errors: *DialError when nothing reached the backend; ErrRequestTimeout
// when the deadline ran out while connecting; *BodyError when reading
// req.Body failed (the client's fault); ErrBadResponse (wrapped) when the
// answer broke the protocol; a net.Error timeout when the answer did not
// come in time; other errors when the backend broke the connection. A
// replayable request (idempotent or with an Idempotency-Key, no body)
// whose connection the backend closed before a byte of answer is sent
// again on a new connection (once after a new one): a kept connection
// closed while idle, or a new one still in the queue of a listener being
// shut. Never after a timeout: that would double it.
func (t *Transport) RoundTrip(req *http.Request, deadline time.Time) (*http.Response, error) {
	t.once.Do(t.init)
	ctx := req.Context()
	p := t.pool(req.URL.Host)
	hasBody := req.Body != nil && req.Body != http.NoBody
	resentFresh := false
	yieldBeforeWrite() // before the reuse check, which should be as late as can be
	for {
		c, err := p.get(ctx, t.dialer, deadline)
		if err != nil {
			return nil, err
		}
		res, err := c.roundTrip(ctx, req, t, deadline)
		if err == nil {
			return res, nil
		}
		c.close()
		if !c.answered && !hasBody && replayable(req) && ctx.Err() == nil && !isTimeout(err) &&
			!errors.Is(err, ErrBadResponse) && (c.served > 0 || !resentFresh) {
			resentFresh = resentFresh || c.served == 0
			continue
		}
		return nil, err
	}
}

// CloseIdleConnections closes every idle connection.
func (t *Transport) CloseIdleConnections() {
	t.once.Do(t.init)
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

// IdleConns is the number of idle connections to addr (for tests and
// metrics).
func (t *Transport) IdleConns(addr string) int {
	t.once.Do(t.init)
	t.mu.Lock()
	p := t.pools[addr]
	t.mu.Unlock()
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

func (t *Transport) pool(addr string) *connPool {
	t.mu.Lock()
	p := t.pools[addr]
	if p == nil {
		p = &connPool{addr: addr, maxIdle: t.MaxIdlePerBackend}
		t.pools[addr] = p
	}
	t.mu.Unlock()
	return p
}

// replayable: a request that may be sent again after its connection turned
// out closed (RFC 9110 section 9.2.2).
func replayable(req *http.Request) bool {
	return Idempotent(req.Method) || req.Header["Idempotency-Key"] != nil || req.Header["X-Idempotency-Key"] != nil
}

// Idempotent reports RFC 9110 section 9.2.2's idempotent methods.
func Idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// connPool holds one backend's idle keep-alive connections, most recently
// used first out (so a burst's extra connections age out).
type connPool struct {
	addr    string
	maxIdle int

	mu   sync.Mutex
	idle []*conn // oldest first
	reap *time.Timer
}

// get takes an idle connection that is still quiet or dials one. A dial
// ends at the connect timeout (the dialer's) or at deadline (the
// request's; zero: none), whichever comes first; the request's running
// out is ErrRequestTimeout, not a dial error (504, not retried).
func (p *connPool) get(ctx context.Context, d *net.Dialer, deadline time.Time) (*conn, error) {
	o := ownerOf(ctx)
	for {
		var c *conn
		if o != nil {
			c = o.take(p)
		}
		if c == nil {
			if c = p.takeShared(time.Now().Add(-ShareAfter)); c == nil {
				break
			}
		}
		// Checked before every use however short the idle time: bytes
		// that came after the last answer are not this request's.
		if time.Since(c.idleSince) < IdleConnTimeout && c.quiet() {
			c.owner = o
			return c, nil
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
			return nil, ErrRequestTimeout
		}
		return nil, &DialError{err}
	}
	c := &conn{pool: p, nc: nc, owner: o, fd: -1}
	if sc, ok := nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) { c.fd = int(fd) })
		}
	}
	c.interrupt = func() { nc.SetDeadline(ALongTimeAgo) }
	c.br = bufio.NewReaderSize(countingReader{c}, 4<<10)
	c.bw = bufio.NewWriterSize(nc, 4<<10)
	return c, nil
}

// put returns c to its owner, or to the pool (see Owner).
func (p *connPool) put(c *conn) {
	c.idleSince = time.Now()
	if c.owner != nil && c.owner.keep(c) {
		return
	}
	c.owner = nil
	p.add(c)
}

// add puts c in the shared pool, idle since c.idleSince.
func (p *connPool) add(c *conn) {
	p.mu.Lock()
	if len(p.idle) >= p.maxIdle {
		p.mu.Unlock()
		c.close()
		return
	}
	p.idle = append(p.idle, c)
	if p.reap == nil {
		p.reap = time.AfterFunc(IdleConnTimeout, p.reapIdle)
	}
	p.mu.Unlock()
}

// takeShared takes the most recently used shared connection idle since
// before cutoff, or returns nil.
func (p *connPool) takeShared(cutoff time.Time) *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.idle) - 1; i >= 0; i-- {
		c := p.idle[i]
		if c.idleSince.After(cutoff) {
			continue
		}
		copy(p.idle[i:], p.idle[i+1:])
		p.idle[len(p.idle)-1] = nil
		p.idle = p.idle[:len(p.idle)-1]
		return c
	}
	return nil
}

// reapIdle closes connections idle longer than IdleConnTimeout and comes
// back while any are left.
func (p *connPool) reapIdle() {
	left := p.closeIdle(time.Now().Add(-IdleConnTimeout))
	p.mu.Lock()
	p.reap = nil
	if left > 0 {
		p.reap = time.AfterFunc(IdleConnTimeout/2, p.reapIdle)
	}
	p.mu.Unlock()
}

// closeIdle closes the idle connections unused since before (all of them
// with a zero before) and returns how many stay.
func (p *connPool) closeIdle(before time.Time) int {
	p.mu.Lock()
	var stale []*conn
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

// conn is one HTTP/1.1 connection to a backend, used by one request at a
// time.
type conn struct {
	pool      *connPool
	owner     *Owner // the client connection it serves, if any
	nc        net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	read      int64   // bytes read from nc, ever
	drained   bool    // the last read from nc left nothing queued
	fd        int     // nc's descriptor, for quiet's peek (-1: none)
	peekBuf   [1]byte // where the peek reads (a field: no allocation)
	served    int     // requests answered on it before this one
	answered  bool    // this request got bytes back
	idleSince time.Time
	interrupt func() // makes blocked I/O on nc return at once

	// The deadlines last set. While a body is being sent, its goroutine
	// sets them too: mu then guards them and headerIn.
	mu       sync.Mutex
	rdl, wdl Deadline
	headerIn bool       // the answer head has been read
	body     *bodyWrite // the request body being sent, if any
}

// bodyWrite is the state of a request body being sent.
type bodyWrite struct {
	done    chan struct{} // closed when the goroutine is over
	err     error         // its outcome (a *BodyError for the client's fault); read after done
	allRead atomic.Bool   // the client's body has been read to its end
}

// finished reports whether the body went out whole. A body read to its
// end is waited for (its last write is bounded by the write deadline):
// the answer often overtakes the goroutine's last steps.
func (w *bodyWrite) finished() bool {
	if w.allRead.Load() {
		<-w.done
	}
	select {
	case <-w.done:
		return w.err == nil
	default:
		return false
	}
}

// countingReader counts what the backend sent, so that a failure can tell
// "closed before answering" (safe to resend) from a broken answer, and
// notes whether the last read drained the socket: a read that returned
// less than it had room for found nothing more queued at that moment.
type countingReader struct{ c *conn }

func (r countingReader) Read(p []byte) (int, error) {
	n, err := r.c.nc.Read(p)
	r.c.read += int64(n)
	r.c.drained = n < len(p)
	return n, err
}

// roundTrip sends req on c and reads the answer's head. Reads wait at most
// t.HeaderTimeout from the moment the request is sent, then deadline
// (zero: none) for the body. The read deadline is set once per request
// when the whole answer arrived with its head (the common case for small
// answers), twice otherwise.
func (c *conn) roundTrip(ctx context.Context, req *http.Request, t *Transport, deadline time.Time) (*http.Response, error) {
	c.answered, c.headerIn, c.body = false, false, nil
	// The context (client gone) interrupts blocked I/O by putting the
	// deadline in the past; stop undoes the hook when the answer is over.
	stop := context.AfterFunc(ctx, c.interrupt)
	hasBody := req.Body != nil && req.Body != http.NoBody
	chunked := hasBody && req.ContentLength <= 0
	headerBy := deadline
	if t.HeaderTimeout > 0 {
		headerBy = earliest(time.Now().Add(t.HeaderTimeout), deadline)
	}
	c.wdl.SetWrite(c.nc, headerBy, Slack(t.HeaderTimeout))
	writeHead(c.bw, req, hasBody, chunked)
	if err := c.bw.Flush(); err != nil {
		stop()
		return nil, err
	}
	var bw *bodyWrite
	if hasBody {
		// Until the body has gone, only the request's deadline bounds the
		// wait for an answer: the header timeout starts when it has.
		bw = &bodyWrite{done: make(chan struct{})}
		c.body = bw
		c.mu.Lock()
		c.rdl.SetRead(c.nc, deadline, 0)
		c.mu.Unlock()
		go c.sendBody(bw, req, chunked, t.HeaderTimeout, deadline)
	} else {
		c.rdl.SetRead(c.nc, headerBy, Slack(t.HeaderTimeout))
	}
	before := c.read
	res, err := c.readFinal(req, t.MaxResponseHead)
	c.answered = c.read > before
	if bw != nil {
		c.mu.Lock()
		c.headerIn = true
		c.mu.Unlock()
	}
	if err != nil {
		stop()
		if bw != nil {
			// A client body that failed is why the exchange ended (the
			// goroutine cut it off): the client's fault, not the backend's.
			select {
			case <-bw.done:
				var be *BodyError
				if errors.As(bw.err, &be) {
					return nil, be
				}
			default:
			}
		}
		return nil, err
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		stop()
		c.nc.SetDeadline(time.Time{})
		res.Body = &upgraded{c}
		return res, nil
	}
	buffered := res.Body == http.NoBody || res.ContentLength >= 0 && int64(c.br.Buffered()) >= res.ContentLength
	if !buffered && !headerBy.Equal(deadline) {
		c.mu.Lock()
		changed := c.rdl.SetRead(c.nc, deadline, 0)
		c.mu.Unlock()
		if changed && ctx.Err() != nil { // the hook ran before the line above
			c.interrupt()
		}
	}
	// An answer that may not have a body but announces one (HEAD, 204 or
	// 304 with a length or chunked) is where a backend that sends the body
	// anyway would leave bytes for the next request to read as its answer:
	// its connection is not reused, however quiet it looks now.
	reuse := !res.Close && !announcesBody(res)
	if res.Body == http.NoBody {
		c.release(stop, reuse)
		return res, nil
	}
	res.Body = &backendBody{rc: res.Body, c: c, stop: stop, reuse: reuse}
	return res, nil
}

// announcesBody reports a bodyless answer whose header announces a body.
func announcesBody(res *http.Response) bool {
	switch {
	case res.Body != http.NoBody:
		return false
	case res.TransferEncoding != nil:
		return true
	case res.Request != nil && res.Request.Method == http.MethodHead:
		return res.ContentLength > 0
	}
	cl := res.Header["Content-Length"]
	return len(cl) > 0 && cl[0] != "0"
}

// readFinal reads answers until a final one: 1xx interim answers (103
// Early Hints, a stray 100) are not passed on; a 101 is final only for a
// request that asked to switch.
func (c *conn) readFinal(req *http.Request, maxHead int) (*http.Response, error) {
	for {
		res, err := ReadResponse(c.br, req, maxHead)
		if err != nil {
			return nil, err
		}
		switch {
		case res.StatusCode >= 200:
			return res, nil
		case res.StatusCode == http.StatusSwitchingProtocols:
			if req.Header["Upgrade"] == nil {
				return nil, badResponse("101 Switching Protocols to a request that did not ask to")
			}
			return res, nil
		}
	}
}

// sendBody sends req's body (as its goroutine) and records the outcome. A
// client body that fails interrupts the exchange: the backend would wait
// for the rest in vain.
func (c *conn) sendBody(bw *bodyWrite, req *http.Request, chunked bool, headerTimeout time.Duration, deadline time.Time) {
	err := c.writeBody(bw, req, chunked, headerTimeout, deadline)
	bw.err = err
	close(bw.done)
	var be *BodyError
	if errors.As(err, &be) {
		c.interrupt()
		return
	}
	if err == nil {
		c.mu.Lock()
		if !c.headerIn && headerTimeout > 0 {
			c.rdl.SetRead(c.nc, earliest(time.Now().Add(headerTimeout), deadline), Slack(headerTimeout))
		}
		c.mu.Unlock()
	}
}

// writeBody copies the body to the backend, each write bounded by
// headerTimeout (a backend that takes nothing for that long is not
// answering) and deadline.
func (c *conn) writeBody(bw *bodyWrite, req *http.Request, chunked bool, headerTimeout time.Duration, deadline time.Time) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	want := req.ContentLength
	var sent int64
	for {
		n, rerr := req.Body.Read(buf)
		if n > 0 {
			if !chunked && sent+int64(n) > want {
				return &BodyError{errors.New("body longer than its Content-Length")}
			}
			sent += int64(n)
			c.mu.Lock()
			wd := deadline
			if headerTimeout > 0 {
				wd = earliest(time.Now().Add(headerTimeout), deadline)
			}
			c.wdl.SetWrite(c.nc, wd, Slack(headerTimeout))
			c.mu.Unlock()
			if chunked {
				c.bw.WriteString(strconv.FormatInt(int64(n), 16))
				c.bw.WriteString("\r\n")
				c.bw.Write(buf[:n])
				c.bw.WriteString("\r\n")
			} else {
				c.bw.Write(buf[:n])
			}
			if err := c.bw.Flush(); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			bw.allRead.Store(true)
			break
		}
		if rerr != nil {
			return &BodyError{rerr}
		}
	}
	if !chunked && sent != want {
		return &BodyError{io.ErrUnexpectedEOF}
	}
	if chunked {
		c.bw.WriteString("0\r\n\r\n")
	}
	return c.bw.Flush()
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// release ends a request on c: the connection goes back to its pool when
// the answer ended exactly at its framing boundary, the request body went
// out whole, nothing interrupted it and the backend has sent nothing more.
// The last check is the read that brought the answer's last bytes when it
// drained the socket (the common case: no system call), else a peek.
func (c *conn) release(stop func() bool, reuse bool) {
	if stop() && reuse && (c.body == nil || c.body.finished()) && c.br.Buffered() == 0 && (c.drained || c.quiet()) {
		c.served++
		c.pool.put(c)
		return
	}
	c.close()
}

func (c *conn) close() { c.nc.Close() }

// quiet reports whether the backend has neither closed the connection nor
// sent anything unasked: one non-blocking peek, instead of a reader
// goroutine per idle connection.
//
// The peek is a raw system call on the descriptor, not a RawConn.Read: it
// never blocks, and the runtime's bookkeeping around a system call and
// the poller's locks cost as much as the call itself (the peek runs
// before every reuse). The descriptor stays valid: c is closed only by
// whoever holds it, and the caller does.
func (c *conn) quiet() bool {
	if c.fd < 0 {
		return true
	}
	_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(c.fd), uintptr(unsafe.Pointer(&c.peekBuf[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return errno == syscall.EAGAIN
}

// backendBody is the body of an answer: at its end the connection goes
// back to the pool (see release); closed early, it is closed.
type backendBody struct {
	rc    io.ReadCloser
	c     *conn
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

// upgraded is the connection of a 101 answer: what the backend sent after
// the head first, then the connection; writes go straight to it.
type upgraded struct{ c *conn }

func (u *upgraded) Read(p []byte) (int, error)  { return u.c.br.Read(p) }
func (u *upgraded) Write(p []byte) (int, error) { return u.c.nc.Write(p) }
func (u *upgraded) Close() error                { return u.c.nc.Close() }

// writeHead writes req's request line and header. Header values are
// written as they are (the server validated the client's, config
// validation the rules'), but a CR or LF is replaced all the same, as
// net/http does. Framing is the Transport's: Content-Length or chunked for
// a body, "Content-Length: 0" for a POST, PUT or PATCH without one; the
// client's Expect is not passed on (its 100-continue was answered on the
// client side).
func writeHead(w *bufio.Writer, req *http.Request, hasBody, chunked bool) {
	w.WriteString(req.Method)
	w.WriteByte(' ')
	w.WriteString(req.URL.RequestURI())
	w.WriteString(" HTTP/1.1\r\nHost: ")
	host := req.Host
	if host == "" {
		// No Host from the client (HTTP/1.0): the backend's address, as
		// net/http's transport writes. An empty Host, which RFC 9112
		// allows, gets a 400 from nginx.
		host = req.URL.Host
	}
	WriteHeaderValue(w, host)
	w.WriteString("\r\n")
	upgrade := req.Header["Upgrade"] != nil
	for k, vv := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer", "Expect":
			continue
		case "Connection":
			if !upgrade {
				continue
			}
		}
		for _, v := range vv {
			if v == "" && k == "User-Agent" {
				continue // no User-Agent rather than an empty one
			}
			w.WriteString(k)
			w.WriteString(": ")
			WriteHeaderValue(w, v)
			w.WriteString("\r\n")
		}
	}
	switch {
	case chunked:
		w.WriteString("Transfer-Encoding: chunked\r\n")
	case hasBody:
		w.WriteString("Content-Length: ")
		w.WriteString(strconv.FormatInt(req.ContentLength, 10))
		w.WriteString("\r\n")
	case req.Method == http.MethodPost, req.Method == http.MethodPut, req.Method == http.MethodPatch:
		w.WriteString("Content-Length: 0\r\n")
	}
	w.WriteString("\r\n")
}

// WriteHeaderValue writes v trimmed, with any CR or LF as a space (as
// net/http does: a value never ends the header line early).
func WriteHeaderValue(w io.StringWriter, v string) {
	if strings.IndexByte(v, '\r') >= 0 || strings.IndexByte(v, '\n') >= 0 {
		v = newlineToSpace.Replace(v)
	}
	w.WriteString(strings.TrimSpace(v))
}

var newlineToSpace = strings.NewReplacer("\r", " ", "\n", " ")

var (
	_ io.ReadCloser      = (*backendBody)(nil)
	_ io.ReadWriteCloser = (*upgraded)(nil)
)

package l7

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xlb-dev/xlb/l7/h1"
)

// service is one L7 service as applied by an Update: its configuration,
// pool, compiled header rules and counters. It is immutable once published;
// an Update that changes the service publishes a new one (keeping stats and
// unchanged Upstreams), and requests in flight finish on the one they
// started with.
type service struct {
	srv       *Server
	name      string
	cfg       ServiceConfig
	hdr       *headerPlan
	pool      *Pool
	ipHash    bool
	ups       map[string]*Upstream // by backend ID
	upStats   map[*Upstream]*upstreamStats
	stats     *serviceStats
	transport *h1.Transport
	tkey      transportKey
}

// transportKey is what distinguishes transports: services with the same
// timeouts share one, and so share keep-alive connections to a backend.
type transportKey struct{ connect, header time.Duration }

func newProxyTransport(k transportKey) *h1.Transport {
	return &h1.Transport{ConnectTimeout: k.connect, HeaderTimeout: k.header}
}

// copyBufSize is the size of the pooled body copy buffers.
const copyBufSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// exchange is one proxied request's state, allocated once per request.
type exchange struct {
	url     url.URL
	body    bodyReader
	start   time.Time
	up      *Upstream      // the upstream Pick reserved; Done is due
	us      *upstreamStats // where the request is counted (nil: no backend)
	code    int            // status sent to the client
	kind    errKind        // gateway error, if any
	result  Result         // for Done
	failed  bool           // counts as an error (5xx, gateway error)
	latency time.Duration  // set for tunnels: the time to the 101
	scratch *connScratch   // the fast path's, if the exchange is its
	header  http.Header    // the outgoing header's map, to give back to scratch
	// For the access log: the request, its real client and id, and the
	// response body bytes sent.
	req    *http.Request
	client netip.Addr
	reqID  string
	bytes  int64
	sent   errKind // the gateway error answered (kind counts it only once)
}

// bodyReader wraps the client's request body for the transport: Close does
// nothing (the server closes the body after the handler; a transport that
// closed it on a failed dial would make a retry impossible), read records
// whether a retry would replay anything, and after the request is over Read
// returns EOF. It records how reading ended, to tell the client's faults
// (bad framing, a body cut short or too slow) from the backend's.
type bodyReader struct {
	rc     io.ReadCloser
	read   atomic.Bool
	done   atomic.Bool
	eof    atomic.Bool // read to its end
	inRead atomic.Bool // a Read waits for the client now
	failed atomic.Bool // a Read failed: the client connection must close
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, io.EOF
	}
	if !b.read.Load() {
		b.read.Store(true)
	}
	b.inRead.Store(true)
	n, err := b.rc.Read(p)
	b.inRead.Store(false)
	switch {
	case err == io.EOF:
		b.eof.Store(true)
	case err != nil:
		b.failed.Store(true)
	}
	return n, err
}

func (b *bodyReader) Close() error { return nil }

// clientFault reports whether a failed exchange was the client's doing: its
// body failed to read (400; 408 when it timed out) or was still awaited
// from the client when the request ran out of time (408).
func (ex *exchange) clientFault(err error) (g *gatewayResponse, ok bool) {
	b := &ex.body
	if b.rc == nil {
		return nil, false
	}
	var be *h1.BodyError
	switch {
	case errors.As(err, &be) || b.failed.Load():
		if isTimeoutErr(err) {
			return &slowRequestBody, true
		}
		return &badRequestBody, true
	case isTimeoutErr(err) && !b.eof.Load() && b.inRead.Load():
		return &slowRequestBody, true
	}
	return nil, false
}

// ServeHTTP proxies r to a backend of the service.
func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	h := w.Header()
	sc := scratchOf(r.Context())
	hasBody := r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody
	if hasBody {
		// The goroutine that sends the body may outlive this call (an
		// answer that came first): its exchange is its own.
		sc = nil
	}
	var ex *exchange
	var p peer
	var lent http.Header
	if sc != nil {
		ex = &sc.ex
		*ex = exchange{start: start, code: http.StatusOK, scratch: sc, req: r}
		p = sc.peer
		if lent, sc.header = sc.header, nil; lent != nil {
			clear(lent)
		}
	} else {
		ex = &exchange{start: start, code: http.StatusOK, req: r}
		p = parsePeer(r.RemoteAddr)
	}
	defer s.finish(ex)
	if r.Method == http.MethodConnect {
		ex.code, ex.bytes = connectNotAllowed.status, int64(len(connectNotAllowed.body))
		s.hdr.responseHeader(h, nil, time.Since(start), nil)
		connectNotAllowed.write(w, h)
		return
	}

	o := s.hdr.originOf(p, r.Header)
	reqID := r.Header[hdrRequestID]
	switch {
	case len(reqID) == 0 || reqID[0] == "":
		reqID = []string{newRequestID()}
	case len(reqID) > 1:
		reqID = reqID[:1:1]
	}
	ex.client, ex.reqID = o.client, reqID[0]
	outHeader, upType := s.hdr.requestHeader(r, o, reqID, start, lent)

	clientCtx := r.Context()
	ctx := clientCtx
	var deadline time.Time // the request timeout
	if s.cfg.RequestTimeout > 0 {
		deadline = start.Add(s.cfg.RequestTimeout)
	}
	if s.ipHash && o.client != o.addr {
		ctx = WithClientIP(ctx, o.client)
	}

	ex.url = url.URL{Scheme: "http", Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
	out := outgoing(r, ctx, &ex.url, outHeader, cmp.Or(s.hdr.hostRewrite, r.Host))
	if hasBody {
		ex.body.rc = r.Body
		out.Body = &ex.body
		// The answer may start before the body has all arrived (an echo, a
		// backend that answers early): without full duplex, net/http would
		// discard the rest of the body under the transport's feet when the
		// response header goes out. HTTP/2 is full duplex anyway.
		http.NewResponseController(w).EnableFullDuplex()
		// Full duplex skips net/http's own rule: a connection whose request
		// body failed to read is closed after the answer (what is left on it
		// is not a request).
		defer func() {
			if ex.body.failed.Load() || !ex.body.eof.Load() {
				closeClientConn(w, h)
			}
		}()
	}
	if sc != nil {
		ex.header = outHeader // the next request on the connection reuses the map
	}

	// Pick reads the client address (ip_hash) from the context and the
	// sticky cookie from the header: out has both, unless a rule changed
	// the Cookie header.
	pickReq := out
	if s.hdr.touchesCookie && s.pool.Sticky != nil {
		pickReq = r.WithContext(ctx)
	}
	var exclude *Upstream
	var firstErr *upstreamStats // the backend of a failed first attempt
	for attempt := 0; ; attempt++ {
		u, cookie, err := s.pool.Pick(pickReq, exclude)
		if err != nil {
			kind := errNoBackend
			switch {
			case err == ErrOverloaded:
				kind = errOverloaded
			case attempt > 0:
				// Nowhere else to go: the first attempt's error stands,
				// already counted against its backend.
				ex.us, ex.failed = firstErr, true
				s.gatewayError(w, h, ex, errConnect, reqID, false)
				return
			}
			s.gatewayError(w, h, ex, kind, reqID, true)
			return
		}
		ex.up, ex.us = u, s.upStats[u]
		out.URL.Host = ex.us.label
		res, err := s.transport.RoundTrip(out, deadline)
		if err != nil {
			if g, ok := ex.clientFault(err); ok {
				s.clientError(w, h, ex, g, reqID)
				return
			}
			kind, canceled := classify(err, ctx, clientCtx)
			if canceled {
				ex.code, ex.result = statusClientClosed, ResultCanceled
				return
			}
			if kind == errConnect && attempt == 0 && s.retryable(r, ex) {
				u.Done(s.pool, ResultConnectError, time.Since(start))
				ex.us.errs[errConnect].Add(1)
				s.srv.log.Debug("l7: connect failed, retrying on another backend", "service", s.name,
					"backend", u.ID, "err", err)
				firstErr, exclude = ex.us, u
				ex.up, ex.us = nil, nil
				out = out.Clone(ctx) // the transport may still hold the first one
				continue
			}
			ex.result = kind.result()
			s.gatewayError(w, h, ex, kind, reqID, true)
			return
		}
		ex.code = res.StatusCode
		if res.StatusCode == http.StatusSwitchingProtocols {
			s.tunnel(w, r, res, ex, upType, reqID, cookie)
			return
		}
		if res.StatusCode >= 500 {
			ex.result, ex.failed = ResultServerError, true
		}
		copyResponseHeader(h, res.Header)
		s.hdr.responseHeader(h, reqID, time.Since(start), cookie)
		announced := len(res.Trailer)
		if announced > 0 {
			keys := make([]string, 0, announced)
			for k := range res.Trailer {
				keys = append(keys, k)
			}
			h["Trailer"] = []string{strings.Join(keys, ", ")}
		}
		w.WriteHeader(res.StatusCode)
		s.copyBody(w, res, ex, ctx, clientCtx)
		if len(res.Trailer) > 0 {
			// Flushing forces chunking: a short body would get a
			// Content-Length and no trailers otherwise.
			http.NewResponseController(w).Flush()
			prefix := ""
			if len(res.Trailer) != announced {
				prefix = http.TrailerPrefix
			}
			for k, vv := range res.Trailer {
				h[prefix+k] = vv
			}
		}
		return
	}
}

// outgoing is the request to the backend for r, with ctx, u, h and host:
// one allocation where a new http.Request and WithContext make two. Every
// exported field is set (TestOutgoingSetsEveryField catches a field a new Go
// release adds).
func outgoing(r *http.Request, ctx context.Context, u *url.URL, h http.Header, host string) *http.Request {
	out := r.WithContext(ctx)
	out.Method = r.Method
	out.URL, out.Header, out.Host = u, h, host
	out.Proto, out.ProtoMajor, out.ProtoMinor = "HTTP/1.1", 1, 1
	out.Body, out.GetBody = nil, nil
	out.ContentLength, out.TransferEncoding, out.Close = r.ContentLength, nil, false
	out.Form, out.PostForm, out.MultipartForm = nil, nil, nil
	out.Trailer, out.RemoteAddr, out.RequestURI = r.Trailer, r.RemoteAddr, ""
	out.TLS, out.Cancel, out.Response, out.Pattern = nil, nil, nil, ""
	return out
}

// retryable: an idempotent method (RFC 9110 section 9.2.2) whose body is
// empty or untouched, on a service that retries.
func (s *service) retryable(r *http.Request, ex *exchange) bool {
	if !s.cfg.RetryIdempotent {
		return false
	}
	return h1.Idempotent(r.Method) && (ex.body.rc == nil || !ex.body.read.Load())
}

// gatewayError answers with the proxy's own error for kind. count adds it
// to the error counters (false when it was counted already).
func (s *service) gatewayError(w http.ResponseWriter, h http.Header, ex *exchange, kind errKind, reqID []string, count bool) {
	g := gatewayResponses[kind]
	ex.code, ex.failed, ex.bytes, ex.sent = g.status, true, int64(len(g.body)), kind
	if count {
		ex.kind = kind
	}
	if ex.result == ResultOK {
		ex.result = kind.result()
	}
	s.hdr.responseHeader(h, reqID, time.Since(ex.start), nil)
	g.write(w, h)
}

// clientError answers a request the client got wrong with g (400 or 408):
// counted, never against the backend, and the connection closes after it.
func (s *service) clientError(w http.ResponseWriter, h http.Header, ex *exchange, g *gatewayResponse, reqID []string) {
	ex.code, ex.result, ex.bytes = g.status, ResultClientError, int64(len(g.body))
	s.hdr.responseHeader(h, reqID, time.Since(ex.start), nil)
	closeClientConn(w, h)
	g.write(w, h)
}

// closeClientConn makes the server close the client connection after this
// answer: a Connection: close header while the head is not written yet,
// which net/http's HTTP/1 server and the fast path both honour (HTTP/2
// ends the stream only).
func closeClientConn(w http.ResponseWriter, h http.Header) {
	if cc, ok := w.(interface{ CloseAfter() }); ok {
		cc.CloseAfter()
		return
	}
	h["Connection"] = connClose
}

var connClose = []string{"close"}

// copyBody streams the response body to the client through a pooled
// buffer, flushing after every write for event streams and bodies of
// unknown length. A backend that breaks off mid-body aborts the client's
// response (the client sees a truncated answer, never a complete-looking
// one); a client that goes away just ends it.
func (s *service) copyBody(w http.ResponseWriter, res *http.Response, ex *exchange, ctx, clientCtx context.Context) {
	var flush func() error
	if res.ContentLength == -1 || isEventStream(res.Header) {
		if f, ok := w.(http.Flusher); ok {
			flush = func() error { f.Flush(); return nil }
		} else {
			flush = http.NewResponseController(w).Flush
		}
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := res.Body.Read(buf)
		if n > 0 {
			nw, werr := w.Write(buf[:n])
			ex.bytes += int64(nw)
			if werr != nil {
				res.Body.Close()
				ex.result = ResultCanceled
				return
			}
			if flush != nil {
				flush()
			}
		}
		if rerr == io.EOF {
			res.Body.Close() // also fills res.Trailer
			return
		}
		if rerr != nil {
			res.Body.Close()
			if _, ok := ex.clientFault(rerr); ok {
				// The client's body failed after the answer had started:
				// cut the answer off, blame nobody upstream.
				ex.result = ResultClientError
				panic(http.ErrAbortHandler)
			}
			kind, canceled := classify(rerr, ctx, clientCtx)
			if canceled {
				ex.result = ResultCanceled
				return
			}
			ex.kind, ex.result, ex.failed = kind, ResultBroken, true
			s.srv.log.Debug("l7: backend broke off the response", "service", s.name, "backend", ex.up.ID, "err", rerr)
			panic(http.ErrAbortHandler) // finish runs first, as a deferred call
		}
	}
}

func isEventStream(h http.Header) bool {
	ct := h["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	base, _, _ := strings.Cut(ct[0], ";")
	return strings.EqualFold(strings.TrimSpace(base), "text/event-stream")
}

// finish ends a request: the upstream's Done, the counters.
func (s *service) finish(ex *exchange) {
	ex.body.done.Store(true)
	end := time.Now()
	lat := end.Sub(ex.start)
	if ex.latency > 0 {
		lat = ex.latency
	}
	if ex.up != nil {
		ex.up.Done(s.pool, ex.result, lat)
	}
	s.stats.record(ex.us, ex.code, ex.kind, ex.failed || ex.kind != errNone, lat, end)
	if al := s.srv.opts.AccessLog; al != nil {
		s.logAccess(al, ex, end)
	}
	if ex.scratch != nil && ex.header != nil {
		ex.scratch.header = ex.header
	}
}

// logAccess hands the finished exchange to the access log.
func (s *service) logAccess(al *AccessLog, ex *exchange, end time.Time) {
	r := ex.req
	e := AccessEntry{
		Time: ex.start, Service: s.name, Client: ex.client, Method: r.Method, Host: r.Host,
		Path: r.URL.Path, Proto: r.Proto, Status: ex.code, Bytes: ex.bytes,
		Duration: end.Sub(ex.start), ID: ex.reqID,
	}
	if ex.us != nil {
		e.Backend = ex.us.label
	}
	if k := cmp.Or(ex.sent, ex.kind); k != errNone {
		e.Error = k.String()
	}
	al.Log(&e)
}

// tunnel serves a 101 Switching Protocols answer (WebSocket): it checks the
// backend switched to what the client asked, hands the 101 to the client on
// the hijacked connection and copies bytes both ways until either side
// closes. The tunnel is not bounded by the request timeout; Shutdown waits
// for it until its deadline, then closes it.
func (s *service) tunnel(w http.ResponseWriter, r *http.Request, res *http.Response, ex *exchange, upType string, reqID []string, cookie *http.Cookie) {
	ex.latency = time.Since(ex.start)
	h := w.Header()
	backConn, ok := res.Body.(io.ReadWriteCloser)
	if !ok || upType == "" || !strings.EqualFold(upgradeType(res.Header), upType) {
		res.Body.Close()
		ex.result = ResultBroken
		s.gatewayError(w, h, ex, errBroken, reqID, true)
		return
	}
	defer backConn.Close()
	copyResponseHeader(h, res.Header)
	h["Connection"] = connUpgrade
	h["Upgrade"] = res.Header["Upgrade"]
	s.hdr.responseHeader(h, reqID, ex.latency, cookie)
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		delete(h, "Connection")
		delete(h, "Upgrade")
		ex.result = ResultCanceled
		s.gatewayError(w, h, ex, errBroken, reqID, false)
		return
	}
	defer conn.Close()
	if l, _ := r.Context().Value(listenerKey{}).(*listener); l != nil {
		defer l.trackTunnel(conn)()
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	h.Write(brw)
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		ex.result = ResultCanceled
		return
	}
	if n := brw.Reader.Buffered(); n > 0 { // the client did not wait for the 101
		b, _ := brw.Reader.Peek(n)
		if _, err := backConn.Write(b); err != nil {
			return
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyConn(backConn, conn)
		backConn.Close()
		conn.Close()
	}()
	copyConn(conn, backConn)
	conn.Close()
	backConn.Close()
	<-done
}

// copyConn copies src to dst with a pooled buffer until either fails.
func copyConn(dst io.Writer, src io.Reader) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
}

var (
	_ http.Handler  = (*service)(nil)
	_ io.ReadCloser = (*bodyReader)(nil)
)

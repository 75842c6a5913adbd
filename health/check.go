package health

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// userAgent is sent with every HTTP check.
const userAgent = "xlb-health/1"

// maxReasonLen bounds a Reason made from an unclassified error.
const maxReasonLen = 80

// Check runs one check of spec (normalized first) bounded by spec.Timeout and
// by ctx. It returns nil on success, a *CheckError when the target failed the
// check, or an error matching ErrInvalidSpec. It is what every Manager checker
// does once per interval, for tools and tests that want a single answer.
func Check(ctx context.Context, spec Spec) error {
	spec, err := spec.Normalize()
	if err != nil {
		return err
	}
	spec.ChecksPerConnection = 1 // one check: nothing to keep open
	p, err := newProber(spec)
	if err != nil {
		return err
	}
	defer p.close()
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	defer context.AfterFunc(ctx, p.interrupt)()
	_, err = p.probe(ctx)
	return err
}

// A prober runs one check. probe returns a short description of the success
// ("status 200", "connected") or a *CheckError. The deadline is ctx's. A
// prober is used by one goroutine at a time; close releases the connection it
// keeps between checks, if any.
//
// interrupt, which may be called at any time from any goroutine, ends the
// check in flight at once and makes the later ones fail: the owner of the
// prober calls it when the context of its checks is cancelled before their
// deadline (context.AfterFunc once for all the checks of a checker, rather
// than once per check, which would cost a context, a channel and a map of
// children at every check). probe itself only sees its ctx's deadline.
type prober interface {
	probe(ctx context.Context) (ok string, err error)
	interrupt()
	close()
}

// newProber returns the prober of a normalized spec.
func newProber(spec Spec) (prober, error) {
	switch spec.Kind {
	case KindTCP:
		return &tcpProber{addr: spec.Target.String(), dialer: newDialer(spec.Mark)}, nil
	case KindHTTP, KindHTTPS:
		expect, err := spec.ExpectStatus.ranges()
		if err != nil {
			return nil, err
		}
		u, err := url.ParseRequestURI(spec.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: path %q: %v", ErrInvalidSpec, spec.Path, err)
		}
		host := spec.Host
		if host == "" {
			host = spec.Target.String()
		}
		p := &httpProber{
			addr:    spec.Target.String(),
			dialer:  newDialer(spec.Mark),
			expect:  expect,
			perConn: max(spec.ChecksPerConnection, 1),
		}
		head := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: " + userAgent + "\r\n"
		p.request = []byte(head + "\r\n")
		p.requestClose = []byte(head + "Connection: close\r\n\r\n")
		if spec.Kind == KindHTTPS {
			// The TLS server name follows the Host header.
			serverName := spec.Host
			if h, _, err := net.SplitHostPort(serverName); err == nil {
				serverName = h
			}
			p.tls = &tls.Config{
				ServerName: serverName,
				// A health check asks whether the backend answers, not who
				// it is: backends are addressed by IP and often carry
				// certificates for the service name, or self-signed ones.
				InsecureSkipVerify: true, //nolint:gosec // see above
			}
		}
		return p, nil
	}
	return nil, fmt.Errorf("%w: unknown kind %q", ErrInvalidSpec, string(spec.Kind))
}

// newDialer dials with mark (SO_MARK) on the socket unless it is 0.
func newDialer(mark uint32) *net.Dialer {
	// No TCP keep-alive probes: a kept connection is used again one Interval
	// later, and that check finds a dead peer (by timeout at worst).
	d := &net.Dialer{KeepAlive: -1}
	if mark != 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error { return setMark(c, mark) }
	}
	return d
}

// setMark sets SO_MARK before the connect, so that policy routing sees the
// SYN already marked.
func setMark(c syscall.RawConn, mark uint32) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_MARK %#x: %w", mark, serr)
	}
	return nil
}

// Bounds of what one HTTP check reads: the status line and headers, and the
// body, which is read (and discarded) only to keep the connection.
const (
	maxHeaderBytes = 16 << 10
	maxDrainBytes  = 4 << 10
)

// httpProber sends an HTTP/1.1 GET and reads the response on a connection of
// its own, which it keeps for the next check (keep-alive) until it has served
// perConn checks: the last of those asks the server to close it
// ("Connection: close") and the next check opens a new one, so a backend
// that stops accepting connections cannot hide behind an open one for long.
//
// It is a small client on purpose: one request on one connection at a time,
// no redirects, no proxy, no compression, read in the checker's goroutine
// with the deadline of its context (net/http's Transport would add two
// goroutines per kept connection and as many wake-ups per check, which at
// 1000 checks a second is most of the cost of a check).
type httpProber struct {
	addr                  string
	dialer                *net.Dialer
	tls                   *tls.Config // HTTPS only
	request, requestClose []byte      // the request without and with "Connection: close"
	expect                statusRanges
	perConn               int // Spec.ChecksPerConnection, at least 1

	mu          sync.Mutex // guards conn and interrupted against interrupt
	conn        net.Conn   // the kept connection; nil if none
	interrupted bool       // set by interrupt: no more checks
	lr          io.LimitedReader
	br          *bufio.Reader // reads lr, which reads conn
	uses        int           // checks conn has served
}

func (p *httpProber) probe(ctx context.Context) (string, error) {
	reused := p.conn != nil
	status, answered, err := p.roundTrip(ctx)
	if err != nil && reused && !answered && closedByPeer(err) && ctx.Err() == nil {
		// The kept connection failed before a byte of the answer: the
		// server closed it while it was idle (an idle timeout, a restart).
		// As net/http does for a GET, try once more on a new connection.
		status, _, err = p.roundTrip(ctx)
	}
	if err != nil {
		if cerr := ctx.Err(); errors.Is(cerr, context.Canceled) {
			err = cerr
		}
		return "", classify(err)
	}
	reason := "status " + strconv.Itoa(status)
	if !p.expect.contains(status) {
		return "", &CheckError{Reason: reason, Status: status, class: ErrStatus}
	}
	return reason, nil
}

// roundTrip sends the request and reads the answer's status, on the kept
// connection or a new one. answered is false when an error came before any
// byte of the answer on a kept connection. The connection is kept when the
// answer allows it and it has served fewer than perConn checks.
func (p *httpProber) roundTrip(ctx context.Context) (status int, answered bool, err error) {
	reused := p.conn != nil
	if !reused {
		if err := p.dial(ctx); err != nil {
			return 0, true, err
		}
	}
	keep := false
	defer func() {
		if !keep {
			p.close()
		}
	}()
	conn := p.conn
	deadline, _ := ctx.Deadline()
	if err := p.setDeadline(deadline); err != nil {
		return 0, !reused, err
	}

	p.uses++
	last := p.uses >= p.perConn
	req := p.request
	if last {
		req = p.requestClose
	}
	if _, err := conn.Write(req); err != nil {
		return 0, !reused, err
	}
	p.lr.N = maxHeaderBytes
	if _, err := p.br.Peek(1); err != nil {
		return 0, !reused, err
	}
	var resp response
	for range 4 { // informational answers (100, 103) precede the real one
		resp, err = p.readHead()
		if err != nil {
			return 0, true, err
		}
		if resp.status >= 200 || resp.status == http.StatusSwitchingProtocols {
			break
		}
	}
	if resp.status < 200 {
		return resp.status, true, nil // not reused: it may still be talking
	}
	if !last && !resp.close {
		// To use the connection again: the body read, and no deadline left
		// behind, whose timer would wake the process for nothing.
		keep = p.drain(resp) && p.setDeadline(time.Time{}) == nil
	}
	return resp.status, true, nil
}

// setDeadline sets the deadline of the check on the connection, unless
// interrupt came first, whose deadline in the past it must not undo.
func (p *httpProber) setDeadline(deadline time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.interrupted {
		return context.Canceled
	}
	return p.conn.SetDeadline(deadline)
}

// interrupt ends the check in flight (its reads and writes fail at once) and
// the later ones (setDeadline fails).
func (p *httpProber) interrupt() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.interrupted = true
	if p.conn != nil {
		p.conn.SetDeadline(time.Unix(1, 0))
	}
}

// response is what a check needs of the head of an HTTP answer.
type response struct {
	status  int
	length  int64 // of the body; -1 if not given (it ends when the server closes)
	chunked bool
	close   bool // the server closes the connection after it
}

// readHead reads the status line and header lines of an answer, as
// http.ReadResponse would, but parses them where they are in p.br's buffer:
// no header map, no strings, no allocation (at 1000 checks a second, those
// were most of the garbage and a tenth of the CPU a check costs). It looks at
// the three headers that frame the body and say whether the connection stays
// open, and fails on answers that net/http rejects for their framing.
func (p *httpProber) readHead() (response, error) {
	line, err := p.readLine()
	if err != nil {
		return response{}, err
	}
	// "HTTP/1.1 200 OK", the reason phrase optional.
	proto, rest, _ := bytes.Cut(line, []byte(" "))
	code, _, _ := bytes.Cut(rest, []byte(" "))
	if len(proto) != len("HTTP/1.x") || !bytes.HasPrefix(proto, []byte("HTTP/1.")) ||
		(proto[7] != '0' && proto[7] != '1') || len(code) != 3 {
		return response{}, fmt.Errorf("malformed HTTP response %q", line)
	}
	status, err := strconv.Atoi(string(code))
	if err != nil || status < 100 {
		return response{}, fmt.Errorf("malformed HTTP status code %q", code)
	}
	r := response{status: status, length: -1}
	http10, keepAlive := proto[7] == '0', false
	for {
		line, err := p.readLine()
		if err == errLongLine {
			continue // longer than p.br: none of those we read
		}
		if err != nil {
			return response{}, err
		}
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // obsolete folding of a header's value
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return response{}, fmt.Errorf("malformed MIME header line: %q", line)
		}
		value = bytes.Trim(value, " \t")
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 || (r.length >= 0 && n != r.length) {
				return response{}, fmt.Errorf("bad Content-Length %q", value)
			}
			r.length = n
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			if !bytes.EqualFold(value, []byte("chunked")) {
				return response{}, fmt.Errorf("unsupported transfer encoding: %q", value)
			}
			r.chunked = true
		case bytes.EqualFold(name, []byte("Connection")):
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				tok = bytes.Trim(tok, " \t")
				r.close = r.close || bytes.EqualFold(tok, []byte("close"))
				keepAlive = keepAlive || bytes.EqualFold(tok, []byte("keep-alive"))
			}
		}
	}
	if http10 && !keepAlive {
		r.close = true
	}
	switch {
	case status < 200 || status == http.StatusNoContent || status == http.StatusNotModified:
		r.length, r.chunked = 0, false // no body
	case r.chunked:
		r.length = -1
	case r.length < 0:
		r.close = true // the body ends when the connection does
	}
	return r, nil
}

// readLine reads one line of an answer, without its CRLF; it is valid until
// the next read. A line longer than p.br's buffer is skipped, with
// errLongLine.
func (p *httpProber) readLine() ([]byte, error) {
	line, err := p.br.ReadSlice('\n')
	long := false
	for err == bufio.ErrBufferFull {
		long = true
		_, err = p.br.ReadSlice('\n')
	}
	switch {
	case err != nil && p.lr.N == 0:
		return nil, errHeaderTooLarge
	case long && err == nil:
		return nil, errLongLine
	case err == io.EOF:
		return nil, io.ErrUnexpectedEOF // the first byte was read: cut short
	case err != nil:
		return nil, err
	}
	line = bytes.TrimSuffix(line[:len(line)-1], []byte("\r"))
	return line, nil
}

// drain reads the body of r to its end, if it is delimited and at most
// maxDrainBytes long, so that the connection can serve the next check; it
// reports whether it did.
func (p *httpProber) drain(r response) bool {
	p.lr.N += maxDrainBytes + 1
	switch {
	case r.chunked:
		return p.drainChunked()
	case r.length >= 0 && r.length <= maxDrainBytes:
		_, err := p.br.Discard(int(r.length))
		return err == nil
	}
	return false
}

// drainChunked reads a chunked body and its trailer, up to maxDrainBytes of
// chunks.
func (p *httpProber) drainChunked() bool {
	var total uint64
	for {
		line, err := p.readLine()
		if err != nil {
			return false
		}
		size, _, _ := bytes.Cut(line, []byte(";")) // chunk extensions
		n, err := strconv.ParseUint(string(bytes.TrimRight(size, " \t")), 16, 63)
		if err != nil || total+n > maxDrainBytes {
			return false
		}
		if n == 0 {
			break
		}
		total += n
		if _, err := p.br.Discard(int(n)); err != nil {
			return false
		}
		if line, err := p.readLine(); err != nil || len(line) > 0 {
			return false // not the CRLF that ends a chunk
		}
	}
	for { // the trailer, up to an empty line
		line, err := p.readLine()
		if err != nil {
			return false
		}
		if len(line) == 0 {
			return true
		}
	}
}

var (
	errHeaderTooLarge = fmt.Errorf("response header over %d bytes", maxHeaderBytes)
	errLongLine       = errors.New("response line too long")
)

// closedByPeer reports whether err says the server closed the connection.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED)
}

func (p *httpProber) dial(ctx context.Context) error {
	conn, err := p.dialer.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return err
	}
	if p.tls != nil {
		tc := tls.Client(conn, p.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return err
		}
		conn = tc
	}
	p.mu.Lock()
	p.conn, p.uses = conn, 0
	p.mu.Unlock()
	p.lr = io.LimitedReader{R: conn}
	if p.br == nil {
		p.br = bufio.NewReaderSize(&p.lr, 4<<10)
	} else {
		p.br.Reset(&p.lr)
	}
	return nil
}

// close closes the kept connection, if any.
func (p *httpProber) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		p.conn.Close()
		p.conn = nil
	}
}

type tcpProber struct {
	addr   string
	dialer *net.Dialer
}

func (p *tcpProber) probe(ctx context.Context) (string, error) {
	conn, err := p.dialer.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return "", classify(err)
	}
	conn.Close()
	return "connected", nil
}

func (p *tcpProber) interrupt() {} // DialContext follows ctx
func (p *tcpProber) close()     {}

// classify turns a dial or HTTP error into a *CheckError with a short reason.
func classify(err error) *CheckError {
	var class error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		class = ErrTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		class = ErrRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		class = ErrReset
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EHOSTDOWN), errors.Is(err, syscall.ENETDOWN):
		class = ErrUnreachable
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		class = ErrConnClosed
	}
	if class != nil {
		return &CheckError{Reason: class.Error(), class: class, err: err}
	}
	return &CheckError{Reason: shortReason(err), err: err}
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// shortReason is the message of the innermost error in err's chain (without
// the "Get http://...:" and "dial tcp ...:" prefixes of the outer ones),
// truncated.
func shortReason(err error) string {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			break
		}
		err = next
	}
	s := err.Error()
	if len(s) > maxReasonLen {
		s = s[:maxReasonLen]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "..."
	}
	return s
}

// Interface guards.
var (
	_ prober = (*httpProber)(nil)
	_ prober = (*tcpProber)(nil)
)

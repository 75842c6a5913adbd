package h1

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"sync/atomic"
	"time"
)

// requestBody reads a request's body off the client connection within its
// framing: Content-Length bytes, or chunks and a trailer section. Each read
// waits at most ClientTimeout. Any error is sticky and marks the body
// failed: the connection then closes after the answer, whatever the
// handler does, since what follows on it is not a request. It is read by
// one goroutine at a time (the transport's body sender), which may not be
// the handler's.
type requestBody struct {
	c       *clientConn
	chunked bool
	left    int64
	cr      io.Reader
	expect  bool  // "100 Continue" still to send before the first read
	err     error // sticky; the reading goroutine's
	eof     atomic.Bool
	failed  atomic.Bool
	closed  atomic.Bool
}

func newRequestBody(c *clientConn, f requestFraming) *requestBody {
	b := &requestBody{c: c, chunked: f.chunked, left: f.length, expect: f.expect}
	if f.chunked {
		b.cr = httputil.NewChunkedReader(c.br)
	}
	return b
}

func (b *requestBody) Read(p []byte) (int, error) {
	switch {
	case b.closed.Load():
		return 0, http.ErrBodyReadAfterClose
	case b.err != nil:
		return 0, b.err
	case b.eof.Load():
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	}
	c := b.c
	if b.expect {
		b.expect = false
		if err := c.sendContinue(); err != nil {
			return b.fail(err)
		}
	}
	c.rdl.SetRead(c.nc, time.Now().Add(c.srv.ClientTimeout), Slack(c.srv.ClientTimeout))
	var n int
	var err error
	if b.chunked {
		n, err = b.cr.Read(p)
		switch {
		case err == io.EOF:
			if err = b.readTrailer(); err == nil {
				err = io.EOF
			}
		case err != nil && err != io.ErrUnexpectedEOF && !isNetError(err):
			err = fmt.Errorf("malformed chunked body: %w", err)
		}
	} else {
		if int64(len(p)) > b.left {
			p = p[:b.left]
		}
		n, err = c.br.Read(p)
		b.left -= int64(n)
		switch {
		case b.left == 0:
			err = io.EOF
		case err == io.EOF:
			err = io.ErrUnexpectedEOF
		}
	}
	if err == io.EOF {
		b.eof.Store(true)
		c.bodyRead()
		return n, err
	}
	if err != nil {
		_, err = b.fail(err)
	}
	return n, err
}

func (b *requestBody) fail(err error) (int, error) {
	b.err = err
	b.failed.Store(true)
	return 0, err
}

// readTrailer reads the trailer section after the last chunk: field lines,
// then CRLF, within MaxRequestHead. The fields are not passed on.
func (b *requestBody) readTrailer() error {
	var size int
	for {
		line, err := b.c.br.ReadSlice('\n')
		if err != nil {
			if err == bufio.ErrBufferFull {
				return fmt.Errorf("trailer line too long")
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if size += len(line); size > b.c.srv.MaxRequestHead {
			return fmt.Errorf("trailer larger than %d bytes", b.c.srv.MaxRequestHead)
		}
		if len(line) < 2 || line[len(line)-2] != '\r' {
			return fmt.Errorf("trailer line not ended by CRLF")
		}
		if len(line) == 2 {
			return nil
		}
		if _, _, ok := ParseHeaderLine(string(line[:len(line)-2])); !ok {
			return fmt.Errorf("malformed trailer line")
		}
	}
}

func (b *requestBody) Close() error { return nil }

// finish ends the body when its request is over: later reads fail.
func (b *requestBody) finish() { b.closed.Store(true) }

// complete reports whether the body was read to its end.
func (b *requestBody) complete() bool { return b.eof.Load() && !b.failed.Load() }

// Failed reports whether reading the body failed (bad framing, cut short,
// too slow): the client's fault.
func (b *requestBody) Failed() bool { return b.failed.Load() }

// sendContinue answers Expect: 100-continue, unless the answer has begun.
func (c *clientConn) sendContinue() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.resp.wroteHeader {
		return nil
	}
	c.wdl.SetWrite(c.nc, time.Now().Add(c.srv.ClientTimeout), Slack(c.srv.ClientTimeout))
	c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	return c.bw.Flush()
}

// bodyRead is told by a request body read to its end: the client watch
// may start (its reads no longer take the body's bytes).
func (c *clientConn) bodyRead() {
	c.watchMu.Lock()
	open := c.reqOpen && c.watchState == watchOff
	if open {
		c.watchState = watchArmed
	}
	c.watchMu.Unlock()
	if open {
		c.watchTimer.Reset(clientWatchDelay)
	}
}

var _ io.ReadCloser = (*requestBody)(nil)

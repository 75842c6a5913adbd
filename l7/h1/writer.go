package h1

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// response is the http.ResponseWriter of a client connection. It frames
// the body as net/http's server does: the handler's Content-Length if it
// set one; else, when the whole body fits in holdBytes and nothing was
// flushed, a Content-Length of its own; else chunked (HTTP/1.1) with
// trailers (the Trailer header, http.TrailerPrefix), or to the end of the
// connection (HTTP/1.0). It adds Date, sniffs a missing Content-Type and
// sends no body for HEAD, 1xx, 204 and 304. Every write to the client
// waits at most ClientTimeout.
type response struct {
	c   *clientConn
	req *http.Request
	h   http.Header

	status      int
	wroteHeader bool // the final status is decided (guarded by c.wmu)
	headerSent  bool // and written to the connection
	clen        int64
	chunked     bool
	untilClose  bool // HTTP/1.0, length unknown: the body ends with the connection
	noBody      bool
	hold        []byte // body held back while its length is unknown
	trailers    []string
	close       bool  // Connection: close
	written     int64 // body bytes written
	err         error
}

// holdBytes is how much of a body of unknown length is held back to send it
// with a Content-Length (net/http's server holds 2 KB; 4 KB covers most
// short answers).
const holdBytes = 4 << 10

func (w *response) Header() http.Header { return w.h }

// writeDeadline bounds the writes that follow by ClientTimeout.
func (w *response) writeDeadline() {
	c := w.c
	c.wdl.SetWrite(c.nc, time.Now().Add(c.srv.ClientTimeout), Slack(c.srv.ClientTimeout))
}

func (w *response) WriteHeader(code int) {
	w.c.wmu.Lock()
	defer w.c.wmu.Unlock()
	w.writeHeader(code)
}

func (w *response) writeHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		if w.req.ProtoMinor > 0 { // HTTP/1.0 has no interim answers
			w.writeDeadline()
			w.writeHead(code, false)
		}
		return
	}
	w.wroteHeader = true
	w.status = code
	if cl := w.h["Content-Length"]; len(cl) == 1 {
		if n, ok := parseLength(cl[0]); ok {
			w.clen = n
		}
	}
	w.noBody = w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
	for _, v := range w.h["Trailer"] {
		for k := range strings.SplitSeq(v, ",") {
			if k = http.CanonicalHeaderKey(strings.TrimSpace(k)); k != "" {
				w.trailers = append(w.trailers, k)
			}
		}
	}
	if len(w.trailers) > 0 && !w.noBody {
		w.clen = -1 // trailers need chunks
		delete(w.h, "Content-Length")
	}
	if c := w.h["Connection"]; len(c) > 0 && HasToken(c, "close") {
		w.close = true
	}
}

func (w *response) Write(p []byte) (int, error) {
	w.c.wmu.Lock()
	defer w.c.wmu.Unlock()
	if !w.wroteHeader {
		w.writeHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody || len(p) == 0 {
		return len(p), nil
	}
	if w.clen >= 0 && w.written+int64(len(p)) > w.clen {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if !w.headerSent {
		if w.clen < 0 && len(w.hold)+len(p) <= holdBytes {
			w.hold = append(w.hold, p...)
			return len(p), nil
		}
		w.writeDeadline()
		w.sendHeader(p)
	} else {
		w.writeDeadline()
	}
	w.writeBody(p)
	return len(p), w.err
}

// Flush sends what is held and written; a body of unknown length becomes
// chunked.
func (w *response) Flush() {
	w.c.wmu.Lock()
	defer w.c.wmu.Unlock()
	w.flush()
}

func (w *response) flush() {
	if !w.wroteHeader {
		w.writeHeader(http.StatusOK)
	}
	w.writeDeadline()
	if !w.headerSent {
		w.sendHeader(nil)
	}
	if w.err == nil {
		w.err = w.c.bw.Flush()
	}
}

// FlushError is Flush with its error, for http.ResponseController.
func (w *response) FlushError() error {
	w.Flush()
	return w.err
}

// CloseAfter closes the connection after this answer.
func (w *response) CloseAfter() {
	w.c.wmu.Lock()
	w.close = true
	w.c.wmu.Unlock()
}

// EnableFullDuplex is what http.ResponseController calls: the connection
// is full duplex already (an answer may be written while the body is
// read).
func (w *response) EnableFullDuplex() error { return nil }

// Hijack hands the connection to the handler (a protocol switch): the
// Server no longer reads, writes or closes it.
func (w *response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c := w.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if w.headerSent {
		return nil, nil, errors.New("h1: hijack after the answer began")
	}
	c.disarmWatch()
	c.hijacked = true
	c.nc.SetDeadline(time.Time{})
	c.rdl, c.wdl = Deadline{}, Deadline{}
	return c.nc, bufio.NewReadWriter(c.br, c.bw), nil
}

// finish ends the answer after the handler returned; false if the
// connection broke.
func (w *response) finish() bool {
	w.c.wmu.Lock()
	defer w.c.wmu.Unlock()
	if !w.wroteHeader {
		w.writeHeader(http.StatusOK)
	}
	w.writeDeadline()
	if !w.headerSent {
		if w.clen < 0 && !w.noBody && len(w.trailers) == 0 {
			w.clen = int64(len(w.hold))
			w.h["Content-Length"] = []string{strconv.Itoa(len(w.hold))}
		}
		w.sendHeader(nil)
	}
	if w.clen >= 0 && !w.noBody && w.written < w.clen {
		w.close = true // a body shorter than announced: the client must not wait for the rest on a kept connection
	}
	if w.chunked && w.err == nil {
		bw := w.c.bw
		bw.WriteString("0\r\n")
		for _, k := range w.trailers {
			writeHeaderLines(bw, k, w.h[k])
		}
		for k, vv := range w.h {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				writeHeaderLines(bw, name, vv)
			}
		}
		bw.WriteString("\r\n")
	}
	if w.err == nil {
		if w.c.bw.Buffered() > 0 {
			yieldBeforeWrite()
		}
		w.err = w.c.bw.Flush()
	}
	return w.err == nil && !w.untilClose
}

// sendHeader writes the status line and header, then what is held; first
// is the first body write (for sniffing), if any.
func (w *response) sendHeader(first []byte) {
	w.headerSent = true
	if w.c.srv.shutting.Load() {
		w.close = true // as net/http: no more requests on this connection
	}
	if !w.noBody && w.clen < 0 {
		if w.req.ProtoMinor == 0 {
			w.untilClose, w.close = true, true
		} else {
			w.chunked = true
		}
		delete(w.h, "Content-Length")
	}
	if _, ok := w.h["Content-Type"]; !ok && !w.noBody {
		sniff := w.hold
		if len(sniff) == 0 {
			sniff = first
		}
		if len(sniff) > 0 {
			w.h["Content-Type"] = []string{http.DetectContentType(sniff)}
		}
	}
	w.writeHead(w.status, true)
	if len(w.hold) > 0 {
		w.writeBody(w.hold)
		w.hold = nil
	}
}

// writeHead writes a status line and the header. final adds what a final
// answer carries (Date, framing, Connection).
func (w *response) writeHead(code int, final bool) {
	bw := w.c.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(code))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(code))
	bw.WriteString("\r\n")
	if final {
		if _, ok := w.h["Date"]; !ok {
			bw.WriteString(dateLine())
		}
	}
	for k, vv := range w.h {
		if strings.HasPrefix(k, http.TrailerPrefix) || final && (k == "Transfer-Encoding" || k == "Connection") {
			continue
		}
		writeHeaderLines(bw, k, vv)
	}
	if final {
		if w.chunked {
			bw.WriteString("Transfer-Encoding: chunked\r\n")
		}
		switch {
		case w.close:
			bw.WriteString("Connection: close\r\n")
		case w.req.ProtoMinor == 0:
			bw.WriteString("Connection: keep-alive\r\n")
		}
	}
	bw.WriteString("\r\n")
}

func writeHeaderLines(bw io.StringWriter, k string, vv []string) {
	for _, v := range vv {
		bw.WriteString(k)
		bw.WriteString(": ")
		WriteHeaderValue(bw, v)
		bw.WriteString("\r\n")
	}
}

func (w *response) writeBody(p []byte) {
	if w.err != nil {
		return
	}
	bw := w.c.bw
	if w.chunked {
		bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		bw.WriteString("\r\n")
		bw.Write(p)
		_, w.err = bw.WriteString("\r\n")
		return
	}
	_, w.err = bw.Write(p)
}

var (
	_ http.ResponseWriter = (*response)(nil)
	_ http.Flusher        = (*response)(nil)
	_ http.Hijacker       = (*response)(nil)
)

// dateLine is "Date: <now>\r\n", formatted once a second.
func dateLine() string {
	now := time.Now()
	if d := cachedDate.Load(); d != nil && d.sec == now.Unix() {
		return d.line
	}
	d := &dateCache{sec: now.Unix(), line: "Date: " + now.UTC().Format(http.TimeFormat) + "\r\n"}
	cachedDate.Store(d)
	return d.line
}

type dateCache struct {
	sec  int64
	line string
}

var cachedDate atomic.Pointer[dateCache]

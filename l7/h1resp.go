package l7

import (
	"github.com/xlb-dev/xlb/l7/h1"

	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// h1Response is the http.ResponseWriter of the fast path. It frames the
// body as net/http's server does: the handler's Content-Length if it set
// one; else, when the whole body fits in holdBytes and nothing was flushed,
// a Content-Length of its own; else chunked, with trailers (the Trailer
// header, http.TrailerPrefix). It adds Date, sniffs a missing Content-Type
// and sends no body for HEAD, 1xx, 204 and 304.
type h1Response struct {
	c   *h1Conn
	req *http.Request
	h   http.Header

	status      int
	wroteHeader bool // the final status is decided
	headerSent  bool // and written to the connection
	clen        int64
	chunked     bool
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

func (w *h1Response) Header() http.Header { return w.h }

func (w *h1Response) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.writeHead(code, false) // informational: the final answer follows
		return
	}
	w.wroteHeader = true
	w.status = code
	if cl := w.h["Content-Length"]; len(cl) == 1 {
		if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
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
	if c := w.h["Connection"]; len(c) > 0 && h1.HasToken(c, "close") {
		w.close = true
	}
}

func (w *h1Response) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
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
		w.sendHeader(p)
	}
	w.writeBody(p)
	return len(p), w.err
}

// Flush sends what is held and written; a body of unknown length becomes
// chunked.
func (w *h1Response) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headerSent {
		w.sendHeader(nil)
	}
	if w.err == nil {
		w.err = w.c.bw.Flush()
	}
}

// FlushError is Flush with its error, for http.ResponseController.
func (w *h1Response) FlushError() error {
	w.Flush()
	return w.err
}

// finish ends the answer after the handler returned; false if the
// connection broke.
func (w *h1Response) finish() bool {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headerSent {
		if w.clen < 0 && !w.noBody && len(w.trailers) == 0 {
			w.clen = int64(len(w.hold))
			w.h["Content-Length"] = []string{strconv.Itoa(len(w.hold))}
		}
		w.sendHeader(nil)
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
		w.err = w.c.bw.Flush()
	}
	return w.err == nil
}

// sendHeader writes the status line and header, then what is held; first
// is the first body write (for sniffing), if any.
func (w *h1Response) sendHeader(first []byte) {
	w.headerSent = true
	if w.c.l.h1.isShutting() {
		w.close = true // as net/http: no more requests on this connection
	}
	if !w.noBody && w.clen < 0 {
		w.chunked = true
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
func (w *h1Response) writeHead(code int, final bool) {
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
		if w.close {
			bw.WriteString("Connection: close\r\n")
		}
	}
	bw.WriteString("\r\n")
}

func writeHeaderLines(bw io.StringWriter, k string, vv []string) {
	for _, v := range vv {
		bw.WriteString(k)
		bw.WriteString(": ")
		h1.WriteHeaderValue(bw, v)
		bw.WriteString("\r\n")
	}
}

func (w *h1Response) writeBody(p []byte) {
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
	_ http.ResponseWriter = (*h1Response)(nil)
	_ http.Flusher        = (*h1Response)(nil)
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

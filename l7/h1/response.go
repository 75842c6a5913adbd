package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
)

// DefaultMaxResponseHead bounds a backend's answer head (status line and
// header); a longer one is ErrBadResponse (nginx's proxy_buffer_size is 4
// or 8 KB, HAProxy's buffer 16 KB).
const DefaultMaxResponseHead = 64 << 10

var crlfCRLF = []byte("\r\n\r\n")

// ReadResponse reads the head of one answer to req from br, strictly:
// "HTTP/1.1" or "HTTP/1.0", a three-digit status, "Name: value" lines
// ending in CRLF with token names, and framing that is certain (RFC 9112
// section 6.3): no body for HEAD, 1xx, 204 and 304 whatever the header
// says; else "Transfer-Encoding: chunked" alone, or Content-Length (one
// value, repeats identical), or neither: the body ends when the connection
// does. Anything else is ErrBadResponse. The answer is what
// http.ReadResponse returns for the same bytes, with Body reading from br;
// an error reading the first byte is returned as net/http reports it (EOF
// as io.ErrUnexpectedEOF).
//
// It costs four allocations for a typical answer: one string for the head,
// of which names and values are substrings, the header map (two), and the
// answer with its body and the values of up to eight header lines.
func ReadResponse(br *bufio.Reader, req *http.Request, maxHead int) (*http.Response, error) {
	if maxHead <= 0 {
		maxHead = DefaultMaxResponseHead
	}
	head, err := readHead(br, maxHead)
	if err != nil {
		return nil, err
	}
	status, rest, _ := strings.Cut(head, "\r\n")
	major, minor, code, _, ok := parseStatusLine(status)
	if !ok {
		return nil, badResponse("status line %.64q", status)
	}
	rest = rest[:len(rest)-2] // the blank line

	n := strings.Count(rest, "\n")
	h := make(http.Header, n)
	a := new(answer)
	vals := a.vals[:]
	if n > len(vals) {
		vals = make([]string, n)
	}
	for i := 0; rest != ""; i++ {
		eol := strings.IndexByte(rest, '\n')
		if eol <= 0 || rest[eol-1] != '\r' {
			return nil, badResponse("header line not ended by CRLF")
		}
		k, v, ok := ParseHeaderLine(rest[:eol-1])
		if !ok {
			return nil, badResponse("header line %.64q", rest[:eol-1])
		}
		rest = rest[eol+1:]
		vals[i] = v
		if vv := h[k]; vv != nil {
			h[k] = append(vv, v)
		} else {
			h[k] = vals[i : i+1 : i+1] // an append copies, never overwrites the next value
		}
	}

	// Framing. A message with both is a request-smuggling vector (RFC 9112
	// section 6.1): refused even where no body follows.
	te, cl := h["Transfer-Encoding"], h["Content-Length"]
	chunked := false
	if len(te) > 0 {
		switch {
		case len(cl) > 0:
			return nil, badResponse("both Content-Length and Transfer-Encoding")
		case minor == 0:
			return nil, badResponse("Transfer-Encoding in an HTTP/1.0 answer")
		case len(te) != 1 || !ASCIIEqualFold(te[0], "chunked"):
			return nil, badResponse("transfer coding %.64q", strings.Join(te, ", "))
		}
		chunked = true
		delete(h, "Transfer-Encoding")
	}
	clen, ok := contentLength(cl)
	if !ok {
		return nil, badResponse("Content-Length %.64q", strings.Join(cl, ", "))
	}
	if len(cl) > 1 {
		h["Content-Length"] = cl[:1] // identical repeats are one, as net/http has them
	}
	var trailer http.Header
	if tr := h["Trailer"]; len(tr) > 0 && chunked { // as net/http: only a chunked body has trailers
		trailer = make(http.Header, 2)
		for _, v := range tr {
			for k := range strings.SplitSeq(v, ",") {
				k = http.CanonicalHeaderKey(TrimOWS(k))
				switch {
				case k == "":
				case !ValidToken(k), k == "Transfer-Encoding", k == "Trailer", k == "Content-Length":
					return nil, badResponse("trailer key %.64q", k)
				default:
					trailer[k] = nil
				}
			}
		}
		delete(h, "Trailer")
		if len(trailer) == 0 {
			trailer = nil
		}
	}
	if p := h["Pragma"]; len(p) > 0 && p[0] == "no-cache" && h["Cache-Control"] == nil {
		h["Cache-Control"] = []string{"no-cache"} // as http.ReadResponse (RFC 7234 section 5.4)
	}
	// As net/http: an HTTP/1.1 "close" is taken out of the header.
	closing := HasToken(h["Connection"], "close")
	if minor == 0 {
		closing = closing || !HasToken(h["Connection"], "keep-alive")
	} else if closing {
		delete(h, "Connection")
	}

	isHead := req != nil && req.Method == http.MethodHead
	bodyless := isHead || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified
	a.res = http.Response{
		Status:        strings.TrimLeft(status[len("HTTP/1.1 "):], " "),
		StatusCode:    code,
		Proto:         status[:len("HTTP/1.1")],
		ProtoMajor:    major,
		ProtoMinor:    minor,
		Header:        h,
		Body:          http.NoBody,
		ContentLength: clen,
		Close:         closing,
		Trailer:       trailer,
		Request:       req,
	}
	if chunked {
		a.res.TransferEncoding = chunkedTE
		a.res.ContentLength = -1
	}
	switch {
	case bodyless:
		// HEAD keeps the length it was told (or -1); the others have none.
		if !isHead {
			a.res.ContentLength = 0
		}
	case chunked:
		a.res.Body = &chunkedBody{br: br, cr: httputil.NewChunkedReader(br), res: &a.res, maxTrailer: maxHead}
	case clen > 0:
		a.body = lengthBody{br: br, left: clen}
		a.res.Body = &a.body
	case clen < 0:
		// Neither: the body is the rest of the connection (RFC 9112
		// section 6.3, rule 8); the connection is not reused.
		a.res.Close = true
		a.res.Body = &eofBody{br: br}
	}
	return &a.res, nil
}

var chunkedTE = []string{"chunked"}

// answer holds an answer, its body and the values of a typical header in
// one allocation.
type answer struct {
	res  http.Response
	body lengthBody
	vals [8]string
}

// readHead reads through the blank line that ends a head and returns it
// as one string. A head that fits in br's buffer is found there (one copy,
// the string); a longer one is gathered line by line, up to max bytes.
func readHead(br *bufio.Reader, max int) (string, error) {
	if _, err := br.Peek(1); err != nil {
		// bufio hands a read error out once: reported here as
		// http.ReadResponse reports it.
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
	for {
		buf, _ := br.Peek(br.Buffered())
		if i := bytes.Index(buf, crlfCRLF); i >= 0 {
			if i+4 > max {
				return "", badResponse("head longer than %d bytes", max)
			}
			head := string(buf[:i+4])
			br.Discard(i + 4)
			return head, nil
		}
		if len(buf) >= max {
			return "", badResponse("head longer than %d bytes", max)
		}
		if bareLF(buf) {
			// It would never end: LF alone ends no line here.
			return "", badResponse("header line not ended by CRLF")
		}
		if len(buf) == br.Size() {
			break // does not fit: gather it
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return "", truncated(err)
		}
	}
	// The head ends at the first CRLF CRLF, whose last byte ReadSlice
	// stops at; the buffer held none whole.
	acc := make([]byte, 0, 2*br.Size())
	for {
		line, err := br.ReadSlice('\n')
		acc = append(acc, line...)
		if len(acc) > max {
			return "", badResponse("head longer than %d bytes", max)
		}
		if bytes.HasSuffix(acc, crlfCRLF) {
			return string(acc), nil
		}
		if err == nil && (len(acc) < 2 || acc[len(acc)-2] != '\r') {
			return "", badResponse("header line not ended by CRLF")
		}
		if err != nil && err != bufio.ErrBufferFull {
			return "", truncated(err)
		}
	}
}

// bareLF reports an LF not preceded by CR.
func bareLF(b []byte) bool {
	for i := bytes.IndexByte(b, '\n'); i >= 0; {
		if i == 0 || b[i-1] != '\r' {
			return true
		}
		j := bytes.IndexByte(b[i+1:], '\n')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return false
}

// truncated is the error for a head the connection cut short.
func truncated(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parseStatusLine parses "HTTP/1.x ddd reason" (or without the reason, as
// net/http takes it): version 1.1 or 1.0, status 100-599, a reason of
// visible characters, blanks and obs-text.
func parseStatusLine(line string) (major, minor, code int, reason string, ok bool) {
	const proto = "HTTP/1.1 "
	if len(line) < len(proto)+3 || line[:len("HTTP/1.")] != "HTTP/1." || line[len(proto)-1] != ' ' {
		return 0, 0, 0, "", false
	}
	switch line[len("HTTP/1.")] {
	case '1':
		minor = 1
	case '0':
	default:
		return 0, 0, 0, "", false
	}
	for _, c := range []byte(line[len(proto) : len(proto)+3]) {
		if c < '0' || c > '9' {
			return 0, 0, 0, "", false
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 || code > 599 {
		return 0, 0, 0, "", false
	}
	reason = line[len(proto)+3:]
	if reason != "" {
		if reason[0] != ' ' || !ValidValue(reason) {
			return 0, 0, 0, "", false
		}
		reason = reason[1:]
	}
	return 1, minor, code, reason, true
}

// lengthBody is the body of an answer with a Content-Length, read from the
// connection's reader as net/http's is: io.EOF with the last bytes,
// io.ErrUnexpectedEOF if the connection ends first, other errors as they
// come.
type lengthBody struct {
	br     *bufio.Reader
	left   int64
	eof    bool
	closed bool
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.eof || b.left <= 0 {
		b.eof = true
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	switch {
	case err == io.EOF:
		b.eof = true
		if b.left > 0 {
			err = io.ErrUnexpectedEOF
		}
	case err == nil && n > 0 && b.left == 0:
		b.eof = true
		err = io.EOF // lets the caller reuse the connection without another call
	}
	return n, err
}

func (b *lengthBody) Close() error { b.closed = true; return nil }

// chunkedBody is a chunked answer body: chunks, then the trailer section,
// whose fields go to the answer's Trailer when the body ends (as
// net/http: every field read, declared or not).
type chunkedBody struct {
	br         *bufio.Reader
	cr         io.Reader
	res        *http.Response
	maxTrailer int
	err        error // sticky
	closed     bool
}

func (b *chunkedBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.cr.Read(p)
	if err == io.EOF {
		err = b.readTrailer()
		if err == nil {
			err = io.EOF
		}
	} else if err != nil {
		if err != io.ErrUnexpectedEOF && !isNetError(err) {
			err = badResponse("chunked body: %v", err)
		}
	}
	b.err = err
	return n, err
}

// isNetError: an error of the connection itself (timeout, reset), not of
// the bytes on it.
func isNetError(err error) bool {
	_, ok := err.(interface{ Timeout() bool })
	return ok
}

// readTrailer reads the trailer section after the last chunk: field lines
// as in a head, then CRLF.
func (b *chunkedBody) readTrailer() error {
	var size int
	for {
		line, err := b.br.ReadSlice('\n')
		if err != nil {
			if err == bufio.ErrBufferFull {
				return badResponse("trailer line too long")
			}
			return truncated(err)
		}
		size += len(line)
		if size > b.maxTrailer {
			return badResponse("trailer longer than %d bytes", b.maxTrailer)
		}
		if len(line) < 2 || line[len(line)-2] != '\r' {
			return badResponse("trailer line not ended by CRLF")
		}
		if len(line) == 2 {
			return nil
		}
		k, v, ok := ParseHeaderLine(string(line[:len(line)-2]))
		if !ok {
			return badResponse("trailer line %.64q", line)
		}
		switch k {
		case "Transfer-Encoding", "Content-Length", "Trailer", "Host":
			continue // framing and routing fields are not taken from a trailer
		}
		if b.res.Trailer == nil {
			b.res.Trailer = http.Header{}
		}
		b.res.Trailer[k] = append(b.res.Trailer[k], v)
	}
}

func (b *chunkedBody) Close() error { b.closed = true; return nil }

// eofBody is a body that ends with the connection.
type eofBody struct {
	br     *bufio.Reader
	closed bool
}

func (b *eofBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.br.Read(p)
}

func (b *eofBody) Close() error { b.closed = true; return nil }

var (
	_ io.ReadCloser = (*lengthBody)(nil)
	_ io.ReadCloser = (*chunkedBody)(nil)
	_ io.ReadCloser = (*eofBody)(nil)
)

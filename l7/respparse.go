package l7

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
)

// readSimpleResponse reads a backend's answer head from br in place when it
// is simple: already whole in br's buffer, "HTTP/1.1", a final status
// (200-599), plain "Name: value" lines, no Transfer-Encoding or Trailer and
// the body framed by one valid Content-Length (or none needed: HEAD, 204,
// 304). It returns the answer as http.ReadResponse would, with Body reading
// from br, or the error it would return when nothing could be read. Anything
// else gives ok false with nothing consumed, for http.ReadResponse to read
// (or reject) as it does.
//
// It costs four allocations where http.ReadResponse costs a dozen: one
// string for the whole head, of which names and values are substrings, the
// map (two), and the answer with its body and the values of up to eight
// header lines (more take one more array).
func readSimpleResponse(br *bufio.Reader, req *http.Request) (res *http.Response, ok bool, err error) {
	if _, err = br.Peek(1); err != nil {
		// bufio hands a read error out once: reported here as
		// http.ReadResponse reports it, not left to a second read (which
		// after a reset would find an EOF).
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, true, err
	}
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, crlfCRLF)
	if end < 0 {
		return nil, false, nil // head not all in yet: the slow path waits for it
	}
	head := string(buf[:end+2]) // every line with its CRLF
	status, rest, _ := strings.Cut(head, "\r\n")
	code, ok := parseStatusLine(status)
	if !ok {
		return nil, false, nil
	}

	n := strings.Count(rest, "\n") // a line each, or more with a bare LF, which fails below
	h := make(http.Header, n)
	a := new(simpleAnswer)
	vals := a.vals[:]
	if n > len(vals) {
		vals = make([]string, n)
	}
	clen := int64(-1)
	for i := 0; rest != ""; i++ {
		eol := strings.IndexByte(rest, '\n') // rest ends in "\r\n"
		if eol == 0 || rest[eol-1] != '\r' {
			return nil, false, nil // a bare LF, which net/http takes as a line end
		}
		k, v, ok := parseHeaderLine(rest[:eol-1])
		if !ok {
			return nil, false, nil
		}
		rest = rest[eol+1:]
		switch k {
		case "Transfer-Encoding", "Trailer":
			return nil, false, nil
		case "Content-Length":
			if clen >= 0 || v == "" {
				return nil, false, nil // net/http dedups or rejects: its call
			}
			u, err := strconv.ParseUint(v, 10, 63)
			if err != nil {
				return nil, false, nil
			}
			clen = int64(u)
		case "Connection":
			if !asciiOnly(v) {
				return nil, false, nil // rare: left to net/http
			}
		}
		vals[i] = v
		if vv := h[k]; vv != nil {
			h[k] = append(vv, v)
		} else {
			h[k] = vals[i : i+1 : i+1] // an append copies, never overwrites the next value
		}
	}

	isHead := req != nil && req.Method == http.MethodHead
	bodyless := isHead || code == http.StatusNoContent || code == http.StatusNotModified
	if clen < 0 && !bodyless {
		return nil, false, nil // body until the connection closes: rare, net/http's
	}
	// As http.ReadResponse: Pragma: no-cache implies Cache-Control (RFC 7234
	// section 5.4), and a "close" Connection header is taken out.
	if p := h["Pragma"]; len(p) > 0 && p[0] == "no-cache" && h["Cache-Control"] == nil {
		h["Cache-Control"] = []string{"no-cache"}
	}
	closing := hasToken(h["Connection"], "close")
	if closing {
		delete(h, "Connection")
	}

	a.res = http.Response{
		Status:        status[len("HTTP/1.1 "):], // as sent, as net/http keeps it
		StatusCode:    code,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          http.NoBody,
		ContentLength: clen,
		Close:         closing,
		Request:       req,
	}
	switch {
	case isHead:
		// ContentLength is the header's, or -1; there is no body.
	case bodyless:
		a.res.ContentLength = 0
	case clen > 0:
		a.body = lengthBody{br: br, left: clen, closing: closing}
		a.res.Body = &a.body
	}
	br.Discard(end + 4)
	return &a.res, true, nil
}

var crlfCRLF = []byte("\r\n\r\n")

// simpleAnswer holds an answer, its body and the values of a typical header
// in one allocation.
type simpleAnswer struct {
	res  http.Response
	body lengthBody
	vals [8]string
}

// parseStatusLine parses "HTTP/1.1 ddd reason" (or "HTTP/1.1 ddd", which
// net/http takes as well) with a final status and a printable reason.
func parseStatusLine(line string) (code int, ok bool) {
	const proto = "HTTP/1.1 "
	if len(line) < len(proto)+3 || line[:len(proto)] != proto {
		return 0, false
	}
	for _, c := range []byte(line[len(proto) : len(proto)+3]) {
		if c < '0' || c > '9' {
			return 0, false
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 || code > 599 { // 1xx: interim or a protocol switch
		return 0, false
	}
	reason := line[len(proto)+3:]
	if reason == "" {
		return code, true
	}
	if reason[0] != ' ' {
		return 0, false
	}
	for i := 1; i < len(reason); i++ {
		if c := reason[i]; (c < 0x20 || c > 0x7e) && c != '\t' {
			return 0, false
		}
	}
	return code, true
}

// parseHeaderLine splits "Name: value" into the canonical name and the
// value without its surrounding blanks, as textproto does. A name that is
// not a token (a space before the colon, which net/http tolerates, among
// others), a control character in the value, or a continuation line (which
// starts with a blank, so its name is not a token) is not simple.
func parseHeaderLine(line string) (k, v string, ok bool) {
	k, v, ok = strings.Cut(line, ":")
	if !ok || k == "" {
		return "", "", false
	}
	canonical, upper := true, true
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !isTokenChar(c) {
			return "", "", false
		}
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			canonical = false
		}
		upper = c == '-'
	}
	if !canonical {
		k = textproto.CanonicalMIMEHeaderKey(k)
	}
	v = trimOWS(v)
	if !validValue(v) {
		return "", "", false
	}
	return k, v, true
}

// trimOWS strips the spaces and tabs around a field value.
func trimOWS(v string) string {
	for v != "" && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for v != "" && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

func asciiOnly(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// lengthBody is the body of an answer with a Content-Length, read from the
// connection's reader as net/http's is: io.EOF with the last bytes,
// io.ErrUnexpectedEOF if the connection ends first, other errors as they
// come. Not safe for concurrent use (net/http's is; the proxy does not
// read and close at once).
type lengthBody struct {
	br      *bufio.Reader
	left    int64
	closing bool // the connection closes after it: Close need not drain
	eof     bool
	closed  bool
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

// Close drains what is left unless the connection closes anyway, as
// net/http's body does, so that the connection could carry another answer.
func (b *lengthBody) Close() error {
	if b.closed {
		return nil
	}
	var err error
	if !b.eof && !b.closing {
		_, err = io.Copy(io.Discard, b)
	}
	b.closed = true
	return err
}

package h1

import (
	"bufio"
	"bytes"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

var h2Preface = []byte("PRI * HTTP/2.0\r\n")

// readRequest waits for the next request head, reads and parses it. ok
// false: the connection is to be closed (an answer was sent if one was
// due); req nil with ok: hand the connection off (HTTP/2).
func (c *clientConn) readRequest(first bool) (req *http.Request, ok bool) {
	s := c.srv
	wait := s.IdleTimeout
	if first {
		wait = s.HeadTimeout
	}
	c.rdl.SetRead(c.nc, time.Now().Add(wait), slackOf(wait))
	if _, err := c.br.Peek(1); err != nil {
		return nil, false // nothing of a request: closed without a word
	}
	c.state.Store(stateActive)
	head, status, reason := c.readHead(first)
	switch {
	case status == handOffStatus:
		return nil, true
	case status != 0:
		c.refuse(status, reason)
		return nil, false
	case head == "":
		return nil, false
	}
	r, f, status, reason := parseRequest(head, c.tmpl)
	if status != 0 {
		c.refuse(status, reason)
		return nil, false
	}
	if f.length != 0 {
		r.Body = newRequestBody(c, f)
	}
	return r, true
}

// handOffStatus is readHead's "HTTP/2: hand the connection off".
const handOffStatus = -1

// slackOf is a client-side timeout's slack: 1/32 of it, at most a second.
func slackOf(d time.Duration) time.Duration { return min(d/32, time.Second) }

// readHead reads through the blank line that ends a request head (empty
// lines before the request line are skipped, as RFC 9112 section 2.2
// allows) and returns it as one string. status (with a reason) is the
// answer due when the head cannot be read: 408 when HeadTimeout ran out
// with part of it read, 414 for a request line over MaxRequestLine, 431
// for a head over MaxRequestHead, 400 for bare LF line ends. An empty head
// and no status: the client closed or broke the connection.
func (c *clientConn) readHead(first bool) (head string, status int, reason string) {
	s, br := c.srv, c.br
	extended := first
	for {
		buf, _ := br.Peek(br.Buffered())
		skip := 0
		for skip+1 < len(buf) && buf[skip] == '\r' && buf[skip+1] == '\n' && skip < 8 {
			skip += 2
		}
		if skip > 0 {
			br.Discard(skip)
			buf = buf[skip:]
		}
		if bytes.HasPrefix(buf, h2Preface) {
			return "", handOffStatus, ""
		}
		if i := bytes.Index(buf, crlfCRLF); i >= 0 {
			if st, why := c.checkHead(buf[:i+4]); st != 0 {
				return "", st, why
			}
			head = string(buf[:i+4])
			br.Discard(i + 4)
			return head, 0, ""
		}
		if st, why := c.checkHead(buf); st != 0 {
			return "", st, why
		}
		if len(buf) > 0 && len(buf) == br.Size() {
			break // does not fit the buffer: gather it
		}
		if !extended {
			// The head did not come in one piece: from its first byte it
			// has HeadTimeout, not the idle timeout.
			c.rdl.SetRead(c.nc, time.Now().Add(s.HeadTimeout), 0)
			extended = true
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			st, why := c.headReadFailed(len(buf), err)
			return "", st, why
		}
	}
	// The head ends at the first CRLF CRLF, whose last byte ReadSlice
	// stops at; the buffer held none whole.
	acc := make([]byte, 0, 2*br.Size())
	for {
		line, err := br.ReadSlice('\n')
		acc = append(acc, line...)
		done := bytes.HasSuffix(acc, crlfCRLF)
		if st, why := c.checkHead(acc); st != 0 {
			return "", st, why
		}
		if done {
			return string(acc), 0, ""
		}
		if err != nil && err != bufio.ErrBufferFull {
			st, why := c.headReadFailed(len(acc), err)
			return "", st, why
		}
	}
}

// headReadFailed is the answer due when reading a head failed after n of
// its bytes: 408 for a timeout with part of a head in, none otherwise.
func (c *clientConn) headReadFailed(n int, err error) (int, string) {
	if n > 0 && isTimeout(err) {
		return http.StatusRequestTimeout, "the request head did not arrive in time"
	}
	return 0, ""
}

// checkHead checks what has come of a head so far against the limits and
// line ends.
func (c *clientConn) checkHead(b []byte) (int, string) {
	s := c.srv
	line := b
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		line = b[:i]
	}
	if len(line) > s.MaxRequestLine+1 {
		return http.StatusRequestURITooLong, "the request line is longer than the limit"
	}
	if len(b) > s.MaxRequestHead {
		return http.StatusRequestHeaderFieldsTooLarge, "the request head is larger than the limit"
	}
	if bareLF(b) {
		return http.StatusBadRequest, "a line of the request head does not end in CRLF"
	}
	return 0, ""
}

// requestFraming is what parseRequest found of a request's body.
type requestFraming struct {
	chunked  bool
	expect   bool // 100-continue
	length   int64
	keepOpen bool // HTTP/1.0 keep-alive
}

// parseRequest parses a complete request head strictly: "METHOD SP
// target SP HTTP/1.x", header lines of token names and values without
// control characters, no folded lines; one valid Host (none allowed in
// HTTP/1.0); a body framed by chunked alone or one Content-Length. It
// reads what it accepts as http.ReadRequest and net/http's server would
// (a fuzz target checks it); what it refuses gets status and a reason:
// 400, 417 (an Expect other than 100-continue), 501 (a transfer coding
// other than chunked), 505 (not HTTP/1.x). A request with both
// Content-Length and Transfer-Encoding is read as chunked and the
// connection closes after it (RFC 9112 section 6.1).
//
// The head becomes one string; names and values are substrings of it (a
// name is copied only when it is not in canonical form) and the values of
// all fields share one backing array. tmpl carries the connection's
// context and address: the request is a copy of it.
func parseRequest(s string, tmpl *http.Request) (r *http.Request, f requestFraming, status int, reason string) {
	bad := func(why string) (*http.Request, requestFraming, int, string) {
		return nil, f, http.StatusBadRequest, why
	}
	line, rest, _ := strings.Cut(s, "\r\n")
	method, line, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(line, " ")
	if !ok1 || !ok2 || !ValidToken(method) {
		return bad("malformed request line")
	}
	var minor int
	switch proto {
	case "HTTP/1.1":
		minor = 1
	case "HTTP/1.0":
	default:
		if len(proto) == 8 && strings.HasPrefix(proto, "HTTP/") && isDigit(proto[5]) && proto[6] == '.' && isDigit(proto[7]) {
			return nil, f, http.StatusHTTPVersionNotSupported, "only HTTP/1.0 and HTTP/1.1 are served here"
		}
		return bad("malformed request line")
	}
	u, absHost, ok := parseTarget(method, target)
	if !ok {
		return bad("malformed request target")
	}

	rest = rest[:len(rest)-2] // the blank line
	n := strings.Count(rest, "\n")
	h := make(http.Header, n)
	vals := make([]string, n)
	host, hosts := "", 0
	for i := 0; rest != ""; i++ {
		eol := strings.IndexByte(rest, '\n') // every line ends in CRLF (readHead)
		name, value, ok := ParseHeaderLine(rest[:eol-1])
		if !ok {
			return bad("malformed header line")
		}
		rest = rest[eol+1:]
		if name == "Host" {
			host, hosts = value, hosts+1
			continue // net/http keeps it out of the header
		}
		vals[i] = value
		if vv, dup := h[name]; dup {
			h[name] = append(vv, value)
		} else {
			h[name] = vals[i : i+1 : i+1]
		}
	}
	switch {
	case hosts > 1:
		return bad("more than one Host")
	case hosts == 0 && minor == 1:
		return bad("no Host")
	case hosts == 1 && !ValidHost(host):
		return bad("malformed Host")
	}
	if absHost != "" {
		host = absHost // RFC 9112 section 3.2.2: the target's authority wins
	}

	closing := HasToken(h["Connection"], "close")
	if minor == 0 {
		f.keepOpen = !closing && HasToken(h["Connection"], "keep-alive")
		closing = !f.keepOpen
	}
	if te := h["Transfer-Encoding"]; te != nil {
		switch {
		case minor == 0:
			return bad("Transfer-Encoding in an HTTP/1.0 request")
		case len(te) != 1 || !ASCIIEqualFold(te[0], "chunked"):
			return nil, f, http.StatusNotImplemented, "transfer codings other than chunked are not served"
		}
		f.chunked, f.length = true, -1
		if h["Content-Length"] != nil {
			delete(h, "Content-Length") // chunked wins; the connection ends after the answer
			closing = true
		}
		delete(h, "Transfer-Encoding")
	} else if cl := h["Content-Length"]; cl != nil {
		var ok bool
		if f.length, ok = contentLength(cl); !ok {
			return bad("malformed Content-Length")
		}
		if len(cl) > 1 {
			h["Content-Length"] = cl[:1]
		}
	}
	if ex := h["Expect"]; ex != nil && minor == 1 {
		if len(ex) != 1 || !ASCIIEqualFold(ex[0], "100-continue") {
			return nil, f, http.StatusExpectationFailed, "only Expect: 100-continue is understood"
		}
		f.expect = f.length != 0
		delete(h, "Expect")
	}
	if p := h["Pragma"]; len(p) > 0 && p[0] == "no-cache" && h["Cache-Control"] == nil {
		h["Cache-Control"] = []string{"no-cache"} // as net/http
	}

	r = new(http.Request)
	*r = *tmpl
	r.Method = method
	r.URL = u
	r.Proto, r.ProtoMajor, r.ProtoMinor = proto, 1, minor
	r.Header = h
	r.Body = http.NoBody
	r.ContentLength = f.length
	if f.chunked {
		r.TransferEncoding = chunkedTE
	}
	r.Host = host
	r.Close = closing
	r.RequestURI = target
	r.Trailer = nil
	return r, f, 0, ""
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// parseTarget parses a request target: origin-form ("/path?query") as
// url.ParseRequestURI does, with a plain path and query split without it;
// absolute-form (http or https, whose authority then is the host);
// authority-form for CONNECT; "*" for OPTIONS. Control characters,
// blanks and non-ASCII bytes are refused.
func parseTarget(method, target string) (u *url.URL, absHost string, ok bool) {
	if target == "" {
		return nil, "", false
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= ' ' || c >= 0x7f {
			return nil, "", false
		}
	}
	switch {
	case method == http.MethodConnect:
		if _, err := netip.ParseAddrPort(target); err != nil && !validAuthority(target) {
			return nil, "", false
		}
		return &url.URL{Host: target}, target, true
	case target == "*":
		if method != http.MethodOptions {
			return nil, "", false
		}
		return &url.URL{Path: "*"}, "", true
	case target[0] == '/':
		path, query, hasQuery := strings.Cut(target, "?")
		if plainPath(path) && (!hasQuery || query != "") {
			return &url.URL{Path: path, RawQuery: query}, "", true
		}
		u, err := url.ParseRequestURI(target)
		return u, "", err == nil
	}
	u, err := url.ParseRequestURI(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || !ValidHost(u.Host) || u.User != nil {
		return nil, "", false
	}
	host := u.Host
	return &url.URL{Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery}, host, true
}

// validAuthority: host:port with a name for host.
func validAuthority(s string) bool {
	i := strings.LastIndexByte(s, ':')
	return i > 0 && i < len(s)-1 && ValidHost(s)
}

// plainPath: only bytes that a URL path keeps as they are (url's
// EscapedPath gives the same string back, so RawPath stays empty).
func plainPath(p string) bool {
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.~$&+,/:;=@", c) >= 0) {
			return false
		}
	}
	return true
}

// ValidHost reports a Host header net/http's server accepts.
func ValidHost(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		if !validHostByte(h[i]) {
			return false
		}
	}
	return true
}

// validHostByte: the bytes net/http accepts in a Host header.
func validHostByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("!$%&'()*+,-.:;=[]_~", b) >= 0
}

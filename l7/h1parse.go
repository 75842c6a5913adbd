package l7

import (
	"github.com/xlb-dev/xlb/l7/h1"

	"net/http"
	"net/url"
	"strings"
)

// parseRequest parses a complete request head (request line and header,
// through the blank line) the way http.ReadRequest and net/http's server
// would, for the requests the fast path serves: HTTP/1.1, origin-form
// target, no body, no Upgrade or Expect, one valid Host, header names made
// of token characters, values without control characters (but HTAB), no
// obsolete line folding. Anything else returns false and goes to net/http,
// which then answers it, 400s included.
//
// The head becomes one string; names and values are substrings of it (a
// name is copied only when it is not in canonical form) and the values of
// all fields share one backing array: 6 allocations for a typical request
// where http.ReadRequest makes 9, and the request carries the connection's
// context and address without a copy for WithContext.
//
// tmpl carries the connection's context: the request is a copy of it.
func parseRequest(head []byte, tmpl *http.Request) (*http.Request, bool) {
	s := string(head)
	line, rest, ok := strings.Cut(s, "\r\n")
	if !ok {
		return nil, false
	}
	method, line, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(line, " ")
	if !ok1 || !ok2 || proto != "HTTP/1.1" || !h1.ValidToken(method) || method == http.MethodConnect {
		return nil, false
	}
	u, ok := parseTarget(target)
	if !ok {
		return nil, false
	}

	// Count the fields first: the map and the value array are sized once.
	n := strings.Count(rest, "\r\n") - 1 // the blank line ends rest
	if n < 0 || !strings.HasSuffix(rest, "\r\n") {
		return nil, false
	}
	h := make(http.Header, n)
	vals := make([]string, n)
	host, hosts := "", 0
	for i := 0; i < n; i++ {
		var field string
		field, rest, _ = strings.Cut(rest, "\r\n")
		name, value, ok := h1.ParseHeaderLine(field)
		if !ok {
			return nil, false // obs-fold, a space before the colon, a bad name or value
		}
		switch name {
		case "Host":
			host, hosts = value, hosts+1
			continue // net/http keeps it out of the header
		case "Content-Length", "Transfer-Encoding", "Expect", "Upgrade":
			return nil, false // a body, or a protocol switch: net/http's
		}
		vals[i] = value
		if vv, dup := h[name]; dup {
			h[name] = append(vv, value)
		} else {
			h[name] = vals[i : i+1 : i+1]
		}
	}
	if hosts != 1 || !validHost(host) {
		return nil, false
	}
	if p := h["Pragma"]; len(p) > 0 && p[0] == "no-cache" && h["Cache-Control"] == nil {
		h["Cache-Control"] = []string{"no-cache"} // as net/http
	}

	r := new(http.Request)
	*r = *tmpl
	r.Method = method
	r.URL = u
	r.Proto, r.ProtoMajor, r.ProtoMinor = proto, 1, 1
	r.Header = h
	r.Body = http.NoBody
	r.Host = host
	r.Close = h1.HasToken(h["Connection"], "close")
	r.RequestURI = target
	return r, true
}

// parseTarget parses an origin-form request target as url.ParseRequestURI
// does. A path of characters that need no escaping and a plain query are
// split without it.
func parseTarget(target string) (*url.URL, bool) {
	if target == "" || target[0] != '/' {
		return nil, false // absolute form, "*": net/http's
	}
	path, query, hasQuery := strings.Cut(target, "?")
	if plainPath(path) && (!hasQuery || query != "" && plainQuery(query)) {
		return &url.URL{Path: path, RawQuery: query}, true
	}
	u, err := url.ParseRequestURI(target)
	return u, err == nil
}

// plainPath: only bytes that a URL path keeps as they are (url's
// EscapedPath gives the same string back, so RawPath stays empty).
func plainPath(p string) bool {
	return allBytes(p, func(c byte) bool {
		return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("-_.~$&+,/:;=@", c) >= 0
	})
}

// plainQuery: printable ASCII, kept raw by url.ParseRequestURI.
func plainQuery(q string) bool { return allBytes(q, func(c byte) bool { return ' ' < c && c < 0x7f }) }

// validHost: a Host net/http's server accepts and the fast path serves.
func validHost(h string) bool { return h != "" && allBytes(h, validHostByte) }

// validHostByte: the bytes net/http accepts in a Host header.
func validHostByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("!$%&'()*+,-.:;=[]_~", b) >= 0
}

package h1

import (
	"net/textproto"
	"strings"
)

// IsTokenChar reports RFC 9110's tchar.
func IsTokenChar(c byte) bool { return tokenChars[c] }

// tokenChars has the tchars: a lookup, as every header name of every
// message goes through it.
var tokenChars = func() (t [256]bool) {
	for c := range 256 {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", byte(c)) >= 0
	}
	return t
}()

// ValidToken reports whether s is a non-empty RFC 9110 token.
func ValidToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenChars[s[i]] {
			return false
		}
	}
	return true
}

// ValidValue reports an RFC 9110 field value: no control characters but
// HTAB (so no CR, LF or NUL).
func ValidValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// ParseHeaderLine splits "Name: value" into the canonical name and the
// value without its surrounding blanks, as textproto does. A name that is
// not a token (a space before the colon, which net/http tolerates in
// answers, among others), a control character in the value, or a
// continuation line (it starts with a blank, so its name is not a token)
// is refused.
func ParseHeaderLine(line string) (k, v string, ok bool) {
	k, v, ok = strings.Cut(line, ":")
	if !ok || k == "" {
		return "", "", false
	}
	canonical, upper := true, true
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !tokenChars[c] {
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
	v = TrimOWS(v)
	if !ValidValue(v) {
		return "", "", false
	}
	return k, v, true
}

// TrimOWS strips the spaces and tabs around a field value.
func TrimOWS(v string) string {
	for v != "" && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for v != "" && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// HasToken reports whether a comma-separated header has token, compared
// in ASCII case only as net/http does ("clo\u017fe" is not "close").
func HasToken(vals []string, token string) bool {
	for _, v := range vals {
		for tok := range strings.SplitSeq(v, ",") {
			if ASCIIEqualFold(textproto.TrimString(tok), token) {
				return true
			}
		}
	}
	return false
}

// ASCIIEqualFold is strings.EqualFold for ASCII letters only.
func ASCIIEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// parseLength parses a Content-Length value: digits only, as net/http
// (no sign, no blanks, no list), below 2^63.
func parseLength(v string) (int64, bool) {
	if v == "" || len(v) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// contentLength is the body length that Content-Length values say: -1
// when there are none; ok false when they are malformed or disagree
// (identical repeats are one value, as net/http takes them).
func contentLength(vals []string) (n int64, ok bool) {
	if len(vals) == 0 {
		return -1, true
	}
	for _, v := range vals[1:] {
		if v != vals[0] {
			return 0, false
		}
	}
	return parseLength(vals[0])
}

package l7

import (
	"github.com/xlb-dev/xlb/l7/h1"

	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"
)

// HeaderRules are a service's header settings. Rule keys are header names
// (any case); values are literal. Each direction applies its rules after the
// proxy's own headers, in the order remove, set, add, so a rule can override
// or remove anything the proxy adds (X-Request-Id, X-Forwarded-*, ...).
type HeaderRules struct {
	RequestAdd    map[string]string // appended to the request to the backend
	RequestSet    map[string]string // replace; "Host" rewrites the Host sent to the backend
	RequestRemove []string
	// Response rules apply to the backend's answers and to the proxy's own
	// (404, 502, 503, 504).
	ResponseAdd    map[string]string
	ResponseSet    map[string]string
	ResponseRemove []string

	// Forwarded adds an RFC 7239 Forwarded element (for, host, proto).
	Forwarded bool
	// XTimestamp adds X-Timestamp: the request's arrival, Unix milliseconds.
	XTimestamp bool
	// TrustedProxies are the peers whose X-Forwarded-For, Forwarded,
	// X-Forwarded-Host and X-Forwarded-Proto are believed and extended. From
	// any other peer those headers are replaced.
	TrustedProxies []netip.Prefix

	// ProxyHeader names the identifying response header ("" none), with
	// value ProxyHeaderValue ("" is DefaultProxyHeaderValue).
	ProxyHeader, ProxyHeaderValue string
	// ResponseTimeHeader names the response header carrying the proxy's own
	// measure of the time to the response header, such as "12ms" ("" none).
	ResponseTimeHeader string
}

// Suggested header names and values for the daemon's defaults. The zero
// HeaderRules adds neither header.
const (
	DefaultResponseTimeHeader = "X-Response-Time"
	DefaultProxyHeader        = "X-Proxy"
	DefaultProxyHeaderValue   = "xlb"
)

// Headers the proxy sets.
const (
	hdrRequestID      = "X-Request-Id"
	hdrXForwardedFor  = "X-Forwarded-For"
	hdrXForwardedHost = "X-Forwarded-Host"
	hdrXForwardedProt = "X-Forwarded-Proto"
	hdrXRealIP        = "X-Real-Ip" // canonical form of X-Real-IP
	hdrForwarded      = "Forwarded"
	hdrXTimestamp     = "X-Timestamp"
)

var (
	protoHTTP    = []string{"http"}
	protoHTTPS   = []string{"https"}
	teTrailers   = []string{"trailers"}
	connUpgrade  = []string{"Upgrade"}
	emptyUA      = []string{""} // no User-Agent: stops Go's default one
	errBadHeader = errors.New("invalid header rule")
)

// headerKV is a compiled set or add rule.
type headerKV struct {
	key string   // canonical
	val []string // shared, never modified
}

// headerPlan is a service's HeaderRules, validated and canonicalised.
type headerPlan struct {
	reqRemove, respRemove []string
	reqSet, reqAdd        []headerKV
	respSet, respAdd      []headerKV
	hostRewrite           string // RequestSet["Host"]
	touchesCookie         bool   // a request rule sets or removes Cookie
	forwarded, timestamp  bool
	trusted               []netip.Prefix
	proxyKey              string
	proxyVal              []string
	timeKey               string
}

// compileHeaders validates hr. Rules may not touch hop-by-hop headers or
// Content-Length (they would break the framing); only RequestSet may name
// Host.
func compileHeaders(hr HeaderRules) (*headerPlan, error) {
	hp := &headerPlan{forwarded: hr.Forwarded, timestamp: hr.XTimestamp}
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{errBadHeader}, args...)...))
	}
	name := func(where, k string) (string, bool) {
		if !h1.ValidToken(k) {
			bad("%s: %q is not a header name", where, k)
			return "", false
		}
		ck := textproto.CanonicalMIMEHeaderKey(k)
		if isHopByHop(ck) || ck == "Content-Length" {
			bad("%s: %s is managed by the proxy (hop-by-hop or framing)", where, ck)
			return "", false
		}
		if ck == "Host" && where != "request set" {
			bad("%s: Host can only be set", where)
			return "", false
		}
		return ck, true
	}
	kvs := func(where string, m map[string]string) []headerKV {
		var out []headerKV
		for k, v := range m {
			ck, ok := name(where, k)
			if !ok {
				continue
			}
			if !h1.ValidValue(v) {
				bad("%s: value of %s has control characters", where, ck)
				continue
			}
			out = append(out, headerKV{ck, []string{v}})
		}
		slices.SortFunc(out, func(a, b headerKV) int { return strings.Compare(a.key, b.key) })
		return out
	}
	keys := func(where string, ks []string) []string {
		var out []string
		for _, k := range ks {
			if ck, ok := name(where, k); ok {
				out = append(out, ck)
			}
		}
		return out
	}
	hp.reqRemove = keys("request remove", hr.RequestRemove)
	hp.reqSet = kvs("request set", hr.RequestSet)
	hp.reqAdd = kvs("request add", hr.RequestAdd)
	hp.respRemove = keys("response remove", hr.ResponseRemove)
	hp.respSet = kvs("response set", hr.ResponseSet)
	hp.respAdd = kvs("response add", hr.ResponseAdd)
	hp.reqSet = slices.DeleteFunc(hp.reqSet, func(kv headerKV) bool {
		if kv.key == "Host" {
			hp.hostRewrite = kv.val[0]
			return true
		}
		return false
	})
	for _, k := range hp.reqRemove {
		hp.touchesCookie = hp.touchesCookie || k == "Cookie"
	}
	for _, kv := range append(slices.Clip(hp.reqSet), hp.reqAdd...) {
		hp.touchesCookie = hp.touchesCookie || kv.key == "Cookie"
	}
	for _, p := range hr.TrustedProxies {
		if !p.IsValid() {
			bad("trusted proxy %v is not a prefix", p)
			continue
		}
		hp.trusted = append(hp.trusted, p.Masked())
	}
	if hr.ProxyHeader != "" {
		if ck, ok := name("proxy header", hr.ProxyHeader); ok {
			v := hr.ProxyHeaderValue
			if v == "" {
				v = DefaultProxyHeaderValue
			}
			if !h1.ValidValue(v) {
				bad("proxy header value %q has control characters", v)
			}
			hp.proxyKey, hp.proxyVal = ck, []string{v}
		}
	}
	if hr.ResponseTimeHeader != "" {
		if ck, ok := name("response time header", hr.ResponseTimeHeader); ok {
			hp.timeKey = ck
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return hp, nil
}

// isHopByHop reports the headers of RFC 9110 section 7.6.1 and their
// relatives (canonical names): never forwarded as they are.
func isHopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// deleteConnectionTokens removes from h the headers that Connection (conn)
// declares hop-by-hop.
func deleteConnectionTokens(h http.Header, conn []string) {
	for _, v := range conn {
		for tok := range strings.SplitSeq(v, ",") {
			tok = textproto.TrimString(tok)
			switch {
			case tok == "", strings.EqualFold(tok, "close"), strings.EqualFold(tok, "keep-alive"),
				strings.EqualFold(tok, "upgrade"):
				// Already hop-by-hop or not a header.
			default:
				delete(h, textproto.CanonicalMIMEHeaderKey(tok))
			}
		}
	}
}

// upgradeType is the protocol a request or response asks to switch to, or
// "" (h2c is not proxied: the request is answered in HTTP/1.1, as RFC 9110
// lets a server ignore Upgrade).
func upgradeType(h http.Header) string {
	if !h1.HasToken(h["Connection"], "upgrade") {
		return ""
	}
	up := h["Upgrade"]
	if len(up) == 0 || up[0] == "" || strings.EqualFold(textproto.TrimString(up[0]), "h2c") || !printableASCII(up[0]) {
		return ""
	}
	return up[0]
}

// origin is what the proxy knows of where a request comes from.
type origin struct {
	peer
	trusted bool       // peer is one of TrustedProxies
	client  netip.Addr // the real client: peer, or from a trusted peer's headers
}

// peer is a connection's peer as the headers need it. The fast path works
// it out once per client connection (connScratch).
type peer struct {
	addr netip.Addr // unmapped, without zone; invalid if unknown
	text string     // addr as text: the host part of RemoteAddr when canonical
	val  []string   // {text}, shared by the headers that carry it: never modified
}

// parsePeer reads a connection's peer from its RemoteAddr.
func parsePeer(remoteAddr string) peer {
	var p peer
	if ap, err := netip.ParseAddrPort(remoteAddr); err == nil {
		p.addr = ap.Addr().Unmap().WithZone("")
		p.text = peerText(remoteAddr, p.addr)
		p.val = []string{p.text}
	}
	return p
}

// origin works out the real client of a request from remoteAddr (the
// connection's peer) and, when that peer is trusted, from its
// X-Forwarded-For or else its Forwarded header: the rightmost address that
// is not itself a trusted proxy. A malformed entry stops the walk at the
// last trusted hop.
func (hp *headerPlan) origin(remoteAddr string, h http.Header) origin {
	return hp.originOf(parsePeer(remoteAddr), h)
}

// originOf is origin for a peer already parsed.
func (hp *headerPlan) originOf(p peer, h http.Header) origin {
	o := origin{peer: p, client: p.addr}
	if !p.addr.IsValid() || len(hp.trusted) == 0 || !isTrusted(p.addr, hp.trusted) {
		return o
	}
	o.trusted = true
	if xff := h[hdrXForwardedFor]; len(xff) > 0 {
		o.client = clientFromXFF(xff, hp.trusted, p.addr)
	} else if fwd := h[hdrForwarded]; len(fwd) > 0 {
		o.client = clientFromForwarded(fwd, hp.trusted, p.addr)
	}
	return o
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientFromXFF walks X-Forwarded-For from the right (the hop nearest to
// the proxy) and returns the first address that is not trusted; if every
// address is trusted, the leftmost; on a malformed entry, the last trusted
// hop (peer if the rightmost entry is malformed).
func clientFromXFF(vals []string, trusted []netip.Prefix, peer netip.Addr) netip.Addr {
	client := peer
	for i := len(vals) - 1; i >= 0; i-- {
		v := vals[i]
		for v != "" {
			j := strings.LastIndexByte(v, ',')
			item := textproto.TrimString(v[j+1:])
			v = v[:max(j, 0)]
			if item == "" {
				continue
			}
			a, ok := parseNode(item)
			if !ok {
				return client
			}
			client = a
			if !isTrusted(a, trusted) {
				return a
			}
		}
	}
	return client
}

// clientFromForwarded is clientFromXFF over the for= parameters of RFC 7239
// Forwarded elements. An element without for=, an obfuscated or "unknown"
// node, or a syntax error stops the walk.
func clientFromForwarded(vals []string, trusted []netip.Prefix, peer netip.Addr) netip.Addr {
	var buf [8]string
	fors, ok := forwardedFors(vals, buf[:0])
	client := peer
	if !ok {
		return client
	}
	for i := len(fors) - 1; i >= 0; i-- {
		a, ok := parseNode(fors[i])
		if !ok {
			return client
		}
		client = a
		if !isTrusted(a, trusted) {
			return a
		}
	}
	return client
}

// parseNode parses an address as X-Forwarded-For and Forwarded's for= carry
// it: an IP address, IPv6 optionally in brackets, either optionally with a
// port. Zones are dropped, IPv4-mapped addresses unmapped.
func parseNode(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil && a.Is6() {
			return a.Unmap().WithZone(""), true
		}
	}
	return netip.Addr{}, false
}

// forwardedFors appends to dst the for= value (unquoted; "" when missing)
// of each element of the Forwarded header values, in order. ok is false on
// a syntax error.
func forwardedFors(vals []string, dst []string) ([]string, bool) {
	for _, v := range vals {
		i := 0
		for {
			// One element: pairs separated by ';', ended by ',' or the end.
			var forVal string
			for {
				i = skipOWS(v, i)
				if i == len(v) || v[i] == ',' || v[i] == ';' {
					// Empty pair (allowed by the grammar's [ forwarded-pair ]).
				} else {
					k := i
					for i < len(v) && h1.IsTokenChar(v[i]) {
						i++
					}
					key := v[k:i]
					if key == "" || i == len(v) || v[i] != '=' {
						return dst, false
					}
					i++
					var val string
					var ok bool
					val, i, ok = readValue(v, i)
					if !ok {
						return dst, false
					}
					if strings.EqualFold(key, "for") {
						forVal = val
					}
					i = skipOWS(v, i)
				}
				if i < len(v) && v[i] == ';' {
					i++
					continue
				}
				break
			}
			dst = append(dst, forVal)
			if i == len(v) {
				break
			}
			if v[i] != ',' {
				return dst, false
			}
			i++
		}
	}
	return dst, true
}

// readValue reads a token or a quoted-string at s[i:].
func readValue(s string, i int) (string, int, bool) {
	if i < len(s) && s[i] == '"' {
		i++
		start := i
		escaped := false
		for i < len(s) {
			switch c := s[i]; {
			case c == '\\':
				if i+1 == len(s) {
					return "", i, false
				}
				escaped = true
				i += 2
			case c == '"':
				val := s[start:i]
				if escaped {
					val = unescapeQuoted(val)
				}
				return val, i + 1, true
			case c < 0x20 && c != '\t' || c == 0x7f:
				return "", i, false
			default:
				i++
			}
		}
		return "", i, false
	}
	start := i
	for i < len(s) && h1.IsTokenChar(s[i]) {
		i++
	}
	if i == start {
		return "", i, false
	}
	return s[start:i], i, true
}

func unescapeQuoted(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func skipOWS(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}

// allBytes reports whether ok holds for every byte of s.
func allBytes(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// appendForwardedElement appends one RFC 7239 element for a request that
// came from peer for host over proto: IPv6 nodes bracketed and quoted,
// values that are not tokens quoted.
func appendForwardedElement(b []byte, peer netip.Addr, host, proto string) []byte {
	b = append(b, "for="...)
	switch {
	case peer.Is6():
		b = append(b, `"[`...)
		b = peer.AppendTo(b)
		b = append(b, `]"`...)
	case peer.IsValid():
		b = peer.AppendTo(b)
	default:
		b = append(b, "unknown"...)
	}
	if host != "" {
		b = append(b, ";host="...)
		b = appendTokenOrQuoted(b, host)
	}
	b = append(b, ";proto="...)
	return append(b, proto...)
}

func appendTokenOrQuoted(b []byte, s string) []byte {
	if h1.ValidToken(s) {
		return append(b, s...)
	}
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 && c != '\t' || c == 0x7f:
			// Not allowed in a quoted-string (net/http never lets one
			// into a Host anyway): dropped.
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// joinAppend is strings.Join(vals, ", ") + ", " + last in one allocation.
func joinAppend(vals []string, last string) string {
	n := len(last)
	for _, v := range vals {
		n += len(v) + 2
	}
	var b strings.Builder
	b.Grow(n)
	for _, v := range vals {
		b.WriteString(v)
		b.WriteString(", ")
	}
	b.WriteString(last)
	return b.String()
}

// requestHeader builds the header sent to the backend for r: the client's
// headers without hop-by-hop ones, the forwarding headers, X-Request-Id
// (reqID, a shared slice) and X-Timestamp, then the rules. out, if not nil,
// is an empty map to fill (the fast path lends one per connection).
// upgrade is the protocol the client asks to switch to ("" for none).
func (hp *headerPlan) requestHeader(r *http.Request, o origin, reqID []string, start time.Time, out http.Header) (_ http.Header, upgrade string) {
	in := r.Header
	if out == nil {
		out = make(http.Header, len(in)+8)
	}
	for k, vv := range in {
		if !isHopByHop(k) {
			out[k] = vv
		}
	}
	if conn := in["Connection"]; len(conn) > 0 {
		deleteConnectionTokens(out, conn)
		if upgrade = upgradeType(in); upgrade != "" {
			out["Connection"] = connUpgrade
			out["Upgrade"] = in["Upgrade"][:1:1]
		}
	}
	if te := in["Te"]; len(te) > 0 && h1.HasToken(te, "trailers") {
		out["Te"] = teTrailers
	}
	if _, ok := in["User-Agent"]; !ok {
		out["User-Agent"] = emptyUA
	}

	proto := protoHTTP
	if r.TLS != nil {
		proto = protoHTTPS
	}
	if o.addr.IsValid() {
		if xff := in[hdrXForwardedFor]; o.trusted && len(xff) > 0 {
			out[hdrXForwardedFor] = []string{joinAppend(xff, o.text)}
		} else {
			out[hdrXForwardedFor] = o.val
		}
		if o.client == o.addr {
			out[hdrXRealIP] = o.val
		} else {
			out[hdrXRealIP] = []string{o.client.String()}
		}
	} else {
		delete(out, hdrXForwardedFor)
		delete(out, hdrXRealIP)
	}
	if _, ok := in[hdrXForwardedHost]; !o.trusted || !ok {
		if r.Host != "" {
			out[hdrXForwardedHost] = []string{r.Host}
		} else {
			delete(out, hdrXForwardedHost)
		}
	}
	if _, ok := in[hdrXForwardedProt]; !o.trusted || !ok {
		out[hdrXForwardedProt] = proto
	}
	if hp.forwarded {
		var buf [128]byte
		elem := appendForwardedElement(buf[:0], o.addr, r.Host, proto[0])
		if fwd := in[hdrForwarded]; o.trusted && len(fwd) > 0 {
			out[hdrForwarded] = []string{joinAppend(fwd, string(elem))}
		} else {
			out[hdrForwarded] = []string{string(elem)}
		}
	} else if !o.trusted {
		delete(out, hdrForwarded)
	}
	out[hdrRequestID] = reqID
	if hp.timestamp {
		out[hdrXTimestamp] = []string{strconv.FormatInt(start.UnixMilli(), 10)}
	}

	for _, k := range hp.reqRemove {
		delete(out, k)
	}
	for _, kv := range hp.reqSet {
		out[kv.key] = kv.val
	}
	for _, kv := range hp.reqAdd {
		vv := out[kv.key]
		out[kv.key] = append(vv[:len(vv):len(vv)], kv.val[0])
	}
	return out, upgrade
}

// peerText is peer as text: the host part of remoteAddr when that is
// already peer's canonical form (no allocation), else peer.String().
func peerText(remoteAddr string, peer netip.Addr) string {
	if i := strings.LastIndexByte(remoteAddr, ':'); i > 0 {
		host := remoteAddr[:i]
		if host[0] == '[' && host[len(host)-1] == ']' {
			host = host[1 : len(host)-1]
		}
		if a, err := netip.ParseAddr(host); err == nil && a == peer {
			return host
		}
	}
	return peer.String()
}

// copyResponseHeader copies the backend's header to the client's, without
// hop-by-hop headers. The value slices are shared.
func copyResponseHeader(dst, src http.Header) {
	for k, vv := range src {
		if !isHopByHop(k) {
			dst[k] = vv
		}
	}
	if conn := src["Connection"]; len(conn) > 0 {
		deleteConnectionTokens(dst, conn)
	}
}

// responseHeader adds the proxy's response headers to h (X-Request-Id, the
// response time, the proxy header), a sticky cookie if any, then the rules.
func (hp *headerPlan) responseHeader(h http.Header, reqID []string, elapsed time.Duration, cookie *http.Cookie) {
	if reqID != nil {
		h[hdrRequestID] = reqID
	}
	if hp.timeKey != "" {
		h[hp.timeKey] = []string{formatMillis(elapsed)}
	}
	if hp.proxyKey != "" {
		h[hp.proxyKey] = hp.proxyVal
	}
	if cookie != nil {
		if v := cookie.String(); v != "" {
			vv := h["Set-Cookie"]
			h["Set-Cookie"] = append(vv[:len(vv):len(vv)], v)
		}
	}
	for _, k := range hp.respRemove {
		delete(h, k)
	}
	for _, kv := range hp.respSet {
		h[kv.key] = kv.val
	}
	for _, kv := range hp.respAdd {
		vv := h[kv.key]
		h[kv.key] = append(vv[:len(vv):len(vv)], kv.val[0])
	}
}

// formatMillis formats d in milliseconds, with at most two decimals and no
// trailing zeros: "12ms", "0.42ms", "1500ms".
func formatMillis(d time.Duration) string {
	var b [32]byte
	ms := float64(d.Round(10*time.Microsecond)) / float64(time.Millisecond)
	out := strconv.AppendFloat(b[:0], ms, 'f', -1, 64)
	return string(append(out, "ms"...))
}

package config

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// The settings of mode = "l7" services: routing, timeouts, retries,
// stickiness, passive health and header rules. An L4 service that sets one
// of their keys gets an error naming the key.

// Sticky is a service's [service.sticky] table: a cookie that pins a client
// to the backend that served it, on top of the algorithm.
type Sticky struct {
	Cookie string        // cookie name, an HTTP token
	TTL    time.Duration // cookie lifetime, at least MinStickyTTL
}

// PassiveHealth is a service's [service.passive_health] table: outlier
// ejection from the responses of real requests.
type PassiveHealth struct {
	// MaxFails consecutive connect errors or 5xx responses eject a backend;
	// 0 turns passive health off.
	MaxFails int
	// Ejection is the first ejection period; each successive ejection of
	// the same backend doubles it, up to MaxEjection (at least Ejection).
	Ejection    time.Duration
	MaxEjection time.Duration
}

// Headers is a service's [service.headers] table. Header names are kept as
// written; one name (compared case-insensitively) appears in at most one of
// the add, set and remove rules of a direction, so the rules do not depend
// on the order they are applied in.
type Headers struct {
	RequestAdd    map[string]string // appended to the request to the backend
	RequestSet    map[string]string // set on it, replacing what the client sent
	RequestRemove []string          // removed from it
	ResponseAdd   map[string]string // the same for the response to the client
	ResponseSet   map[string]string
	// ResponseRemove names headers removed from the response.
	ResponseRemove []string
	Forwarded      bool // also send an RFC 7239 Forwarded header
	XTimestamp     bool // also send X-Timestamp (Unix milliseconds)
	// TrustedProxies are the clients whose X-Forwarded-For is extended;
	// anyone else's is replaced. A single address is a /32 or /128.
	TrustedProxies []netip.Prefix
	// ProxyHeader names the response header that identifies xlb, with value
	// ProxyHeaderValue; "" sends none.
	ProxyHeader      string
	ProxyHeaderValue string
	// ResponseTimeHeader names the response header with the proxy's own
	// time for the request (like "12ms"); "" sends none.
	ResponseTimeHeader string
}

// L7 defaults and bounds.
const (
	DefaultConnectTimeout        = 5 * time.Second
	DefaultResponseHeaderTimeout = 30 * time.Second
	DefaultRequestTimeout        = 30 * time.Second
	// MaxL7Timeout bounds every L7 timeout and ejection period.
	MaxL7Timeout = 24 * time.Hour
	// MaxInFlightLimit bounds max_in_flight.
	MaxInFlightLimit = 1 << 20

	DefaultStickyCookie = "xlb_sticky"
	DefaultStickyTTL    = time.Hour
	MinStickyTTL        = 60 * time.Second
	MaxStickyTTL        = 365 * 24 * time.Hour

	DefaultMaxFails    = 5
	MaxMaxFails        = 1000
	DefaultEjection    = 10 * time.Second
	DefaultMaxEjection = 5 * time.Minute

	DefaultProxyHeader        = "X-Proxy"
	DefaultProxyHeaderValue   = "xlb"
	DefaultResponseTimeHeader = "X-Response-Time"
)

// DefaultPassiveHealth is the passive health of an L7 service that does not
// configure it.
func DefaultPassiveHealth() PassiveHealth {
	return PassiveHealth{MaxFails: DefaultMaxFails, Ejection: DefaultEjection, MaxEjection: DefaultMaxEjection}
}

// DefaultHeaders is the header configuration of an L7 service that does
// not configure it: no rules, no Forwarded or X-Timestamp, no trusted
// proxies, the default proxy and response-time headers.
func DefaultHeaders() Headers {
	return Headers{
		ProxyHeader:        DefaultProxyHeader,
		ProxyHeaderValue:   DefaultProxyHeaderValue,
		ResponseTimeHeader: DefaultResponseTimeHeader,
	}
}

// SetL7Defaults sets every L7 setting of s to its default, whatever it
// was: no routes (Hosts, PathPrefix), AddVIP false, LBEndpoints true, the
// default timeouts, RetryIdempotent true, no in-flight limit, no
// stickiness, DefaultPassiveHealth and DefaultHeaders. A Service built in
// code calls it before setting the L7 fields it wants to change.
func (s *Service) SetL7Defaults() {
	s.Hosts = nil
	s.PathPrefix = ""
	s.AddVIP = false
	s.LBEndpoints = true
	s.ConnectTimeout = DefaultConnectTimeout
	s.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	s.RequestTimeout = DefaultRequestTimeout
	s.RetryIdempotent = true
	s.MaxInFlight = 0
	s.Sticky = nil
	s.PassiveHealth = DefaultPassiveHealth()
	s.Headers = DefaultHeaders()
}

// l7Zero reports whether every L7 setting of s is zero.
func (s *Service) l7Zero() bool {
	return len(s.Hosts) == 0 && s.PathPrefix == "" && !s.AddVIP && !s.LBEndpoints &&
		s.ConnectTimeout == 0 && s.ResponseHeaderTimeout == 0 && s.RequestTimeout == 0 &&
		!s.RetryIdempotent && s.MaxInFlight == 0 && s.Sticky == nil &&
		s.PassiveHealth == (PassiveHealth{}) && s.Headers.isZero()
}

func (h *Headers) isZero() bool {
	return len(h.RequestAdd) == 0 && len(h.RequestSet) == 0 && len(h.RequestRemove) == 0 &&
		len(h.ResponseAdd) == 0 && len(h.ResponseSet) == 0 && len(h.ResponseRemove) == 0 &&
		!h.Forwarded && !h.XTimestamp && len(h.TrustedProxies) == 0 &&
		h.ProxyHeader == "" && h.ProxyHeaderValue == "" && h.ResponseTimeHeader == ""
}

// applyL7Defaults is ApplyDefaults for the L7 settings of an L7 service.
func (s *Service) applyL7Defaults() {
	if s.l7Zero() {
		s.SetL7Defaults()
		return
	}
	setZero(&s.ConnectTimeout, DefaultConnectTimeout)
	setZero(&s.ResponseHeaderTimeout, DefaultResponseHeaderTimeout)
	if s.Sticky != nil {
		setDefault(&s.Sticky.Cookie, DefaultStickyCookie)
		setZero(&s.Sticky.TTL, DefaultStickyTTL)
	}
	setZero(&s.PassiveHealth.Ejection, DefaultEjection)
	setZero(&s.PassiveHealth.MaxEjection, DefaultMaxEjection)
	setDefault(&s.Headers.ProxyHeaderValue, DefaultProxyHeaderValue)
	for i, h := range s.Hosts {
		if c := canonicalHost(h); c != h {
			s.Hosts[i] = c
		}
	}
	for i, p := range s.Headers.TrustedProxies {
		if u := unmapPrefix(p); u != p {
			s.Headers.TrustedProxies[i] = u
		}
	}
}

// canonicalHost lower-cases a valid hosts entry and writes an IP literal in
// its canonical form, without brackets. An invalid entry is returned as
// written, so that its error quotes it.
func canonicalHost(h string) string {
	if hostError(h) != "" {
		return h
	}
	if a, ok := hostAddr(h); ok {
		return a.String()
	}
	return asciiLower(h)
}

// hostAddr parses a hosts entry that is an IP literal, IPv6 with or without
// brackets.
func hostAddr(h string) (netip.Addr, bool) {
	bracketed := strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]")
	if bracketed {
		h = h[1 : len(h)-1]
	}
	a, err := netip.ParseAddr(h)
	if err != nil || bracketed && !a.Is6() {
		return netip.Addr{}, false
	}
	return a, true
}

func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix of at least 96 bits into the
// IPv4 prefix it covers.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.IsValid() && p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

// l7Keys are the keys of a [[service]] table that only L7 services take
// (algorithm aside, which validate reports with its own message).
var l7Keys = []string{
	"hosts", "path_prefix", "add_vip", "lb_endpoints",
	"connect_timeout", "connect_timeout_secs",
	"response_header_timeout", "response_header_timeout_secs",
	"request_timeout", "request_timeout_secs",
	"retry_idempotent", "max_in_flight", "sticky", "passive_health", "headers",
}

// decodeL7 reads the L7 keys of a [[service]] table into s, over the
// defaults, for a service whose mode is l7. For an L4 service (mode l4 or
// unset) each L7 key given is an error; for an invalid mode the keys are
// read into a scratch service, for their type errors only.
func decodeL7(t *table, s *Service) {
	switch s.Mode {
	case "", ModeL4:
		for _, k := range l7Keys {
			if t.has(k) {
				t.get(k)
				t.errorf(k, "applies to l7 services only")
			}
		}
		return
	case ModeL7:
	default:
		s = &Service{}
	}
	s.SetL7Defaults()
	if hosts, ok := t.strings("hosts"); ok {
		if len(hosts) == 0 && t.arrayLen("hosts") == 0 {
			t.errorf("hosts", "must not be empty (leave the key out to route every host)")
		}
		s.Hosts = hosts
	}
	nonEmpty(t, "path_prefix", &s.PathPrefix)
	t.boolean("add_vip", &s.AddVIP)
	t.boolean("lb_endpoints", &s.LBEndpoints)
	t.duration("connect_timeout", MinDuration, MaxL7Timeout, &s.ConnectTimeout)
	t.duration("response_header_timeout", MinDuration, MaxL7Timeout, &s.ResponseHeaderTimeout)
	t.duration("request_timeout", 0, MaxL7Timeout, &s.RequestTimeout)
	t.boolean("retry_idempotent", &s.RetryIdempotent)
	if n, ok := t.integer("max_in_flight", 0, MaxInFlightLimit); ok {
		s.MaxInFlight = int(n)
	}
	if st := t.table("sticky"); st != nil {
		s.Sticky = &Sticky{Cookie: DefaultStickyCookie, TTL: DefaultStickyTTL}
		nonEmpty(st, "cookie", &s.Sticky.Cookie)
		st.duration("ttl", MinStickyTTL, MaxStickyTTL, &s.Sticky.TTL)
		st.finish()
	}
	if ph := t.table("passive_health"); ph != nil {
		p := &s.PassiveHealth
		if n, ok := ph.integer("max_fails", 0, MaxMaxFails); ok {
			p.MaxFails = int(n)
		}
		ph.duration("ejection", MinDuration, MaxL7Timeout, &p.Ejection)
		ph.duration("max_ejection", MinDuration, MaxL7Timeout, &p.MaxEjection)
		ph.finish()
	}
	if ht := t.table("headers"); ht != nil {
		decodeHeaders(ht, &s.Headers)
	}
}

func decodeHeaders(t *table, h *Headers) {
	h.RequestAdd = t.stringMap("request_add")
	h.RequestSet = t.stringMap("request_set")
	h.RequestRemove, _ = t.strings("request_remove")
	h.ResponseAdd = t.stringMap("response_add")
	h.ResponseSet = t.stringMap("response_set")
	h.ResponseRemove, _ = t.strings("response_remove")
	t.boolean("forwarded", &h.Forwarded)
	t.boolean("x_timestamp", &h.XTimestamp)
	if list, ok := t.strings("trusted_proxies"); ok {
		for i, s := range list {
			p, err := parsePrefix(s)
			if err != "" {
				t.elemErrorf("trusted_proxies", i, "%s", err)
				continue
			}
			h.TrustedProxies = append(h.TrustedProxies, p)
		}
	}
	t.str("proxy_header", &h.ProxyHeader)
	nonEmpty(t, "proxy_header_value", &h.ProxyHeaderValue)
	t.str("response_time_header", &h.ResponseTimeHeader)
	t.finish()
}

// parsePrefix reads a trusted_proxies entry: a CIDR prefix or a single
// address. It says what is wrong, or "".
func parsePrefix(s string) (netip.Prefix, string) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Sprintf("invalid CIDR prefix %q (want an address or a prefix like 198.18.0.0/24)", s)
		}
		return unmapPrefix(p), ""
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Sprintf("invalid address %q (want an address or a prefix like 198.18.0.0/24)", s)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Sprintf("invalid address %q: must not have a zone", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), ""
}

// strings reads an array of strings. It reports whether the key is present;
// the elements that are not strings are reported and left out.
func (t *table) strings(key string) ([]string, bool) {
	v, ok := t.get(key)
	if !ok {
		return nil, false
	}
	arr, isArr := v.([]any)
	if !isArr {
		t.errorf(key, "must be an array of strings, got %s", describe(v))
		return nil, false
	}
	var out []string
	for i, e := range arr {
		s, isStr := e.(string)
		if !isStr {
			t.elemErrorf(key, i, "must be a string, got %s", describe(e))
			continue
		}
		out = append(out, s)
	}
	return out, true
}

// arrayLen is the length of the array at key, or -1.
func (t *table) arrayLen(key string) int {
	if arr, ok := t.m[key].([]any); ok {
		return len(arr)
	}
	return -1
}

// elemErrorf reports a problem with element i of the array at key.
func (t *table) elemErrorf(key string, i int, format string, args ...any) {
	p := indexPath(t.field(key), i)
	t.errs.add(t.lines.line(p, t.lineOf(key)), p, fmt.Sprintf(format, args...))
}

// stringMap reads a table of string values (inline or not); nil if it is
// absent or empty.
func (t *table) stringMap(key string) map[string]string {
	c := t.table(key)
	if c == nil {
		return nil
	}
	keys := make([]string, 0, len(c.m))
	for k := range c.m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out map[string]string
	for _, k := range keys {
		var s string
		if c.str(k, &s) {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = s
		}
	}
	return out
}

// l4NoL7 reports the L7 settings of an L4 service built in code; a parsed
// one has had its L7 keys reported while decoding.
func (v *validator) l4NoL7(s *Service, p string) {
	line := s.Line
	for _, f := range []struct {
		key string
		set bool
	}{
		{"hosts", len(s.Hosts) > 0},
		{"path_prefix", s.PathPrefix != ""},
		{"add_vip", s.AddVIP},
		{"lb_endpoints", s.LBEndpoints},
		{"connect_timeout", s.ConnectTimeout != 0},
		{"response_header_timeout", s.ResponseHeaderTimeout != 0},
		{"request_timeout", s.RequestTimeout != 0},
		{"retry_idempotent", s.RetryIdempotent},
		{"max_in_flight", s.MaxInFlight != 0},
		{"sticky", s.Sticky != nil},
		{"passive_health", s.PassiveHealth != (PassiveHealth{})},
		{"headers", !s.Headers.isZero()},
	} {
		if f.set {
			v.errorf(p+"."+f.key, line, "applies to l7 services only")
		}
	}
}

// l7 checks the L7 settings of an L7 service.
func (v *validator) l7(s *Service, p string) {
	line := s.Line
	seen := map[string]int{}
	for i, h := range s.Hosts {
		hp := indexPath(p+".hosts", i)
		if msg := hostError(h); msg != "" {
			v.errorf(hp, line, "%s", msg)
			continue
		}
		c := canonicalHost(h)
		if j, dup := seen[c]; dup {
			v.errorf(hp, line, "duplicate host %q (also %s)", h, v.at(indexPath(p+".hosts", j), line))
			continue
		}
		seen[c] = i
	}
	if s.PathPrefix != "" {
		if msg := pathPrefixError(s.PathPrefix); msg != "" {
			v.errorf(p+".path_prefix", line, "%s", msg)
		}
	}
	if s.AddVIP && s.VIP.IsValid() && s.VIP.IsUnspecified() {
		v.errorf(p+".add_vip", line, "needs a specific vip, got %s (which listens on all addresses)", s.VIP)
	}
	v.durationIn(p, "connect_timeout", line, s.ConnectTimeout, MinDuration, MaxL7Timeout)
	v.durationIn(p, "response_header_timeout", line, s.ResponseHeaderTimeout, MinDuration, MaxL7Timeout)
	v.durationIn(p, "request_timeout", line, s.RequestTimeout, 0, MaxL7Timeout)
	if s.MaxInFlight < 0 || s.MaxInFlight > MaxInFlightLimit {
		v.errorf(p+".max_in_flight", line, "must be 0..%d, got %d", MaxInFlightLimit, s.MaxInFlight)
	}
	if st := s.Sticky; st != nil {
		sp := p + ".sticky"
		sl := v.lines.line(v.name(sp), line)
		if !isToken(st.Cookie) {
			v.errorf(sp+".cookie", sl, "invalid cookie name %q (want an HTTP token: letters, digits and !#$%%&'*+-.^_`|~)", st.Cookie)
		}
		v.durationIn(sp, "ttl", sl, st.TTL, MinStickyTTL, MaxStickyTTL)
	}
	v.passiveHealth(&s.PassiveHealth, p+".passive_health", line)
	v.headers(&s.Headers, p+".headers", line)
}

// durationIn reports a duration outside lo..hi under the key as written.
func (v *validator) durationIn(p, name string, line int, d, lo, hi time.Duration) bool {
	if msg := durationRange(d, lo, hi); msg != "" {
		v.errorf(v.durationKey(p, name), line, "%s, got %s", msg, fmtDuration(d))
		return false
	}
	return true
}

func (v *validator) passiveHealth(ph *PassiveHealth, p string, line int) {
	line = v.lines.line(v.name(p), line)
	if ph.MaxFails < 0 || ph.MaxFails > MaxMaxFails {
		v.errorf(p+".max_fails", line, "must be 0..%d, got %d", MaxMaxFails, ph.MaxFails)
	}
	ok := v.durationIn(p, "ejection", line, ph.Ejection, MinDuration, MaxL7Timeout)
	ok = v.durationIn(p, "max_ejection", line, ph.MaxEjection, MinDuration, MaxL7Timeout) && ok
	if ok && ph.MaxEjection < ph.Ejection {
		// Blame max_ejection if it was written, else ejection.
		key, note := v.durationKey(p, "max_ejection"), ""
		if _, written := v.lines[v.name(key)]; !written {
			if ek := v.durationKey(p, "ejection"); v.lines[v.name(ek)] > 0 {
				key, note = ek, fmt.Sprintf(" (max_ejection defaults to %s)", fmtDuration(DefaultMaxEjection))
			}
		}
		v.errorf(key, line, "max_ejection %s is shorter than ejection %s%s: ejections double from ejection up to max_ejection",
			fmtDuration(ph.MaxEjection), fmtDuration(ph.Ejection), note)
	}
}

func (v *validator) headers(h *Headers, p string, line int) {
	line = v.lines.line(v.name(p), line)
	for _, dir := range []struct {
		name     string
		add, set map[string]string
		remove   []string
	}{
		{"request", h.RequestAdd, h.RequestSet, h.RequestRemove},
		{"response", h.ResponseAdd, h.ResponseSet, h.ResponseRemove},
	} {
		// first is where each header name (lower-cased) is first used.
		first := map[string]string{}
		use := func(path, name string) {
			k := asciiLower(name)
			if prev, dup := first[k]; dup {
				v.errorf(path, line, "header %s is also in %s: give each header one rule", name, v.at(prev, 0))
				return
			}
			first[k] = path
		}
		for _, rule := range []struct {
			key string
			m   map[string]string
		}{{dir.name + "_add", dir.add}, {dir.name + "_set", dir.set}} {
			rp := p + "." + rule.key
			for _, name := range sortedKeys(rule.m) {
				kp := joinPath(rp, name)
				switch {
				case !isToken(name):
					v.errorf(kp, line, "invalid header name %q (want an HTTP token: letters, digits and !#$%%&'*+-.^_`|~)", name)
				case managedHeader(name) != "":
					v.errorf(kp, line, "%s %s", name, managedHeader(name))
				case !validHeaderValue(rule.m[name]):
					v.errorf(kp, line, "value %q of header %s has a control character (CR, LF and the like; only tab is allowed)", rule.m[name], name)
				default:
					use(kp, name)
				}
			}
		}
		rp := p + "." + dir.name + "_remove"
		for i, name := range dir.remove {
			ip := indexPath(rp, i)
			if !isToken(name) {
				v.errorf(ip, line, "invalid header name %q (want an HTTP token: letters, digits and !#$%%&'*+-.^_`|~)", name)
				continue
			}
			use(ip, name)
		}
	}
	for i, tp := range h.TrustedProxies {
		ip := indexPath(p+".trusted_proxies", i)
		switch {
		case !tp.IsValid():
			v.errorf(ip, line, "invalid prefix %s", tp)
		case tp.Addr().Zone() != "":
			v.errorf(ip, line, "must not have a zone, got %s", tp)
		case tp.Masked() != tp:
			v.errorf(ip, line, "%s has bits set after the prefix length (did you mean %s?)", tp, tp.Masked())
		}
	}
	for _, hh := range []struct{ key, name string }{
		{"proxy_header", h.ProxyHeader}, {"response_time_header", h.ResponseTimeHeader},
	} {
		switch {
		case hh.name == "":
		case !isToken(hh.name):
			v.errorf(p+"."+hh.key, line, "invalid header name %q (want an HTTP token, or \"\" to send none)", hh.name)
		case managedHeader(hh.name) != "":
			v.errorf(p+"."+hh.key, line, "%s %s", hh.name, managedHeader(hh.name))
		}
	}
	if h.ProxyHeader != "" && h.ResponseTimeHeader != "" && strings.EqualFold(h.ProxyHeader, h.ResponseTimeHeader) {
		v.errorf(p+".response_time_header", line, "%s is also proxy_header: use two different headers", h.ResponseTimeHeader)
	}
	if h.ProxyHeader != "" {
		switch {
		case h.ProxyHeaderValue == "":
			v.errorf(p+".proxy_header_value", line, "must not be empty while proxy_header is set (set proxy_header = \"\" to send none)")
		case !validHeaderValue(h.ProxyHeaderValue):
			v.errorf(p+".proxy_header_value", line, "value %q has a control character (CR, LF and the like; only tab is allowed)", h.ProxyHeaderValue)
		}
	}
}

// at names the key at path with its line, for "also defined there"
// references.
func (v *validator) at(path string, fallback int) string {
	path = v.name(path)
	if l := v.lines.line(path, fallback); l > 0 {
		return fmt.Sprintf("%s at line %d", path, l)
	}
	return path
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// isToken reports whether s is an HTTP token (RFC 9110 section 5.6.2), the
// syntax of header and cookie names.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// validHeaderValue refuses what net/http would refuse to send: control
// characters other than tab.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// managedHeader says why a header cannot be added or set by a rule, or "".
func managedHeader(name string) string {
	switch asciiLower(name) {
	case "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
		"te", "trailer", "transfer-encoding", "upgrade":
		return "is a hop-by-hop header, which the proxy handles itself"
	case "content-length":
		return "frames the body, which the proxy handles itself"
	}
	return ""
}

// hostError says what is wrong with a hosts entry, or "".
func hostError(h string) string {
	const want = "want a name like api.example.com, a wildcard like *.example.org, or an IP address"
	switch {
	case h == "":
		return "must not be empty"
	case strings.Contains(h, "://"):
		return fmt.Sprintf("invalid host %q: a host only, without a scheme (%s)", h, want)
	case strings.ContainsAny(h, "/?#"):
		return fmt.Sprintf("invalid host %q: a host only, without a path (%s)", h, want)
	}
	if a, ok := hostAddr(h); ok {
		if a.Zone() != "" {
			return fmt.Sprintf("invalid host %q: an IP address must not have a zone", h)
		}
		return ""
	}
	if hp, port, err := net.SplitHostPort(h); err == nil && port != "" && hostError(hp) == "" {
		return fmt.Sprintf("invalid host %q: without a port (the port of the Host header is ignored)", h)
	}
	name := strings.TrimPrefix(h, "*.")
	if strings.Contains(name, "*") {
		return fmt.Sprintf("invalid host %q: a wildcard is only allowed as a leading \"*.\" (leave hosts out to route every host)", h)
	}
	if len(name) > 253 {
		return fmt.Sprintf("invalid host %q: longer than 253 characters", h)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Sprintf("invalid host %q (%s)", h, want)
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !isBareKeyByte(c) {
				return fmt.Sprintf("invalid host %q: character %q (%s)", h, c, want)
			}
		}
	}
	return ""
}

// pathPrefixError says what is wrong with a path_prefix, or "".
func pathPrefixError(p string) string {
	switch {
	case !strings.HasPrefix(p, "/"):
		return fmt.Sprintf("must start with '/', got %q", p)
	case strings.ContainsAny(p, "?#"):
		return fmt.Sprintf("must be a path only, without '?' or '#', got %q", p)
	case !validCheckPath(p):
		return fmt.Sprintf("must have no spaces or control characters, got %q", p)
	}
	return ""
}

// listenerKey is where an L7 proxy listens; services with the same one
// share the listener and are told apart by their routes.
type listenerKey struct {
	vip  netip.Addr
	port uint16
}

// route is one (host, path prefix) pair a service answers; host "" is any
// host.
type route struct{ host, prefix string }

func (r route) String() string {
	switch {
	case r.host == "" && r.prefix == "":
		return "the default route (no hosts, no path_prefix)"
	case r.host == "":
		return fmt.Sprintf("path_prefix %q (any host)", r.prefix)
	case r.prefix == "":
		return fmt.Sprintf("host %q (any path)", r.host)
	}
	return fmt.Sprintf("host %q with path_prefix %q", r.host, r.prefix)
}

// l7Routes checks the L7 services that share a listener: each route at
// most once (so at most one default route), and one lb_endpoints value.
func (v *validator) l7Routes(c *Config) {
	type listener struct {
		first  int
		routes map[route]int
	}
	listeners := map[listenerKey]*listener{}
	for i := range c.Services {
		s := &c.Services[i]
		if s.Mode != ModeL7 || !s.VIP.IsValid() || s.Port == 0 {
			continue
		}
		p := indexPath("service", i)
		lk := listenerKey{s.VIP, s.Port}
		l := listeners[lk]
		if l == nil {
			listeners[lk] = &listener{first: i, routes: map[route]int{}}
			l = listeners[lk]
		} else if f := &c.Services[l.first]; f.LBEndpoints != s.LBEndpoints {
			v.errorf(p+".lb_endpoints", s.Line,
				"lb_endpoints = %v differs from %v in %s on the same listener %s: the /lb/ endpoints belong to the listener, so give its services the same value",
				s.LBEndpoints, f.LBEndpoints, v.where(c, l.first, true), netip.AddrPortFrom(s.VIP, s.Port))
		}
		hosts := []string{""}
		if len(s.Hosts) > 0 {
			hosts = s.Hosts
		}
		taken := map[route]bool{}
		for hi, h := range hosts {
			if h != "" {
				if hostError(h) != "" {
					continue
				}
				h = canonicalHost(h)
			}
			r := route{h, s.PathPrefix}
			if taken[r] {
				continue // a duplicate host, reported by l7
			}
			taken[r] = true
			j, dup := l.routes[r]
			if !dup {
				l.routes[r] = i
				continue
			}
			field := p + ".path_prefix"
			switch {
			case r.host != "":
				field = indexPath(p+".hosts", hi)
			case r.prefix == "":
				field = p + ".vip"
			}
			v.errorf(field, s.Line, "%s on %s is already taken by %s",
				r, netip.AddrPortFrom(s.VIP, s.Port), v.where(c, j, true))
		}
	}
}

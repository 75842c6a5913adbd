package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Load reads and parses the configuration file at path. A file that cannot be
// read gives an error that does not match ErrInvalid.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes, defaults and validates a configuration. filename is only
// used in error messages. On failure it returns nil and an Errors.
func Parse(data []byte, filename string) (*Config, error) {
	errs := newCollector(filename)

	var tree map[string]any
	if _, err := toml.Decode(string(data), &tree); err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			errs.add(perr.Position.Line, "", "syntax error: "+perr.Message)
		} else {
			errs.add(0, "", "syntax error: "+err.Error())
		}
		return nil, errs.err()
	}

	lines := scanKeyLines(data)
	cfg, legacy := decodeConfig(&table{errs: errs, lines: lines, m: tree})
	cfg.ApplyDefaults()
	validate(cfg, lines, errs, legacy)
	if err := errs.err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// decodeConfig reads the top level. A new section is one more case here and
// one more decode function. legacy reports the compatibility form
// ([loadbalancer] and [[backends]], see legacy.go).
func decodeConfig(root *table) (cfg *Config, legacy bool) {
	cfg = &Config{}
	if t := root.table("daemon"); t != nil {
		cfg.Daemon = decodeDaemon(t)
	}
	global := decodeHealthCheck(root.table("health_check"))
	cfg.HealthCheck = global.resolve(DefaultHealthCheck())
	cfg.Admin = decodeAdmin(root.table("admin"))
	cfg.Datapath = decodeDatapath(root.table("datapath"))
	cfg.BGP = decodeBGP(root.table("bgp"))

	services := root.tables("service")
	if legacyForm(root) {
		if len(services) > 0 {
			mixedForms(root, services[0])
		} else {
			cfg.Services = []Service{decodeLegacy(root, cfg.HealthCheck)}
			legacy = true
		}
	}
	for _, t := range services {
		cfg.Services = append(cfg.Services, decodeService(t, cfg.HealthCheck))
	}
	root.finish()
	return cfg, legacy
}

func decodeDaemon(t *table) Daemon {
	var d Daemon
	t.str("interface", &d.Interface)
	enum(t, "xdp_mode", &d.XDPMode)
	t.str("bpffs_dir", &d.BPFFSDir)
	t.uint32("maglev_table_size", 2, MaxMaglevTableSize, &d.MaglevTableSize)
	enum(t, "log_format", &d.LogFormat)
	enum(t, "log_level", &d.LogLevel)
	t.duration("shutdown_grace", MinDuration, MaxShutdownGrace, &d.ShutdownGrace)
	t.uint32("threads", 0, MaxThreads, &d.Threads)
	t.duration("head_timeout", MinDuration, MaxClientTimeout, &d.HeadTimeout)
	t.duration("idle_timeout", MinDuration, MaxClientTimeout, &d.IdleTimeout)
	t.duration("client_timeout", MinDuration, MaxClientTimeout, &d.ClientTimeout)
	t.uint32("max_request_line", MinRequestLine, MaxRequestHeadCap, &d.MaxRequestLine)
	t.uint32("max_request_head", MinRequestLine, MaxRequestHeadCap, &d.MaxRequestHead)
	decodeAccessLog(t, &d)
	steer := true
	if t.boolean("steer_local", &steer) {
		d.DisableSteerLocal = !steer
	}
	t.finish()
	return d
}

// decodeService reads one [[service]]; global is the resolved
// [health_check] its own health check overrides.
func decodeService(t *table, global HealthCheck) Service {
	s := Service{Line: t.line}
	t.required("name")
	t.str("name", &s.Name)
	t.required("vip")
	t.addr("vip", &s.VIP)
	t.required("port")
	t.uint16("port", 1, math.MaxUint16, &s.Port)
	enum(t, "protocol", &s.Protocol)
	enum(t, "mode", &s.Mode)
	enum(t, "hash", &s.Hash)
	enum(t, "forwarding", &s.Forwarding)
	t.prefix("ipip_source_prefix", &s.IPIPSourcePrefix)
	t.addr("nat_source", &s.NATSource)
	enum(t, "algorithm", &s.Algorithm)
	decodeL7(t, &s)
	s.HealthCheck = decodeHealthCheck(t.table("health_check")).resolve(global)
	for _, bt := range t.tables("backend") {
		s.Backends = append(s.Backends, decodeBackend(bt, s.HealthCheck))
	}
	t.finish()
	return s
}

// decodeBackend reads one backend table; check is its service's resolved
// health check.
func decodeBackend(t *table, check HealthCheck) Backend {
	b := Backend{Line: t.line, Weight: DefaultWeight}
	t.required("address")
	t.addr("address", &b.Address)
	t.uint16("port", 1, math.MaxUint16, &b.Port)
	t.uint32("weight", 0, MaxWeight, &b.Weight)
	t.mac("mac", &b.MAC)
	if nonEmpty(t, "health_check_path", &b.HealthCheckPath) && check.Type == CheckTCP {
		t.errorf("health_check_path", "applies to http checks only (this service's check type is %q)", check.Type)
	}
	t.uint16("health_check_port", 1, math.MaxUint16, &b.HealthCheckPort)
	t.finish()
	return b
}

// table is one decoded TOML table being read into typed fields. It remembers
// which keys were asked for, so that finish can report the others as unknown
// (and suggest a known one).
type table struct {
	errs  *collector
	lines keyLines
	path  string // field path of the table; "" at the top level
	line  int    // line of its header, the fallback for missing keys
	m     map[string]any
	asked []string
}

func (t *table) field(key string) string { return joinPath(t.path, key) }

func (t *table) lineOf(key string) int { return t.lines.line(t.field(key), t.line) }

func (t *table) errorf(key, format string, args ...any) {
	t.errs.add(t.lineOf(key), t.field(key), fmt.Sprintf(format, args...))
}

// get returns the value of key and marks it as known.
func (t *table) get(key string) (any, bool) {
	t.asked = append(t.asked, key)
	v, ok := t.m[key]
	return v, ok
}

func (t *table) required(key string) {
	if _, ok := t.m[key]; !ok {
		t.errorf(key, "required")
	}
}

func (t *table) str(key string, dst *string) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	s, isStr := v.(string)
	if !isStr {
		t.errorf(key, "must be a string, got %s", describe(v))
		return false
	}
	*dst = s
	return true
}

// enum reads a string for a key with a fixed set of values and reports
// whether it set dst. The set itself is checked by validate; here an empty
// string is refused, because after ApplyDefaults it would be
// indistinguishable from the default.
func enum[T ~string](t *table, key string, dst *T) bool {
	return nonEmpty(t, key, dst)
}

// nonEmpty reads a string that must not be empty and reports whether it set
// dst.
func nonEmpty[T ~string](t *table, key string, dst *T) bool {
	var s string
	if !t.str(key, &s) {
		return false
	}
	if s == "" {
		t.errorf(key, "must not be empty (leave the key out for the default)")
		return false
	}
	*dst = T(s)
	return true
}

func (t *table) boolean(key string, dst *bool) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	b, isBool := v.(bool)
	if !isBool {
		t.errorf(key, "must be true or false, got %s", describe(v))
		return false
	}
	*dst = b
	return true
}

// has reports whether key is present, without marking it as known.
func (t *table) has(key string) bool {
	_, ok := t.m[key]
	return ok
}

// duration reads a duration written either as key = "1500ms" (a Go duration
// string) or as key_secs = 1.5 (seconds, integer or float), but not both. It
// reports whether it set dst; a value outside lo..hi is an error.
func (t *table) duration(key string, lo, hi time.Duration, dst *time.Duration) bool {
	secsKey := key + "_secs"
	sv, hasStr := t.get(key)
	nv, hasSecs := t.get(secsKey)
	switch {
	case hasStr && hasSecs:
		first, second := key, secsKey
		if t.lineOf(secsKey) < t.lineOf(key) {
			first, second = secsKey, key
		}
		t.errorf(second, "conflicts with %s (line %d): give either %s (a duration string) or %s (seconds), not both",
			first, t.lineOf(first), key, secsKey)
		return false
	case hasStr:
		s, isStr := sv.(string)
		if !isStr {
			hint := ""
			if n, isNum := asSeconds(sv); isNum {
				hint = fmt.Sprintf(" (or write %s = %v)", secsKey, n)
			}
			t.errorf(key, "must be a duration string like \"1500ms\" or \"5s\", got %s%s", describe(sv), hint)
			return false
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			t.errorf(key, "invalid duration %q (want a number and a unit, like \"1500ms\", \"5s\" or \"1m\")", s)
			return false
		}
		if msg := durationRange(d, lo, hi); msg != "" {
			t.errorf(key, "%s, got %q", msg, s)
			return false
		}
		*dst = d
		return true
	case hasSecs:
		f, isNum := asSeconds(nv)
		if !isNum {
			hint := ""
			if s, isStr := nv.(string); isStr {
				hint = fmt.Sprintf(" (or write %s = %q)", key, s)
			}
			t.errorf(secsKey, "must be a number of seconds, got %s%s", describe(nv), hint)
			return false
		}
		switch {
		case math.IsNaN(f) || f < lo.Seconds():
			t.errorf(secsKey, "must be at least %v seconds, got %v", lo.Seconds(), nv)
		case f > hi.Seconds():
			t.errorf(secsKey, "must be at most %v seconds, got %v", hi.Seconds(), nv)
		default:
			*dst = time.Duration(math.Round(f * float64(time.Second)))
			return true
		}
	}
	return false
}

// asSeconds returns an integer or float TOML value as a float.
func asSeconds(v any) (float64, bool) {
	switch n := v.(type) {
	case int64:
		return float64(n), true
	case float64:
		return n, true
	}
	return 0, false
}

// durationRange says what is wrong with d, or "" if it is within lo..hi.
func durationRange(d, lo, hi time.Duration) string {
	switch {
	case d < lo:
		return "must be at least " + fmtDuration(lo)
	case d > hi:
		return "must be at most " + fmtDuration(hi)
	}
	return ""
}

// fmtDuration writes whole hours as "1h" and whole seconds as "300s",
// rather than "1h0m0s" and "5m0s".
func fmtDuration(d time.Duration) string {
	switch {
	case d == 0:
		return "0s"
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return d.String()
}

func (t *table) integer(key string, lo, hi int64) (int64, bool) {
	v, ok := t.get(key)
	if !ok {
		return 0, false
	}
	n, isInt := v.(int64)
	if !isInt {
		t.errorf(key, "must be an integer, got %s", describe(v))
		return 0, false
	}
	if n < lo || n > hi {
		t.errorf(key, "must be %d..%d, got %d", lo, hi, n)
		return 0, false
	}
	return n, true
}

func (t *table) uint16(key string, lo, hi int64, dst *uint16) {
	if n, ok := t.integer(key, lo, hi); ok {
		*dst = uint16(n)
	}
}

func (t *table) uint32(key string, lo, hi int64, dst *uint32) {
	if n, ok := t.integer(key, lo, hi); ok {
		*dst = uint32(n)
	}
}

func (t *table) addr(key string, dst *netip.Addr) {
	var s string
	if !t.str(key, &s) {
		return
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.errorf(key, "%s", addrError(s, err))
		return
	}
	*dst = a.Unmap()
}

// addrError explains why s is not an IP address, with a hint for the two
// usual mistakes: a CIDR prefix and a host:port.
func addrError(s string, err error) string {
	reason := strings.TrimPrefix(err.Error(), fmt.Sprintf("ParseAddr(%q): ", s))
	msg := fmt.Sprintf("invalid IP address %q: %s", s, reason)
	if _, perr := netip.ParsePrefix(s); perr == nil {
		msg = fmt.Sprintf("invalid IP address %q: a single address is expected, not a prefix", s)
	} else if _, aperr := netip.ParseAddrPort(s); aperr == nil {
		msg = fmt.Sprintf("invalid IP address %q: a single address is expected, without a port", s)
	}
	return msg
}

// prefix reads an address prefix such as "198.18.99.0/24".
func (t *table) prefix(key string, dst *netip.Prefix) {
	var s string
	if !t.str(key, &s) {
		return
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.errorf(key, "invalid prefix %q (want an address and a length, like \"198.18.99.0/24\" or \"2001:db8:99::/64\")", s)
		return
	}
	*dst = p
}

func (t *table) mac(key string, dst *net.HardwareAddr) {
	var s string
	if !t.str(key, &s) {
		return
	}
	hw, err := net.ParseMAC(s)
	if err != nil {
		t.errorf(key, "invalid MAC address %q (want six hex bytes like 02:00:00:00:00:11)", s)
		return
	}
	*dst = hw
}

// table returns the sub-table at key, or nil if it is absent or not a table.
func (t *table) table(key string) *table {
	v, ok := t.get(key)
	if !ok {
		return nil
	}
	m, isMap := v.(map[string]any)
	if !isMap {
		t.errorf(key, "must be a table ([%s]), got %s", headerName(t.field(key)), describe(v))
		return nil
	}
	return t.child(t.field(key), t.lineOf(key), m)
}

// tables returns the elements of the array of tables at key, written either
// as [[key]] sections or as an array of inline tables.
func (t *table) tables(key string) []*table {
	v, ok := t.get(key)
	if !ok {
		return nil
	}
	var elems []map[string]any
	switch v := v.(type) {
	case []map[string]any:
		elems = v
	case []any:
		for _, e := range v {
			m, isMap := e.(map[string]any)
			if !isMap {
				t.errorf(key, "must be an array of tables ([[%s]]), got an array of %s", headerName(t.field(key)), typeName(e))
				return nil
			}
			elems = append(elems, m)
		}
	default:
		t.errorf(key, "must be an array of tables ([[%s]]), got %s", headerName(t.field(key)), describe(v))
		return nil
	}
	out := make([]*table, len(elems))
	for i, m := range elems {
		path := indexPath(t.field(key), i)
		out[i] = t.child(path, t.lines.line(path, t.lineOf(key)), m)
	}
	return out
}

// headerName turns a field path into the name its TOML header would have:
// service[0].backend becomes service.backend.
func headerName(path string) string {
	return arrayIndex.ReplaceAllString(path, "")
}

var arrayIndex = regexp.MustCompile(`\[[0-9]+\]`)

func (t *table) child(path string, line int, m map[string]any) *table {
	return &table{errs: t.errs, lines: t.lines, path: path, line: line, m: m}
}

// finish reports every key of the table that no decoder asked for.
func (t *table) finish() {
	var unknown []string
	for k := range t.m {
		if !contains(t.asked, k) {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		what := "unknown key"
		switch t.m[k].(type) {
		case map[string]any:
			what = "unknown table"
		case []map[string]any:
			what = "unknown array of tables"
		}
		if s := closest(k, t.asked); s != "" {
			what += fmt.Sprintf(" (did you mean %q?)", s)
		}
		t.errorf(k, "%s", what)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// closest returns the known key nearest to k if it is near enough to be a
// plausible typo, else "".
func closest(k string, known []string) string {
	best, bestDist := "", 3 // at most two edits
	for _, c := range known {
		d := editDistance(strings.ToLower(k), c)
		if d < bestDist && d < len(c) {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// describe names a decoded value's TOML type, with the value itself when it
// is short enough to be useful.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		if len(v) <= 64 {
			return fmt.Sprintf("string %q", v)
		}
	case int64:
		return fmt.Sprintf("integer %d", v)
	case float64:
		return fmt.Sprintf("float %v", v)
	case bool:
		return fmt.Sprintf("boolean %v", v)
	}
	return typeName(v)
}

func typeName(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case int64:
		return "integer"
	case float64:
		return "float"
	case bool:
		return "boolean"
	case time.Time:
		return "datetime"
	case []map[string]any:
		return "array of tables"
	case []any:
		return "array"
	case map[string]any:
		return "table"
	}
	return fmt.Sprintf("%T", v)
}

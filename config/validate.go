package config

import (
	"time"

	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
)

// Validate checks a Config built or changed in code (Parse already validates
// what it returns). Call ApplyDefaults first if unset keys should take their
// defaults. Errors carry the Line fields of services and backends, if any.
func (c *Config) Validate() error {
	errs := newCollector("")
	validate(c, nil, errs, false)
	return errs.err()
}

// validator checks the meaning of a decoded and defaulted Config. It never
// reports a value that is zero because decoding already rejected it: the
// collector keeps one error per field.
type validator struct {
	lines  keyLines
	errs   *collector
	legacy bool // the config is in the compatibility form (legacy.go)
}

func validate(c *Config, lines keyLines, errs *collector, legacy bool) {
	v := &validator{lines: lines, errs: errs, legacy: legacy}
	v.daemon(&c.Daemon)
	v.healthCheck("health_check", 0, &c.HealthCheck, nil)
	v.admin(&c.Admin)
	v.datapath(c)
	v.bgp(c.BGP)
	v.services(c)
}

// errorf reports a problem with the field at path; fallback is the line used
// when the key itself was not written (usually its table's header).
func (v *validator) errorf(path string, fallback int, format string, args ...any) {
	path = v.name(path)
	v.errs.add(v.lines.line(path, fallback), path, fmt.Sprintf(format, args...))
}

// name turns a field path of the Config into the path of the key in the
// file, which differs only for the compatibility form.
func (v *validator) name(path string) string {
	if v.legacy {
		return legacyPath(path)
	}
	return path
}

func (v *validator) daemon(d *Daemon) {
	line := v.lines.line("daemon", 0)
	if d.Interface != "" && !validInterfaceName(d.Interface) {
		v.errorf("daemon.interface", line,
			"invalid interface name %q (at most %d characters, no '/', ':' or whitespace)", d.Interface, maxInterfaceNameLen)
	}
	checkEnum(v, "daemon.xdp_mode", line, d.XDPMode, xdpModes)
	if !filepath.IsAbs(d.BPFFSDir) {
		v.errorf("daemon.bpffs_dir", line, "must be an absolute path, got %q", d.BPFFSDir)
	}
	v.maglevTableSize(d.MaglevTableSize, line)
	checkEnum(v, "daemon.log_format", line, d.LogFormat, logFormats)
	checkEnum(v, "daemon.log_level", line, d.LogLevel, logLevels)
	if msg := durationRange(d.ShutdownGrace, MinDuration, MaxShutdownGrace); msg != "" {
		v.errorf(v.durationKey("daemon", "shutdown_grace"), line, "%s, got %s", msg, fmtDuration(d.ShutdownGrace))
	}
	for _, c := range []struct {
		key string
		v   time.Duration
	}{{"head_timeout", d.HeadTimeout}, {"idle_timeout", d.IdleTimeout}, {"client_timeout", d.ClientTimeout}} {
		if msg := durationRange(c.v, MinDuration, MaxClientTimeout); msg != "" {
			v.errorf(v.durationKey("daemon", c.key), line, "%s, got %s", msg, fmtDuration(c.v))
		}
	}
	if d.MaxRequestLine < MinRequestLine || d.MaxRequestLine > d.MaxRequestHead {
		v.errorf("daemon.max_request_line", line, "must be %d..max_request_head (%d), got %d", MinRequestLine, d.MaxRequestHead, d.MaxRequestLine)
	}
	if d.MaxRequestHead > MaxRequestHeadCap {
		v.errorf("daemon.max_request_head", line, "must be at most %d, got %d", MaxRequestHeadCap, d.MaxRequestHead)
	}
	v.accessLog(d, line)
}

func (v *validator) maglevTableSize(m uint32, line int) {
	const path = "daemon.maglev_table_size"
	switch {
	case m < 2 || m > MaxMaglevTableSize:
		v.errorf(path, line, "must be %d..%d, got %d", 2, MaxMaglevTableSize, m)
	case !isPrime(m):
		below, above := prevPrime(m), nextPrime(m)
		if above > MaxMaglevTableSize {
			v.errorf(path, line, "%d is not prime (nearest: %d)", m, below)
		} else {
			v.errorf(path, line, "%d is not prime (nearest: %d or %d)", m, below, above)
		}
	}
}

// serviceKey is what the datapath looks a service up by.
type serviceKey struct {
	vip   netip.Addr
	port  uint16
	proto Protocol
}

// services checks each service and the services together: unique names,
// and one service per (vip, port, protocol) except for L7 services, which
// may share a listener when their routes differ (l7Routes).
func (v *validator) services(c *Config) {
	byName := map[string]int{}
	byKey := map[serviceKey]int{}
	for i := range c.Services {
		s := &c.Services[i]
		p := indexPath("service", i)
		v.service(s, p, c.Daemon.MaglevTableSize, &c.HealthCheck)
		v.checkViaVIP(c, i)

		if s.Name != "" {
			if j, dup := byName[s.Name]; dup {
				v.errorf(p+".name", s.Line, "service name %q is already used by %s", s.Name, v.where(c, j, false))
			} else {
				byName[s.Name] = i
			}
		}
		if s.VIP.IsValid() && s.Port != 0 {
			k := serviceKey{s.VIP, s.Port, s.Protocol}
			j, dup := byKey[k]
			switch {
			case !dup:
				byKey[k] = i
			case s.Mode == ModeL7 && c.Services[j].Mode == ModeL7:
				// A shared listener: l7Routes checks the routes.
			case s.Mode != c.Services[j].Mode && (s.Mode == ModeL7 || c.Services[j].Mode == ModeL7):
				v.errorf(p+".vip", s.Line, "%s/%s is already used by %s (an l4 and an l7 service cannot share a vip and port)",
					netip.AddrPortFrom(s.VIP, s.Port), s.Protocol, v.where(c, j, true))
			default:
				v.errorf(p+".vip", s.Line, "%s/%s is already used by %s",
					netip.AddrPortFrom(s.VIP, s.Port), s.Protocol, v.where(c, j, true))
			}
		}
	}
	v.wildcardListeners(c)
	v.l7Routes(c)
}

// wildcardListeners reports two L7 services on the same port where one
// listens on all addresses (0.0.0.0, or :: which also takes IPv4): the
// second listener could not bind. Equal VIPs are reported as duplicates.
func (v *validator) wildcardListeners(c *Config) {
	covers := func(a, b netip.Addr) bool { return a.IsUnspecified() && (a.Is6() || b.Is4()) }
	for j := range c.Services {
		sj := &c.Services[j]
		if sj.Mode != ModeL7 || !sj.VIP.IsValid() {
			continue
		}
		for i := 0; i < j; i++ {
			si := &c.Services[i]
			if si.Mode != ModeL7 || si.Port != sj.Port || !si.VIP.IsValid() || si.VIP == sj.VIP ||
				!covers(si.VIP, sj.VIP) && !covers(sj.VIP, si.VIP) {
				continue
			}
			v.errorf(indexPath("service", j)+".vip", sj.Line,
				"l7 listener %s overlaps %s on %s (an unspecified address listens on all addresses)",
				netip.AddrPortFrom(sj.VIP, sj.Port), v.where(c, i, true), netip.AddrPortFrom(si.VIP, si.Port))
			break
		}
	}
}

// where names service j for a "first defined here" reference.
func (v *validator) where(c *Config, j int, withName bool) string {
	p := indexPath("service", j)
	s := p
	if withName && c.Services[j].Name != "" {
		s += fmt.Sprintf(" %q", c.Services[j].Name)
	}
	if l := v.lines.line(p, c.Services[j].Line); l > 0 {
		s += fmt.Sprintf(" (line %d)", l)
	}
	return s
}

func (v *validator) service(s *Service, p string, tableSize uint32, global *HealthCheck) {
	line := s.Line
	if !validServiceName(s.Name) {
		if s.Name == "" {
			v.errorf(p+".name", line, "required")
		} else {
			v.errorf(p+".name", line, "invalid name %q (want 1 to %d characters from A-Z a-z 0-9 _ . -)", s.Name, MaxServiceNameLen)
		}
	}
	if s.Port == 0 {
		v.errorf(p+".port", line, "must be 1..65535, got 0")
	}
	protoOK := checkEnum(v, p+".protocol", line, s.Protocol, protocols)
	modeOK := checkEnum(v, p+".mode", line, s.Mode, modes)

	l4 := modeOK && s.Mode == ModeL4
	l7 := modeOK && s.Mode == ModeL7
	// An L7 proxy may listen on all addresses; the XDP datapath needs one.
	v.address(p+".vip", line, s.VIP, l7)
	switch {
	case l4:
		checkEnum(v, p+".hash", line, s.Hash, hashModes)
		checkEnum(v, p+".forwarding", line, s.Forwarding, forwardings)
		v.ipipSourcePrefix(s, p)
		v.natSource(s, p)
		if s.Algorithm != "" {
			v.errorf(p+".algorithm", line, "applies to l7 services only (l4 services pick backends by hash)")
		}
		v.l4NoL7(s, p)
	case l7:
		checkEnum(v, p+".algorithm", line, s.Algorithm, algorithms)
		if protoOK && s.Protocol != ProtoTCP {
			v.errorf(p+".protocol", line, "l7 services must use tcp, got %q", s.Protocol)
		}
		if s.Hash != "" {
			v.errorf(p+".hash", line, "applies to l4 services only")
		}
		if s.Forwarding != "" {
			v.errorf(p+".forwarding", line, "applies to l4 services only")
		}
		if s.IPIPSourcePrefix.IsValid() {
			v.errorf(p+".ipip_source_prefix", line, "applies to l4 services only")
		}
		if s.NATSource.IsValid() {
			v.errorf(p+".nat_source", line, "applies to l4 services only")
		}
		v.l7(s, p)
	}

	v.healthCheck(p+".health_check", line, &s.HealthCheck, global)
	v.backends(s, p, tableSize, l4, l7)
}

func (v *validator) backends(s *Service, p string, tableSize uint32, l4, l7 bool) {
	bp := p + ".backend"
	if len(s.Backends) == 0 {
		v.errorf(bp, s.Line, "no backends: add at least one [[service.backend]]")
		return
	}
	if tableSize >= 2 && uint32(len(s.Backends)) > tableSize {
		v.errorf(bp, s.Line, "%d backends do not fit in a Maglev table of %d entries (daemon.maglev_table_size)",
			len(s.Backends), tableSize)
	}

	// An L4 backend is an address (DSR keeps the port); an L7 one an
	// address and a port.
	seen := map[netip.AddrPort]int{}
	usable := 0
	for i := range s.Backends {
		b := &s.Backends[i]
		ep := indexPath(bp, i)
		key := netip.AddrPortFrom(b.Address, 0)
		if l7 {
			key = netip.AddrPortFrom(b.Address, b.Port)
		}
		if v.address(ep+".address", b.Line, b.Address, false) {
			switch {
			case s.VIP.IsValid() && b.Address.Is4() != s.VIP.Is4() && !(l7 && s.VIP.IsUnspecified()):
				v.errorf(ep+".address", b.Line, "%s address %s in an %s service (vip %s)",
					family(b.Address), b.Address, family(s.VIP), s.VIP)
			case !l7 && b.Address == s.VIP:
				v.errorf(ep+".address", b.Line, "%s is the service's own vip", b.Address)
			case l7 && b.Address == s.VIP && b.Port == s.Port:
				v.errorf(ep+".address", b.Line, "%s is the service's own vip and port", key)
			default:
				if j, dup := seen[key]; dup {
					what := b.Address.String()
					if l7 {
						what = key.String()
					}
					v.errorf(ep+".address", b.Line, "duplicate backend %s (also %s)", what, v.backendWhere(s, bp, j))
				} else {
					seen[key] = i
				}
			}
		}
		if b.Port != 0 && l4 && s.Forwarding != ForwardNAT {
			v.errorf(ep+".port", b.Line, "applies to l7 and nat services only (%s forwarding keeps the service port %d)", s.Forwarding, s.Port)
		}
		if b.HealthCheckPath != "" {
			switch {
			case s.HealthCheck.Type == CheckTCP:
				v.errorf(ep+".health_check_path", b.Line, "applies to http checks only (this service's check type is %q)", s.HealthCheck.Type)
			case !validCheckPath(b.HealthCheckPath):
				v.errorf(ep+".health_check_path", b.Line, "must start with '/' and have no spaces or control characters, got %q", b.HealthCheckPath)
			}
		}
		if b.Weight > MaxWeight {
			v.errorf(ep+".weight", b.Line, "must be 0..%d, got %d", MaxWeight, b.Weight)
		}
		if b.Weight > 0 {
			usable++
		}
		if b.MAC != nil {
			switch {
			case l7:
				v.errorf(ep+".mac", b.Line, "applies to l4 services only")
			case s.Forwarding == ForwardIPIP || s.Forwarding == ForwardNAT:
				v.errorf(ep+".mac", b.Line, "applies to dsr forwarding only (%s takes the next hop from the kernel's routing and neighbour tables)", s.Forwarding)
			case len(b.MAC) != 6:
				v.errorf(ep+".mac", b.Line, "must be a 6-byte Ethernet address, got %d bytes (%s)", len(b.MAC), b.MAC)
			case b.MAC[0]&1 != 0:
				v.errorf(ep+".mac", b.Line, "must be a unicast address, got %s", b.MAC)
			case isZero(b.MAC):
				v.errorf(ep+".mac", b.Line, "must not be all zeros")
			}
		}
	}
	if usable == 0 {
		if len(s.Backends) == 1 {
			v.errorf(bp+"[0].weight", s.Backends[0].Line, "weight 0 with no other backend: the service would take no new flows")
		} else {
			v.errorf(bp, v.lines.line(bp+"[0]", s.Backends[0].Line),
				"all %d backends have weight 0: the service would take no new flows", len(s.Backends))
		}
	}
}

// ipipSourcePrefix checks an L4 service's ipip_source_prefix.
func (v *validator) ipipSourcePrefix(s *Service, p string) {
	pfx := s.IPIPSourcePrefix
	if !pfx.IsValid() {
		return
	}
	path := p + ".ipip_source_prefix"
	switch {
	case s.Forwarding != ForwardIPIP:
		v.errorf(path, s.Line, "applies to ipip forwarding only (this service's forwarding is %q)", s.Forwarding)
	case pfx.Addr().Zone() != "":
		v.errorf(path, s.Line, "must not have a zone, got %s", pfx)
	case s.VIP.IsValid() && pfx.Addr().Is4() != s.VIP.Is4():
		v.errorf(path, s.Line, "%s prefix %s in an %s service (vip %s)", family(pfx.Addr()), pfx, family(s.VIP), s.VIP)
	case pfx.Bits() == 0:
		v.errorf(path, s.Line, "must not be the whole address space, got %s", pfx)
	case pfx.Masked() != pfx:
		v.errorf(path, s.Line, "%s has bits set past its length (did you mean %s?)", pfx, pfx.Masked())
	}
}

// natSource checks an L4 service's nat_source.
func (v *validator) natSource(s *Service, p string) {
	a := s.NATSource
	if !a.IsValid() {
		return
	}
	path := p + ".nat_source"
	switch {
	case s.Forwarding != ForwardNAT:
		v.errorf(path, s.Line, "applies to nat forwarding only (this service's forwarding is %q)", s.Forwarding)
	case !v.address(path, s.Line, a, false):
	case s.VIP.IsValid() && a.Is4() != s.VIP.Is4():
		v.errorf(path, s.Line, "%s address %s in an %s service (vip %s)", family(a), a, family(s.VIP), s.VIP)
	case a == s.VIP:
		v.errorf(path, s.Line, "must not be the service's vip %s (answers to the vip are the clients' packets)", a)
	}
}

func (v *validator) backendWhere(s *Service, bp string, j int) string {
	p := v.name(indexPath(bp, j))
	if l := v.lines.line(p, s.Backends[j].Line); l > 0 {
		return fmt.Sprintf("%s at line %d", p, l)
	}
	return p
}

// address checks a VIP or backend address and reports whether it is usable
// for the further checks. anyAddr allows the unspecified address.
func (v *validator) address(path string, line int, a netip.Addr, anyAddr bool) bool {
	switch {
	case !a.IsValid():
		v.errorf(path, line, "required")
	case a.Zone() != "":
		v.errorf(path, line, "must not have a zone, got %s", a)
	case a.IsUnspecified() && !anyAddr:
		v.errorf(path, line, "must be a specific address, got %s", a)
	case a.IsMulticast():
		v.errorf(path, line, "must not be a multicast address, got %s", a)
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		v.errorf(path, line, "must not be the broadcast address")
	default:
		return true
	}
	return false
}

// checkEnum reports a value outside allowed and says whether it was inside.
func checkEnum[T ~string](v *validator, path string, line int, val T, allowed []T) bool {
	for _, a := range allowed {
		if val == a {
			return true
		}
	}
	v.errorf(path, line, "invalid value %q (allowed: %s)", val, joinValues(allowed))
	return false
}

func joinValues[T ~string](vals []T) string {
	s := make([]string, len(vals))
	for i, v := range vals {
		s[i] = string(v)
	}
	return strings.Join(s, ", ")
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func validServiceName(s string) bool {
	if len(s) == 0 || len(s) > MaxServiceNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(isBareKeyByte(c) || c == '.') {
			return false
		}
	}
	return true
}

// validInterfaceName follows the kernel's dev_valid_name.
func validInterfaceName(s string) bool {
	if len(s) > maxInterfaceNameLen || s == "." || s == ".." {
		return false
	}
	return !strings.ContainsAny(s, "/: \t\n\r\v\f")
}

// isPrime is trial division; table sizes are at most ~2^20.
func isPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= uint64(n); d++ {
		if uint64(n)%d == 0 {
			return false
		}
	}
	return true
}

func nextPrime(n uint32) uint32 {
	for n++; !isPrime(n); n++ {
	}
	return n
}

func prevPrime(n uint32) uint32 {
	for n--; n > 2 && !isPrime(n); n-- {
	}
	return n
}

package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Datapath holds the [datapath] table: the sizes of the XDP datapath's big
// tables, fixed when it loads (a change takes a restart), and the idle
// timeouts of its connection table, which a reload applies.
type Datapath struct {
	// ConntrackSize is how many flows the connection table holds; past
	// it, the least recently used flow makes room.
	ConntrackSize uint32
	// MaxBackends bounds the backends of all L4 services together (each
	// backend of each service takes one id).
	MaxBackends uint32
	// A flow idle this long is forgotten: its next packet is placed by the
	// Maglev table as a new flow's (the same backend unless the backends
	// changed), and a drain stops waiting for it. TCP by what the client
	// sent last: only its SYN, an ACK (established), a FIN or RST (closing).
	TCPSynTimeout         time.Duration
	TCPEstablishedTimeout time.Duration
	TCPClosingTimeout     time.Duration
	UDPTimeout            time.Duration
	// NATPorts are the source ports nat flows are given (each backend,
	// port and source address has them all). They must lie outside the
	// host's own ephemeral ports (net.ipv4.ip_local_port_range), which
	// the daemon checks when it applies them: a host connection and a
	// nat flow to the same backend would share a 4-tuple. A change
	// applies to new flows.
	NATPorts PortRange
}

// PortRange is an inclusive range of ports, "FIRST-LAST" in the file.
type PortRange struct{ First, Last uint16 }

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// Count is how many ports the range holds.
func (r PortRange) Count() uint32 { return uint32(r.Last) - uint32(r.First) + 1 }

// Overlaps reports whether r and o share a port.
func (r PortRange) Overlaps(o PortRange) bool { return r.First <= o.Last && o.First <= r.Last }

// ParsePortRange reads "FIRST-LAST" (1 <= FIRST <= LAST <= 65535).
func ParsePortRange(s string) (PortRange, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	switch {
	case !ok || err1 != nil || err2 != nil:
		return PortRange{}, fmt.Errorf("must be \"FIRST-LAST\" with ports 1..65535, got %q", s)
	case first == 0 || first > last:
		return PortRange{}, fmt.Errorf("must have 1 <= FIRST <= LAST, got %q", s)
	}
	return PortRange{uint16(first), uint16(last)}, nil
}

// [datapath] defaults and bounds.
const (
	// DefaultConntrackSize and DefaultMaxBackends are the sizes compiled
	// into bpf/xlb.h.
	DefaultConntrackSize = 262144
	MinConntrackSize     = 1024
	MaxConntrackSize     = 1 << 26
	DefaultMaxBackends   = 16384
	MaxMaxBackends       = 1 << 20
	// Defaults after IPVS (established, closing) and Linux conntrack (a
	// UDP flow with no reply seen, as DSR never sees one), with the SYN
	// timeout past a client's first four retransmissions. UDP stays below
	// the default drain_timeout, so that a UDP removal ends when its
	// clients go quiet.
	DefaultTCPSynTimeout         = 30 * time.Second
	DefaultTCPEstablishedTimeout = 15 * time.Minute
	DefaultTCPClosingTimeout     = 2 * time.Minute
	DefaultUDPTimeout            = 30 * time.Second
	// DefaultNATPorts stays below Linux's default ephemeral ports
	// (32768-60999) and above the well-known ones.
	// The datapath counts flow time in ticks of about 1.07 s.
	MinFlowTimeout = time.Second
	MaxFlowTimeout = 7 * 24 * time.Hour
)

// DefaultNATPorts: see DefaultUDPTimeout.
var DefaultNATPorts = PortRange{1024, 32767}

// datapathSizes and datapathTimeouts define each [datapath] key once: name,
// default and bounds. Decoding, ApplyDefaults and validation read them.
var datapathSizes = []struct {
	key         string
	def, lo, hi uint32
	field       func(*Datapath) *uint32
}{
	{"conntrack_size", DefaultConntrackSize, MinConntrackSize, MaxConntrackSize, func(d *Datapath) *uint32 { return &d.ConntrackSize }},
	{"max_backends", DefaultMaxBackends, 1, MaxMaxBackends, func(d *Datapath) *uint32 { return &d.MaxBackends }},
}

var datapathTimeouts = []struct {
	key   string
	def   time.Duration
	field func(*Datapath) *time.Duration
}{
	{"tcp_syn_timeout", DefaultTCPSynTimeout, func(d *Datapath) *time.Duration { return &d.TCPSynTimeout }},
	{"tcp_established_timeout", DefaultTCPEstablishedTimeout, func(d *Datapath) *time.Duration { return &d.TCPEstablishedTimeout }},
	{"tcp_closing_timeout", DefaultTCPClosingTimeout, func(d *Datapath) *time.Duration { return &d.TCPClosingTimeout }},
	{"udp_timeout", DefaultUDPTimeout, func(d *Datapath) *time.Duration { return &d.UDPTimeout }},
}

// DefaultDatapath is the [datapath] table an empty configuration gets.
func DefaultDatapath() Datapath {
	var d Datapath
	d.applyDefaults()
	return d
}

// decodeDatapath reads the [datapath] table; t may be nil.
func decodeDatapath(t *table) Datapath {
	var d Datapath
	if t == nil {
		return d
	}
	for _, k := range datapathSizes {
		t.uint32(k.key, int64(k.lo), int64(k.hi), k.field(&d))
	}
	for _, k := range datapathTimeouts {
		t.duration(k.key, MinFlowTimeout, MaxFlowTimeout, k.field(&d))
	}
	var ports string
	if t.str("nat_port_range", &ports) {
		r, err := ParsePortRange(ports)
		if err != nil {
			t.errorf("nat_port_range", "%v", err)
		}
		d.NATPorts = r
	}
	t.finish()
	return d
}

// applyDefaults fills the keys left out: none has a meaningful zero.
func (d *Datapath) applyDefaults() {
	for _, k := range datapathSizes {
		if p := k.field(d); *p == 0 {
			*p = k.def
		}
	}
	for _, k := range datapathTimeouts {
		setZero(k.field(d), k.def)
	}
	if d.NATPorts == (PortRange{}) {
		d.NATPorts = DefaultNATPorts
	}
}

func (v *validator) datapath(c *Config) {
	d := &c.Datapath
	line := v.lines.line("datapath", 0)
	for _, k := range datapathSizes {
		if n := *k.field(d); n < k.lo || n > k.hi {
			v.errorf("datapath."+k.key, line, "must be %d..%d, got %d", k.lo, k.hi, n)
		}
	}
	for _, k := range datapathTimeouts {
		val := *k.field(d)
		if msg := durationRange(val, MinFlowTimeout, MaxFlowTimeout); msg != "" {
			v.errorf(v.durationKey("datapath", k.key), line, "%s, got %s", msg, fmtDuration(val))
		}
	}
	n := 0
	for _, s := range c.Services {
		if s.Mode == ModeL4 {
			n += len(s.Backends)
		}
	}
	if n > int(d.MaxBackends) {
		v.errorf("datapath.max_backends", line, "the l4 services have %d backends, more than max_backends = %d", n, d.MaxBackends)
	}
}

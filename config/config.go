package config

import (
	"net"
	"net/netip"
)

// XDPMode selects how the XDP program is attached to the interface.
type XDPMode string

const (
	XDPAuto    XDPMode = "auto"    // native if the driver supports it, else generic
	XDPNative  XDPMode = "native"  // driver mode; fail if the driver cannot do it
	XDPGeneric XDPMode = "generic" // skb mode; works everywhere, slower
)

// Protocol is the transport protocol of a service.
type Protocol string

const (
	ProtoTCP Protocol = "tcp"
	ProtoUDP Protocol = "udp"
)

// Number returns the IP protocol number (6 for TCP, 17 for UDP), or 0 for an
// unknown protocol.
func (p Protocol) Number() uint8 {
	switch p {
	case ProtoTCP:
		return 6
	case ProtoUDP:
		return 17
	}
	return 0
}

// Mode says which tier serves a service.
type Mode string

const (
	ModeL4 Mode = "l4" // the XDP datapath forwards packets to backends
	ModeL7 Mode = "l7" // XDP passes packets up to the Go HTTP proxy
)

// HashMode is the input of the Maglev lookup for an L4 service.
type HashMode string

const (
	HashIP   HashMode = "ip_hash"   // client source address only
	HashFlow HashMode = "flow_hash" // the 5-tuple
)

// Forwarding is how an L4 service hands packets to a backend.
type Forwarding string

const (
	ForwardDSR Forwarding = "dsr" // L2 direct server return
)

// forwardNAT is not implemented yet; it is named so that it gets a "not
// supported yet" message instead of "invalid value".
const forwardNAT Forwarding = "nat"

// Defaults and bounds.
const (
	DefaultBPFFSDir        = "/sys/fs/bpf/xlb"
	DefaultMaglevTableSize = 65537
	// MaxMaglevTableSize is the largest prime below 2^20: one ring then takes
	// 4 MiB of kernel memory per service, which is already generous.
	MaxMaglevTableSize = 1048573
	DefaultLogFormat   = "text"
	DefaultLogLevel    = "info"
	DefaultWeight      = 1
	MaxWeight          = 65535
	MaxServiceNameLen  = 47
	// maxInterfaceNameLen is IFNAMSIZ minus the terminating NUL.
	maxInterfaceNameLen = 15
)

// Allowed values of the enumerated keys, in the order error messages list them.
var (
	xdpModes    = []XDPMode{XDPAuto, XDPNative, XDPGeneric}
	protocols   = []Protocol{ProtoTCP, ProtoUDP}
	modes       = []Mode{ModeL4, ModeL7}
	hashModes   = []HashMode{HashIP, HashFlow}
	forwardings = []Forwarding{ForwardDSR}
	logFormats  = []string{"text", "json"}
	logLevels   = []string{"debug", "info", "warn", "error"}
)

// Config is a whole xlb configuration file.
type Config struct {
	Daemon   Daemon
	Services []Service
}

// Daemon holds the [daemon] table: host-wide settings.
type Daemon struct {
	Interface       string // XDP interface; "" runs the L7 tier alone
	XDPMode         XDPMode
	BPFFSDir        string // where maps and links are pinned
	MaglevTableSize uint32 // M, prime, shared by every service
	LogFormat       string // text | json
	LogLevel        string // debug | info | warn | error
}

// Service is one [[service]] table: a VIP, port and protocol with its backends.
type Service struct {
	Name       string
	VIP        netip.Addr
	Port       uint16
	Protocol   Protocol
	Mode       Mode
	Hash       HashMode   // L4 only; empty for L7 services
	Forwarding Forwarding // L4 only; empty for L7 services
	Backends   []Backend
	Line       int // line of the [[service]] header; 0 if not from a file
}

// Backend is one [[service.backend]] table.
type Backend struct {
	Address netip.Addr
	// Weight is the backend's share of the Maglev table; 0 keeps it out of
	// the table (no new flows) while existing flows stay.
	Weight uint32
	MAC    net.HardwareAddr // optional; set, it skips neighbour resolution
	Line   int              // line of the [[service.backend]] header; 0 if not from a file
}

// ApplyDefaults fills every unset key with its default and canonicalises
// addresses (IPv4-mapped IPv6 becomes IPv4). It is idempotent. Backend weights
// are not touched: 0 is a meaningful weight, so Parse applies the default
// weight while decoding, where it can tell a missing key from weight = 0.
func (c *Config) ApplyDefaults() {
	d := &c.Daemon
	setDefault(&d.XDPMode, XDPAuto)
	setDefault(&d.BPFFSDir, DefaultBPFFSDir)
	if d.MaglevTableSize == 0 {
		d.MaglevTableSize = DefaultMaglevTableSize
	}
	setDefault(&d.LogFormat, DefaultLogFormat)
	setDefault(&d.LogLevel, DefaultLogLevel)

	for i := range c.Services {
		s := &c.Services[i]
		s.VIP = s.VIP.Unmap()
		setDefault(&s.Protocol, ProtoTCP)
		setDefault(&s.Mode, ModeL4)
		// Hashing and forwarding are decisions of the XDP datapath; an L7
		// service keeps them empty so that setting them can be reported.
		if s.Mode == ModeL4 {
			setDefault(&s.Hash, HashIP)
			setDefault(&s.Forwarding, ForwardDSR)
		}
		for j := range s.Backends {
			b := &s.Backends[j]
			b.Address = b.Address.Unmap()
		}
	}
}

func setDefault[T ~string](v *T, def T) {
	if *v == "" {
		*v = def
	}
}

package config

import (
	"github.com/xlb-dev/xlb/l7/h1"
	"net"
	"net/netip"
	"time"
)

// XDPMode selects how the steering program is attached to the interface:
// as XDP in one of its modes, or as a TC program.
type XDPMode string

const (
	XDPAuto    XDPMode = "auto"    // native if the driver supports it, else generic
	XDPNative  XDPMode = "native"  // driver mode; fail if the driver cannot do it
	XDPGeneric XDPMode = "generic" // skb mode; works everywhere, slower
	// XDPTC is the same program built for TC ingress (tcx), for interfaces
	// where XDP does not fit (bonds, tunnels, some virtual NICs).
	XDPTC XDPMode = "tc"
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
	// ForwardIPIP is tunnel DSR: the packet inside an outer IPv4 (IP-in-IP)
	// or IPv6 (IPv6-in-IPv6) header to a backend anywhere routed, which
	// strips it (xlb decap) and answers the client directly.
	ForwardIPIP Forwarding = "ipip"
	// ForwardNAT is full NAT: the packet leaves from the LB's address
	// (nat_source) and a port allocated per flow, to the backend's address
	// and port; the backend answers the LB, which translates the answer
	// back. Backends need no setup, but see the client's address only as
	// the LB's.
	ForwardNAT Forwarding = "nat"
)

// Algorithm is how an L7 service picks a backend for a request.
type Algorithm string

const (
	AlgoRoundRobin       Algorithm = "round_robin"       // smooth weighted round robin
	AlgoLeastConnections Algorithm = "least_connections" // fewest in-flight requests
	AlgoIPHash           Algorithm = "ip_hash"           // client address through the Maglev table, as at L4
	AlgoRandom           Algorithm = "random"            // power of two random choices on in-flight requests
)

// Values of HealthCheck.Type and HealthCheck.InitialState.
const (
	CheckHTTP = "http" // GET Path, expect a status in ExpectStatus
	CheckTCP  = "tcp"  // a TCP connect succeeds

	StateUp   = "up"   // a backend counts as healthy until checks say otherwise
	StateDown = "down" // a backend takes traffic only after HealthyThreshold successes
)

// Health check defaults and bounds.
const (
	DefaultCheckPath          = "/"
	DefaultExpectStatus       = "2xx"
	DefaultCheckInterval      = 5 * time.Second
	DefaultCheckTimeout       = 2 * time.Second
	DefaultUnhealthyThreshold = 3
	DefaultHealthyThreshold   = 2
	MaxCheckThreshold         = 1000
	// MinDuration and MaxCheckDuration bound interval and timeout; below a
	// millisecond is almost certainly a wrong unit.
	MinDuration      = time.Millisecond
	MaxCheckDuration = time.Hour
)

// Admin defaults and bounds.
const (
	DefaultAdminListen   = "127.0.0.1:9090"
	DefaultAdminTokenEnv = "XLB_ADMIN_TOKEN"
	DefaultDrainTimeout  = 60 * time.Second
	MaxDrainTimeout      = 300 * time.Second
)

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

// Bounds of the client-connection limits (daemon.max_request_line,
// daemon.max_request_head, and the three client-side timeouts).
const (
	MinRequestLine    = 256
	MaxRequestHeadCap = 1 << 20
	MaxClientTimeout  = time.Hour
)

// MaxThreads bounds daemon.threads.
const MaxThreads = 1024

// Default and bound of daemon.shutdown_grace.
const (
	DefaultShutdownGrace = 30 * time.Second
	MaxShutdownGrace     = time.Hour
)

// Allowed values of the enumerated keys, in the order error messages list them.
var (
	xdpModes    = []XDPMode{XDPAuto, XDPNative, XDPGeneric, XDPTC}
	protocols   = []Protocol{ProtoTCP, ProtoUDP}
	modes       = []Mode{ModeL4, ModeL7}
	hashModes   = []HashMode{HashIP, HashFlow}
	forwardings = []Forwarding{ForwardDSR, ForwardIPIP, ForwardNAT}
	algorithms  = []Algorithm{AlgoRoundRobin, AlgoLeastConnections, AlgoIPHash, AlgoRandom}
	checkTypes  = []string{CheckHTTP, CheckTCP}
	initStates  = []string{StateUp, StateDown}
	logFormats  = []string{"text", "json"}
	logLevels   = []string{"debug", "info", "warn", "error"}
)

// Config is a whole xlb configuration file.
type Config struct {
	Daemon Daemon
	// HealthCheck is the [health_check] table with every default applied:
	// what a service without its own [service.health_check] uses.
	HealthCheck HealthCheck
	Admin       Admin
	Datapath    Datapath
	// BGP is the [bgp] table; nil when absent (no VIP is announced).
	BGP      *BGP
	Services []Service
}

// Daemon holds the [daemon] table: host-wide settings. It holds no slices or
// maps, so that a reload can compare the old and new Daemon with ==.
type Daemon struct {
	Interface       string // XDP interface; "" runs the L7 tier alone
	XDPMode         XDPMode
	BPFFSDir        string // where maps and links are pinned
	MaglevTableSize uint32 // M, prime, shared by every service
	LogFormat       string // text | json
	LogLevel        string // debug | info | warn | error
	// ShutdownGrace is how long SIGTERM waits for in-flight L7 requests
	// after the listeners stop accepting, before xlb exits anyway.
	ShutdownGrace time.Duration
	// Threads is how many threads run Go code at once (GOMAXPROCS): the
	// L7 tier's share of the host, as HAProxy's nbthread. 0 leaves Go's
	// default: one per core, or the GOMAXPROCS environment variable.
	Threads uint32
	// The L7 tier's client connections (package l7/h1 defines the
	// defaults and applies them): HeadTimeout bounds a request head from
	// its first byte (408), IdleTimeout a kept connection's silence,
	// ClientTimeout each write to a client and each read of a request
	// body; MaxRequestLine (414) and MaxRequestHead (431) bound heads.
	HeadTimeout    time.Duration
	IdleTimeout    time.Duration
	ClientTimeout  time.Duration
	MaxRequestLine uint32
	MaxRequestHead uint32
	// AccessLog is where the L7 tier logs each request (accesslog.go):
	// AccessLogStdout, AccessLogStderr, an absolute file path, or "" for
	// no access log; AccessLogFormat is AccessLogJSON or AccessLogCommon.
	AccessLog       string
	AccessLogFormat string
	// DisableSteerLocal is steer_local = false: the connections this host
	// itself makes to L4 VIPs (which never meet the XDP program) are left
	// alone. By default (steer_local = true, the zero value) cgroup socket
	// hooks send them to the services' backends (loader.Options.SteerLocal).
	DisableSteerLocal bool
}

// HealthCheck is how the backends of a service are checked. In a parsed
// Config every field is set: Config.HealthCheck is the [health_check] table
// over the defaults, Service.HealthCheck that merged with the service's own
// [service.health_check]. Use Service.BackendCheck for one backend's check.
type HealthCheck struct {
	Enabled      bool
	Type         string // CheckHTTP or CheckTCP
	Path         string // http only: the path (and query) to GET
	ExpectStatus string // http only: e.g. "2xx", "200,204", "200-399"; see StatusExpected
	Interval     time.Duration
	Timeout      time.Duration // at most Interval
	// A backend turns unhealthy after UnhealthyThreshold consecutive failures
	// and healthy again after HealthyThreshold consecutive successes.
	UnhealthyThreshold int
	HealthyThreshold   int
	InitialState       string // StateUp or StateDown: the state before the first verdict
	// Port is the port checked; 0 means the service port (L4) or the
	// backend port (L7). BackendCheck resolves it.
	Port uint16
	// CheckViaVIP checks each backend through the service's VIP, as the
	// datapath reaches it: addressed to VIP:Port with the backend's MAC
	// (package checkroute), so that a backend lacking the VIP fails. L4
	// services with dsr forwarding only.
	CheckViaVIP bool
}

// DefaultHealthCheck is the check used where the configuration says nothing.
func DefaultHealthCheck() HealthCheck {
	return HealthCheck{
		Enabled:            true,
		Type:               CheckHTTP,
		Path:               DefaultCheckPath,
		ExpectStatus:       DefaultExpectStatus,
		Interval:           DefaultCheckInterval,
		Timeout:            DefaultCheckTimeout,
		UnhealthyThreshold: DefaultUnhealthyThreshold,
		HealthyThreshold:   DefaultHealthyThreshold,
		InitialState:       StateUp,
	}
}

// Admin holds the [admin] table: the control-surface listener.
type Admin struct {
	// Listen is "IP:PORT" or "unix:/absolute/path"; "" disables the admin
	// listener.
	Listen string
	// TokenFile and TokenEnv name where the bearer token for mutating
	// endpoints is; the daemon reads it, and TokenFile wins when both give
	// one. With no token at all the mutating endpoints are disabled.
	TokenFile string
	TokenEnv  string
	// DrainTimeout bounds how long a removed backend drains before it is
	// dropped even with flows still open; at most MaxDrainTimeout.
	DrainTimeout time.Duration
}

// DefaultAdmin is the [admin] table an empty configuration gets.
func DefaultAdmin() Admin {
	return Admin{Listen: DefaultAdminListen, TokenEnv: DefaultAdminTokenEnv, DrainTimeout: DefaultDrainTimeout}
}

// Service is one [[service]] table: a VIP, port and protocol with its backends.
type Service struct {
	Name string
	// VIP is the address clients connect to. An L7 service may use the
	// unspecified address (0.0.0.0 or ::): its proxy then listens on all
	// addresses.
	VIP        netip.Addr
	Port       uint16
	Protocol   Protocol
	Mode       Mode
	Hash       HashMode   // L4 only; empty for L7 services
	Forwarding Forwarding // L4 only; empty for L7 services
	// IPIPSourcePrefix is ipip only: the prefix the outer source addresses
	// come from, one per flow (its hash fills the host bits, at most the
	// last 32), so that backends' receive hashing spreads flows. Zero: the
	// host's own address toward each backend.
	IPIPSourcePrefix netip.Prefix
	// NATSource is nat only: the address translated packets leave from,
	// where the backends' answers come back to. Zero: the host's own
	// address toward each backend (its route's source).
	NATSource netip.Addr
	Algorithm Algorithm // L7 only; empty for L4 services

	// The rest up to HealthCheck is L7 only: zero for L4 services (see
	// l7.go, and SetL7Defaults for a Service built in code).

	// Hosts routes by the request's Host header: lower-case names, "*."
	// wildcards ("*.example.org": any name ending in ".example.org") or IP
	// literals (IPv6 without brackets); the Host header's port is ignored.
	// Empty matches every host.
	Hosts []string
	// PathPrefix routes by the start of the request path; "" matches every
	// path. A service with neither Hosts nor PathPrefix is its listener's
	// default route.
	PathPrefix string
	// AddVIP makes xlb add VIP to the host's loopback while it runs.
	AddVIP bool
	// LBEndpoints serves /lb/health and /lb/metrics on this listener too.
	// Services that share a listener agree on it.
	LBEndpoints bool
	// ConnectTimeout bounds the dial to a backend, ResponseHeaderTimeout the
	// wait for its response headers, RequestTimeout the whole request
	// including streaming the bodies (0: no limit).
	ConnectTimeout        time.Duration
	ResponseHeaderTimeout time.Duration
	RequestTimeout        time.Duration
	// RetryIdempotent retries an idempotent request that could not connect
	// once on another backend.
	RetryIdempotent bool
	// MaxInFlight caps the in-flight requests per backend (circuit
	// breaker); the excess gets 503. 0: no limit.
	MaxInFlight   int
	Sticky        *Sticky // cookie stickiness; nil: off
	PassiveHealth PassiveHealth
	Headers       Headers

	// HealthCheck is the global [health_check] merged with this service's
	// overrides, every default applied.
	HealthCheck HealthCheck
	Backends    []Backend
	// Line is the line of the [[service]] header (of [loadbalancer] for the
	// compatibility form); 0 if not from a file.
	Line int
}

// Backend is one [[service.backend]] table.
type Backend struct {
	Address netip.Addr
	// Port is where an L7 service's proxy connects, or where an L4 nat
	// service's packets go; it defaults to the service port. 0 for dsr and
	// ipip services, which keep the destination port.
	Port uint16
	// Weight is the backend's share of the Maglev table; 0 keeps it out of
	// the table (no new flows) while existing flows stay.
	Weight uint32
	MAC    net.HardwareAddr // optional, dsr only; set, it skips neighbour resolution
	// HealthCheckPath and HealthCheckPort override the service's check path
	// and port for this backend; "" and 0 keep the service's.
	HealthCheckPath string
	HealthCheckPort uint16
	Line            int // line of the [[service.backend]] header; 0 if not from a file
}

// BackendCheck returns the check to run against backend b of s: the
// service's check with b's path and port overrides, and Port resolved (never
// 0: the check port, else the backend port for L7, else the service port).
func (s Service) BackendCheck(b Backend) HealthCheck {
	h := s.HealthCheck
	if b.HealthCheckPath != "" {
		h.Path = b.HealthCheckPath
	}
	if b.HealthCheckPort != 0 {
		h.Port = b.HealthCheckPort
	}
	if h.Port == 0 {
		h.Port = s.Port
		if b.Port != 0 { // l7 and nat: where the backend serves
			h.Port = b.Port
		}
	}
	return h
}

// ApplyDefaults fills every unset key with its default and canonicalises
// addresses (IPv4-mapped IPv6 becomes IPv4). It is idempotent. Backend weights
// are not touched: 0 is a meaningful weight, so Parse applies the default
// weight while decoding, where it can tell a missing key from weight = 0.
//
// The same goes for HealthCheck.Enabled and Admin.Listen, whose zero values
// mean "disabled": ApplyDefaults sets them only in a HealthCheck or Admin
// that is entirely zero, which it replaces with the default (for a service's
// check: with Config.HealthCheck). In a partly filled one it fills the other
// zero fields, from Config.HealthCheck for a service's check.
//
// The L7 settings of an L7 service follow the same rule: if they are all
// zero they all get their defaults (SetL7Defaults); otherwise only those
// whose zero value means nothing are filled (the timeouts but
// RequestTimeout, the ejection times, Sticky's fields, ProxyHeaderValue),
// and LBEndpoints, RetryIdempotent, RequestTimeout, PassiveHealth.MaxFails,
// ProxyHeader and ResponseTimeHeader keep their zero ("off"). Hosts are
// lower-cased and IPv4-mapped trusted proxies become IPv4.
func (c *Config) ApplyDefaults() {
	d := &c.Daemon
	setDefault(&d.XDPMode, XDPAuto)
	setDefault(&d.BPFFSDir, DefaultBPFFSDir)
	if d.MaglevTableSize == 0 {
		d.MaglevTableSize = DefaultMaglevTableSize
	}
	setDefault(&d.LogFormat, DefaultLogFormat)
	setDefault(&d.LogLevel, DefaultLogLevel)
	setZero(&d.ShutdownGrace, DefaultShutdownGrace)
	setZero(&d.HeadTimeout, h1.DefaultHeadTimeout)
	setZero(&d.IdleTimeout, h1.DefaultIdleTimeout)
	setZero(&d.ClientTimeout, h1.DefaultClientTimeout)
	if d.MaxRequestLine == 0 {
		d.MaxRequestLine = h1.DefaultMaxRequestLine
	}
	if d.MaxRequestHead == 0 {
		d.MaxRequestHead = h1.DefaultMaxRequestHead
	}
	setDefault(&d.AccessLogFormat, DefaultAccessLogFormat)
	c.HealthCheck.fillFrom(DefaultHealthCheck())
	c.Admin.applyDefaults()
	c.Datapath.applyDefaults()
	if c.BGP != nil {
		c.BGP.applyDefaults()
	}

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
		if s.Mode == ModeL7 {
			setDefault(&s.Algorithm, AlgoRoundRobin)
			s.applyL7Defaults()
		}
		s.HealthCheck.fillFrom(c.HealthCheck)
		for j := range s.Backends {
			b := &s.Backends[j]
			b.Address = b.Address.Unmap()
			if (s.Mode == ModeL7 || s.Forwarding == ForwardNAT) && b.Port == 0 {
				b.Port = s.Port
			}
		}
	}
}

// fillFrom makes a zero h a copy of base, and otherwise fills the fields of h
// whose zero value is not meaningful (all but Enabled, Port and CheckViaVIP)
// from base.
func (h *HealthCheck) fillFrom(base HealthCheck) {
	if *h == (HealthCheck{}) {
		*h = base
		return
	}
	setDefault(&h.Type, base.Type)
	setDefault(&h.Path, base.Path)
	setDefault(&h.ExpectStatus, base.ExpectStatus)
	setZero(&h.Interval, base.Interval)
	setZero(&h.Timeout, base.Timeout)
	setZero(&h.UnhealthyThreshold, base.UnhealthyThreshold)
	setZero(&h.HealthyThreshold, base.HealthyThreshold)
	setDefault(&h.InitialState, base.InitialState)
}

// applyDefaults makes a zero a the default Admin; otherwise it fills only the
// fields whose zero value is not meaningful ("" Listen disables the listener
// and "" TokenFile means no file).
func (a *Admin) applyDefaults() {
	if *a == (Admin{}) {
		*a = DefaultAdmin()
		return
	}
	setDefault(&a.TokenEnv, DefaultAdminTokenEnv)
	setZero(&a.DrainTimeout, DefaultDrainTimeout)
}

func setZero[T int | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}

func setDefault[T ~string](v *T, def T) {
	if *v == "" {
		*v = def
	}
}

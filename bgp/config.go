package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

var (
	// ErrConfig: a Config the speaker cannot run (New, Reconfigure).
	ErrConfig = errors.New("bgp: invalid config")
	// ErrPrefix: Announce was given a prefix that is not one host (/32, /128).
	ErrPrefix = errors.New("bgp: not a host prefix")
	// ErrClosed: the speaker was closed.
	ErrClosed = errors.New("bgp: speaker closed")
)

// Defaults and bounds of the settings (config's [bgp] table wraps them).
const (
	DefaultPort = 179
	// DefaultHoldTime is RFC 4271's suggestion; keepalives go every third
	// of the hold time.
	DefaultHoldTime = 90 * time.Second
	// MinHoldTime is the least non-zero hold time RFC 4271 allows.
	MinHoldTime = 3 * time.Second
	MaxHoldTime = 65535 * time.Second
	// NoListen is ListenPort's value for a speaker that only connects out.
	NoListen = -1
	// connectRetry is how long a peer waits between connection attempts
	// (GoBGP's default is 120 s: a router that restarts would wait that
	// long for its routes).
	connectRetry = 5 * time.Second
	// idleHoldAfterReset is how long a reset session waits before it
	// tries again.
	idleHoldAfterReset = 2 * time.Second
)

// Config is what a Speaker runs: its own identity, the attributes of its
// paths and its peers.
type Config struct {
	LocalASN uint32
	RouterID netip.Addr // IPv4
	// ListenPort is where peers may connect; NoListen (-1): nowhere, the
	// speaker connects out only.
	ListenPort int32
	// HoldTime is each peer's hold time unless the peer sets its own.
	HoldTime time.Duration
	// NextHop4 and NextHop6 are the next hop of IPv4 and IPv6 paths; the
	// zero Addr means the local address of each session.
	NextHop4, NextHop6 netip.Addr
	// Communities are added to every path (RFC 1997, ASN<<16 | value).
	Communities []Community
	Peers       []Peer
}

// Peer is one neighbour.
type Peer struct {
	Address  netip.Addr
	ASN      uint32
	Port     uint16        // 0: DefaultPort
	Password string        // TCP MD5 signature; "" for none
	HoldTime time.Duration // 0: Config.HoldTime
}

// Community is a standard BGP community.
type Community uint32

// String writes c as "ASN:VALUE".
func (c Community) String() string { return fmt.Sprintf("%d:%d", uint32(c)>>16, uint32(c)&0xffff) }

// ParseCommunity reads "ASN:VALUE" with both halves 0..65535.
func ParseCommunity(s string) (Community, error) {
	a, v, ok := strings.Cut(s, ":")
	hi, err1 := strconv.ParseUint(a, 10, 16)
	lo, err2 := strconv.ParseUint(v, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("invalid community %q (want \"ASN:VALUE\", each 0..65535, like \"64512:100\")", s)
	}
	return Community(hi<<16 | lo), nil
}

// CheckHoldTime says what is wrong with a hold time, or "" (0 or 3 s ..
// 65535 s, whole seconds).
func CheckHoldTime(d time.Duration) string {
	switch {
	case d == 0:
		return ""
	case d%time.Second != 0:
		return "must be whole seconds"
	case d < MinHoldTime || d > MaxHoldTime:
		return fmt.Sprintf("must be 0 (no keepalives) or %s..%s", MinHoldTime, MaxHoldTime)
	}
	return ""
}

func (p Peer) port() uint16 {
	if p.Port == 0 {
		return DefaultPort
	}
	return p.Port
}

func (p Peer) holdTime(c *Config) time.Duration {
	if p.HoldTime != 0 {
		return p.HoldTime
	}
	if c.HoldTime != 0 {
		return c.HoldTime
	}
	return DefaultHoldTime
}

// check reports what makes c unusable (config validates the same with
// file and line; this guards a Config built in code).
func (c *Config) check() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	if c.LocalASN == 0 {
		bad("local ASN 0")
	}
	if !c.RouterID.Is4() {
		bad("router id %v is not an IPv4 address", c.RouterID)
	}
	if c.ListenPort < NoListen || c.ListenPort > 65535 || c.ListenPort == 0 {
		bad("listen port %d (want 1..65535, or -1 for none)", c.ListenPort)
	}
	if c.NextHop4.IsValid() && !c.NextHop4.Is4() {
		bad("IPv4 next hop %v", c.NextHop4)
	}
	if c.NextHop6.IsValid() && !c.NextHop6.Is6() {
		bad("IPv6 next hop %v", c.NextHop6)
	}
	if msg := CheckHoldTime(c.HoldTime); msg != "" {
		bad("hold time %s: %s", c.HoldTime, msg)
	}
	seen := map[netip.Addr]bool{}
	for _, p := range c.Peers {
		switch {
		case !p.Address.IsValid():
			bad("peer without an address")
		case seen[p.Address.Unmap()]:
			bad("peer %v twice", p.Address)
		case p.ASN == 0:
			bad("peer %v: ASN 0", p.Address)
		case CheckHoldTime(p.HoldTime) != "":
			bad("peer %v: hold time %s: %s", p.Address, p.HoldTime, CheckHoldTime(p.HoldTime))
		}
		seen[p.Address.Unmap()] = true
	}
	return errors.Join(errs...)
}

// global is what only a restart of the speaker changes.
type global struct {
	asn    uint32
	id     netip.Addr
	listen int32
}

func (c *Config) global() global { return global{c.LocalASN, c.RouterID, c.ListenPort} }

// attrs are the attributes every path carries.
type attrs struct {
	nh4, nh6    netip.Addr
	communities string // canonical, comparable
}

func (c *Config) attrs() attrs {
	cs := slices.Clone(c.Communities)
	slices.Sort(cs)
	cs = slices.Compact(cs)
	parts := make([]string, len(cs))
	for i, x := range cs {
		parts[i] = x.String()
	}
	return attrs{c.NextHop4, c.NextHop6, strings.Join(parts, " ")}
}

// peerKey is a peer as the speaker runs it: every setting that shapes its
// session, with defaults resolved, so that == tells a changed peer.
type peerKey struct {
	addr     netip.Addr
	asn      uint32
	port     uint16
	password string
	hold     time.Duration
}

func (c *Config) peerKeys() map[netip.Addr]peerKey {
	m := make(map[netip.Addr]peerKey, len(c.Peers))
	for _, p := range c.Peers {
		a := p.Address.Unmap()
		m[a] = peerKey{a, p.ASN, p.port(), p.Password, p.holdTime(c)}
	}
	return m
}

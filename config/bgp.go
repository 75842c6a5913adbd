package config

import (
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/xlb-dev/xlb/bgp"
)

// BGP holds the [bgp] table: the VIPs announced to routers (package bgp).
// Config.BGP is nil when the table is absent: no BGP at all.
type BGP struct {
	LocalASN uint32
	RouterID netip.Addr // IPv4
	// ListenPort is where peers may connect in; bgp.NoListen (-1, the
	// default): nowhere, xlb connects out to its peers.
	ListenPort int32
	// HoldTime is each peer's hold time unless the peer sets one.
	HoldTime time.Duration
	// NextHop4 and NextHop6 are the next hop announced with IPv4 and IPv6
	// VIPs; unset, the local address of each session.
	NextHop4, NextHop6 netip.Addr
	Communities        []bgp.Community
	// ShutdownGrace is how long SIGTERM waits after withdrawing the VIPs,
	// so routers move the traffic away, before xlb stops.
	ShutdownGrace time.Duration
	Peers         []BGPPeer
	Line          int // line of the [bgp] header; 0 if not from a file
}

// BGPPeer is one [[bgp.peer]] table.
type BGPPeer struct {
	Address  netip.Addr
	ASN      uint32
	Password string `json:"-"` // TCP MD5; never shown by the admin API
	Port     uint16
	HoldTime time.Duration // 0: BGP.HoldTime
	Line     int
}

// Defaults of [bgp] (the session ones are package bgp's).
const (
	DefaultBGPShutdownGrace = 5 * time.Second
	MaxASN                  = math.MaxUint32
)

// decodeBGP reads the [bgp] table; nil when it is absent.
func decodeBGP(t *table) *BGP {
	if t == nil {
		return nil
	}
	b := &BGP{Line: t.line, ListenPort: bgp.NoListen}
	t.required("local_asn")
	t.uint32("local_asn", 1, MaxASN, &b.LocalASN)
	t.required("router_id")
	t.addr("router_id", &b.RouterID)
	if n, ok := t.integer("listen_port", bgp.NoListen, math.MaxUint16); ok {
		if n == 0 {
			t.errorf("listen_port", "must be -1 (no listening, the default) or 1..65535, got 0")
		}
		b.ListenPort = int32(n)
	}
	t.duration("hold_time", bgp.MinHoldTime, bgp.MaxHoldTime, &b.HoldTime)
	decodeNextHops(t, b)
	if list, ok := t.strings("communities"); ok {
		for i, s := range list {
			c, err := bgp.ParseCommunity(s)
			if err != nil {
				t.elemErrorf("communities", i, "%v", err)
				continue
			}
			b.Communities = append(b.Communities, c)
		}
	}
	t.duration("shutdown_grace", MinDuration, MaxShutdownGrace, &b.ShutdownGrace)
	for _, pt := range t.tables("peer") {
		b.Peers = append(b.Peers, decodeBGPPeer(pt))
	}
	t.finish()
	return b
}

// decodeNextHops reads next_hop: one address, or an array of at most one
// IPv4 and one IPv6 address.
func decodeNextHops(t *table, b *BGP) {
	var list []string
	switch v := t.m["next_hop"].(type) {
	case nil:
		return
	case string:
		t.get("next_hop")
		list = []string{v}
	case []any:
		list, _ = t.strings("next_hop")
	default:
		t.get("next_hop")
		t.errorf("next_hop", "must be an address or an array of addresses (one IPv4, one IPv6), got %s", describe(v))
		return
	}
	for i, s := range list {
		a, err := netip.ParseAddr(s)
		if err != nil {
			t.elemErrorf("next_hop", i, "%s", addrError(s, err))
			continue
		}
		a = a.Unmap()
		dst, fam := &b.NextHop4, "IPv4"
		if a.Is6() {
			dst, fam = &b.NextHop6, "IPv6"
		}
		if dst.IsValid() {
			t.elemErrorf("next_hop", i, "a second %s next hop (%s, after %s): give at most one per family", fam, a, *dst)
			continue
		}
		*dst = a
	}
}

func decodeBGPPeer(t *table) BGPPeer {
	p := BGPPeer{Line: t.line}
	t.required("address")
	t.addr("address", &p.Address)
	t.required("asn")
	t.uint32("asn", 1, MaxASN, &p.ASN)
	if t.str("password", &p.Password) && p.Password == "" {
		t.errorf("password", "must not be empty (leave the key out for no password)")
	}
	t.uint16("port", 1, math.MaxUint16, &p.Port)
	t.duration("hold_time", bgp.MinHoldTime, bgp.MaxHoldTime, &p.HoldTime)
	t.finish()
	return p
}

// applyDefaults fills the keys left out.
func (b *BGP) applyDefaults() {
	if b.ListenPort == 0 {
		b.ListenPort = bgp.NoListen
	}
	setZero(&b.HoldTime, bgp.DefaultHoldTime)
	setZero(&b.ShutdownGrace, DefaultBGPShutdownGrace)
	for i := range b.Peers {
		p := &b.Peers[i]
		p.Address = p.Address.Unmap()
		if p.Port == 0 {
			p.Port = bgp.DefaultPort
		}
	}
}

func (v *validator) bgp(b *BGP) {
	if b == nil {
		return
	}
	line := v.lines.line("bgp", b.Line)
	if b.LocalASN == 0 {
		v.errorf("bgp.local_asn", line, "must be 1..%d", uint32(MaxASN))
	}
	if !b.RouterID.Is4() {
		v.errorf("bgp.router_id", line, "must be an IPv4 address (a BGP identifier), got %q", b.RouterID)
	}
	if b.ListenPort == 0 || b.ListenPort < bgp.NoListen || b.ListenPort > math.MaxUint16 {
		v.errorf("bgp.listen_port", line, "must be -1 (no listening) or 1..65535, got %d", b.ListenPort)
	}
	if msg := holdTimeError(b.HoldTime); msg != "" {
		v.errorf(v.durationKey("bgp", "hold_time"), line, "%s, got %s", msg, fmtDuration(b.HoldTime))
	}
	if b.NextHop4.IsValid() && !b.NextHop4.Is4() || b.NextHop6.IsValid() && !b.NextHop6.Is6() {
		v.errorf("bgp.next_hop", line, "wrong family: IPv4 next hop %s, IPv6 next hop %s", b.NextHop4, b.NextHop6)
	}
	for _, a := range []netip.Addr{b.NextHop4, b.NextHop6} {
		if a.IsValid() && (a.IsUnspecified() || a.IsMulticast()) {
			v.errorf("bgp.next_hop", line, "%s cannot be a next hop", a)
		}
	}
	if msg := durationRange(b.ShutdownGrace, MinDuration, MaxShutdownGrace); msg != "" {
		v.errorf(v.durationKey("bgp", "shutdown_grace"), line, "%s, got %s", msg, fmtDuration(b.ShutdownGrace))
	}
	if len(b.Peers) == 0 {
		v.errorf("bgp.peer", line, "at least one [[bgp.peer]] is required (without peers nothing is announced)")
	}
	first := map[netip.Addr]int{}
	for i, p := range b.Peers {
		path := indexPath("bgp.peer", i)
		pline := v.lines.line(path, p.Line)
		switch {
		case !p.Address.IsValid() || p.Address.IsUnspecified() || p.Address.IsMulticast():
			v.errorf(path+".address", pline, "must be a unicast address, got %q", p.Address)
		case p.Address.Is6() && p.Address.IsLinkLocalUnicast():
			v.errorf(path+".address", pline, "link-local peers are not supported (no interface to reach %s by)", p.Address)
		}
		if j, dup := first[p.Address]; dup && p.Address.IsValid() {
			v.errorf(path+".address", pline, "duplicate peer %s (also %s)", p.Address, v.at(indexPath("bgp.peer", j)+".address", pline))
		} else {
			first[p.Address] = i
		}
		if p.ASN == 0 {
			v.errorf(path+".asn", pline, "must be 1..%d", uint32(MaxASN))
		}
		if p.Port == 0 {
			v.errorf(path+".port", pline, "must be 1..65535")
		}
		if msg := holdTimeError(p.HoldTime); msg != "" && p.HoldTime != 0 {
			v.errorf(v.durationKey(path, "hold_time"), pline, "%s, got %s", msg, fmtDuration(p.HoldTime))
		}
	}
}

// holdTimeError says what is wrong with a hold time, or "": whole seconds
// within bgp.MinHoldTime..bgp.MaxHoldTime (BGP's 0, no keepalives at all,
// is not offered: a dead peer would never be noticed).
func holdTimeError(d time.Duration) string {
	if d < bgp.MinHoldTime || d > bgp.MaxHoldTime || bgp.CheckHoldTime(d) != "" {
		return fmt.Sprintf("must be whole seconds, %s..%s", fmtDuration(bgp.MinHoldTime), fmtDuration(bgp.MaxHoldTime))
	}
	return ""
}

package loader

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Neighbour is how the datapath reaches a backend at L2.
type Neighbour struct {
	IfIndex int
	MAC     net.HardwareAddr // the backend's
	SrcMAC  net.HardwareAddr // the egress interface's
}

// Resolver finds a backend's neighbour entry. mac, when set (from config),
// skips the neighbour table but the egress interface is still looked up.
type Resolver interface {
	Resolve(ctx context.Context, addr netip.Addr, mac net.HardwareAddr) (Neighbour, error)
}

// NetlinkResolver resolves through the kernel's routing and neighbour tables,
// probing the neighbour when it is missing.
type NetlinkResolver struct{}

var _ Resolver = NetlinkResolver{}

// Resolve implements Resolver.
func (NetlinkResolver) Resolve(ctx context.Context, addr netip.Addr, mac net.HardwareAddr) (Neighbour, error) {
	addr = addr.Unmap()
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil || len(routes) == 0 {
		return Neighbour{}, fmt.Errorf("%s: no route: %v: %w", addr, err, ErrUnresolved)
	}
	rt := routes[0]
	if rt.Gw != nil && !rt.Gw.Equal(addr.AsSlice()) {
		return Neighbour{}, fmt.Errorf("%s via gateway %s: %w", addr, rt.Gw, ErrNotOnLink)
	}
	l, err := netlink.LinkByIndex(rt.LinkIndex)
	if err != nil {
		return Neighbour{}, fmt.Errorf("%s: egress link %d: %w", addr, rt.LinkIndex, err)
	}
	if l.Attrs().Flags&net.FlagLoopback != 0 {
		return Neighbour{}, fmt.Errorf("%s is a local address: %w", addr, ErrNotOnLink)
	}
	n := Neighbour{IfIndex: rt.LinkIndex, SrcMAC: l.Attrs().HardwareAddr, MAC: mac}
	if len(mac) == 6 {
		return n, nil
	}
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	probed := false
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if hw := lookupNeigh(rt.LinkIndex, family, addr); hw != nil {
			n.MAC = hw
			return n, nil
		}
		if !probed {
			probe(rt.LinkIndex, family, addr)
			probed = true
		}
		select {
		case <-ctx.Done():
			return Neighbour{}, fmt.Errorf("%s on %s: %w", addr, l.Attrs().Name, ErrUnresolved)
		case <-tick.C:
		}
	}
}

func lookupNeigh(ifindex, family int, addr netip.Addr) net.HardwareAddr {
	neighs, err := netlink.NeighList(ifindex, family)
	if err != nil {
		return nil
	}
	const usable = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY |
		netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP
	for _, nb := range neighs {
		ip, ok := netip.AddrFromSlice(nb.IP)
		if !ok || ip.Unmap() != addr || nb.State&usable == 0 || len(nb.HardwareAddr) != 6 {
			continue
		}
		return nb.HardwareAddr
	}
	return nil
}

// probe asks the kernel to resolve addr as if a packet were queued for it
// (NTF_USE); when that is refused it sends one empty UDP datagram, which
// makes the kernel resolve the neighbour the ordinary way.
func probe(ifindex, family int, addr netip.Addr) {
	err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: ifindex,
		Family:    family,
		IP:        addr.AsSlice(),
		State:     netlink.NUD_NONE,
		Flags:     unix.NTF_USE,
	})
	if err == nil {
		return
	}
	c, err := net.Dial("udp", netip.AddrPortFrom(addr, 9).String())
	if err == nil {
		c.Write(nil)
		c.Close()
	}
}

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

// Neighbour is how the datapath reaches a backend at L2: the backend itself
// (dsr) or the next hop toward it (ipip).
type Neighbour struct {
	IfIndex int
	MAC     net.HardwareAddr // the backend's, or its next hop's (ipip)
	SrcMAC  net.HardwareAddr // the egress interface's
	// Src is the address the host sends from toward the backend: the
	// outer source of ipip packets without ipip_source_prefix.
	Src netip.Addr
}

// Resolver finds a backend's neighbour entry. mac, when set (from config),
// skips the neighbour table but the egress interface is still looked up.
type Resolver interface {
	Resolve(ctx context.Context, addr netip.Addr, mac net.HardwareAddr) (Neighbour, error)
}

// RoutedResolver finds the next hop toward a backend that may sit behind a
// router (ipip forwarding): the gateway's MAC when the route has one. A
// Resolver without it leaves ipip backends unresolved.
type RoutedResolver interface {
	ResolveRouted(ctx context.Context, addr netip.Addr) (Neighbour, error)
}

// NetlinkResolver resolves through the kernel's routing and neighbour tables,
// probing the neighbour when it is missing.
type NetlinkResolver struct{}

var (
	_ Resolver       = NetlinkResolver{}
	_ RoutedResolver = NetlinkResolver{}
)

// Resolve implements Resolver: addr must be on a directly connected network.
func (NetlinkResolver) Resolve(ctx context.Context, addr netip.Addr, mac net.HardwareAddr) (Neighbour, error) {
	return resolve(ctx, addr.Unmap(), mac, false)
}

// ResolveRouted implements RoutedResolver.
func (NetlinkResolver) ResolveRouted(ctx context.Context, addr netip.Addr) (Neighbour, error) {
	return resolve(ctx, addr.Unmap(), nil, true)
}

func resolve(ctx context.Context, addr netip.Addr, mac net.HardwareAddr, routed bool) (Neighbour, error) {
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil || len(routes) == 0 {
		return Neighbour{}, fmt.Errorf("%s: no route: %v: %w", addr, err, ErrUnresolved)
	}
	rt := routes[0]
	hop := addr
	if rt.Gw != nil && !rt.Gw.Equal(addr.AsSlice()) {
		if !routed {
			return Neighbour{}, fmt.Errorf("%s via gateway %s: %w", addr, rt.Gw, ErrNotOnLink)
		}
		gw, _ := netip.AddrFromSlice(rt.Gw)
		hop = gw.Unmap()
	}
	l, err := netlink.LinkByIndex(rt.LinkIndex)
	if err != nil {
		return Neighbour{}, fmt.Errorf("%s: egress link %d: %w", addr, rt.LinkIndex, err)
	}
	if l.Attrs().Flags&net.FlagLoopback != 0 {
		return Neighbour{}, fmt.Errorf("%s is a local address: %w", addr, ErrNotOnLink)
	}
	n := Neighbour{IfIndex: rt.LinkIndex, SrcMAC: l.Attrs().HardwareAddr, MAC: mac}
	if src, ok := netip.AddrFromSlice(rt.Src); ok {
		n.Src = src.Unmap()
	}
	if routed && !n.Src.IsValid() {
		return Neighbour{}, fmt.Errorf("%s: no source address toward it on %s: %w", addr, l.Attrs().Name, ErrUnresolved)
	}
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
		if hw := lookupNeigh(rt.LinkIndex, family, hop); hw != nil {
			n.MAC = hw
			return n, nil
		}
		if !probed {
			probe(rt.LinkIndex, family, hop)
			probed = true
		}
		select {
		case <-ctx.Done():
			what := addr.String()
			if hop != addr {
				what = fmt.Sprintf("%s (next hop %s)", addr, hop)
			}
			return Neighbour{}, fmt.Errorf("%s on %s: %w", what, l.Attrs().Name, ErrUnresolved)
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

package loader

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// A second way out of the ipip fixtures' network: xp0, 198.18.6.1/24 and
// 2001:db8:6::1/64, with its own router; and a DSR backend on a network that
// moves from xo0 to xp0, with a neighbour entry on each.
var (
	otherMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0x06, 0x01} // xp0's
	otherGwMAC = net.HardwareAddr{0x02, 0, 0, 0, 0x06, 0xfe}
	otherGw4   = netip.MustParseAddr("198.18.6.254")
	otherGw6   = netip.MustParseAddr("2001:db8:6::fe")
	movingBe   = netip.MustParseAddr("198.18.7.11")
	movingMAC  = map[string]net.HardwareAddr{"xo0": {0x02, 0xbe, 0, 0, 0x07, 0x01}, "xp0": {0x02, 0xbe, 0, 0, 0x07, 0x02}}
)

// nsResolver is the netlink resolver run inside n (Apply resolves on
// goroutines of its own, which are not in the test's namespace).
type nsResolver struct{ n *testNet }

func (r nsResolver) Resolve(ctx context.Context, a netip.Addr, mac net.HardwareAddr) (nb Neighbour, err error) {
	r.n.do(func() { nb, err = NetlinkResolver{}.Resolve(ctx, a, mac) })
	return nb, err
}

func (r nsResolver) ResolveRouted(ctx context.Context, a netip.Addr) (nb Neighbour, err error) {
	r.n.do(func() { nb, err = NetlinkResolver{}.ResolveRouted(ctx, a) })
	return nb, err
}

// moveNet adds xp0 to an ipipNet and puts movingBe on xo0's side.
func moveNet(t *testing.T) (n *ipipNet, xp0 int) {
	t.Helper()
	n = newIPIPNet(t)
	xp0 = n.veth("xp0", "xp1", otherMAC, 0, "198.18.6.1/24", "2001:db8:6::1/64")
	n.neigh(xp0, otherGw4, otherGwMAC)
	n.neigh(xp0, otherGw6, otherGwMAC)
	n.neigh(n.out, movingBe, movingMAC["xo0"])
	n.neigh(xp0, movingBe, movingMAC["xp0"])
	if err := n.h.RouteAdd(&netlink.Route{LinkIndex: n.out, Dst: prefixNet("198.18.7.0/24")}); err != nil {
		t.Fatal(err)
	}
	return n, xp0
}

func prefixNet(s string) *net.IPNet {
	_, ipn, _ := net.ParseCIDR(s)
	return ipn
}

// txPorts lists the interfaces in tx_ports.
func (f *fixture) txPorts() []uint32 {
	f.t.Helper()
	var ports []uint32
	var p uint32
	var v [8]byte
	it := f.dp.TxPorts.Iterate()
	for it.Next(&p, &v) {
		ports = append(ports, p)
	}
	if err := it.Err(); err != nil {
		f.t.Fatal(err)
	}
	slices.Sort(ports)
	return ports
}

// A route change that moves backends behind another interface: once the
// reconciler resolves them again, tx_ports holds the new interface (ipip:
// the one the FIB now picks; dsr: the one the entry names) and no longer the
// one nothing uses.
func TestTxPortsFollowRouteChange(t *testing.T) {
	n, xp0 := moveNet(t)
	f := openFixture(t, nil, nsResolver{n.testNet}, n.do)
	d := Desired{RingSize: 251, Services: []ServiceSpec{
		ipipService(vip4, 80, netip.Prefix{}, routedBe4),
		ipipService(vip6, 80, netip.Prefix{}, routedBe6),
		webService(vip4, 83, protoTCP, HashIP, []netip.Addr{movingBe}),
	}}
	if ch := f.apply(d); len(ch.Unresolved) > 0 {
		t.Fatalf("unresolved: %v", ch.Unresolved)
	}
	ipip4 := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 7, dport: 80, tcpFlags: tcpSYN, df: true}
	ipip6 := pkt{src: client6, dst: vip6, proto: protoTCP, sport: 7, dport: 80, tcpFlags: tcpSYN}
	dsr := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 7, dport: 83, tcpFlags: tcpSYN}
	check := func(when string, port uint32, gwMAC, beMAC net.HardwareAddr) {
		t.Helper()
		if got := f.txPorts(); !slices.Equal(got, []uint32{port}) {
			t.Errorf("%s: tx_ports %v, want [%d]", when, got, port)
		}
		for _, p := range []pkt{ipip4, ipip6} {
			if out := f.expectCounted(t, p.build(), xdpRedirect, rRedirect); !bytes.Equal(out[:6], gwMAC) {
				t.Errorf("%s: %s tunneled to %s, want %s", when, p.dst, net.HardwareAddr(out[:6]), gwMAC)
			}
		}
		if out := f.expectCounted(t, dsr.build(), xdpRedirect, rRedirect); !bytes.Equal(out[:6], beMAC) {
			t.Errorf("%s: dsr frame to %s, want %s", when, net.HardwareAddr(out[:6]), beMAC)
		}
	}
	check("before the move", uint32(n.out), kernelGwMAC, movingMAC["xo0"])

	h := n.h
	for dst, gw := range map[string]netip.Addr{"198.18.9.0/24": otherGw4, "2001:db8:9::/64": otherGw6} {
		if err := h.RouteReplace(&netlink.Route{LinkIndex: xp0, Dst: prefixNet(dst), Gw: gw.AsSlice()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.RouteDel(&netlink.Route{LinkIndex: n.out, Dst: prefixNet("198.18.7.0/24")}); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: xp0, Dst: prefixNet("198.18.7.0/24")}); err != nil {
		t.Fatal(err)
	}
	// The FIB already sends ipip packets out of xp0, which nothing put in
	// tx_ports yet.
	f.expectCounted(t, ipip4.build(), xdpDrop, rNoTxPort)

	f.rec.Reresolve()
	if ch := f.apply(d); ch.BackendsUpdated != 3 {
		t.Errorf("apply after Reresolve: %+v, want the 3 backends updated", ch)
	}
	check("after the move", uint32(xp0), otherGwMAC, movingMAC["xp0"])
	if ch := f.apply(d); !ch.Empty() {
		t.Errorf("apply after that: %+v, want nothing (no resolving again)", ch)
	}
}

// WatchRoutes reports route changes in its namespace, except those ignore
// matches, and stops with its context.
func TestWatchRoutes(t *testing.T) {
	n := newTestNet(t)
	xw0 := n.veth("xw0", "xw1", nil, 0)
	const ignoredProto = 177
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan struct{}, 64)
	done := make(chan error, 1)
	go n.do(func() {
		done <- WatchRoutes(ctx, func(r netlink.Route) bool { return r.Protocol == ignoredProto }, func() {
			select {
			case changes <- struct{}{}:
			default:
			}
		})
	})
	route := func(dst string, proto netlink.RouteProtocol) {
		t.Helper()
		if err := n.h.RouteReplace(&netlink.Route{LinkIndex: xw0, Dst: prefixNet(dst), Protocol: proto}); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(d time.Duration) bool {
		select {
		case <-changes:
			return true
		case <-time.After(d):
			return false
		}
	}
	// Until the subscription is live, changes go unseen: make new ones (a
	// route replaced by itself is no change).
	live := false
	for i := range 50 {
		route(fmt.Sprintf("198.18.30.%d/32", i), 0)
		if live = wait(100 * time.Millisecond); live {
			break
		}
	}
	if !live {
		t.Fatal("no change reported")
	}
	for wait(100 * time.Millisecond) {
	}
	route("198.18.31.0/24", ignoredProto)
	if wait(300 * time.Millisecond) {
		t.Error("an ignored route's change was reported")
	}
	route("2001:db8:31::/64", 0)
	if !wait(2 * time.Second) {
		t.Error("an IPv6 route's change was not reported")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("WatchRoutes: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WatchRoutes did not end with its context")
	}
}

package loader

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/bpf"
	"github.com/xlb-dev/xlb/maglev"
)

// The ipip fixtures' network (ipipNet): the LB's interface xo0 on
// 198.18.5.0/24 and 2001:db8:5::/64, a router at .254 / ::fe in front of the
// backends' networks 198.18.9.0/24 and 2001:db8:9::/64, and blackholed
// networks 198.18.8.0/24 and 2001:db8:8::/64.
var (
	outMAC        = net.HardwareAddr{0x02, 0, 0, 0, 0x05, 0x01} // xo0's
	kernelGwMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0x05, 0xfe} // the router's, in the kernel's neighbour table
	resolvedGwMAC = net.HardwareAddr{0x02, 0, 0, 0, 0x05, 0xfd} // what the fixtures' resolver says
	outSrc4       = netip.MustParseAddr("198.18.5.1")
	outSrc6       = netip.MustParseAddr("2001:db8:5::1")
	gw4           = netip.MustParseAddr("198.18.5.254")
	gw6           = netip.MustParseAddr("2001:db8:5::fe")
	routedBe4     = netip.MustParseAddr("198.18.9.11")
	routedBe6     = netip.MustParseAddr("2001:db8:9::11")
	blackholeBe4  = netip.MustParseAddr("198.18.8.11")
	blackholeBe6  = netip.MustParseAddr("2001:db8:8::11")
	srcPrefix4    = netip.MustParsePrefix("198.18.99.0/24")
	srcPrefix6    = netip.MustParsePrefix("2001:db8:99::/64")
)

const outMTU = 1500

var (
	rICMPTooBig = reason(bpf.XlbReasonXLB_R_ICMP_TOO_BIG)
	rTooBig     = reason(bpf.XlbReasonXLB_R_DROP_TOO_BIG)
	rNoRoute    = reason(bpf.XlbReasonXLB_R_DROP_NO_ROUTE)
)

// ipipNet is a testNet with the ipip fixtures' routes and neighbours.
type ipipNet struct {
	*testNet
	out int // xo0's ifindex
}

func newIPIPNet(t testing.TB) *ipipNet {
	t.Helper()
	n := &ipipNet{testNet: newTestNet(t)}
	h := n.h
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	n.out = n.veth("xo0", "xo1", outMAC, outMTU, "198.18.5.1/24", "2001:db8:5::1/64")
	for _, nb := range []netip.Addr{gw4, gw6} {
		n.neigh(n.out, nb, kernelGwMAC)
	}
	for dst, gw := range map[string]netip.Addr{"198.18.9.0/24": gw4, "2001:db8:9::/64": gw6} {
		_, ipn, _ := net.ParseCIDR(dst)
		must("route "+dst, h.RouteAdd(&netlink.Route{LinkIndex: n.out, Dst: ipn, Gw: gw.AsSlice()}))
	}
	for _, dst := range []string{"198.18.8.0/24", "2001:db8:8::/64"} {
		_, ipn, _ := net.ParseCIDR(dst)
		must("blackhole "+dst, h.RouteAdd(&netlink.Route{Dst: ipn, Type: unix.RTN_BLACKHOLE}))
	}
	n.forwarding(true)
	return n
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// forwarding turns forwarding on lo (the test packets' interface) on or
// off: bpf_fib_lookup answers only where the kernel would forward.
func (n *ipipNet) forwarding(on bool) {
	v := map[bool]string{true: "1", false: "0"}[on]
	n.sysctl("net/ipv4/conf/lo/forwarding", v)
	n.sysctl("net/ipv6/conf/lo/forwarding", v)
}

// routedResolver resolves every backend to the router on xo0, with a MAC
// that differs from the kernel's neighbour entry: the frames tell which of
// the two the datapath used.
type routedResolver struct{ out int }

// Resolve puts dsr backends on lo, as staticResolver does.
func (r routedResolver) Resolve(_ context.Context, a netip.Addr, _ net.HardwareAddr) (Neighbour, error) {
	return Neighbour{IfIndex: loIfIndex, MAC: backendMAC(a), SrcMAC: lbMAC}, nil
}

func (r routedResolver) ResolveRouted(_ context.Context, a netip.Addr) (Neighbour, error) {
	src := outSrc4
	if a.Is6() {
		src = outSrc6
	}
	return Neighbour{IfIndex: r.out, MAC: resolvedGwMAC, SrcMAC: outMAC, Src: src}, nil
}

func ipipService(vip netip.Addr, port uint16, src netip.Prefix, bes ...netip.Addr) ServiceSpec {
	s := webService(vip, port, protoTCP, HashIP, bes)
	s.Forwarding, s.IPIPSource = ForwardIPIP, src
	return s
}

// ipipDesired: one backend behind the router per family, on port 80 with
// the host's source address and on port 81 with a per-flow source prefix;
// port 82 goes to a blackholed backend; port 83 is a DSR service.
func ipipDesired() Desired {
	return Desired{RingSize: 65537, Services: []ServiceSpec{
		ipipService(vip4, 80, netip.Prefix{}, routedBe4),
		ipipService(vip6, 80, netip.Prefix{}, routedBe6),
		ipipService(vip4, 81, srcPrefix4, routedBe4),
		ipipService(vip6, 81, srcPrefix6, routedBe6),
		ipipService(vip4, 82, netip.Prefix{}, blackholeBe4),
		ipipService(vip6, 82, netip.Prefix{}, blackholeBe6),
	}}
}

func newIPIPFixture(t *testing.T, b build) (*fixture, *ipipNet) {
	t.Helper()
	n := newIPIPNet(t)
	f := openFixtureFor(t, b, nil, routedResolver{out: n.out}, n.do)
	if ch := f.apply(ipipDesired()); len(ch.Unresolved) > 0 {
		t.Fatalf("unresolved: %v", ch.Unresolved)
	}
	return f, n
}

// outer4 is the outer IPv4 header xlb must write, built field by field;
// the checksum comes from ipChecksum, not from the program.
func outer4(tos uint8, df bool, inner []byte, src, dst netip.Addr) []byte {
	h := make([]byte, 20)
	h[0], h[1] = 0x45, tos
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(inner)))
	if df {
		h[6] = 0x40
	}
	h[8], h[9] = 64, 4
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	binary.BigEndian.PutUint16(h[10:], ipChecksum(h))
	return h
}

// outer6 is the outer IPv6 header xlb must write.
func outer6(tclass uint8, label uint32, inner []byte, src, dst netip.Addr) []byte {
	h := make([]byte, 40)
	binary.BigEndian.PutUint32(h[0:], 6<<28|uint32(tclass)<<20|label&0xfffff)
	binary.BigEndian.PutUint16(h[4:], uint16(len(inner)))
	h[6], h[7] = 41, 64
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return h
}

func frame(dst, src net.HardwareAddr, etherType uint16, parts ...[]byte) []byte {
	b := append(append([]byte{}, dst...), src...)
	b = binary.BigEndian.AppendUint16(b, etherType)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		panic(err)
	}
	return b
}

// The exact frames for an IPv4 and an IPv6 SYN: the Ethernet header from
// the FIB (the router's MAC from the kernel's neighbour table, xo0's), the
// outer header spelled out byte by byte, the inner packet unchanged.
func TestIPIPEncapGolden(t *testing.T) { forBuilds(t, testIPIPEncapGolden) }

func testIPIPEncapGolden(t *testing.T, b build) {
	f, _ := newIPIPFixture(t, b)
	syn4 := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 40000, dport: 80, tcpFlags: tcpSYN, df: true}.build()
	syn6 := pkt{src: client6, dst: vip6, proto: protoTCP, sport: 40000, dport: 80, tcpFlags: tcpSYN}.build()
	label := maglev.FlowHash(client6, vip6, 40000, 80, protoTCP) & 0xfffff
	cases := []struct {
		name string
		in   []byte
		want []byte
	}{
		{"ipv4", syn4, append(mustHex(`
			020000 0005fe 020000 000501 0800
			4500 003c 0000 4000 4004 a08d c612 0501 c612 090b`), syn4[14:]...)},
		{"ipv6", syn6, append(mustHex(fmt.Sprintf(`
			020000 0005fe 020000 000501 86dd
			6 00 %05x 003c 29 40
			2001 0db8 0005 0000 0000 0000 0000 0001
			2001 0db8 0009 0000 0000 0000 0000 0011`, label)), syn6[14:]...)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := f.expectCounted(t, tc.in, xdpRedirect, rRedirect)
			if !bytes.Equal(out, tc.want) {
				t.Fatalf("frame\n got %x\nwant %x", out, tc.want)
			}
			if tc.name == "ipv4" && ipChecksum(out[14:34]) != 0 {
				t.Fatalf("outer IPv4 header checksum %#04x does not verify", binary.BigEndian.Uint16(out[24:]))
			}
		})
	}
}

// Encapsulation field by field over the cases that change it: DSCP and ECN
// copied, DF copied, a VLAN tag dropped, and the loader's next hop when the
// FIB cannot answer (forwarding off on the receiving interface).
func TestIPIPEncap(t *testing.T) { forBuilds(t, testIPIPEncap) }

func testIPIPEncap(t *testing.T, b build) {
	f, n := newIPIPFixture(t, b)
	cases := []struct {
		name    string
		p       pkt
		noFIB   bool
		zeroLen bool // IPv6 payload length 0: the frame's length (BIG TCP)
	}{
		{"ipv4 tcp", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1, dport: 80, tcpFlags: tcpACK, df: true, payload: 100}, false, false},
		{"ipv4 dscp ecn", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 2, dport: 80, tcpFlags: tcpACK, tos: 0xb9, payload: 10}, false, false},
		{"ipv4 vlan", pkt{vlan: 42, src: client4, dst: vip4, proto: protoTCP, sport: 3, dport: 80, tcpFlags: tcpSYN, df: true}, false, false},
		{"ipv4 options", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 4, dport: 80, tcpFlags: tcpSYN, ipOptions: 3}, false, false},
		{"ipv4 next hop from the loader", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 5, dport: 80, tcpFlags: tcpSYN, df: true}, true, false},
		{"ipv6 tcp", pkt{src: client6, dst: vip6, proto: protoTCP, sport: 1, dport: 80, tcpFlags: tcpACK, payload: 100}, false, false},
		{"ipv6 traffic class", pkt{src: client6, dst: vip6, proto: protoTCP, sport: 2, dport: 80, tcpFlags: tcpACK, tos: 0x2e}, false, false},
		{"ipv6 vlan ext headers", pkt{vlan: 7, src: client6, dst: vip6, proto: protoTCP, sport: 3, dport: 80, proto6Ext: []uint8{0, 60}}, false, false},
		{"ipv6 next hop from the loader", pkt{src: client6, dst: vip6, proto: protoTCP, sport: 5, dport: 80, tcpFlags: tcpSYN}, true, false},
		{"ipv6 payload length 0", pkt{src: client6, dst: vip6, proto: protoTCP, sport: 6, dport: 80, tcpFlags: tcpACK, payload: 100}, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if f.tc && tc.p.vlan != 0 {
				// At TC ingress the tag is out of the frame already (the
				// skb's); BPF_PROG_TEST_RUN leaves it in, where the skb
				// cannot grow in front of the IP header.
				t.Skip("no VLAN tag in an skb's frame at TC ingress")
			}
			n.forwarding(!tc.noFIB)
			defer n.forwarding(true)
			in := tc.p.build()
			if tc.zeroLen {
				in = tc.p.setIPLength(in, 40)
			}
			l3 := 14
			if tc.p.vlan != 0 {
				l3 = 18
			}
			inner := in[l3:]
			gwMAC := kernelGwMAC
			if tc.noFIB {
				gwMAC = resolvedGwMAC
			}
			var want []byte
			if tc.p.src.Is4() {
				want = frame(gwMAC, outMAC, 0x0800, outer4(tc.p.tos, tc.p.df, inner, outSrc4, routedBe4), inner)
			} else {
				label := maglev.FlowHash(tc.p.src, tc.p.dst, tc.p.sport, tc.p.dport, tc.p.proto) & 0xfffff
				want = frame(gwMAC, outMAC, 0x86dd, outer6(tc.p.tos, label, inner, outSrc6, routedBe6), inner)
			}
			out := f.expectCounted(t, in, xdpRedirect, rRedirect)
			if !bytes.Equal(out, want) {
				t.Fatalf("frame\n got %x\nwant %x", out, want)
			}
		})
	}
}

// With ipip_source_prefix every flow gets its own outer source inside the
// prefix, the one the Go hash predicts, and one flow keeps its source.
func TestIPIPSourcePrefix(t *testing.T) { forBuilds(t, testIPIPSourcePrefix) }

func testIPIPSourcePrefix(t *testing.T, b build) {
	f, _ := newIPIPFixture(t, b)
	for _, fam := range []struct {
		name   string
		vip    netip.Addr
		client netip.Addr
		prefix netip.Prefix
		at     int // offset of the outer source in the frame
	}{
		{"ipv4", vip4, client4, srcPrefix4, 14 + 12},
		{"ipv6", vip6, client6, srcPrefix6, 14 + 8},
	} {
		t.Run(fam.name, func(t *testing.T) {
			seen := map[netip.Addr]bool{}
			for sport := uint16(1000); sport < 1064; sport++ {
				p := pkt{src: fam.client, dst: fam.vip, proto: protoTCP, sport: sport, dport: 81, tcpFlags: tcpSYN, df: true}
				for range 2 {
					_, out := f.runSized(p.build())
					n := 4
					if fam.vip.Is6() {
						n = 16
					}
					got, _ := netip.AddrFromSlice(out[fam.at : fam.at+n])
					want := prefixSource(fam.prefix, maglev.FlowHash(p.src, p.dst, p.sport, p.dport, p.proto))
					if got != want {
						t.Fatalf("sport %d: outer source %s, want %s", sport, got, want)
					}
					seen[got] = true
				}
			}
			if len(seen) < 50 {
				t.Fatalf("64 flows used %d outer sources: not spread", len(seen))
			}
		})
	}
}

// prefixSource is the outer source a flow with hash h gets in prefix.
func prefixSource(prefix netip.Prefix, h uint32) netip.Addr {
	b := prefix.Masked().Addr().AsSlice()
	mask := SourceHashMask(prefix)
	last := b[len(b)-4:]
	binary.BigEndian.PutUint32(last, binary.BigEndian.Uint32(last)&^mask|h&mask)
	a, _ := netip.AddrFromSlice(b)
	return a
}

// A packet too big once encapsulated is answered with ICMP "fragmentation
// needed" / ICMPv6 "packet too big" to the client, from the VIP, quoting
// the packet's start; the MTU comes from the FIB or, without it, from the
// egress interface. IPv4 without DF is dropped. One byte less fits.
func TestIPIPTooBig(t *testing.T) { forBuilds(t, testIPIPTooBig) }

func testIPIPTooBig(t *testing.T, b build) {
	f, n := newIPIPFixture(t, b)
	big4 := func(df bool, sport uint16, l3 int) pkt {
		return pkt{src: client4, dst: vip4, proto: protoTCP, sport: sport, dport: 80, tcpFlags: tcpACK, df: df, payload: l3 - 40}
	}
	big6 := func(sport uint16, l3 int) pkt {
		return pkt{src: client6, dst: vip6, proto: protoTCP, sport: sport, dport: 80, tcpFlags: tcpACK, payload: l3 - 60}
	}
	for _, noFIB := range []bool{false, true} {
		n.forwarding(!noFIB)
		name := map[bool]string{false: "fib", true: "interface mtu"}[noFIB]
		t.Run(name+"/ipv4 frag needed", func(t *testing.T) {
			in := big4(true, 10, outMTU-20+1).build()
			out := f.expectCounted(t, in, xdpTX, rICMPTooBig)
			ip := mustHex(`45c0 009c 0000 0000 4001 0000 c613 000a c612 0064`)
			binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
			icmp := append(mustHex(`0304 0000 0000 05c8`), in[14:14+128]...)
			binary.BigEndian.PutUint16(icmp[2:], ipChecksum(icmp))
			want := frame(clientMAC, lbMAC, 0x0800, ip, icmp)
			if !bytes.Equal(out, want) {
				t.Fatalf("ICMP answer\n got %x\nwant %x", out, want)
			}
			if ipChecksum(out[14:34]) != 0 || ipChecksum(out[34:]) != 0 {
				t.Fatal("ICMP answer checksums do not verify")
			}
		})
		t.Run(name+"/ipv4 fits", func(t *testing.T) {
			f.expectCounted(t, big4(true, 11, outMTU-20).build(), xdpRedirect, rRedirect)
		})
		t.Run(name+"/ipv4 without DF", func(t *testing.T) {
			f.expectCounted(t, big4(false, 12, outMTU-20+1).build(), xdpDrop, rTooBig)
		})
		t.Run(name+"/ipv6 packet too big", func(t *testing.T) {
			in := big6(10, outMTU-40+1).build()
			out := f.expectCounted(t, in, xdpTX, rICMPTooBig)
			ip := mustHex(`6000 0000 0108 3a40`)
			ip = append(ip, vip6.AsSlice()...)
			ip = append(ip, client6.AsSlice()...)
			icmp := append(mustHex(`0200 0000 0000 05b4`), in[14:14+256]...)
			binary.BigEndian.PutUint16(icmp[2:], icmp6Checksum(vip6, client6, icmp))
			want := frame(clientMAC, lbMAC, 0x86dd, ip, icmp)
			if !bytes.Equal(out, want) {
				t.Fatalf("ICMPv6 answer\n got %x\nwant %x", out, want)
			}
		})
		t.Run(name+"/ipv6 fits", func(t *testing.T) {
			f.expectCounted(t, big6(11, outMTU-40).build(), xdpRedirect, rRedirect)
		})
	}
	n.forwarding(true)
}

// icmp6Checksum is the ICMPv6 checksum over the pseudo-header and msg
// (whose checksum field is zero), computed here rather than trusted.
func icmp6Checksum(src, dst netip.Addr, msg []byte) uint16 {
	var ph []byte
	ph = append(ph, src.AsSlice()...)
	ph = append(ph, dst.AsSlice()...)
	ph = binary.BigEndian.AppendUint32(ph, uint32(len(msg)))
	ph = append(ph, 0, 0, 0, 58)
	return ipChecksum(append(ph, msg...))
}

// A backend the FIB calls unreachable is a counted drop.
func TestIPIPNoRoute(t *testing.T) { forBuilds(t, testIPIPNoRoute) }

func testIPIPNoRoute(t *testing.T, b build) {
	f, _ := newIPIPFixture(t, b)
	f.expectCounted(t, pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1, dport: 82, tcpFlags: tcpSYN}.build(), xdpDrop, rNoRoute)
	f.expectCounted(t, pkt{src: client6, dst: vip6, proto: protoTCP, sport: 1, dport: 82, tcpFlags: tcpSYN}.build(), xdpDrop, rNoRoute)
}

// ipip backends resolve to their next hop and carry their forwarding, the
// host's source or the prefix; a resolver that cannot find next hops
// leaves them unresolved.
func TestIPIPBackendEntries(t *testing.T) {
	f, n := newIPIPFixture(t, xdpBuild)
	entries, err := f.dp.BackendEntries()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, e := range entries {
		if e.State == uint8(bpf.XlbBackendStateXLB_BE_UNUSED) {
			continue
		}
		var info bpf.XlbSvcInfo
		if err := f.dp.ServiceInfo.Lookup(e.ServiceId, &info); err != nil {
			t.Fatal(err)
		}
		got[fmt.Sprintf("%d %s %s %s %d %s %d", info.Key.Port, BackendAddr(e), State(e.State), Forwarding(e.Forwarding),
			e.Ifindex, addrFromBytes(e.Src, e.Family), e.SrcHashMask)] = true
	}
	for _, w := range []string{
		fmt.Sprintf("80 %s up ipip %d %s 0", routedBe4, n.out, outSrc4),
		fmt.Sprintf("80 %s up ipip %d %s 0", routedBe6, n.out, outSrc6),
		fmt.Sprintf("81 %s up ipip %d 198.18.99.0 255", routedBe4, n.out),
		fmt.Sprintf("81 %s up ipip %d 2001:db8:99:: 4294967295", routedBe6, n.out),
	} {
		if !got[w] {
			t.Errorf("no backend entry %q in %v", w, got)
		}
	}
	var dv bpf.XlbBpfDevmapVal
	if err := f.dp.TxPorts.Lookup(uint32(n.out), &dv); err != nil || dv.Ifindex != uint32(n.out) {
		t.Errorf("tx_ports lacks the egress interface %d: %v %+v", n.out, err, dv)
	}

	// A plain Resolver cannot resolve ipip backends.
	plain := openFixture(t, nil, staticResolver{ifindex: loIfIndex}, nil)
	ch := plain.apply(Desired{Services: []ServiceSpec{ipipService(vip4, 80, netip.Prefix{}, routedBe4)}})
	if len(ch.Unresolved) != 1 || !strings.Contains(ch.Unresolved[0], ErrNoRoutedResolver.Error()) {
		t.Fatalf("unresolved = %v, want the backend, for %v", ch.Unresolved, ErrNoRoutedResolver)
	}
}

// The netlink resolver finds a routed backend's next hop (the router's
// neighbour entry) and source address; for dsr the same backend is not on
// link.
func TestResolveRouted(t *testing.T) {
	n := newIPIPNet(t)
	for _, c := range []struct {
		be, src netip.Addr
	}{{routedBe4, outSrc4}, {routedBe6, outSrc6}} {
		var nb Neighbour
		var err, dsrErr error
		n.do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2e9)
			defer cancel()
			nb, err = NetlinkResolver{}.ResolveRouted(ctx, c.be)
			_, dsrErr = NetlinkResolver{}.Resolve(ctx, c.be, nil)
		})
		if err != nil {
			t.Fatalf("%s: %v", c.be, err)
		}
		want := Neighbour{IfIndex: n.out, MAC: kernelGwMAC, SrcMAC: outMAC, Src: c.src}
		if nb.IfIndex != want.IfIndex || !bytes.Equal(nb.MAC, want.MAC) || !bytes.Equal(nb.SrcMAC, want.SrcMAC) || nb.Src != want.Src {
			t.Errorf("%s: resolved %+v, want %+v", c.be, nb, want)
		}
		if !errors.Is(dsrErr, ErrNotOnLink) {
			t.Errorf("%s as a dsr backend: %v, want %v", c.be, dsrErr, ErrNotOnLink)
		}
	}
}

// DSR and ipip services side by side: the DSR one still only rewrites MACs.
func TestIPIPBesideDSR(t *testing.T) { forBuilds(t, testIPIPBesideDSR) }

func testIPIPBesideDSR(t *testing.T, b build) {
	f, _ := newIPIPFixture(t, b)
	d := ipipDesired()
	d.Services = append(d.Services, webService(vip4, 83, protoTCP, HashIP, be4))
	f.apply(d)
	p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 9, dport: 83, tcpFlags: tcpSYN}
	out := f.expectOne(t, p.build(), xdpTX, rTX)
	backendOf(t, out, be4)
}

// A reload that switches a service between dsr and ipip rewrites its
// backends (resolved anew: on link, then next hop) and its flows follow.
func TestIPIPForwardingChange(t *testing.T) { forBuilds(t, testIPIPForwardingChange) }

func testIPIPForwardingChange(t *testing.T, b build) {
	f, _ := newIPIPFixture(t, b)
	d := ipipDesired()
	syn := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 77, dport: 80, tcpFlags: tcpSYN, df: true}
	ack := syn
	ack.tcpFlags = tcpACK
	f.expectCounted(t, syn.build(), xdpRedirect, rRedirect)

	d.Services[0].Forwarding = ForwardDSR
	if ch := f.apply(d); ch.BackendsUpdated != 1 {
		t.Fatalf("to dsr: %+v, want one backend updated", ch)
	}
	out := f.expectOne(t, ack.build(), xdpTX, rTX)
	if got := backendOf(t, out, []netip.Addr{routedBe4}); got != routedBe4 {
		t.Fatalf("dsr frame to %s", got)
	}

	d.Services[0].Forwarding = ForwardIPIP
	f.apply(d)
	out = f.expectCounted(t, ack.build(), xdpRedirect, rRedirect)
	if !bytes.Equal(out[:6], kernelGwMAC) || out[14+9] != 4 {
		t.Fatalf("not tunneled again: %x", out[:34])
	}
}

// A restart that adopts the pins finds the ipip backends as it left them:
// its first Apply writes nothing, per-flow sources included.
func TestIPIPAdoptPinnedState(t *testing.T) {
	n := newIPIPNet(t)
	dir := fmt.Sprintf("/sys/fs/bpf/xlb-test-ipip-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(dir) })
	open := func() *fixture { return openPinned(t, dir, routedResolver{out: n.out}, n.do) }
	f := open()
	f.apply(ipipDesired())
	g := f.restart(open)
	defer g.dp.Close(false)
	if ch := g.apply(ipipDesired()); !ch.Empty() {
		t.Fatalf("first apply after adoption changed %+v", ch)
	}
	g.expectCounted(t, pkt{src: client6, dst: vip6, proto: protoTCP, sport: 5, dport: 81, tcpFlags: tcpSYN}.build(), xdpRedirect, rRedirect)
	if err := g.dp.Commit(); err != nil {
		t.Fatal(err)
	}
}

// ICMP errors are rate limited per CPU (a burst of XLB_ICMP_BURST, then about
// one a millisecond): a flood of packets too big for the path gets a bounded
// answer, and the rest are dropped and counted.
func TestICMPRateLimit(t *testing.T) {
	f, _ := newIPIPFixture(t, xdpBuild)
	const n = 600
	burst := int(bpf.XlbLimitsXLB_ICMP_BURST)
	rLimited := reason(bpf.XlbReasonXLB_R_DROP_ICMP_RATE)
	before := f.reasons()
	start := time.Now()
	for i := range n {
		p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: uint16(20000 + i), dport: 80, tcpFlags: tcpACK, df: true, payload: outMTU}
		if ret, _ := f.runSized(p.build()); ret != xdpTX && ret != xdpDrop {
			t.Fatalf("packet %d: verdict %s", i, verdictNames[ret])
		}
	}
	elapsed := time.Since(start)
	after := f.reasons()
	sent := int(after[rICMPTooBig].Packets - before[rICMPTooBig].Packets)
	limited := int(after[rLimited].Packets - before[rLimited].Packets)
	if sent+limited != n {
		t.Fatalf("%d answered + %d limited, want %d in all", sent, limited, n)
	}
	// Each CPU the test ran on had its burst, and a refill per ~1.05 ms.
	cpus := runtime.NumCPU()
	most := cpus*burst + cpus*int(elapsed/(time.Nanosecond<<bpf.XlbLimitsXLB_ICMP_REFILL_SHIFT)+1)
	if sent < burst || sent > most {
		t.Fatalf("%d answered, %d limited in %v: want %d..%d answered", sent, limited, elapsed, burst, most)
	}
	// Faster than the refill, some must have been limited (a host that
	// stalled the loop for longer proves nothing either way).
	if refill := time.Nanosecond << bpf.XlbLimitsXLB_ICMP_REFILL_SHIFT; elapsed < n*refill/2 && limited == 0 {
		t.Fatalf("%d packets in %v, none limited", n, elapsed)
	}
}

package loader

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/bpf"
)

var (
	rNATReply = reason(bpf.XlbReasonXLB_R_NAT_REPLY_TX)
	rNATPorts = reason(bpf.XlbReasonXLB_R_DROP_NAT_PORTS)
)

// natResolver resolves every backend as routedResolver does.
type natResolver = routedResolver

// natFixture: the ipip fixtures' network, with xo0 as the XDP interface
// (packets arrive on it: one-armed, as NAT needs) and NAT services to the
// routed backends: port 80 to backend port 8080 from the host's address,
// port 81 from a configured source.
type natFixture struct {
	*fixture
	n *ipipNet
}

var (
	natSrc4 = netip.MustParseAddr("198.18.5.7")
	natSrc6 = netip.MustParseAddr("2001:db8:5::7")
)

func natService(vip netip.Addr, port uint16, proto uint8, src netip.Addr, bport uint16, bes ...netip.Addr) ServiceSpec {
	s := webService(vip, port, proto, HashIP, bes)
	s.Forwarding, s.NATSource = ForwardNAT, src
	for i := range s.Backends {
		s.Backends[i].Port = bport
	}
	return s
}

func natDesired() Desired {
	return Desired{RingSize: 65537, Services: []ServiceSpec{
		natService(vip4, 80, protoTCP, netip.Addr{}, 8080, routedBe4),
		natService(vip6, 80, protoTCP, netip.Addr{}, 8080, routedBe6),
		natService(vip4, 53, protoUDP, natSrc4, 0, routedBe4),
		natService(vip6, 53, protoUDP, natSrc6, 0, routedBe6),
	}}
}

func newNATFixture(t testing.TB, ports NATPorts) *natFixture {
	t.Helper()
	n := newIPIPNet(t)
	n.sysctl("net/ipv4/conf/xo0/forwarding", "1")
	n.sysctl("net/ipv6/conf/xo0/forwarding", "1")
	dp, err := Open(Options{Logger: quietLogger()})
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { dp.Close(false) })
	rec, err := NewReconciler(&dp.Maps, natResolver{out: n.out}, n.out, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	f := &natFixture{fixture: &fixture{t: t, dp: dp, rec: rec, in: n.do}, n: n}
	if err := dp.SetNATPorts(ports); err != nil {
		t.Fatal(err)
	}
	f.setDefaultTimeouts()
	if ch := f.apply(natDesired()); len(ch.Unresolved) > 0 {
		t.Fatalf("unresolved: %v", ch.Unresolved)
	}
	return f
}

// xdpMD is struct xdp_md, BPF_PROG_TEST_RUN's context: data_end must be
// the packet's length, and the receiving interface may be any.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// runOn runs data as if received on xo0.
func (f *natFixture) runOn(t *testing.T, data []byte) (uint32, []byte) {
	t.Helper()
	opts := &ebpf.RunOptions{
		Data: data, DataOut: make([]byte, len(data)+256), Repeat: 1,
		Context: xdpMD{DataEnd: uint32(len(data)), IngressIfindex: uint32(f.n.out)},
	}
	var ret uint32
	var err error
	f.do(func() { ret, err = f.dp.Program.Run(opts) })
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret, opts.DataOut
}

// expectOn is expectCounted for a packet received on xo0.
func (f *natFixture) expectOn(t *testing.T, data []byte, wantVerdict uint32, wantReason int) []byte {
	t.Helper()
	before := f.reasons()
	ret, out := f.runOn(t, data)
	if ret != wantVerdict {
		t.Fatalf("verdict %s, want %s", verdictNames[ret], verdictNames[wantVerdict])
	}
	after := f.reasons()
	for i := range after {
		want := uint64(0)
		if i == wantReason {
			want = 1
		}
		if d := after[i].Packets - before[i].Packets; d != want {
			t.Fatalf("reason %s counted %d packets, want %d", ReasonName(i), d, want)
		}
	}
	return out
}

func natPorts() NATPorts { return NATPorts{First: 20000, Count: 100} }

// A TCP flow both ways, IPv4 and IPv6: the client's packets leave from the
// host's address and an allocated port to the backend's port 8080, the
// backend's answers leave from the VIP to the client, checksums valid.
func TestNATBothWays(t *testing.T) {
	f := newNATFixture(t, natPorts())
	// The clients' networks lie behind the router too.
	f.clientRoutes(t, 0)
	for _, tc := range []struct {
		name        string
		client, vip netip.Addr
		be, src     netip.Addr
	}{
		{"ipv4", client4, vip4, routedBe4, outSrc4},
		{"ipv6", client6, vip6, routedBe6, outSrc6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			syn := pkt{src: tc.client, dst: tc.vip, proto: protoTCP, sport: 40000, dport: 80, tcpFlags: tcpSYN, df: true, payload: 33, checksum: true}
			out := f.expectOn(t, syn.build(), xdpTX, rTX)
			l4 := syn.l4Offset()
			port := binary.BigEndian.Uint16(out[l4:])
			if port < 20000 || port >= 20100 {
				t.Fatalf("source port %d outside the NAT range", port)
			}
			checkTranslated(t, syn, out, kernelGwMAC, outMAC, tc.src, tc.be, port, 8080)

			// The same flow keeps its port.
			ack := syn
			ack.tcpFlags, ack.payload = tcpACK, 1000
			out = f.expectOn(t, ack.build(), xdpTX, rTX)
			checkTranslated(t, ack, out, kernelGwMAC, outMAC, tc.src, tc.be, port, 8080)

			// The answer, from the backend through the router.
			reply := pkt{srcMAC: kernelGwMAC, dstMAC: outMAC, src: tc.be, dst: tc.src, proto: protoTCP,
				sport: 8080, dport: port, tcpFlags: tcpSYN | tcpACK, df: true, payload: 77, checksum: true}
			out = f.expectOn(t, reply.build(), xdpTX, rNATReply)
			checkTranslated(t, reply, out, kernelGwMAC, outMAC, tc.vip, tc.client, 80, 40000)
		})
	}
}

// UDP checksums: a real one is updated, IPv4's "none" (0) stays none. The
// clients have no route here: answers go back where the client's packets
// came from (its MAC, from the receiving interface's).
func TestNATUDPChecksums(t *testing.T) {
	f := newNATFixture(t, natPorts())
	for _, tc := range []struct {
		name        string
		client, vip netip.Addr
		be, src     netip.Addr
		none        bool
	}{
		{"ipv4", client4, vip4, routedBe4, natSrc4, false},
		{"ipv4 no checksum", client4, vip4, routedBe4, natSrc4, true},
		{"ipv6", client6, vip6, routedBe6, natSrc6, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sport := uint16(5000)
			if tc.none {
				sport++
			}
			q := pkt{src: tc.client, dst: tc.vip, proto: protoUDP, sport: sport, dport: 53, payload: 41, checksum: true, noUDPChecksum: tc.none}
			out := f.expectOn(t, q.build(), xdpTX, rTX)
			port := binary.BigEndian.Uint16(out[q.l4Offset():])
			checkTranslated(t, q, out, kernelGwMAC, outMAC, tc.src, tc.be, port, 53)
			if tc.none && binary.BigEndian.Uint16(out[q.l4Offset()+6:]) != 0 {
				t.Fatal("a UDP packet without checksum got one")
			}
			a := pkt{srcMAC: kernelGwMAC, dstMAC: outMAC, src: tc.be, dst: tc.src, proto: protoUDP,
				sport: 53, dport: port, payload: 99, checksum: true, noUDPChecksum: tc.none}
			out = f.expectOn(t, a.build(), xdpTX, rNATReply)
			checkTranslated(t, a, out, clientMAC, lbMAC, tc.vip, tc.client, 53, sport)
		})
	}
}

// Every port of the range goes to one flow; the next flow is dropped and
// counted, and no flow's port changes.
func TestNATPortExhaustion(t *testing.T) {
	f := newNATFixture(t, NATPorts{First: 30000, Count: 4})
	seen := map[uint16]uint16{}
	for sport := uint16(1); ; sport++ {
		syn := pkt{src: client4, dst: vip4, proto: protoTCP, sport: sport, dport: 80, tcpFlags: tcpSYN, checksum: true}
		ret, out := f.runOn(t, syn.build())
		if ret == xdpDrop {
			break
		}
		port := binary.BigEndian.Uint16(out[syn.l4Offset():])
		for s, p := range seen {
			if p == port {
				t.Fatalf("flows %d and %d share port %d", s, sport, port)
			}
		}
		seen[sport] = port
		if sport > 10 {
			t.Fatal("more flows than ports")
		}
	}
	if len(seen) != 4 {
		t.Fatalf("%d flows got ports before exhaustion, want 4", len(seen))
	}
	syn := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 999, dport: 80, tcpFlags: tcpSYN, checksum: true}
	f.expectOn(t, syn.build(), xdpDrop, rNATPorts)
	for sport, port := range seen {
		ack := pkt{src: client4, dst: vip4, proto: protoTCP, sport: sport, dport: 80, tcpFlags: tcpACK, checksum: true}
		out := f.expectOn(t, ack.build(), xdpTX, rTX)
		if got := binary.BigEndian.Uint16(out[ack.l4Offset():]); got != port {
			t.Fatalf("flow %d moved from port %d to %d", sport, port, got)
		}
	}
}

package loader

import (
	"bytes"
	"encoding/binary"
	"errors"
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
	return newNATFixtureFor(t, xdpBuild, ports)
}

// newNATFixtureFor is newNATFixture for build b.
func newNATFixtureFor(t testing.TB, b build, ports NATPorts) *natFixture {
	t.Helper()
	n := newIPIPNet(t)
	n.sysctl("net/ipv4/conf/xo0/forwarding", "1")
	n.sysctl("net/ipv6/conf/xo0/forwarding", "1")
	dp, err := Open(Options{Logger: quietLogger(), Mode: b.mode})
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { dp.Close(false) })
	rec, err := NewReconciler(&dp.Maps, natResolver{out: n.out}, n.out, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	f := &natFixture{fixture: &fixture{t: t, tc: b == tcBuild, dp: dp, rec: rec, in: n.do}, n: n}
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

// skbMD is struct __sk_buff up to ifindex, BPF_PROG_TEST_RUN's context of
// a TC program (the rest zero): ifindex is the receiving interface.
type skbMD struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority, IngressIfindex, Ifindex uint32
}

// runOn runs data as if received on xo0.
func (f *natFixture) runOn(t *testing.T, data []byte) (uint32, []byte) {
	t.Helper()
	var ctx any = xdpMD{DataEnd: uint32(len(data)), IngressIfindex: uint32(f.n.out)}
	if f.tc {
		ctx = skbMD{Ifindex: uint32(f.n.out)}
	}
	return f.runCtx(data, ctx)
}

// expectOn is expectCounted for a packet received on xo0.
func (f *natFixture) expectOn(t *testing.T, data []byte, wantVerdict uint32, wantReason int) []byte {
	t.Helper()
	before := f.reasons()
	ret, out := f.runOn(t, data)
	if !f.is(ret, wantVerdict) {
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
func TestNATBothWays(t *testing.T) { forBuilds(t, testNATBothWays) }

func testNATBothWays(t *testing.T, b build) {
	f := newNATFixtureFor(t, b, natPorts())
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
func TestNATUDPChecksums(t *testing.T) { forBuilds(t, testNATUDPChecksums) }

func testNATUDPChecksums(t *testing.T, b build) {
	f := newNATFixtureFor(t, b, natPorts())
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
func TestNATPortExhaustion(t *testing.T) { forBuilds(t, testNATPortExhaustion) }

func testNATPortExhaustion(t *testing.T, b build) {
	f := newNATFixtureFor(t, b, NATPorts{First: 30000, Count: 4})
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

// binding reads the NAT binding of the backend's answers from be:bport to
// src:port (proto TCP unless given).
func (f *natFixture) binding(t testing.TB, be, src netip.Addr, bport, port uint16, proto uint8) (bpf.XlbNatBinding, bool) {
	t.Helper()
	var b bpf.XlbNatBinding
	err := f.dp.NatBindings.Lookup(FlowKey(be, src, bport, port, proto), &b)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatal(err)
	}
	return b, err == nil
}

// natFlow reads the client flow p's NAT entry.
func (f *natFixture) natFlow(t testing.TB, p pkt) (bpf.XlbNatFlow, bool) {
	t.Helper()
	var nf bpf.XlbNatFlow
	err := f.dp.NatFlows.Lookup(flowKeyOf(p), &nf)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatal(err)
	}
	return nf, err == nil
}

// natMove is a flow moved from one backend (down) to another.
type natMove struct {
	d           Desired // the service, with the first backend down
	p           pkt     // the flow's packet after the move (an ACK)
	first, next netip.Addr
	port, moved uint16 // its port with first, with next
}

// moveFlow sends a SYN to a NAT service of two backends, takes the one it
// went to down and sends an ACK, which leaves for the other (checked).
func (f *natFixture) moveFlow(t *testing.T) natMove {
	t.Helper()
	bes := []netip.Addr{routedBe4, netip.MustParseAddr("198.18.9.12")}
	m := natMove{d: Desired{RingSize: 251, Services: []ServiceSpec{natService(vip4, 80, protoTCP, netip.Addr{}, 8080, bes...)}}}
	f.apply(m.d)
	syn := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 45000, dport: 80, tcpFlags: tcpSYN, checksum: true}
	out := f.expectOn(t, syn.build(), xdpTX, rTX)
	_, m.first = ipAddrs(out, 14)
	m.port = binary.BigEndian.Uint16(out[syn.l4Offset():])
	m.next = bes[0]
	if m.first == m.next {
		m.next = bes[1]
	}
	for i, b := range m.d.Services[0].Backends {
		if b.Address == m.first {
			m.d.Services[0].Backends[i].State = StateDown
		}
	}
	f.apply(m.d)
	m.p = syn
	m.p.tcpFlags, m.p.payload = tcpACK, 10
	out = f.expectOn(t, m.p.build(), xdpTX, rTX)
	m.moved = binary.BigEndian.Uint16(out[m.p.l4Offset():])
	checkTranslated(t, m.p, out, kernelGwMAC, outMAC, outSrc4, m.next, m.moved, 8080)
	return m
}

// A flow whose backend goes down moves with the ring to another: it gets a
// binding with the new backend (its port probed anew) and its entry names
// them (its number is as a rule the old one: probing starts from the flow's
// hash, and the key differs by backend); the old backend's binding is left
// to the sweep (ExpireNAT), and the new backend's answers reach the client.
func TestNATFlowMoves(t *testing.T) {
	f := newNATFixture(t, natPorts())
	m := f.moveFlow(t)
	ack, d, first, next, port, moved := m.p, m.d, m.first, m.next, m.port, m.moved
	nf, ok := f.natFlow(t, ack)
	if !ok || nf.BackendId != f.backendID(d.Services[0], next) || nf.Port != moved {
		t.Fatalf("flow entry %+v (found %v), want backend %d port %d", nf, ok, f.backendID(d.Services[0], next), moved)
	}
	if b, ok := f.binding(t, next, outSrc4, 8080, moved, protoTCP); !ok || b.Client != flowKeyOf(ack) {
		t.Fatalf("no binding of the new backend naming the flow: %+v (found %v)", b, ok)
	}
	if b, ok := f.binding(t, first, outSrc4, 8080, port, protoTCP); !ok || b.Client != flowKeyOf(ack) {
		t.Fatalf("the old backend's binding is gone before the sweep: %+v (found %v)", b, ok)
	}
	if n := f.portsInUse(t)[f.serviceID(vip4, 80, protoTCP)]; n != 2 {
		t.Fatalf("%d ports in use, want the old and the new binding", n)
	}
	a := pkt{srcMAC: kernelGwMAC, dstMAC: outMAC, src: next, dst: outSrc4, proto: protoTCP, sport: 8080, dport: moved, tcpFlags: tcpACK, payload: 5, checksum: true}
	out := f.expectOn(t, a.build(), xdpTX, rNATReply)
	checkTranslated(t, a, out, clientMAC, lbMAC, vip4, client4, 80, 45000)
}

// A client that opens a closed flow's ports again (a SYN after its FIN)
// keeps the flow's port: its binding stands (only the sweep frees it). A
// SYN while the closing flow is not yet quiet stays on its connection
// table entry; once quiet, the flow starts over (a new entry) and so does
// its binding, its state cleared.
func TestNATSynReusesPort(t *testing.T) {
	f := newNATFixture(t, natPorts())
	syn := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 46000, dport: 80, tcpFlags: tcpSYN, checksum: true}
	port := f.sendOn(t, syn)
	for _, fl := range []uint8{tcpACK, tcpFIN | tcpACK} {
		p := syn
		p.tcpFlags = fl
		if got := f.sendOn(t, p); got != port {
			t.Fatalf("flow moved from port %d to %d", port, got)
		}
	}
	if b, _ := f.binding(t, routedBe4, outSrc4, 8080, port, protoTCP); b.Flags != flowEstablished|flowClosing {
		t.Fatalf("binding flags %d after FIN, want established|closing", b.Flags)
	}
	if got := f.sendOn(t, syn); got != port {
		t.Fatalf("SYN right after the FIN left from port %d, want the flow's %d", got, port)
	}
	if ct := f.flow(syn); ct.Flags != flowEstablished|flowClosing {
		t.Fatalf("connection table entry %+v after a SYN right after the FIN, want the closing flow's", ct)
	}
	// Nor does its binding start over: a SYN that is no new flow (a forged
	// one on a live flow, say) leaves the flow's state, and its timeout.
	if b, _ := f.binding(t, routedBe4, outSrc4, 8080, port, protoTCP); b.Flags != flowEstablished|flowClosing {
		t.Fatalf("binding flags %d after a SYN right after the FIN, want the closing flow's", b.Flags)
	}

	ct := f.flow(syn)
	ct.Seen -= uint32(bpf.XlbLimitsXLB_CLOSING_QUIET_TICKS) + 1
	if err := f.dp.Conntrack.Put(flowKeyOf(syn), ct); err != nil {
		t.Fatal(err)
	}
	if got := f.sendOn(t, syn); got != port {
		t.Fatalf("SYN after the closed flow left from port %d, want the flow's %d", got, port)
	}
	if ct := f.flow(syn); ct.Flags != 0 || ct.Packets != 1 {
		t.Fatalf("connection table entry %+v after the SYN, want a new flow's", ct)
	}
	if b, _ := f.binding(t, routedBe4, outSrc4, 8080, port, protoTCP); b.Flags != 0 || b.Client != flowKeyOf(syn) {
		t.Fatalf("binding after the new SYN: %+v, want the flow's with no flags", b)
	}
	if n := f.portsInUse(t)[f.serviceID(vip4, 80, protoTCP)]; n != 1 {
		t.Fatalf("%d ports in use, want 1", n)
	}
}

// One client flow (address and port) to two NAT services with the same
// backend, backend port and source: each has its own port (two ports in
// the range, two flows), and each answer goes back as its own service.
func TestNATTwoServicesOneClientFlow(t *testing.T) {
	f := newNATFixture(t, NATPorts{First: 20000, Count: 2})
	d := natDesired()
	d.Services = append(d.Services, natService(vip4, 81, protoTCP, netip.Addr{}, 8080, routedBe4))
	f.apply(d)
	ports := map[uint16]uint16{}
	for _, svcPort := range []uint16{80, 81} {
		p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 47000, dport: svcPort, tcpFlags: tcpSYN, checksum: true}
		port := f.sendOn(t, p)
		for other, o := range ports {
			if o == port {
				t.Fatalf("services %d and %d share port %d", other, svcPort, port)
			}
		}
		ports[svcPort] = port
	}
	for svcPort, port := range ports {
		a := pkt{srcMAC: kernelGwMAC, dstMAC: outMAC, src: routedBe4, dst: outSrc4, proto: protoTCP, sport: 8080, dport: port, tcpFlags: tcpSYN | tcpACK, checksum: true}
		out := f.expectOn(t, a.build(), xdpTX, rNATReply)
		checkTranslated(t, a, out, clientMAC, lbMAC, vip4, client4, svcPort, 47000)
	}
	used := f.portsInUse(t)
	if used[f.serviceID(vip4, 80, protoTCP)] != 1 || used[f.serviceID(vip4, 81, protoTCP)] != 1 {
		t.Fatalf("ports in use by service: %v, want one each", used)
	}
}

// Packets to a NAT source that no binding names pass to the kernel as they
// came: a port of the range no flow holds, a port outside it, a flow's port
// from another source port or protocol.
func TestNATNoBinding(t *testing.T) {
	f := newNATFixture(t, natPorts())
	p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 48000, dport: 80, tcpFlags: tcpSYN, checksum: true}
	port := f.sendOn(t, p)
	free := natPorts().First + (port-natPorts().First+1)%uint16(natPorts().Count)
	for _, tc := range []struct {
		name string
		a    pkt
	}{
		{"free port of the range", pkt{src: routedBe4, dst: outSrc4, proto: protoTCP, sport: 8080, dport: free, tcpFlags: tcpACK}},
		{"port outside the range", pkt{src: routedBe4, dst: outSrc4, proto: protoTCP, sport: 8080, dport: 40000, tcpFlags: tcpACK}},
		{"another source port", pkt{src: routedBe4, dst: outSrc4, proto: protoTCP, sport: 8081, dport: port, tcpFlags: tcpACK}},
		{"another protocol", pkt{src: routedBe4, dst: outSrc4, proto: protoUDP, sport: 8080, dport: port}},
		{"another backend", pkt{src: netip.MustParseAddr("198.18.9.12"), dst: outSrc4, proto: protoTCP, sport: 8080, dport: port, tcpFlags: tcpACK}},
		{"ipv6, the ipv4 flow's port", pkt{src: routedBe6, dst: outSrc6, proto: protoTCP, sport: 8080, dport: port, tcpFlags: tcpACK}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.a
			a.srcMAC, a.dstMAC, a.payload, a.checksum = kernelGwMAC, outMAC, 10, true
			in := a.build()
			out := f.expectOn(t, in, xdpPass, rNoService)
			if !bytes.Equal(out[:len(in)], in) {
				t.Fatalf("passed packet modified:\n got %x\nwant %x", out[:len(in)], in)
			}
		})
	}
}

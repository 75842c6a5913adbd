package loader

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/bpf"
)

// Raw builders for the hostile cases pkt cannot express: large extension
// headers, ICMP errors with quotes, trailers.

func rawEth(typ uint16) []byte {
	b := append([]byte{}, outMAC...)
	b = append(b, kernelGwMAC...)
	return binary.BigEndian.AppendUint16(b, typ)
}

func rawIPv4(src, dst netip.Addr, proto uint8, optWords int, frag uint16, payload []byte) []byte {
	hl := 20 + 4*optWords
	ip := make([]byte, hl)
	ip[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(ip[2:], uint16(hl+len(payload)))
	binary.BigEndian.PutUint16(ip[4:], 0x4321)
	binary.BigEndian.PutUint16(ip[6:], frag)
	ip[8] = 64
	ip[9] = proto
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	for i := 20; i < hl; i++ {
		ip[i] = 1
	}
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	return append(ip, payload...)
}

func rawIPv6(src, dst netip.Addr, next uint8, payload []byte) []byte {
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(payload)))
	ip[6] = next
	ip[7] = 64
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(ip, payload...)
}

func rawTCP(src, dst netip.Addr, sport, dport uint16, flags uint8, payload int) []byte {
	t := make([]byte, 20+payload)
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], 1000)
	t[12] = 5 << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:], 65535)
	for i := 20; i < len(t); i++ {
		t[i] = byte(i)
	}
	binary.BigEndian.PutUint16(t[16:], transportChecksum(src, dst, 6, t))
	return t
}

func rawUDP(src, dst netip.Addr, sport, dport uint16, payload int) []byte {
	u := make([]byte, 8+payload)
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	for i := 8; i < len(u); i++ {
		u[i] = byte(i)
	}
	c := transportChecksum(src, dst, 17, u)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return u
}

// rawDstOpts is a Destination Options header of n bytes (n%8==0) made of
// "skip if unknown" options (type 0x1e), at most 8 of them: a valid header.
func rawDstOpts(next uint8, n int) []byte {
	h := make([]byte, n)
	h[0] = next
	h[1] = byte(n/8 - 1)
	for off := 2; off < n; {
		l := min(255, n-off-2)
		h[off] = 0x1e
		h[off+1] = byte(l)
		off += 2 + l
	}
	return h
}

func rawICMP(typ, code uint8, rest uint32, quote []byte) []byte {
	m := make([]byte, 8)
	m[0], m[1] = typ, code
	binary.BigEndian.PutUint32(m[4:], rest)
	m = append(m, quote...)
	binary.BigEndian.PutUint16(m[2:], ipChecksum(m))
	return m
}

func rawICMP6(src, dst netip.Addr, typ, code uint8, rest uint32, quote []byte) []byte {
	m := make([]byte, 8)
	m[0], m[1] = typ, code
	binary.BigEndian.PutUint32(m[4:], rest)
	m = append(m, quote...)
	binary.BigEndian.PutUint16(m[2:], transportChecksum(src, dst, 58, m))
	return m
}

// natPort runs a client's frame and returns the NAT port it left with.
func (f *natFixture) natPort(t *testing.T, frame []byte, l4 int) uint16 {
	t.Helper()
	ret, out := f.runOn(t, frame)
	if ret != xdpTX {
		t.Fatalf("setup flow: verdict %s", verdictNames[ret])
	}
	return binary.BigEndian.Uint16(out[l4:])
}

// checkICMPv4 verifies every checksum of an IPv4 ICMP error from scratch:
// the outer header, the ICMP message (up to the IP length), the quoted
// header and, when quoted whole, the quoted TCP segment.
func checkICMPv4(t *testing.T, frame []byte, wholeTCP bool) (outerSrc, outerDst, qSrc, qDst netip.Addr, qSport, qDport uint16) {
	t.Helper()
	ip := frame[14:]
	hl := int(ip[0]&0xf) * 4
	if ipChecksum(ip[:hl]) != 0 {
		t.Error("outer IPv4 checksum does not verify")
	}
	m := ip[hl:binary.BigEndian.Uint16(ip[2:])]
	if ipChecksum(m) != 0 {
		t.Error("ICMP checksum does not verify")
	}
	q := m[8:]
	qhl := int(q[0]&0xf) * 4
	if ipChecksum(q[:qhl]) != 0 {
		t.Error("quoted IPv4 checksum does not verify")
	}
	qSrc, _ = netip.AddrFromSlice(q[12:16])
	qDst, _ = netip.AddrFromSlice(q[16:20])
	if wholeTCP {
		if c := transportChecksum(qSrc, qDst, 6, q[qhl:]); c != 0 {
			t.Errorf("quoted TCP checksum does not verify: %#x", c)
		}
	}
	outerSrc, _ = netip.AddrFromSlice(ip[12:16])
	outerDst, _ = netip.AddrFromSlice(ip[16:20])
	return outerSrc, outerDst, qSrc, qDst, binary.BigEndian.Uint16(q[qhl:]), binary.BigEndian.Uint16(q[qhl+2:])
}

// Regression tests from a hostile review of the NAT datapath: each case
// once sent bytes where they must not go.

// A transport header past XLB_MAX_L4_OFFSET (one valid 1088-byte
// Destination Options header) is dropped, never half translated: the
// attacker's own source port (another client's NAT port) must not reach the
// backend as that client's 4-tuple.
func TestNATFarTransportHeader(t *testing.T) {
	f := newNATFixture(t, natPorts())
	victim := rawUDP(client6, vip6, 5000, 53, 20)
	port := f.natPort(t, append(rawEth(0x86dd), rawIPv6(client6, vip6, 17, victim)...), 14+40)
	attacker := netip.MustParseAddr("2001:db8:18::666")
	udp := rawUDP(natSrc6, routedBe6, port, 53, 20)
	frame := append(rawEth(0x86dd), rawIPv6(attacker, vip6, 60, append(rawDstOpts(17, 1088), udp...))...)
	f.expectOn(t, frame, xdpDrop, rTruncated)
}

// ICMP errors about a NAT flow, back to the client: every checksum verified
// from scratch (IPv4 with outer and quoted options and an odd-length quote;
// IPv6), addresses and ports those of the client's own packet.
func TestNATICMPToClient(t *testing.T) {
	f := newNATFixture(t, natPorts())
	t.Run("ipv4", func(t *testing.T) {
		syn := rawTCP(client4, vip4, 40000, 80, tcpSYN, 33)
		port := f.natPort(t, append(rawEth(0x0800), rawIPv4(client4, vip4, 6, 0, 0x4000, syn)...), 34)
		sent := rawIPv4(outSrc4, routedBe4, 6, 1, 0x4000, rawTCP(outSrc4, routedBe4, port, 8080, tcpSYN, 33))
		frame := append(rawEth(0x0800), rawIPv4(gw4, outSrc4, 1, 2, 0, rawICMP(3, 4, 1400, sent))...)
		out := f.expectOn(t, frame, xdpTX, rNATReply)
		os, od, qs, qd, qsp, qdp := checkICMPv4(t, out[:len(frame)], true)
		if os != vip4 || od != client4 || qs != client4 || qd != vip4 || qsp != 40000 || qdp != 80 {
			t.Fatalf("translated to %s -> %s about %s:%d -> %s:%d", os, od, qs, qsp, qd, qdp)
		}
	})
	t.Run("ipv6", func(t *testing.T) {
		syn := rawTCP(client6, vip6, 40000, 80, tcpSYN, 33)
		port := f.natPort(t, append(rawEth(0x86dd), rawIPv6(client6, vip6, 6, syn)...), 54)
		sent := rawIPv6(outSrc6, routedBe6, 6, rawTCP(outSrc6, routedBe6, port, 8080, tcpSYN, 33))
		frame := append(rawEth(0x86dd), rawIPv6(gw6, outSrc6, 58, rawICMP6(gw6, outSrc6, 2, 0, 1400, sent))...)
		out := f.expectOn(t, frame, xdpTX, rNATReply)[:len(frame)]
		s, _ := netip.AddrFromSlice(out[22:38])
		d, _ := netip.AddrFromSlice(out[38:54])
		if c := transportChecksum(s, d, 58, out[54:]); c != 0 || s != vip6 || d != client6 {
			t.Errorf("ICMPv6 %s -> %s, checksum residue %#x", s, d, c)
		}
		q := out[54+8:]
		qs, _ := netip.AddrFromSlice(q[8:24])
		qd, _ := netip.AddrFromSlice(q[24:40])
		if c := transportChecksum(qs, qd, 6, q[40:]); c != 0 || qs != client6 || qd != vip6 {
			t.Errorf("quoted %s -> %s, TCP checksum residue %#x", qs, qd, c)
		}
	})
	// Sent to another address than the quoted packet's source: forged.
	t.Run("to the wrong address", func(t *testing.T) {
		syn := rawTCP(client4, vip4, 40010, 80, tcpSYN, 0)
		port := f.natPort(t, append(rawEth(0x0800), rawIPv4(client4, vip4, 6, 0, 0x4000, syn)...), 34)
		sent := rawIPv4(outSrc4, routedBe4, 6, 0, 0x4000, rawTCP(outSrc4, routedBe4, port, 8080, tcpSYN, 0))
		frame := append(rawEth(0x0800), rawIPv4(gw4, vip4, 1, 0, 0, rawICMP(3, 3, 0, sent))...)
		f.expectOn(t, frame, xdpPass, rOtherProto)
	})
}

// An Ethernet trailer past the IP packet is not quoted data: the 8-byte
// TCP quote (RFC 792's minimum) has no checksum to rewrite, and the ICMP
// checksum verifies over the message.
func TestNATICMPTrailer(t *testing.T) {
	f := newNATFixture(t, natPorts())
	syn := rawTCP(client4, vip4, 40001, 80, tcpSYN, 0)
	port := f.natPort(t, append(rawEth(0x0800), rawIPv4(client4, vip4, 6, 0, 0x4000, syn)...), 34)
	sent := rawIPv4(outSrc4, routedBe4, 6, 0, 0x4000, rawTCP(outSrc4, routedBe4, port, 8080, tcpSYN, 0))
	frame := append(rawEth(0x0800), rawIPv4(gw4, outSrc4, 1, 0, 0, rawICMP(3, 4, 1400, sent[:28]))...)
	trailer := make([]byte, 16)
	out := f.expectOn(t, append(frame, trailer...), xdpTX, rNATReply)
	checkICMPv4(t, out[:len(frame)], false)
	if !bytes.Equal(out[len(frame):len(frame)+16], trailer) {
		t.Errorf("trailer rewritten: % x", out[len(frame):len(frame)+16])
	}
}

// An error about an answer xlb sent to a client (a router on the client's
// path: "fragmentation needed" for VIP:80 -> client) goes on to the
// backend, about the backend's own packet, from the NAT source.
func TestNATICMPToBackend(t *testing.T) {
	f := newNATFixture(t, natPorts())
	syn := rawTCP(client4, vip4, 40002, 80, tcpSYN, 0)
	port := f.natPort(t, append(rawEth(0x0800), rawIPv4(client4, vip4, 6, 0, 0x4000, syn)...), 34)
	sent := rawIPv4(vip4, client4, 6, 0, 0x4000, rawTCP(vip4, client4, 80, 40002, tcpACK, 1400))
	frame := append(rawEth(0x0800), rawIPv4(gw4, vip4, 1, 0, 0, rawICMP(3, 4, 1280, sent[:128]))...)
	out := f.expectOn(t, frame, xdpTX, rNATReply)
	os, od, qs, qd, qsp, qdp := checkICMPv4(t, out[:len(frame)], false)
	if os != outSrc4 || od != routedBe4 || qs != routedBe4 || qd != outSrc4 || qsp != 8080 || qdp != port {
		t.Fatalf("translated to %s -> %s about %s:%d -> %s:%d", os, od, qs, qsp, qd, qdp)
	}
}

// A nat_port_range change (reload) gives new flows the new ports, while
// flows holding old ones keep getting their answers.
func TestNATPortRangeChange(t *testing.T) {
	f := newNATFixture(t, natPorts())
	syn := rawTCP(client4, vip4, 40003, 80, tcpSYN, 0)
	port := f.natPort(t, append(rawEth(0x0800), rawIPv4(client4, vip4, 6, 0, 0x4000, syn)...), 34)
	if err := f.dp.SetNATPorts(NATPorts{First: 30000, Count: 100}); err != nil {
		t.Fatal(err)
	}
	ack := rawTCP(client4, vip4, 40003, 80, tcpACK, 10)
	if p := f.natPort(t, append(rawEth(0x0800), rawIPv4(client4, vip4, 6, 0, 0x4000, ack)...), 34); p != port {
		t.Fatalf("client side moved %d -> %d", port, p)
	}
	ans := rawTCP(routedBe4, outSrc4, 8080, port, tcpACK, 10)
	f.expectOn(t, append(rawEth(0x0800), rawIPv4(routedBe4, outSrc4, 6, 0, 0x4000, ans)...), xdpTX, rNATReply)
	syn2 := rawTCP(client4, vip4, 40004, 80, tcpSYN, 0)
	if p := f.natPort(t, append(rawEth(0x0800), rawIPv4(client4, vip4, 6, 0, 0x4000, syn2)...), 34); p < 30000 || p >= 30100 {
		t.Fatalf("new flow got port %d, want one of 30000-30099", p)
	}
}

// A VLAN-tagged client packet of a NAT service is refused and counted (NAT
// sends untagged and would answer untagged).
func TestNATVLANRefused(t *testing.T) {
	f := newNATFixture(t, natPorts())
	p := pkt{src: client4, dst: vip4, vlan: 10, proto: protoTCP, sport: 40004, dport: 80, tcpFlags: tcpSYN, checksum: true}
	f.expectOn(t, p.build(), xdpDrop, reason(bpf.XlbReasonXLB_R_DROP_NAT_VLAN))
}

// A backend's fragmented answer cannot be translated (later fragments
// carry no ports): dropped and counted, not left to the host.
func TestNATFragmentedAnswer(t *testing.T) {
	f := newNATFixture(t, natPorts())
	q := rawUDP(client4, vip4, 5353, 53, 20)
	port := f.natPort(t, append(rawEth(0x0800), rawIPv4(client4, vip4, 17, 0, 0, q)...), 34)
	ans := rawUDP(routedBe4, natSrc4, 53, port, 1000)
	f.expectOn(t, append(rawEth(0x0800), rawIPv4(routedBe4, natSrc4, 17, 0, 0x2000, ans)...), xdpDrop, rFragment)
}

// An ICMP later fragment is no ICMP error, whatever its payload looks like.
func TestNATICMPLaterFragment(t *testing.T) {
	f := newNATFixture(t, natPorts())
	syn := rawTCP(client4, vip4, 40005, 80, tcpSYN, 0)
	port := f.natPort(t, append(rawEth(0x0800), rawIPv4(client4, vip4, 6, 0, 0x4000, syn)...), 34)
	sent := rawIPv4(outSrc4, routedBe4, 6, 0, 0x4000, rawTCP(outSrc4, routedBe4, port, 8080, tcpSYN, 0))
	frame := append(rawEth(0x0800), rawIPv4(gw4, outSrc4, 1, 0, 100, rawICMP(3, 1, 0, sent))...)
	f.expectOn(t, frame, xdpPass, rOtherProto)
}

// When the route back to the clients leaves by an interface xlb cannot
// redirect to (not in tx_ports), answers go back where the client's packets
// came from: out of the receiving interface to the MAC they came from.
func TestNATAnswerFallsBackToClientHop(t *testing.T) {
	f := newNATFixture(t, natPorts())
	d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "xd0"}, PeerName: "xd1"}
	if err := f.n.h.LinkAdd(d); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"xd0", "xd1"} {
		l, err := f.n.h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.n.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	l, _ := f.n.h.LinkByName("xd0")
	a, _ := netlink.ParseAddr("198.18.30.1/24")
	a.Flags = unix.IFA_F_NODAD
	if err := f.n.h.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	if err := f.n.h.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: net.ParseIP("198.18.30.254"),
		HardwareAddr: resolvedGwMAC, State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V4}); err != nil {
		t.Fatal(err)
	}
	_, ipn, _ := net.ParseCIDR("198.18.0.0/24")
	if err := f.n.h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipn, Gw: net.ParseIP("198.18.30.254")}); err != nil {
		t.Fatal(err)
	}
	f.n.sysctl("net/ipv4/conf/xd0/forwarding", "1")
	syn := rawTCP(client4, vip4, 40006, 80, tcpSYN, 0)
	port := f.natPort(t, append(rawEth(0x0800), rawIPv4(client4, vip4, 6, 0, 0x4000, syn)...), 34)
	ans := rawTCP(routedBe4, outSrc4, 8080, port, tcpSYN|tcpACK, 0)
	out := f.expectOn(t, append(rawEth(0x0800), rawIPv4(routedBe4, outSrc4, 6, 0, 0x4000, ans)...), xdpTX, rNATReply)
	// rawEth frames come from kernelGwMAC to outMAC: the answer goes back so.
	if !bytes.Equal(out[0:6], kernelGwMAC) || !bytes.Equal(out[6:12], outMAC) {
		t.Fatalf("answer sent to %s from %s, want %s from %s", net.HardwareAddr(out[0:6]), net.HardwareAddr(out[6:12]), kernelGwMAC, outMAC)
	}
}

// Once the sweep frees the last port of an earlier range, answers are
// looked for on the current range alone: a packet to an old port is the
// host's again.
func TestNATReplyRangeNarrows(t *testing.T) {
	f := newNATFixture(t, natPorts())
	syn := rawTCP(client4, vip4, 40007, 80, tcpSYN, 0)
	port := f.natPort(t, append(rawEth(0x0800), rawIPv4(client4, vip4, 6, 0, 0x4000, syn)...), 34)
	if err := f.dp.SetNATPorts(NATPorts{First: 30000, Count: 100}); err != nil {
		t.Fatal(err)
	}
	ans := append(rawEth(0x0800), rawIPv4(routedBe4, outSrc4, 6, 0, 0x4000, rawTCP(routedBe4, outSrc4, 8080, port, tcpACK, 0))...)
	if _, err := f.dp.ExpireNAT(); err != nil {
		t.Fatal(err)
	}
	f.expectOn(t, ans, xdpTX, rNATReply) // still held: still answered

	// Every flow idle past its timeout (1 tick, from a seen floor long ago).
	f.setTimeouts(FlowTimeouts{TCPSyn: FlowTick, TCPEstablished: FlowTick, TCPClosing: FlowTick, UDP: FlowTick}, nowTick(t)-100)
	time.Sleep(3 * FlowTick)
	s, err := f.dp.ExpireNAT()
	if err != nil {
		t.Fatal(err)
	}
	if s.Expired == 0 {
		t.Fatal("the sweep freed nothing")
	}
	var r bpf.XlbNatPortRange
	if err := f.dp.NatPorts.Lookup(uint32(0), &r); err != nil {
		t.Fatal(err)
	}
	if r.ReplyFirst != 30000 || r.ReplyCount != 100 {
		t.Fatalf("answers looked for on %d+%d, want 30000+100", r.ReplyFirst, r.ReplyCount)
	}
	f.expectOn(t, ans, xdpPass, rNoService)
}

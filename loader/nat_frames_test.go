package loader

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/xlb-dev/xlb/bpf"
)

// NAT frame by frame: what leaves for each packet the program is given,
// computed independently of it (natpkt_test.go).

// natTarget is where natDesired sends a client's packet of family and
// proto: the backend, the source it leaves from and the backend's port.
func natTarget(v6 bool, proto uint8) (be, src netip.Addr, port uint16) {
	switch {
	case !v6 && proto == protoTCP:
		return routedBe4, outSrc4, 8080
	case !v6:
		return routedBe4, natSrc4, 53
	case proto == protoTCP:
		return routedBe6, outSrc6, 8080
	}
	return routedBe6, natSrc6, 53
}

// answer is the backend's answer to the client packet p that left from
// port: p's layout (tag, options, extension headers) and protocol.
func answer(p pkt, port uint16, payload int) pkt {
	be, src, bport := natTarget(p.src.Is6(), p.proto)
	a := p
	a.srcMAC, a.dstMAC = kernelGwMAC, outMAC
	a.src, a.dst, a.sport, a.dport = be, src, bport, port
	a.payload = payload
	if a.proto == protoTCP {
		a.tcpFlags = tcpACK
	}
	return a
}

// sendOn runs the client's packet p on f and checks it left translated,
// toward the router (the FIB's next hop); it returns the allocated port.
func (f *natFixture) sendOn(t *testing.T, p pkt) uint16 {
	t.Helper()
	out := f.expectOn(t, p.build(), xdpTX, rTX)
	port := binary.BigEndian.Uint16(out[p.l4Offset():])
	be, src, bport := natTarget(p.src.Is6(), p.proto)
	checkTranslated(t, p, out, kernelGwMAC, outMAC, src, be, port, bport)
	return port
}

// clientRoutes routes the clients' networks through the router, with mtu
// (0: the interface's). The MTU is locked: the kernel forwards (and
// bpf_fib_lookup measures) by the interface's MTU otherwise.
func (f *natFixture) clientRoutes(t testing.TB, mtu int) {
	t.Helper()
	for dst, gw := range map[string]netip.Addr{"198.18.0.0/24": gw4, "2001:db8:18::/64": gw6} {
		_, ipn, _ := net.ParseCIDR(dst)
		if err := f.n.h.RouteAdd(&netlink.Route{LinkIndex: f.n.out, Dst: ipn, Gw: gw.AsSlice(), MTU: mtu, MTULock: mtu > 0}); err != nil {
			t.Fatal(err)
		}
	}
}

// The layouts a translation must keep, both ways, TCP and UDP: IPv4
// options (with DSCP and ECN), IPv6 extension headers (with a traffic
// class). VLAN-tagged clients are refused (TestNATVLANRefused). The answers
// go back where the client's packets came from (no route to it).
func TestNATLayouts(t *testing.T) {
	f := newNATFixture(t, natPorts())
	for i, tc := range []struct {
		name string
		p    pkt
	}{
		{"ipv4 tcp options", pkt{src: client4, dst: vip4, proto: protoTCP, dport: 80, tcpFlags: tcpSYN, df: true, ipOptions: 3, payload: 9}},
		{"ipv4 tcp long options", pkt{src: client4, dst: vip4, proto: protoTCP, dport: 80, tcpFlags: tcpACK, ipOptions: 10, payload: 20}},
		{"ipv4 udp options", pkt{src: client4, dst: vip4, proto: protoUDP, dport: 53, ipOptions: 1, tos: 0xb9, payload: 64}},
		{"ipv6 tcp extension headers", pkt{src: client6, dst: vip6, proto: protoTCP, dport: 80, tcpFlags: tcpACK, proto6Ext: []uint8{0, 60}, payload: 100}},
		{"ipv6 tcp one extension header", pkt{src: client6, dst: vip6, proto: protoTCP, dport: 80, tcpFlags: tcpSYN, proto6Ext: []uint8{60}, payload: 20}},
		{"ipv6 udp extension headers", pkt{src: client6, dst: vip6, proto: protoUDP, dport: 53, proto6Ext: []uint8{60}, tos: 0x2e, payload: 7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.p
			p.sport, p.checksum = uint16(41000+i), true
			port := f.sendOn(t, p)
			a := answer(p, port, 45)
			out := f.expectOn(t, a.build(), xdpTX, rNATReply)
			checkTranslated(t, a, out, clientMAC, lbMAC, p.dst, p.src, p.dport, p.sport)
		})
	}
}

// One IPv4 and one IPv6 frame spelled out, checksums included (computed by
// hand, apart from the test's helpers): a SYN leaving for the backend from
// the host's address and the range's only port, and a UDP answer leaving
// from the VIP back to where the client's query came from.
func TestNATGolden(t *testing.T) {
	f := newNATFixture(t, NATPorts{First: 20000, Count: 1})
	syn := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 40000, dport: 80, tcpFlags: tcpSYN, df: true, checksum: true}
	out := f.expectOn(t, syn.build(), xdpTX, rTX)
	want := mustHex(`
		020000 0005fe 020000 000501 0800
		4500 0028 1234 4000 4006 8e6b c612 0501 c612 090b
		4e20 1f90 0000 03e8 0000 0000 5002 ffff a419 0000`)
	if !bytes.Equal(out[:len(want)], want) {
		t.Fatalf("ipv4 SYN\n got %x\nwant %x", out[:len(want)], want)
	}

	q := pkt{src: client6, dst: vip6, proto: protoUDP, sport: 5000, dport: 53, payload: 4, checksum: true}
	if port := f.sendOn(t, q); port != 20000 {
		t.Fatalf("query left from port %d, want 20000", port)
	}
	a := answer(q, 20000, 4)
	out = f.expectOn(t, a.build(), xdpTX, rNATReply)
	want = mustHex(`
		020000 000064 020000 000002 86dd
		6000 0000 000c 1140
		2001 0db8 0019 0000 0000 0000 0000 0010
		2001 0db8 0018 0000 0000 0000 0000 0100
		0035 1388 000c 8d62 0001 0203`)
	if !bytes.Equal(out[:len(want)], want) {
		t.Fatalf("ipv6 UDP answer\n got %x\nwant %x", out[:len(want)], want)
	}
}

// zeroSumWord sets the first payload word of in, a UDP frame laid out as p,
// so that in translated to src:sport -> dst:dport has a checksum that
// computes to 0 (sent as 0xffff), and gives in a valid checksum of its own.
func zeroSumWord(t *testing.T, in []byte, p pkt, src, dst netip.Addr, sport, dport uint16) {
	t.Helper()
	l4 := p.l4Offset()
	seg := bytes.Clone(in[l4:ipEnd(in, p.l3Offset())])
	binary.BigEndian.PutUint16(seg[0:], sport)
	binary.BigEndian.PutUint16(seg[2:], dport)
	binary.BigEndian.PutUint16(seg[6:], 0)
	binary.BigEndian.PutUint16(seg[8:], 0)
	// The checksum of the rest is the word that makes the sum 0xffff.
	binary.BigEndian.PutUint16(in[l4+8:], transportChecksum(src, dst, protoUDP, seg))
	reChecksum(in, p)
	if binary.BigEndian.Uint16(in[l4+6:]) == 0xffff {
		t.Fatal("the untranslated packet's checksum computes to 0 as well: no change to test")
	}
}

// A UDP checksum the translation makes compute to 0 is sent as 0xffff, both
// ways (RFC 768; over IPv6 too, where 0 would mean invalid).
func TestNATUDPZeroChecksum(t *testing.T) {
	f := newNATFixture(t, NATPorts{First: 20000, Count: 1})
	for _, tc := range []struct {
		name        string
		client, vip netip.Addr
	}{{"ipv4", client4, vip4}, {"ipv6", client6, vip6}} {
		t.Run(tc.name, func(t *testing.T) {
			be, src, bport := natTarget(tc.vip.Is6(), protoUDP)
			q := pkt{src: tc.client, dst: tc.vip, proto: protoUDP, sport: 6000, dport: 53, payload: 16, checksum: true}
			in := q.build()
			zeroSumWord(t, in, q, src, be, 20000, bport)
			out := f.expectOn(t, in, xdpTX, rTX)
			checkTranslatedFrom(t, in, q, out, kernelGwMAC, outMAC, src, be, 20000, bport)
			if c := binary.BigEndian.Uint16(out[q.l4Offset()+6:]); c != 0xffff {
				t.Fatalf("query's UDP checksum %#04x, want 0xffff", c)
			}

			a := answer(q, 20000, 16)
			in = a.build()
			zeroSumWord(t, in, a, tc.vip, tc.client, 53, 6000)
			out = f.expectOn(t, in, xdpTX, rNATReply)
			checkTranslatedFrom(t, in, a, out, clientMAC, lbMAC, tc.vip, tc.client, 53, 6000)
			if c := binary.BigEndian.Uint16(out[a.l4Offset()+6:]); c != 0xffff {
				t.Fatalf("answer's UDP checksum %#04x, want 0xffff", c)
			}
		})
	}
}

// A NAT service's fragments carry no ports to translate (the later ones)
// or cannot be translated alone: all are dropped and counted, and take no
// port and no connection table entry.
func TestNATFragments(t *testing.T) {
	f := newNATFixture(t, natPorts())
	for _, tc := range []struct {
		name string
		p    pkt
	}{
		{"ipv4 tcp first", pkt{src: client4, dst: vip4, proto: protoTCP, dport: 80, tcpFlags: tcpSYN, moreFragments: true, payload: 64}},
		{"ipv4 tcp later", pkt{src: client4, dst: vip4, proto: protoTCP, fragOffset: 8, payload: 64}},
		{"ipv4 udp first", pkt{src: client4, dst: vip4, proto: protoUDP, dport: 53, moreFragments: true, payload: 64}},
		{"ipv4 udp last", pkt{src: client4, dst: vip4, proto: protoUDP, fragOffset: 8, payload: 20}},
		{"ipv6 tcp first", pkt{src: client6, dst: vip6, proto: protoTCP, dport: 80, tcpFlags: tcpSYN, moreFragments: true, payload: 64}},
		{"ipv6 udp later", pkt{src: client6, dst: vip6, proto: protoUDP, fragOffset: 8, moreFragments: true, payload: 64}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.p
			p.sport = 7000
			f.expectOn(t, p.build(), xdpDrop, rFragment)
		})
	}
	if n := f.portsInUse(t); len(n) != 0 {
		t.Fatalf("fragments took ports: %v", n)
	}
	// Nor did they leave connection table entries behind.
	n := 0
	if err := f.dp.walkFlows(func(bpf.XlbFlowKey, bpf.XlbFlowValue) { n++ }); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("fragments left %d connection table entries", n)
	}
}

func (f *natFixture) portsInUse(t testing.TB) map[uint32]int {
	t.Helper()
	n, err := f.dp.NATPortsInUse()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A client's packet too big for the route to the backend is answered from
// the VIP (as the client sent it): ICMP "fragmentation needed" / ICMPv6
// "packet too big" with the route's MTU. A backend's answer too big for the
// route to the client is answered from the LB's source to the backend. An
// IPv4 packet without DF is dropped; one byte less goes through.
func TestNATTooBig(t *testing.T) {
	f := newNATFixture(t, natPorts())
	const clientMTU = 1400
	f.clientRoutes(t, clientMTU)
	tcp := func(client, vip netip.Addr, sport uint16, df bool, ipLen int) pkt {
		hdr := 40
		if client.Is6() {
			hdr = 60
		}
		return pkt{src: client, dst: vip, proto: protoTCP, sport: sport, dport: 80, tcpFlags: tcpACK, df: df, payload: ipLen - hdr, checksum: true}
	}
	quote := func(in []byte, v6 bool) []byte {
		if v6 {
			return in[14 : 14+256]
		}
		return in[14 : 14+128]
	}
	for _, fam := range []struct {
		name        string
		client, vip netip.Addr
		typ, code   uint8
	}{{"ipv4", client4, vip4, 3, 4}, {"ipv6", client6, vip6, 2, 0}} {
		v6 := fam.vip.Is6()
		be, src, _ := natTarget(v6, protoTCP)
		t.Run(fam.name+"/to the backend", func(t *testing.T) {
			in := tcp(fam.client, fam.vip, 100, true, outMTU+1).build()
			out := f.expectOn(t, in, xdpTX, rICMPTooBig)
			want := icmpError(clientMAC, lbMAC, fam.vip, fam.client, fam.typ, fam.code, outMTU, quote(in, v6))
			if !bytes.Equal(out[:len(want)], want) {
				t.Fatalf("ICMP answer\n got %x\nwant %x", out[:len(want)], want)
			}
			checkICMPChecksums(t, out[:len(want)])
			f.sendOn(t, tcp(fam.client, fam.vip, 101, true, outMTU))
			if !v6 {
				f.expectOn(t, tcp(fam.client, fam.vip, 102, false, outMTU+1).build(), xdpDrop, rTooBig)
			}
		})
		t.Run(fam.name+"/to the client", func(t *testing.T) {
			p := tcp(fam.client, fam.vip, 200, true, 100)
			port := f.sendOn(t, p)
			a := answer(p, port, clientMTU+1-(p.l4Offset()-14)-20)
			a.df = true
			in := a.build()
			out := f.expectOn(t, in, xdpTX, rICMPTooBig)
			want := icmpError(kernelGwMAC, outMAC, src, be, fam.typ, fam.code, clientMTU, quote(in, v6))
			if !bytes.Equal(out[:len(want)], want) {
				t.Fatalf("ICMP answer\n got %x\nwant %x", out[:len(want)], want)
			}
			checkICMPChecksums(t, out[:len(want)])

			a.payload--
			out = f.expectOn(t, a.build(), xdpTX, rNATReply)
			checkTranslated(t, a, out, kernelGwMAC, outMAC, fam.vip, fam.client, 80, 200)
			if !v6 {
				a.payload++
				a.df = false
				f.expectOn(t, a.build(), xdpDrop, rTooBig)
			}
		})
	}
}

// A backend the FIB calls unreachable is a counted drop, and takes no port.
func TestNATNoRoute(t *testing.T) {
	f := newNATFixture(t, natPorts())
	d := natDesired()
	d.Services = append(d.Services,
		natService(vip4, 82, protoTCP, netip.Addr{}, 8080, blackholeBe4),
		natService(vip6, 82, protoTCP, netip.Addr{}, 8080, blackholeBe6))
	f.apply(d)
	for _, client := range []netip.Addr{client4, client6} {
		vip := vip4
		if client.Is6() {
			vip = vip6
		}
		p := pkt{src: client, dst: vip, proto: protoTCP, sport: 1, dport: 82, tcpFlags: tcpSYN, checksum: true}
		f.expectOn(t, p.build(), xdpDrop, rNoRoute)
	}
	if n := f.portsInUse(t); len(n) != 0 {
		t.Fatalf("unroutable flows took ports: %v", n)
	}
}

// ICMP errors about a NAT flow, from its backend or a router on the way,
// quote the packet the LB sent (LB source:port -> backend:port): they leave
// from the VIP to the client quoting the client's packet (client:port ->
// VIP:port), every checksum updated: the outer IPv4 header's, the ICMP
// message's (ICMPv6: its pseudo-header too), the quoted IPv4 header's and
// the quoted transport checksum when quoted. Errors quoting a flow xlb does
// not know pass to the kernel.
func TestNATICMPErrors(t *testing.T) {
	f := newNATFixture(t, natPorts())
	router4, router6 := netip.MustParseAddr("198.18.9.1"), netip.MustParseAddr("2001:db8:9::1")
	ports := map[string]uint16{}
	for _, tc := range []struct {
		name        string
		from        netip.Addr // the error's source: the backend or a router
		client, vip netip.Addr
		proto       uint8
		typ, code   uint8
		rest        uint32 // the MTU of a too-big error
		payload     int    // of the quoted packet
		quoted      int    // bytes quoted (0: all)
		known       bool   // the quote names a flow with a port
	}{
		{"ipv4 port unreachable from the backend", routedBe4, client4, vip4, protoUDP, 3, 3, 0, 20, 0, true},
		{"ipv4 frag needed from a router, 8 bytes quoted", router4, client4, vip4, protoTCP, 3, 4, 1400, 1000, 28, true},
		{"ipv4 frag needed from a router, 548 bytes quoted", router4, client4, vip4, protoTCP, 3, 4, 1400, 1000, 548, true},
		{"ipv4 port unreachable quoting an unknown flow", routedBe4, client4, vip4, protoUDP, 3, 3, 0, 20, 0, false},
		{"ipv6 port unreachable from the backend", routedBe6, client6, vip6, protoUDP, 1, 4, 0, 20, 0, true},
		{"ipv6 destination unreachable from a router", router6, client6, vip6, protoTCP, 1, 3, 0, 30, 0, true},
		{"ipv6 packet too big from a router", router6, client6, vip6, protoTCP, 2, 0, 1400, 1400, 1232, true},
		{"ipv6 packet too big quoting an unknown flow", router6, client6, vip6, protoTCP, 2, 0, 1400, 1400, 1232, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v6 := tc.vip.Is6()
			be, src, bport := natTarget(v6, tc.proto)
			p := pkt{src: tc.client, dst: tc.vip, proto: tc.proto, sport: 9000, dport: bport, df: true, payload: tc.payload, checksum: true}
			if tc.proto == protoTCP {
				p.tcpFlags, p.dport = tcpACK, 80
			}
			key := fmt.Sprint(v6, tc.proto)
			port, ok := ports[key]
			if !ok {
				port = f.sendOn(t, p)
				ports[key] = port
			}
			if !tc.known {
				port = natPorts().First + (port-natPorts().First+1)%uint16(natPorts().Count)
			}
			sent := p
			sent.src, sent.dst, sent.sport, sent.dport = src, be, port, bport
			q := sent.build()[14:]
			cq := p.build()[14:]
			if tc.quoted > 0 {
				q, cq = q[:tc.quoted], cq[:tc.quoted]
			}
			in := icmpError(outMAC, kernelGwMAC, tc.from, src, tc.typ, tc.code, tc.rest, q)
			if !tc.known {
				out := f.expectOn(t, in, xdpPass, rOtherProto)
				if !bytes.Equal(out[:len(in)], in) {
					t.Fatalf("passed ICMP error modified:\n got %x\nwant %x", out[:len(in)], in)
				}
				return
			}
			out := f.expectOn(t, in, xdpTX, rNATReply)[:len(in)]
			want := icmpError(clientMAC, lbMAC, tc.vip, tc.client, tc.typ, tc.code, tc.rest, cq)
			if !bytes.Equal(out, want) {
				t.Fatalf("translated ICMP error\n got %x\nwant %x", out, want)
			}
			checkICMPChecksums(t, out)
		})
	}
}

// An IPv4 ICMP packet that is a fragment is no error xlb can translate: a
// later fragment has no ICMP header, and the first one's message goes on
// past it. Both pass to the kernel as they came, however much they look
// like an error about a NAT flow (IPv6 fragments are told apart the same
// way).
func TestNATICMPFragments(t *testing.T) {
	f := newNATFixture(t, natPorts())
	for _, client := range []netip.Addr{client4, client6} {
		vip := vip4
		if client.Is6() {
			vip = vip6
		}
		be, src, bport := natTarget(client.Is6(), protoUDP)
		p := pkt{src: client, dst: vip, proto: protoUDP, sport: 9100, dport: 53, payload: 20, checksum: true}
		port := f.sendOn(t, p)
		sent := p
		sent.src, sent.dst, sent.sport, sent.dport = src, be, port, bport
		in := icmpError(outMAC, kernelGwMAC, be, src, 3, 3, 0, sent.build()[14:])
		if client.Is6() {
			in = icmpError(outMAC, kernelGwMAC, be, src, 1, 4, 0, sent.build()[14:])
		}
		for _, frag := range []struct {
			name string
			off  uint16 // in 8-byte units
			more bool
		}{{"first", 0, true}, {"later", 8, true}, {"last", 8, false}} {
			t.Run(fmt.Sprintf("%s %s", map[bool]string{false: "ipv4", true: "ipv6"}[client.Is6()], frag.name), func(t *testing.T) {
				fr := fragmentOf(in, frag.off, frag.more)
				out := f.expectOn(t, fr, xdpPass, rOtherProto)
				if !bytes.Equal(out[:len(fr)], fr) {
					t.Fatalf("passed fragment modified:\n got %x\nwant %x", out[:len(fr)], fr)
				}
			})
		}
	}
}

// fragmentOf is the unfragmented frame in (untagged) made a fragment at
// offset off (8-byte units) with more fragments to come or not: for IPv4
// the header's fields (checksum recomputed), for IPv6 a fragment header
// inserted; the payload as it was.
func fragmentOf(in []byte, off uint16, more bool) []byte {
	fo := off << 3
	if in[14]>>4 == 4 {
		out := bytes.Clone(in)
		v := off
		if more {
			v |= 0x2000
		}
		binary.BigEndian.PutUint16(out[14+6:], v)
		binary.BigEndian.PutUint16(out[14+10:], 0)
		binary.BigEndian.PutUint16(out[14+10:], ipChecksum(out[14:34]))
		return out
	}
	if more {
		fo |= 1
	}
	fh := []byte{in[14+6], 0, byte(fo >> 8), byte(fo), 0, 0, 0xab, 0xcd}
	out := append(bytes.Clone(in[:54]), fh...)
	out = append(out, in[54:]...)
	out[14+6] = 44
	binary.BigEndian.PutUint16(out[14+4:], binary.BigEndian.Uint16(in[14+4:])+8)
	return out
}

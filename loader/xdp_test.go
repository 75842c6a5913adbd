package loader

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/bpf"
)

// The standard fixture: L4 and L7 services on shared VIPs, both families.
func standardDesired() Desired {
	return Desired{RingSize: 65537, Services: []ServiceSpec{
		webService(vip4, 80, protoTCP, HashIP, be4),
		webService(vip4, 53, protoUDP, HashFlow, be4),
		{Name: "web-l7", VIP: vip4, Port: 443, Proto: protoTCP, Kind: KindL7},
		webService(vip6, 80, protoTCP, HashIP, be6),
		webService(vip6, 53, protoUDP, HashIP, be6),
	}}
}

func reason(r bpf.XlbReason) int { return int(r) }

var (
	rTX          = reason(bpf.XlbReasonXLB_R_TX)
	rNotIP       = reason(bpf.XlbReasonXLB_R_PASS_NOT_IP)
	rMalformed   = reason(bpf.XlbReasonXLB_R_PASS_MALFORMED)
	rOtherProto  = reason(bpf.XlbReasonXLB_R_PASS_OTHER_PROTO)
	rNoService   = reason(bpf.XlbReasonXLB_R_PASS_NO_SERVICE)
	rL7          = reason(bpf.XlbReasonXLB_R_PASS_L7)
	rNoBackend   = reason(bpf.XlbReasonXLB_R_DROP_NO_BACKEND)
	rTruncated   = reason(bpf.XlbReasonXLB_R_DROP_TRUNCATED)
	rFragment    = reason(bpf.XlbReasonXLB_R_DROP_FRAGMENT)
	rRedirect    = reason(bpf.XlbReasonXLB_R_REDIRECT)
	rNoTxPort    = reason(bpf.XlbReasonXLB_R_DROP_NO_TX_PORT)
	verdictNames = map[uint32]string{xdpDrop: "DROP", xdpPass: "PASS", xdpTX: "TX", xdpRedirect: "REDIRECT", tcRedirect: "TC_ACT_REDIRECT"}
)

// expectCounted runs data and checks the verdict and that exactly one packet
// of len(data) bytes was counted, under wantReason. It returns the frame the
// program left.
func (f *fixture) expectCounted(t *testing.T, data []byte, wantVerdict uint32, wantReason int) []byte {
	t.Helper()
	before := f.reasons()
	ret, out := f.runSized(data)
	if !f.is(ret, wantVerdict) {
		t.Fatalf("verdict %s, want %s", verdictNames[ret], verdictNames[wantVerdict])
	}
	after := f.reasons()
	for i := range after {
		d := after[i].Packets - before[i].Packets
		want := uint64(0)
		if i == wantReason {
			want = 1
		}
		if d != want {
			t.Fatalf("reason %s counted %d packets, want %d", ReasonName(i), d, want)
		}
	}
	if after[wantReason].Bytes-before[wantReason].Bytes != uint64(len(data)) {
		t.Fatalf("reason %s bytes grew by %d, want %d", ReasonName(wantReason),
			after[wantReason].Bytes-before[wantReason].Bytes, len(data))
	}
	return out
}

// expectOne is expectCounted for a frame the program may change only the
// MACs of, on XDP_TX and XDP_REDIRECT.
func (f *fixture) expectOne(t *testing.T, data []byte, wantVerdict uint32, wantReason int) []byte {
	t.Helper()
	out := f.expectCounted(t, data, wantVerdict, wantReason)
	if len(out) != len(data) {
		t.Fatalf("frame of %d bytes became %d", len(data), len(out))
	}
	if wantVerdict == xdpTX || wantVerdict == xdpRedirect {
		if !bytes.Equal(out[6:12], lbMAC) {
			t.Fatalf("source MAC %s, want the interface's %s", net.HardwareAddr(out[6:12]), lbMAC)
		}
		if !bytes.Equal(out[12:], data[12:]) {
			t.Fatalf("bytes past the MACs changed:\n got %x\nwant %x", out[12:], data[12:])
		}
	} else if !bytes.Equal(out, data) {
		t.Fatalf("packet modified on %s", verdictNames[wantVerdict])
	}
	return out
}

func TestXDPFixtures(t *testing.T) { forBuilds(t, testXDPFixtures) }

func testXDPFixtures(t *testing.T, b build) {
	d := standardDesired()
	f := newFixtureFor(t, b, d)
	tcp4 := d.Services[0]
	udp4 := d.Services[1]
	tcp6 := d.Services[3]
	udp6 := d.Services[4]
	other4 := netip.MustParseAddr("198.19.0.99")

	cases := []struct {
		name    string
		p       pkt
		verdict uint32
		reason  int
		svc     *ServiceSpec // when set: TX to the backend Go predicts
	}{
		{"ipv4 tcp syn", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 40000, dport: 80, tcpFlags: tcpSYN}, xdpTX, rTX, &tcp4},
		{"ipv4 tcp data", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 40001, dport: 80, tcpFlags: tcpACK, payload: 100}, xdpTX, rTX, &tcp4},
		{"ipv4 udp flow_hash", pkt{src: client4, dst: vip4, proto: protoUDP, sport: 5353, dport: 53, payload: 30}, xdpTX, rTX, &udp4},
		{"ipv6 tcp", pkt{src: client6, dst: vip6, proto: protoTCP, sport: 40000, dport: 80, tcpFlags: tcpSYN}, xdpTX, rTX, &tcp6},
		{"ipv6 udp", pkt{src: client6, dst: vip6, proto: protoUDP, sport: 5353, dport: 53, payload: 12}, xdpTX, rTX, &udp6},
		{"vlan tagged ipv4", pkt{vlan: 42, src: client4, dst: vip4, proto: protoTCP, sport: 40002, dport: 80, tcpFlags: tcpSYN}, xdpTX, rTX, &tcp4},
		{"vlan tagged ipv6", pkt{vlan: 7, src: client6, dst: vip6, proto: protoUDP, sport: 1, dport: 53}, xdpTX, rTX, &udp6},
		{"ipv4 with options", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 40003, dport: 80, ipOptions: 3, tcpFlags: tcpSYN}, xdpTX, rTX, &tcp4},
		{"ipv4 max options", pkt{src: client4, dst: vip4, proto: protoUDP, sport: 40003, dport: 53, ipOptions: 10}, xdpTX, rTX, &udp4},
		{"ipv6 ext headers", pkt{src: client6, dst: vip6, proto: protoTCP, sport: 40004, dport: 80, proto6Ext: []uint8{0, 60}}, xdpTX, rTX, &tcp6},
		{"non-VIP ipv4", pkt{src: client4, dst: other4, proto: protoTCP, sport: 1, dport: 80}, xdpPass, rNoService, nil},
		{"non-VIP ipv6", pkt{src: client6, dst: netip.MustParseAddr("2001:db8:19::99"), proto: protoUDP, sport: 1, dport: 53}, xdpPass, rNoService, nil},
		{"wrong port", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1, dport: 81}, xdpPass, rNoService, nil},
		{"wrong protocol for port", pkt{src: client4, dst: vip4, proto: protoUDP, sport: 1, dport: 80}, xdpPass, rNoService, nil},
		{"port 0 is not a service", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1, dport: 0}, xdpPass, rNoService, nil},
		{"L7 VIP port", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 40000, dport: 443, tcpFlags: tcpSYN}, xdpPass, rL7, nil},
		{"ICMP to VIP", pkt{src: client4, dst: vip4, proto: 1, payload: 16}, xdpPass, rOtherProto, nil},
		{"ARP", pkt{etherType: 0x0806}, xdpPass, rNotIP, nil},
		{"double VLAN tag", pkt{vlan: 5, etherType: 0x8100}, xdpPass, rNotIP, nil},
		{"ipv4 first fragment ip_hash", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 40005, dport: 80, moreFragments: true, payload: 64}, xdpTX, rTX, &tcp4},
		{"ipv4 later fragment, VIP shared by two tcp services", pkt{src: client4, dst: vip4, proto: protoTCP, fragOffset: 10, payload: 64}, xdpDrop, rFragment, nil},
		{"ipv4 first fragment flow_hash", pkt{src: client4, dst: vip4, proto: protoUDP, sport: 1, dport: 53, moreFragments: true, payload: 64}, xdpDrop, rFragment, nil},
		{"ipv4 later fragment flow_hash", pkt{src: client4, dst: vip4, proto: protoUDP, fragOffset: 185, payload: 64}, xdpDrop, rFragment, nil},
		{"ipv4 later fragment non-VIP", pkt{src: client4, dst: other4, proto: protoUDP, fragOffset: 185, payload: 64}, xdpPass, rNoService, nil},
		{"ipv6 first fragment ip_hash", pkt{src: client6, dst: vip6, proto: protoUDP, sport: 1, dport: 53, moreFragments: true, payload: 64}, xdpTX, rTX, &udp6},
		{"ipv6 later fragment ip_hash", pkt{src: client6, dst: vip6, proto: protoUDP, fragOffset: 100, payload: 64}, xdpTX, rTX, &udp6},
		{"ipv6 later last fragment tcp", pkt{src: client6, dst: vip6, proto: protoTCP, fragOffset: 100, payload: 8}, xdpTX, rTX, &tcp6},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.p.build()
			out := f.expectOne(t, data, tc.verdict, tc.reason)
			if tc.svc != nil {
				want := f.predict(*tc.svc, tc.p.src, tc.p.sport)
				if got := backendOf(t, out, append(be4, be6...)); got != want {
					t.Fatalf("went to %s, Go predicts %s", got, want)
				}
			}
		})
	}
}

// Fragments of one datagram to an ip_hash service land on one backend.
func TestXDPFragmentsFollowSource(t *testing.T) { forBuilds(t, testXDPFragmentsFollowSource) }

func testXDPFragmentsFollowSource(t *testing.T, b build) {
	d := standardDesired()
	f := newFixtureFor(t, b, d)
	for i := range 50 {
		src := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x18, 14: byte(i), 15: 7})
		first := pkt{src: src, dst: vip6, proto: protoUDP, sport: 9, dport: 53, moreFragments: true, payload: 40}
		later := pkt{src: src, dst: vip6, proto: protoUDP, fragOffset: 6, payload: 40}
		_, o1 := f.run(first.build())
		_, o2 := f.run(later.build())
		if !bytes.Equal(o1[:6], o2[:6]) {
			t.Fatalf("%s: first fragment to %s, later one to %s", src, net.HardwareAddr(o1[:6]), net.HardwareAddr(o2[:6]))
		}
	}
}

// Every prefix of a valid packet gets a defined verdict. Cut as it is, its IP
// header claims more than the frame holds: pass/malformed. With the IP length
// cut to match, it is PASS while the L2/L3 headers are incomplete, DROP once
// it is known to be for an L4 VIP but its transport header is cut, TX when the
// transport header is complete.
// An IPv6 payload length of 0 means a packet past 64 KiB: generic XDP sees
// GRO-built BIG TCP packets so, with no jumbo option. The frame gives the
// length, and the packet goes where the same one with its length would.
func TestXDPIPv6PayloadLenZero(t *testing.T) { forBuilds(t, testXDPIPv6PayloadLenZero) }

func testXDPIPv6PayloadLenZero(t *testing.T, b build) {
	f := newFixtureFor(t, b, standardDesired())
	for _, tc := range []struct {
		name string
		p    pkt
	}{
		{"tcp", pkt{src: client6, dst: vip6, proto: protoTCP, sport: 40000, dport: 80, tcpFlags: tcpACK, payload: 1000}},
		{"udp", pkt{src: client6, dst: vip6, proto: protoUDP, sport: 40001, dport: 53, payload: 100}},
		{"tcp behind an extension header", pkt{src: client6, dst: vip6, proto: protoTCP, sport: 40002, dport: 80, tcpFlags: tcpACK, payload: 10, proto6Ext: []uint8{0}}},
		{"multi-buffer", pkt{src: client6, dst: vip6, proto: protoUDP, sport: 40003, dport: 53, payload: 8938}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if f.tc && tc.name == "multi-buffer" {
				t.Skip("BPF_PROG_TEST_RUN takes an skb of a page at most")
			}
			data := tc.p.build()
			retWant, want := f.run(slices.Clone(data))
			zero := tc.p.setIPLength(data, 40) // payload length 0
			before := f.reasons()[rTX].Packets
			ret, got := f.run(zero)
			if !f.is(ret, xdpTX) || !f.is(retWant, xdpTX) || f.reasons()[rTX].Packets != before+1 {
				t.Fatalf("verdict %s (with its length: %s), want TX counted as forwarded", verdictNames[ret], verdictNames[retWant])
			}
			if !bytes.Equal(got[:6], want[:6]) {
				t.Fatalf("sent to %x, the same packet with its length to %x", got[:6], want[:6])
			}
		})
	}
}

func TestXDPTruncation(t *testing.T) { forBuilds(t, testXDPTruncation) }

func testXDPTruncation(t *testing.T, b build) {
	f := newFixtureFor(t, b, standardDesired())
	bases := []struct {
		name string
		p    pkt
	}{
		{"ipv4 tcp", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1000, dport: 80, payload: 10}},
		{"ipv4 udp", pkt{src: client4, dst: vip4, proto: protoUDP, sport: 1000, dport: 53, payload: 10}},
		{"ipv4 options tcp", pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1000, dport: 80, ipOptions: 2}},
		{"vlan ipv4 tcp", pkt{vlan: 9, src: client4, dst: vip4, proto: protoTCP, sport: 1000, dport: 80}},
		{"ipv6 tcp", pkt{src: client6, dst: vip6, proto: protoTCP, sport: 1000, dport: 80, payload: 10}},
		{"ipv6 udp", pkt{src: client6, dst: vip6, proto: protoUDP, sport: 1000, dport: 53}},
		{"ipv6 ext tcp", pkt{src: client6, dst: vip6, proto: protoTCP, sport: 1000, dport: 80, proto6Ext: []uint8{0}}},
	}
	for _, b := range bases {
		full := b.p.build()
		l3 := b.p.l3Offset()
		l3min := l3 + 20 + 4*b.p.ipOptions
		if b.p.src.Is6() {
			l3min = l3 + 40
		}
		l4 := b.p.l4Offset()
		l4min := l4 + 20
		if b.p.proto == protoUDP {
			l4min = l4 + 8
		}
		first := 14
		if f.tc && b.p.vlan == 0 {
			// BPF_PROG_TEST_RUN takes no IP skb without its fixed IP header.
			first = l3 + 20
			if b.p.src.Is6() {
				first = l3 + 40
			}
		}
		for n := first; n <= len(full); n++ {
			cut := slices.Clone(full[:n])
			want, reasonWant := uint32(xdpPass), rMalformed
			if n == len(full) {
				want, reasonWant = xdpTX, rTX
			}
			t.Run(fmt.Sprintf("%s/%d", b.name, n), func(t *testing.T) {
				f.expectOne(t, cut, want, reasonWant)
			})
			if n < l3min {
				continue // no IP length to fix
			}
			want, reasonWant = xdpTX, rTX
			if n < l4min {
				want, reasonWant = xdpDrop, rTruncated
			}
			t.Run(fmt.Sprintf("%s/%d/length-fixed", b.name, n), func(t *testing.T) {
				f.expectOne(t, b.p.setIPLength(cut, n-l3), want, reasonWant)
			})
		}
	}
}

// Malformed headers get defined verdicts too. An IP length beyond the frame is
// malformed wherever the packet goes; one that ends inside the transport
// header (the frame padded, as Ethernet pads short frames) cuts that header.
func TestXDPMalformed(t *testing.T) { forBuilds(t, testXDPMalformed) }

func testXDPMalformed(t *testing.T, b build) {
	f := newFixtureFor(t, b, standardDesired())
	base := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1000, dport: 80}
	base6 := pkt{src: client6, dst: vip6, proto: protoUDP, sport: 1000, dport: 53}
	mutate := func(p pkt, fn func(b []byte)) []byte {
		b := p.build()
		fn(b)
		return b
	}
	// ipLen builds p with its IP length set to n (total length for IPv4,
	// the header included; payload length plus 40 for IPv6). Below the
	// frame's length, the rest of the frame is padding.
	ipLen := func(p pkt, n int) []byte { return p.setIPLength(p.build(), n) }
	padded := func(p pkt, to int) []byte {
		b := p.build()
		return append(b, make([]byte, to-len(b))...)
	}
	shortUDP := pkt{src: client4, dst: vip4, proto: protoUDP, sport: 1000, dport: 53, payload: 2}
	cases := []struct {
		name    string
		data    []byte
		verdict uint32
		reason  int
	}{
		{"ihl below 5", mutate(base, func(b []byte) { b[14] = 0x44 }), xdpPass, rMalformed},
		{"ihl beyond packet", mutate(base, func(b []byte) { b[14] = 0x4f }), xdpPass, rMalformed},
		{"version 6 in ipv4 frame", mutate(base, func(b []byte) { b[14] = 0x65 }), xdpPass, rMalformed},
		{"total length below header", ipLen(base, 10), xdpPass, rMalformed},
		{"total length one beyond the frame", ipLen(base, 41), xdpPass, rMalformed},
		{"total length beyond the frame, not a VIP", ipLen(pkt{src: client4, dst: netip.MustParseAddr("198.19.0.99"), proto: protoTCP, sport: 1, dport: 80}, 1500), xdpPass, rMalformed},
		{"total length beyond the frame, other protocol", ipLen(pkt{src: client4, dst: vip4, proto: 1, payload: 8}, 64), xdpPass, rMalformed},
		{"ipv6 payload length one beyond the frame", ipLen(base6, 49), xdpPass, rMalformed},
		{"ipv6 payload length beyond the frame, not a VIP", ipLen(pkt{src: client6, dst: netip.MustParseAddr("2001:db8:19::99"), proto: protoTCP, sport: 1, dport: 80}, 1500), xdpPass, rMalformed},
		{"ipv4 frame padded to 60 bytes", padded(shortUDP, 60), xdpTX, rTX},
		{"ipv6 frame padded past the packet", padded(base6, 90), xdpTX, rTX},
		{"total length ends inside the tcp header", ipLen(pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1, dport: 80, payload: 20}, 20+19), xdpDrop, rTruncated},
		{"total length ends inside the udp header", ipLen(pkt{src: client4, dst: vip4, proto: protoUDP, sport: 1, dport: 53, payload: 30}, 20+7), xdpDrop, rTruncated},
		{"ipv6 payload length ends inside the udp header", ipLen(pkt{src: client6, dst: vip6, proto: protoUDP, sport: 1, dport: 53, payload: 30}, 40+4), xdpDrop, rTruncated},
		{"ipv6 extension header beyond the payload length", ipLen(pkt{src: client6, dst: vip6, proto: protoTCP, sport: 1, dport: 80, proto6Ext: []uint8{0}, payload: 40}, 40+4), xdpDrop, rTruncated},
		{"tcp data offset below 5", mutate(base, func(b []byte) { b[14+20+12] = 0x40 }), xdpDrop, rTruncated},
		{"tcp data offset beyond the ip length", mutate(pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1, dport: 80, payload: 30}, func(b []byte) { b[14+20+12] = 0xf0 }), xdpDrop, rTruncated},
		{"ipv6 version mismatch", mutate(pkt{src: client6, dst: vip6, proto: protoTCP, sport: 1, dport: 80}, func(b []byte) { b[14] = 0x40 }), xdpPass, rMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { f.expectOne(t, tc.data, tc.verdict, tc.reason) })
	}
}

// A multi-buffer (jumbo) frame's IP length reaches past its linear part: the
// check measures the whole frame. The byte counters count the linear part.
func TestXDPMultiBufferLength(t *testing.T) {
	f := newFixture(t, standardDesired())
	for _, tc := range []struct {
		name    string
		p       pkt
		extra   int // IP length beyond the packet
		verdict uint32
		reason  int
	}{
		{"ipv4 jumbo", pkt{src: client4, dst: vip4, proto: protoUDP, sport: 7, dport: 53, payload: 8958}, 0, xdpTX, rTX},
		{"ipv6 jumbo", pkt{src: client6, dst: vip6, proto: protoUDP, sport: 7, dport: 53, payload: 8938}, 0, xdpTX, rTX},
		{"ipv4 jumbo, length one beyond", pkt{src: client4, dst: vip4, proto: protoUDP, sport: 8, dport: 53, payload: 8958}, 1, xdpPass, rMalformed},
		{"ipv6 jumbo, length one beyond", pkt{src: client6, dst: vip6, proto: protoUDP, sport: 8, dport: 53, payload: 8938}, 1, xdpPass, rMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.p.build()
			if len(data) != 9000 {
				t.Fatalf("frame of %d bytes, want 9000", len(data))
			}
			l3 := tc.p.l3Offset()
			data = tc.p.setIPLength(data, len(data)-l3+tc.extra)
			before := f.reasons()
			ret, _ := f.run(data)
			if ret != tc.verdict {
				t.Fatalf("verdict %s, want %s", verdictNames[ret], verdictNames[tc.verdict])
			}
			after := f.reasons()
			for i := range after {
				want := uint64(0)
				if i == tc.reason {
					want = 1
				}
				if d := after[i].Packets - before[i].Packets; d != want {
					t.Fatalf("reason %s counted %d packets, want %d", ReasonName(i), d, want)
				}
			}
			if b := after[tc.reason].Bytes - before[tc.reason].Bytes; b == 0 || b >= uint64(len(data)) {
				t.Fatalf("counted %d bytes of a %d-byte multi-buffer frame, want its linear part", b, len(data))
			}
		})
	}
}

// The backend the datapath picks equals the one the Go side predicts.
func TestXDPMatchesGoPrediction(t *testing.T) { forBuilds(t, testXDPMatchesGoPrediction) }

func testXDPMatchesGoPrediction(t *testing.T, b build) {
	d := standardDesired()
	f := newFixtureFor(t, b, d)
	rng := rand.New(rand.NewPCG(1, 2))
	n := 3000
	if f.tc {
		n = 300 // the same hash and table code: each prediction reads the whole ring
	}
	for i := range n {
		var p pkt
		var svc ServiceSpec
		switch i % 3 {
		case 0:
			p = pkt{src: random4(rng), dst: vip4, proto: protoTCP, sport: uint16(rng.Uint32()), dport: 80, tcpFlags: tcpSYN}
			svc = d.Services[0]
		case 1:
			p = pkt{src: random4(rng), dst: vip4, proto: protoUDP, sport: uint16(rng.Uint32()), dport: 53}
			svc = d.Services[1]
		case 2:
			p = pkt{src: random6(rng), dst: vip6, proto: protoTCP, sport: uint16(rng.Uint32()), dport: 80, tcpFlags: tcpSYN}
			svc = d.Services[3]
		}
		ret, out := f.run(p.build())
		if !f.is(ret, xdpTX) {
			t.Fatalf("%s: verdict %s", p.src, verdictNames[ret])
		}
		got := backendOf(t, out, append(be4, be6...))
		if want := f.predict(svc, p.src, p.sport); got != want {
			t.Fatalf("%s:%d -> %s, Go predicts %s", p.src, p.sport, got, want)
		}
	}
}

func random4(rng *rand.Rand) netip.Addr {
	v := rng.Uint32()
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func random6(rng *rand.Rand) netip.Addr {
	var b [16]byte
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	b[0] = 0x20
	return netip.AddrFrom16(b)
}

// A flow stays on its backend when the ring changes under it; a new flow from
// the same client follows the new ring.
func TestXDPConntrackSurvivesRingSwap(t *testing.T) { forBuilds(t, testXDPConntrackSurvivesRingSwap) }

func testXDPConntrackSurvivesRingSwap(t *testing.T, b build) {
	d := Desired{RingSize: 65537, Services: []ServiceSpec{webService(vip4, 80, protoTCP, HashIP, be4)}}
	f := newFixtureFor(t, b, d)
	four := append(append([]netip.Addr{}, be4...), netip.MustParseAddr("198.18.0.14"))
	d2 := Desired{RingSize: 65537, Services: []ServiceSpec{webService(vip4, 80, protoTCP, HashIP, four)}}

	// Sources whose backend changes once the fourth backend joins.
	var moved []netip.Addr
	before := map[netip.Addr]netip.Addr{}
	for i := 0; i < 4000 && len(moved) < 20; i++ {
		src := netip.AddrFrom4([4]byte{198, 18, byte(1 + i/250), byte(i % 250)})
		p := pkt{src: src, dst: vip4, proto: protoTCP, sport: 33000, dport: 80, tcpFlags: tcpSYN}
		_, out := f.run(p.build())
		before[src] = backendOf(t, out, four)
		moved = append(moved, src)
	}
	f.apply(d2)
	changed := 0
	for _, src := range moved {
		// The established flow keeps its backend...
		p := pkt{src: src, dst: vip4, proto: protoTCP, sport: 33000, dport: 80, tcpFlags: tcpACK}
		_, out := f.run(p.build())
		if got := backendOf(t, out, four); got != before[src] {
			t.Fatalf("%s: established flow moved from %s to %s after the ring swap", src, before[src], got)
		}
		// ...while a new one from the same client follows the new ring.
		np := pkt{src: src, dst: vip4, proto: protoTCP, sport: 33001, dport: 80, tcpFlags: tcpSYN}
		_, out = f.run(np.build())
		got := backendOf(t, out, four)
		if want := f.predict(d2.Services[0], src, 33001); got != want {
			t.Fatalf("%s: new flow to %s, new ring says %s", src, got, want)
		}
		if got != before[src] {
			changed++
		}
	}
	if changed == 0 {
		t.Fatal("no sampled client changed backend with the new ring: the test proves nothing")
	}
}

// No packet ever reaches a down backend: neither new flows nor flows it had.
func TestXDPDownBackendGetsNothing(t *testing.T) { forBuilds(t, testXDPDownBackendGetsNothing) }

func testXDPDownBackendGetsNothing(t *testing.T, b build) {
	d := Desired{RingSize: 65537, Services: []ServiceSpec{webService(vip4, 80, protoTCP, HashIP, be4)}}
	f := newFixtureFor(t, b, d)
	rng := rand.New(rand.NewPCG(3, 4))
	var onB2 []pkt
	for len(onB2) < 50 {
		p := pkt{src: random4(rng), dst: vip4, proto: protoTCP, sport: uint16(rng.Uint32()), dport: 80, tcpFlags: tcpSYN}
		_, out := f.run(p.build())
		if backendOf(t, out, be4) == be4[1] {
			onB2 = append(onB2, p)
		}
	}
	d.Services[0].Backends[1].State = StateDown
	f.apply(d)
	for _, p := range onB2 {
		p.tcpFlags = tcpACK
		ret, out := f.run(p.build())
		if !f.is(ret, xdpTX) || backendOf(t, out, be4) == be4[1] {
			t.Fatalf("established flow of %s still sent to the down backend", p.src)
		}
	}
	for range 10000 {
		p := pkt{src: random4(rng), dst: vip4, proto: protoTCP, sport: uint16(rng.Uint32()), dport: 80, tcpFlags: tcpSYN}
		ret, out := f.run(p.build())
		if !f.is(ret, xdpTX) {
			t.Fatalf("verdict %s with two healthy backends", verdictNames[ret])
		}
		if backendOf(t, out, be4) == be4[1] {
			t.Fatalf("%s sent to the down backend", p.src)
		}
	}
}

// A draining backend keeps its flows and gets no new ones.
func TestXDPDrainingKeepsFlows(t *testing.T) { forBuilds(t, testXDPDrainingKeepsFlows) }

func testXDPDrainingKeepsFlows(t *testing.T, b build) {
	d := Desired{RingSize: 65537, Services: []ServiceSpec{webService(vip6, 80, protoTCP, HashIP, be6)}}
	f := newFixtureFor(t, b, d)
	rng := rand.New(rand.NewPCG(5, 6))
	var onB2 []pkt
	for len(onB2) < 50 {
		p := pkt{src: random6(rng), dst: vip6, proto: protoTCP, sport: uint16(rng.Uint32()), dport: 80, tcpFlags: tcpSYN}
		_, out := f.run(p.build())
		if backendOf(t, out, be6) == be6[1] {
			onB2 = append(onB2, p)
		}
	}
	d.Services[0].Backends[1].State = StateDraining
	f.apply(d)
	for _, p := range onB2 {
		p.tcpFlags = tcpACK
		if _, out := f.run(p.build()); backendOf(t, out, be6) != be6[1] {
			t.Fatalf("flow of %s left its draining backend", p.src)
		}
		// A new connection from the same client is a new flow.
		p.sport++
		p.tcpFlags = tcpSYN
		if _, out := f.run(p.build()); backendOf(t, out, be6) == be6[1] {
			t.Fatalf("new flow of %s landed on the draining backend", p.src)
		}
	}
	for range 2000 {
		p := pkt{src: random6(rng), dst: vip6, proto: protoTCP, sport: uint16(rng.Uint32()), dport: 80, tcpFlags: tcpSYN}
		if _, out := f.run(p.build()); backendOf(t, out, be6) == be6[1] {
			t.Fatalf("new flow of %s landed on the draining backend", p.src)
		}
	}
}

// With every backend down the service's packets are dropped and counted.
func TestXDPNoUsableBackend(t *testing.T) { forBuilds(t, testXDPNoUsableBackend) }

func testXDPNoUsableBackend(t *testing.T, b build) {
	d := Desired{RingSize: 65537, Services: []ServiceSpec{webService(vip4, 80, protoTCP, HashIP, be4)}}
	f := newFixtureFor(t, b, d)
	for i := range d.Services[0].Backends {
		d.Services[0].Backends[i].State = StateDown
	}
	f.apply(d)
	p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1, dport: 80, tcpFlags: tcpSYN}
	f.expectOne(t, p.build(), xdpDrop, rNoBackend)
	d.Services[0].Backends[2].State = StateUp
	f.apply(d)
	out := f.expectOne(t, p.build(), xdpTX, rTX)
	if got := backendOf(t, out, be4); got != be4[2] {
		t.Fatalf("recovered to %s, want the only healthy one %s", got, be4[2])
	}
}

// Unresolved backends stay out of the rings.
func TestXDPUnresolvedBackendExcluded(t *testing.T) { forBuilds(t, testXDPUnresolvedBackendExcluded) }

func testXDPUnresolvedBackendExcluded(t *testing.T, b build) {
	requireRoot(t)
	dp, err := Open(Options{Logger: quietLogger(), Mode: b.mode})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close(false)
	res := staticResolver{ifindex: loIfIndex, missing: map[netip.Addr]bool{be4[0]: true}}
	rec, err := NewReconciler(&dp.Maps, res, loIfIndex, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tc: b == tcBuild, dp: dp, rec: rec}
	ch := f.apply(Desired{Services: []ServiceSpec{webService(vip4, 80, protoTCP, HashIP, be4)}})
	if len(ch.Unresolved) != 1 {
		t.Fatalf("unresolved reported: %v", ch.Unresolved)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for range 1000 {
		p := pkt{src: random4(rng), dst: vip4, proto: protoTCP, sport: 1, dport: 80}
		if _, out := f.run(p.build()); backendOf(t, out, be4) == be4[0] {
			t.Fatal("packet sent to an unresolved backend")
		}
	}
}

// Backends behind another interface are reached with XDP_REDIRECT through
// tx_ports, which the reconciler fills.
func TestXDPRedirect(t *testing.T) { forBuilds(t, testXDPRedirect) }

func testXDPRedirect(t *testing.T, b build) {
	requireRoot(t)
	dummy := newDummyLink(t, "xlbt-redir0")
	dp, err := Open(Options{Logger: quietLogger(), Mode: b.mode})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close(false)
	rec, err := NewReconciler(&dp.Maps, staticResolver{ifindex: dummy}, loIfIndex, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tc: b == tcBuild, dp: dp, rec: rec}
	f.apply(Desired{Services: []ServiceSpec{webService(vip4, 80, protoTCP, HashIP, be4)}})
	p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1, dport: 80, tcpFlags: tcpSYN}
	f.expectOne(t, p.build(), xdpRedirect, rRedirect)

	// An egress interface missing from tx_ports is a counted drop. TC
	// redirects to any interface: tx_ports is XDP's.
	if f.tc {
		return
	}
	if err := dp.TxPorts.Delete(uint32(dummy)); err != nil {
		t.Fatal(err)
	}
	f.expectOne(t, p.build(), xdpDrop, rNoTxPort)
}

// Counters match what was sent, per reason, service and backend.
func TestXDPCounters(t *testing.T) { forBuilds(t, testXDPCounters) }

func testXDPCounters(t *testing.T, b build) {
	d := standardDesired()
	f := newFixtureFor(t, b, d)
	svcID := f.serviceID(vip4, 80, protoTCP)
	l7ID := f.serviceID(vip4, 443, protoTCP)
	rng := rand.New(rand.NewPCG(9, 10))

	perBackend := map[netip.Addr]Counters{}
	var tx, pass Counters
	flows := map[string]bool{}
	for i := range 500 {
		p := pkt{src: random4(rng), dst: vip4, proto: protoTCP, sport: uint16(i % 7), dport: 80, payload: i % 64}
		if i%5 == 0 {
			p.dport = 443
		}
		data := p.build()
		ret, out := f.run(data)
		key := fmt.Sprint(p.src, p.sport, p.dport)
		switch ret {
		case xdpTX, tcRedirect:
			be := backendOf(t, out, be4)
			c := perBackend[be]
			c.Packets++
			c.Bytes += uint64(len(data))
			if !flows[key] {
				c.NewFlows++
				flows[key] = true
			}
			perBackend[be] = c
			tx.Packets++
			tx.Bytes += uint64(len(data))
		case xdpPass:
			pass.Packets++
			pass.Bytes += uint64(len(data))
		default:
			t.Fatalf("verdict %s", verdictNames[ret])
		}
	}
	rc := f.reasons()
	if got := rc[rTX]; got.Packets != tx.Packets || got.Bytes != tx.Bytes {
		t.Fatalf("tx counters %+v, sent %+v", got, tx)
	}
	if got := rc[rL7]; got.Packets != pass.Packets || got.Bytes != pass.Bytes {
		t.Fatalf("l7 counters %+v, sent %+v", got, pass)
	}
	sc, _ := f.dp.ServiceCounters(svcID)
	if sc.Packets != tx.Packets || sc.Bytes != tx.Bytes || sc.NewFlows != uint64(len(flows)) {
		t.Fatalf("service counters %+v, sent %+v with %d flows", sc, tx, len(flows))
	}
	if lc, _ := f.dp.ServiceCounters(l7ID); lc.Packets != pass.Packets {
		t.Fatalf("l7 service counters %+v, sent %+v", lc, pass)
	}
	for be, want := range perBackend {
		id, _ := f.rec.BackendID(svcID, be)
		got, _ := f.dp.BackendCounters(id)
		if got != want {
			t.Fatalf("backend %s counters %+v, want %+v", be, got, want)
		}
	}
}

// The C hash equals the Go one on the shared vectors: with ring entry i
// pointing at backend i, the chosen backend's MAC reveals hash % M; two
// coprime M pin the hash down modulo their product.
func TestXDPHashVectors(t *testing.T) { forBuilds(t, testXDPHashVectors) }

func testXDPHashVectors(t *testing.T, b build) {
	requireRoot(t)
	raw, err := os.ReadFile("../maglev/testdata/hash_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vectors []struct {
		Kind         string
		Src, Dst     string
		Sport, Dport uint16
		Proto        uint8
		Hash         uint32
	}
	if err := json.Unmarshal(raw, &vectors); err != nil {
		t.Fatal(err)
	}
	dp, err := Open(Options{Logger: quietLogger(), Mode: b.mode})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close(false)
	const maxM = 4093
	for id := uint32(0); id < maxM; id++ {
		be := bpf.XlbBackend{State: uint8(StateUp), Ifindex: loIfIndex, Family: 4}
		be.Mac = [6]byte{0x02, 0, 0, 0, byte(id >> 8), byte(id)}
		if err := dp.Backends.Put(id, be); err != nil {
			t.Fatal(err)
		}
	}
	f := &fixture{t: t, tc: b == tcBuild, dp: dp}
	for _, m := range []uint32{4093, 4091} {
		entries := make([]uint32, m)
		for i := range entries {
			entries[i] = uint32(i)
		}
		ring, err := newRing(entries)
		if err != nil {
			t.Fatal(err)
		}
		if err := dp.Rings.Put(uint32(0), ring); err != nil {
			t.Fatal(err)
		}
		ring.Close()
		for _, v := range vectors {
			src, dst := netip.MustParseAddr(v.Src), netip.MustParseAddr(v.Dst)
			hash := HashIP
			if v.Kind == "flow" {
				hash = HashFlow
			}
			key := ServiceKey(dst, v.Dport, v.Proto)
			w, bit := VIPFilterBit(dst)
			var bits uint64
			if err := dp.VipFilter.Lookup(w, &bits); err != nil {
				t.Fatal(err)
			}
			if err := dp.VipFilter.Put(w, bits|bit); err != nil {
				t.Fatal(err)
			}
			if err := dp.Services.Put(key, bpf.XlbSvcValue{Id: 0, RingSize: m, Kind: uint8(KindL4), Hash: uint8(hash)}); err != nil {
				t.Fatal(err)
			}
			p := pkt{src: src, dst: dst, proto: v.Proto, sport: v.Sport, dport: v.Dport, tcpFlags: tcpSYN}
			ret, out := f.run(p.build())
			if !f.is(ret, xdpTX) {
				t.Fatalf("vector %+v: verdict %s", v, verdictNames[ret])
			}
			slot := uint32(out[4])<<8 | uint32(out[5])
			if slot != v.Hash%m {
				t.Fatalf("vector %s %s->%s: C hash %% %d = %d, Go hash %d %% %d = %d", v.Kind, v.Src, v.Dst, m, slot, v.Hash, m, v.Hash%m)
			}
			if err := dp.Services.Delete(key); err != nil {
				t.Fatal(err)
			}
			if err := dp.Conntrack.Delete(FlowKey(src, dst, v.Sport, v.Dport, v.Proto)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A VIP's filter bit follows its services: traffic passes untouched once the
// VIP is gone and is steered again when it returns.
func TestXDPVIPFilterFollowsServices(t *testing.T) { forBuilds(t, testXDPVIPFilterFollowsServices) }

func testXDPVIPFilterFollowsServices(t *testing.T, b build) {
	d := standardDesired()
	f := newFixtureFor(t, b, d)
	p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 7, dport: 80, tcpFlags: tcpSYN}
	f.expectOne(t, p.build(), xdpTX, rTX)
	f.apply(Desired{RingSize: d.RingSize, Services: d.Services[3:]})
	p.sport++
	f.expectOne(t, p.build(), xdpPass, rNoService)
	f.apply(d)
	p.sport++
	f.expectOne(t, p.build(), xdpTX, rTX)
}

// Apply is idempotent: the same desired state twice writes nothing the second time.
func TestReconcileIdempotent(t *testing.T) {
	d := standardDesired()
	f := newFixture(t, d)
	if ch := f.apply(d); !ch.Empty() {
		t.Fatalf("second apply changed %+v", ch)
	}
}

// A restart that adopts the pins keeps ids, rings and flows: the first Apply
// after it changes nothing, and an established flow keeps its backend.
func TestAdoptPinnedState(t *testing.T) {
	requireRoot(t)
	dir := fmt.Sprintf("/sys/fs/bpf/xlb-test-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(dir) })
	open := func() *fixture { return openPinned(t, dir, staticResolver{ifindex: loIfIndex}, nil) }
	d := standardDesired()
	f := open()
	if f.dp.Adopted {
		t.Fatal("fresh pin directory reported as adopted")
	}
	f.apply(d)
	p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 4242, dport: 80, tcpFlags: tcpSYN}
	_, out := f.run(p.build())
	first := backendOf(t, out, be4)
	id := f.serviceID(vip4, 80, protoTCP)

	// Move the flow's slot away: the restarted daemon's ring differs, but
	// the flow must stay where it was.
	g := f.restart(open)
	defer g.dp.Close(false)
	if got := g.serviceID(vip4, 80, protoTCP); got != id {
		t.Fatalf("service id %d after restart, was %d", got, id)
	}
	if ch := g.apply(d); !ch.Empty() {
		t.Fatalf("first apply after adoption changed %+v", ch)
	}
	var others []BackendSpec
	for _, b := range d.Services[0].Backends {
		if b.Address != first {
			others = append(others, b)
		}
	}
	d.Services[0].Backends = append(others, BackendSpec{Address: first, Weight: 0, State: StateUp})
	g.apply(d)
	p.tcpFlags = tcpACK
	_, out = g.run(p.build())
	if got := backendOf(t, out, be4); got != first {
		t.Fatalf("established flow moved from %s to %s across the restart", first, got)
	}
	if err := g.dp.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := g.dp.Close(false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("pin directory left behind: %v", err)
	}
}

// A pinned rings map from a build whose inner-map template differs (the
// flags are invisible to MapSpec.Compatible) is recreated, not adopted into
// failing ring swaps.
func TestIncompatibleRingsTemplateRecreated(t *testing.T) {
	requireRoot(t)
	dir := fmt.Sprintf("/sys/fs/bpf/xlb-test-rings-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(dir) })
	if _, err := ensureBPFFS(dir, quietLogger()); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "rings", Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: MaxServices,
		InnerMap: &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1, Flags: unix.BPF_F_INNER_MAP},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(dir + "/rings"); err != nil {
		t.Fatal(err)
	}
	old.Close()
	dp, err := Open(Options{PinDir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close(false)
	rec, err := NewReconciler(&dp.Maps, staticResolver{ifindex: loIfIndex}, loIfIndex, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, dp: dp, rec: rec}
	f.apply(standardDesired())
	p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1, dport: 80, tcpFlags: tcpSYN}
	f.expectOne(t, p.build(), xdpTX, rTX)

	// The old pin stays until the start commits: a failed one leaves it.
	pinnedID := func() ebpf.MapID {
		m, err := ebpf.LoadPinnedMap(dir+"/rings", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		return id
	}
	ours, err := dp.Rings.Info()
	if err != nil {
		t.Fatal(err)
	}
	oursID, _ := ours.ID()
	if pinnedID() == oursID {
		t.Fatal("incompatible rings pin replaced before Commit")
	}
	if err := dp.Commit(); err != nil {
		t.Fatal(err)
	}
	if pinnedID() != oursID {
		t.Fatal("incompatible rings pin not replaced by Commit")
	}
}

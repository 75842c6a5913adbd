package loader

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/xlb-dev/xlb/bpf"
)

// tcNext is TC_ACT_UNSPEC (tcx: next program, then up the stack) as
// BPF_PROG_TEST_RUN reports it.
const tcNext = 0xffffffff

var (
	beMAC    = backendMAC(routedBe4)
	decapOut = []string{"decapsulated", "not_vip", "unusable", "failed"}
)

func loadDecap(t *testing.T, vips ...netip.Addr) *Decap {
	t.Helper()
	requireRoot(t)
	d, err := LoadDecap(vips)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// runDecap runs the TC program once on a frame and returns the frame it
// left, failing unless it returned tcNext and counted one packet under
// outcome (-1: nothing counted).
func runDecap(t *testing.T, d *Decap, in []byte, outcome int) []byte {
	t.Helper()
	before, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+64), Repeat: 1}
	ret, err := d.Program().Run(opts)
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	if ret != tcNext {
		t.Fatalf("returned %d, want TC_ACT_UNSPEC (tcx next)", int32(ret))
	}
	after, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for i := range after {
		want := uint64(0)
		if i == outcome {
			want = 1
		}
		if got := after[i].Packets - before[i].Packets; got != want {
			t.Fatalf("%s counted %d packets, want %d", decapOut[i], got, want)
		}
	}
	return opts.DataOut
}

// The decapsulation program strips the outer header of tunnel packets for
// its VIPs only; everything else leaves as it came.
func TestDecap(t *testing.T) {
	d := loadDecap(t, vip4, vip6)
	inner4 := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 40000, dport: 80, tcpFlags: tcpSYN, df: true, payload: 30}.build()[14:]
	inner6 := pkt{src: client6, dst: vip6, proto: protoTCP, sport: 40000, dport: 80, tcpFlags: tcpSYN, payload: 30}.build()[14:]
	other4 := pkt{src: client4, dst: netip.MustParseAddr("198.19.0.99"), proto: protoTCP, sport: 1, dport: 80}.build()[14:]
	other6 := pkt{src: client6, dst: netip.MustParseAddr("2001:db8:19::99"), proto: protoUDP, sport: 1, dport: 53}.build()[14:]
	tunnel4 := func(inner []byte) []byte {
		return frame(beMAC, outMAC, 0x0800, outer4(0, true, inner, outSrc4, routedBe4), inner)
	}
	tunnel6 := func(inner []byte) []byte {
		return frame(beMAC, outMAC, 0x86dd, outer6(0, 0x12345, inner, outSrc6, routedBe6), inner)
	}
	fragment := tunnel4(inner4)
	fragment[14+6] |= 0x20 // MF
	cut := tunnel4(inner4)[:14+20+12]
	cut[14+3] = 32 // outer total length to match

	cases := []struct {
		name    string
		in      []byte
		want    []byte // nil: unchanged
		outcome int
	}{
		{"ipv4 in ipv4", tunnel4(inner4), frame(beMAC, outMAC, 0x0800, inner4), 0},
		{"ipv6 in ipv6", tunnel6(inner6), frame(beMAC, outMAC, 0x86dd, inner6), 0},
		{"ipv4 tunnel, no vip", tunnel4(other4), nil, 1},
		{"ipv6 tunnel, no vip", tunnel6(other6), nil, 1},
		{"outer fragment", fragment, nil, 2},
		{"inner header cut", cut, nil, 2},
		{"plain ipv4 to the vip", frame(beMAC, outMAC, 0x0800, inner4), nil, -1},
		{"plain ipv6 to the vip", frame(beMAC, outMAC, 0x86dd, inner6), nil, -1},
		{"arp", pkt{etherType: 0x0806}.build(), nil, -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			if want == nil {
				want = tc.in
			}
			if out := runDecap(t, d, tc.in, tc.outcome); !bytes.Equal(out, want) {
				t.Fatalf("frame\n got %x\nwant %x", out, want)
			}
		})
	}
}

// What the XDP program encapsulates, the decapsulation program restores:
// the client's packet, byte for byte, behind the tunnel's Ethernet header.
func TestIPIPRoundTrip(t *testing.T) { forBuilds(t, testIPIPRoundTrip) }

func testIPIPRoundTrip(t *testing.T, b build) {
	f, _ := newIPIPFixture(t, b)
	d := loadDecap(t, vip4, vip6)
	for _, p := range []pkt{
		{src: client4, dst: vip4, proto: protoTCP, sport: 7, dport: 80, tcpFlags: tcpACK, df: true, tos: 0x12, payload: 700},
		{vlan: 3, src: client4, dst: vip4, proto: protoTCP, sport: 8, dport: 81, tcpFlags: tcpSYN},
		{src: client6, dst: vip6, proto: protoTCP, sport: 7, dport: 80, tcpFlags: tcpACK, payload: 700},
		{src: client6, dst: vip6, proto: protoTCP, sport: 8, dport: 81, proto6Ext: []uint8{0}},
	} {
		if f.tc && p.vlan != 0 {
			continue // see TestIPIPEncap
		}
		in := p.build()
		l2 := 14
		if p.vlan != 0 {
			l2 = 18
		}
		_, tunneled := f.runSized(in)
		out := runDecap(t, d, tunneled, 0)
		if !bytes.Equal(out[14:], in[l2:]) {
			t.Fatalf("%s: decapsulated\n got %x\nwant %x", p.src, out[14:], in[l2:])
		}
		if !bytes.Equal(out[:12], tunneled[:12]) {
			t.Fatalf("%s: Ethernet addresses changed", p.src)
		}
	}
	counts, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if want := map[bool]uint64{false: 4, true: 3}[f.tc]; counts[bpf.XlbDecapOutcomeXLB_DECAP_OK].Packets != want {
		t.Fatalf("decapsulated %d packets, want %d", counts[0].Packets, want)
	}
}

// Attach puts the program on the interface's TC ingress with tcx, and Close
// takes it off.
func TestDecapAttach(t *testing.T) {
	n := newIPIPNet(t)
	d := loadDecap(t, vip4)
	attached := func() int {
		var res *link.QueryResult
		var err error
		n.do(func() {
			res, err = link.QueryPrograms(link.QueryOptions{Target: n.out, Attach: ebpf.AttachTCXIngress})
		})
		if err != nil {
			t.Fatal(err)
		}
		return len(res.Programs)
	}
	var err error
	n.do(func() { err = d.Attach(n.out) })
	if err != nil {
		t.Fatal(err)
	}
	if got := attached(); got != 1 {
		t.Fatalf("%d programs at tcx ingress, want 1", got)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if got := attached(); got != 0 {
		t.Fatalf("%d programs at tcx ingress after Close, want 0", got)
	}
}

package loader

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// tcxProgs names the programs at ifindex's tcx ingress, in order.
func tcxProgs(t *testing.T, ifindex int) []string {
	t.Helper()
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range res.Programs {
		prog, err := ebpf.NewProgramFromID(p.ID)
		if err != nil {
			t.Fatal(err)
		}
		info, err := prog.Info()
		prog.Close()
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, info.Name)
	}
	return names
}

// openMode opens a datapath pinned in dir and attached to iface in mode,
// with backends behind egress.
func openMode(t *testing.T, dir, iface string, ifindex, egress int, mode XDPMode) *fixture {
	t.Helper()
	dp, err := Open(Options{Interface: iface, Mode: mode, PinDir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := NewReconciler(&dp.Maps, staticResolver{ifindex: egress}, ifindex, quietLogger())
	if err != nil {
		dp.Close(false)
		t.Fatal(err)
	}
	return &fixture{t: t, tc: mode == XDPTC, dp: dp, rec: rec}
}

// attachment says what steers on ifindex: "xdp", "tc", both or none.
func attachment(t *testing.T, ifindex int) string {
	t.Helper()
	var got []string
	if xdpProgID(t, ifindex) != 0 {
		got = append(got, "xdp")
	}
	if slices.Contains(tcxProgs(t, ifindex), "xlb_tc") {
		got = append(got, "tc")
	}
	if len(got) == 0 {
		return "none"
	}
	return strings.Join(got, "+")
}

// Mode tc attaches the TC build at the tcx ingress (not XDP), pins its link
// as tc_link at Commit, keeps it attached for a restart that adopts it, and
// a failed start leaves it as it was; a clean close detaches and unpins.
func TestTCAttachLifecycle(t *testing.T) {
	requireRoot(t)
	ifindex := newDummyLink(t, "xlbt-tc0")
	dir := testPinDir(t, "tc")

	f := openMode(t, dir, "xlbt-tc0", ifindex, loIfIndex, XDPTC)
	f.apply(standardDesired())
	if got := attachment(t, ifindex); got != "tc" {
		t.Fatalf("attached: %s, want tc", got)
	}
	if f.dp.Mode != XDPTC || f.dp.Noop != nil {
		t.Fatalf("mode %q, noop %v", f.dp.Mode, f.dp.Noop)
	}
	if slices.Contains(pinNames(t, dir), "tc_link") {
		t.Fatal("tc_link pinned before Commit")
	}
	p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1, dport: 80, tcpFlags: tcpSYN}
	f.expectOne(t, p.build(), xdpTX, rTX)
	if err := f.dp.Commit(); err != nil {
		t.Fatal(err)
	}
	pins := pinNames(t, dir)
	if !slices.Contains(pins, "tc_link") || slices.Contains(pins, "xdp_link") {
		t.Fatalf("pins after Commit: %v, want tc_link and no xdp_link", pins)
	}
	if err := f.dp.Close(true); err != nil {
		t.Fatal(err)
	}
	prog := tcxProgs(t, ifindex)
	if got := attachment(t, ifindex); got != "tc" {
		t.Fatalf("kept datapath: %s attached, want tc", got)
	}

	// A start that adopts it and fails: the same program stays.
	g := openMode(t, dir, "xlbt-tc0", ifindex, loIfIndex, XDPTC)
	if !g.dp.Adopted || !g.dp.linkAdopted {
		t.Fatalf("adopted maps %v, link %v", g.dp.Adopted, g.dp.linkAdopted)
	}
	ids := func() []ebpf.ProgramID {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			t.Fatal(err)
		}
		var out []ebpf.ProgramID
		for _, p := range res.Programs {
			out = append(out, p.ID)
		}
		return out
	}
	before := ids()
	if err := g.dp.Close(false); err != nil {
		t.Fatal(err)
	}
	if got := ids(); !slices.Equal(got, before) || !slices.Equal(tcxProgs(t, ifindex), prog) {
		t.Fatalf("tcx ingress after the failed start: %v, was %v", got, before)
	}

	// A start that adopts it and runs: its program takes over the link,
	// and a clean stop removes everything.
	h := openMode(t, dir, "xlbt-tc0", ifindex, loIfIndex, XDPTC)
	if err := h.dp.Commit(); err != nil {
		t.Fatal(err)
	}
	info, err := h.dp.Program.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	if got := ids(); len(got) != 1 || got[0] != id {
		t.Fatalf("tcx ingress after Commit: %v, want this start's program %d", got, id)
	}
	if err := h.dp.Close(false); err != nil {
		t.Fatal(err)
	}
	if got := attachment(t, ifindex); got != "none" {
		t.Fatalf("after a clean close: %s attached", got)
	}
	if pins := pinNames(t, dir); len(pins) != 0 {
		t.Fatalf("pins after a clean close: %v", pins)
	}
}

// A restart in the other mode adopts the pinned maps (flows keep their
// backends) and replaces the attachment at Commit: XDP -> TC -> XDP. A
// switching start that fails leaves the old attachment alone.
func TestModeSwitchAcrossRestart(t *testing.T) {
	requireRoot(t)
	ifindex := newDummyLink(t, "xlbt-sw0")
	dir := testPinDir(t, "switch")
	d := standardDesired()

	first := openMode(t, dir, "xlbt-sw0", ifindex, loIfIndex, XDPGeneric)
	first.apply(d)
	p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 4242, dport: 80, tcpFlags: tcpSYN}
	_, out := first.run(p.build())
	be := backendOf(t, out, be4)
	p.tcpFlags = tcpACK

	steps := []struct {
		mode XDPMode
		want string // attached once committed
		pin  string // its link's pin
		gone string // the other mode's pin
	}{
		{XDPTC, "tc", "tc_link", "xdp_link"},
		{XDPGeneric, "xdp", "xdp_link", "tc_link"},
	}
	prev := first
	for _, s := range steps {
		t.Run(string(s.mode), func(t *testing.T) {
			if err := prev.dp.Commit(); err != nil {
				t.Fatal(err)
			}
			if err := prev.dp.Close(true); err != nil {
				t.Fatal(err)
			}
			was := attachment(t, ifindex)
			pins := pinNames(t, dir)

			failed := openMode(t, dir, "xlbt-sw0", ifindex, ifindex, s.mode)
			failed.apply(d)
			if err := failed.dp.Close(false); err != nil {
				t.Fatal(err)
			}
			if got := attachment(t, ifindex); got != was {
				t.Fatalf("after a failed switching start: %s attached, was %s", got, was)
			}
			if got := pinNames(t, dir); !slices.Equal(got, pins) {
				t.Fatalf("pins after a failed switching start: %v, were %v", got, pins)
			}

			next := openMode(t, dir, "xlbt-sw0", ifindex, ifindex, s.mode)
			if !next.dp.Adopted || next.dp.linkAdopted {
				t.Fatalf("adopted maps %v, link %v: want the maps and a new link", next.dp.Adopted, next.dp.linkAdopted)
			}
			if ch := next.apply(d); !ch.Empty() {
				t.Fatalf("first apply after the switch changed %+v", ch)
			}
			if err := next.dp.Commit(); err != nil {
				t.Fatal(err)
			}
			if got := attachment(t, ifindex); got != s.want {
				t.Fatalf("after Commit: %s attached, want %s", got, s.want)
			}
			got := pinNames(t, dir)
			if !slices.Contains(got, s.pin) || slices.Contains(got, s.gone) {
				t.Fatalf("pins after Commit: %v, want %s and no %s", got, s.pin, s.gone)
			}
			out := next.expectOne(t, p.build(), xdpTX, rTX)
			if got := backendOf(t, out, be4); got != be {
				t.Fatalf("established flow moved from %s to %s across the switch", be, got)
			}
			prev = next
		})
	}
	if err := prev.dp.Close(false); err != nil {
		t.Fatal(err)
	}
	if got := attachment(t, ifindex); got != "none" {
		t.Fatalf("after a clean close: %s attached", got)
	}
}

// randomPacket is a random packet to vip (or, reply, from a NAT backend to
// its LB source) on one of ports: TCP or UDP, any flags, options and
// extension headers, payloads up to 1600 bytes, fragments, and cut or
// misstated lengths (an IP header stays whole: BPF_PROG_TEST_RUN makes no
// skb without one).
func randomPacket(rng *rand.Rand, v6 bool, ports []uint16) []byte {
	p := pkt{proto: protoTCP, sport: uint16(rng.IntN(4)), dport: ports[rng.IntN(len(ports))], payload: rng.IntN(1600),
		df: rng.IntN(2) == 0, tos: uint8(rng.Uint32()), checksum: rng.IntN(2) == 0, moreFragments: rng.IntN(8) == 0}
	if rng.IntN(3) == 0 {
		p.proto = protoUDP
	}
	p.tcpFlags = []uint8{tcpSYN, tcpACK, tcpFIN | tcpACK, tcpRST}[rng.IntN(4)]
	p.src, p.dst, p.ipOptions = client4, vip4, rng.IntN(3)
	if v6 {
		p.src, p.dst, p.ipOptions = client6, vip6, 0
		if rng.IntN(5) == 0 {
			p.proto6Ext = []uint8{0}
		}
	}
	b := p.build()
	l3 := p.l3Offset() + 20
	if v6 {
		l3 += 20
	}
	switch rng.IntN(6) {
	case 0:
		return b[:l3+rng.IntN(len(b)-l3+1)]
	case 1:
		return p.setIPLength(b, rng.IntN(len(b)))
	}
	return b
}

// The XDP and TC builds leave the same frames with the same verdicts (TC's
// mapped) on thousands of random packets, through dsr, ipip (too big ones
// answered with ICMP) and nat both ways.
func TestTCMatchesXDP(t *testing.T) {
	requireRoot(t)
	same := func(t *testing.T, x, c *fixture, data []byte, xctx, cctx any) {
		t.Helper()
		rx, ox := x.runCtx(bytes.Clone(data), xctx)
		rc, oc := c.runCtx(bytes.Clone(data), cctx)
		if !c.is(rc, rx) || !bytes.Equal(ox, oc) {
			t.Fatalf("%x:\nxdp %s %x\n tc %s %x", data, verdictNames[rx], ox, verdictNames[rc], oc)
		}
	}
	rng := rand.New(rand.NewPCG(11, 12))
	t.Run("dsr", func(t *testing.T) {
		x, c := newFixtureFor(t, xdpBuild, standardDesired()), newFixtureFor(t, tcBuild, standardDesired())
		for i := range 5000 {
			same(t, x, c, randomPacket(rng, i%2 == 0, []uint16{80, 53, 443, 81}), nil, nil)
		}
	})
	t.Run("ipip", func(t *testing.T) {
		n := newIPIPNet(t)
		x := openFixtureFor(t, xdpBuild, nil, routedResolver{out: n.out}, n.do)
		c := openFixtureFor(t, tcBuild, nil, routedResolver{out: n.out}, n.do)
		x.apply(ipipDesired())
		c.apply(ipipDesired())
		for i := range 5000 {
			if i%1000 == 0 {
				n.forwarding(i%2000 == 0) // the FIB's next hop, or the resolved one
			}
			same(t, x, c, randomPacket(rng, i%2 == 0, []uint16{80, 81, 82}), nil, nil)
		}
	})
	t.Run("nat", func(t *testing.T) {
		x, c := newNATFixtureFor(t, xdpBuild, natPorts()), newNATFixtureFor(t, tcBuild, natPorts())
		for i := range 5000 {
			data := randomPacket(rng, i%2 == 0, []uint16{80, 53})
			if i%3 == 0 { // a backend's answer to one of the allocated ports
				p := pkt{srcMAC: kernelGwMAC, dstMAC: outMAC, src: routedBe4, dst: outSrc4, proto: protoTCP, sport: 8080,
					dport: 20000 + uint16(rng.IntN(100)), tcpFlags: tcpACK, payload: rng.IntN(1500), checksum: true}
				if i%2 == 0 {
					p.src, p.dst = routedBe6, outSrc6
				}
				data = p.build()
			}
			same(t, x.fixture, c.fixture, data, xdpMD{DataEnd: uint32(len(data)), IngressIfindex: uint32(x.n.out)},
				skbMD{Ifindex: uint32(c.n.out)})
		}
	})
}

package loader

import (
	"maps"
	"net/netip"
	"testing"

	"github.com/xlb-dev/xlb/bpf"
)

// natKey is the binding key of the answers to the client's packet p that
// left from port (natDesired's services).
func natKey(p pkt, port uint16) bpf.XlbFlowKey {
	be, src, bport := natTarget(p.src.Is6(), p.proto)
	return FlowKey(be, src, bport, port, p.proto)
}

// editBinding rewrites the binding at k with edit.
func (f *natFixture) editBinding(t testing.TB, k bpf.XlbFlowKey, edit func(*bpf.XlbNatBinding)) {
	t.Helper()
	var b bpf.XlbNatBinding
	if err := f.dp.NatBindings.Lookup(k, &b); err != nil {
		t.Fatalf("binding %+v: %v", k, err)
	}
	edit(&b)
	if err := f.dp.NatBindings.Put(k, b); err != nil {
		t.Fatal(err)
	}
}

func (f *natFixture) expireNAT(t testing.TB) NATSweep {
	t.Helper()
	s, err := f.dp.ExpireNAT()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// hasBinding and hasFlow say whether the sweep left a binding and a flow's
// entry.
func (f *natFixture) hasBinding(t testing.TB, k bpf.XlbFlowKey) bool {
	t.Helper()
	var b bpf.XlbNatBinding
	return f.dp.NatBindings.Lookup(k, &b) == nil
}

func (f *natFixture) hasFlow(t testing.TB, p pkt) bool {
	t.Helper()
	_, ok := f.natFlow(t, p)
	return ok
}

// The sweep deletes a binding idle past the timeout of its protocol and TCP
// state (both directions' packets count: its seen and flags), with the
// flow's entry that names it, counting from the later of its last packet
// and the seen floor; live ones stay, counted by service.
func TestExpireNAT(t *testing.T) {
	f := newNATFixture(t, natPorts())
	now := nowTick(t)
	timeouts := FlowTimeouts{TCPSyn: 10 * FlowTick, TCPEstablished: 100 * FlowTick, TCPClosing: 50 * FlowTick, UDP: 30 * FlowTick}
	f.setTimeouts(timeouts, now-1000)
	E, C := flowEstablished, flowClosing
	type entry struct {
		name    string
		p       pkt
		k       bpf.XlbFlowKey
		expired bool
	}
	var entries []entry
	for i, tc := range []struct {
		name    string
		proto   uint8
		v6      bool
		flags   uint16
		age     uint32 // ticks since its last packet
		expired bool
	}{
		{"syn only, live", protoTCP, false, 0, 8, false},
		{"syn only, expired", protoTCP, false, 0, 12, true},
		{"established past tcp_syn", protoTCP, false, E, 12, false},
		{"established expired", protoTCP, true, E, 102, true},
		{"closing live", protoTCP, true, E | C, 47, false},
		{"closing expired", protoTCP, false, E | C, 52, true},
		{"udp live", protoUDP, false, 0, 27, false},
		{"udp expired", protoUDP, true, 0, 32, true},
		{"ipv6 udp live", protoUDP, true, 0, 2, false},
	} {
		client, vip, dport := client4, vip4, uint16(80)
		if tc.v6 {
			client, vip = client6, vip6
		}
		if tc.proto == protoUDP {
			dport = 53
		}
		p := pkt{src: client, dst: vip, proto: tc.proto, sport: uint16(50000 + i), dport: dport, tcpFlags: tcpSYN, checksum: true}
		k := natKey(p, f.sendOn(t, p))
		f.editBinding(t, k, func(b *bpf.XlbNatBinding) { b.Seen, b.Flags = now-tc.age, tc.flags })
		entries = append(entries, entry{tc.name, p, k, tc.expired})
	}
	// Ports in use count bindings, expired ones too, until the sweep.
	tcp4, udp4 := f.serviceID(vip4, 80, protoTCP), f.serviceID(vip4, 53, protoUDP)
	tcp6, udp6 := f.serviceID(vip6, 80, protoTCP), f.serviceID(vip6, 53, protoUDP)
	want := map[uint32]int{tcp4: 4, tcp6: 2, udp4: 1, udp6: 2}
	if got := f.portsInUse(t); !maps.Equal(got, want) {
		t.Fatalf("ports in use before the sweep %v, want %v", got, want)
	}

	s := f.expireNAT(t)
	wantLive := map[uint32]int{tcp4: 2, tcp6: 1, udp4: 1, udp6: 1}
	if s.Expired != 4 || !maps.Equal(s.Live, wantLive) {
		t.Fatalf("sweep %+v, want 4 expired and live %v", s, wantLive)
	}
	for _, e := range entries {
		if f.hasBinding(t, e.k) == e.expired || f.hasFlow(t, e.p) == e.expired {
			t.Errorf("%s: binding kept %v, entry kept %v", e.name, f.hasBinding(t, e.k), f.hasFlow(t, e.p))
		}
	}
	if got := f.portsInUse(t); !maps.Equal(got, wantLive) {
		t.Fatalf("ports in use after the sweep %v, want %v", got, wantLive)
	}
	if again := f.expireNAT(t); again.Expired != 0 {
		t.Fatalf("second sweep expired %d", again.Expired)
	}

	// The seen floor (the daemon's start) counts as a packet of every flow.
	udp := entries[6]
	f.editBinding(t, udp.k, func(b *bpf.XlbNatBinding) { b.Seen = now - 40 })
	f.setTimeouts(timeouts, now-5)
	if s := f.expireNAT(t); s.Expired != 0 || !f.hasBinding(t, udp.k) {
		t.Fatalf("a binding idle past its timeout but not since the start expired: %+v", s)
	}
	f.setTimeouts(timeouts, now-35)
	if s := f.expireNAT(t); s.Expired != 1 || f.hasBinding(t, udp.k) || f.hasFlow(t, udp.p) {
		t.Fatalf("a binding idle past its timeout since the start stayed: %+v", s)
	}
}

// A binding no flow names (its flow moved to another backend or port) goes
// only once older than natOrphanAge ticks: the datapath inserts a binding
// before the flow's entry that names it. Flow entries whose binding is gone
// or names another flow go at once.
func TestExpireNATOrphans(t *testing.T) {
	f := newNATFixture(t, natPorts())
	m := f.moveFlow(t)
	old := FlowKey(m.first, outSrc4, 8080, m.port, protoTCP)
	moved := FlowKey(m.next, outSrc4, 8080, m.moved, protoTCP)
	if s := f.expireNAT(t); s.Expired != 0 || !f.hasBinding(t, old) {
		t.Fatalf("a fresh orphan was swept: %+v", s)
	}
	now := nowTick(t)
	f.editBinding(t, old, func(b *bpf.XlbNatBinding) { b.Seen = now - natOrphanAge + 1 })
	if s := f.expireNAT(t); s.Expired != 0 || !f.hasBinding(t, old) {
		t.Fatalf("an orphan younger than %d ticks was swept: %+v", natOrphanAge, s)
	}
	f.editBinding(t, old, func(b *bpf.XlbNatBinding) { b.Seen = now - natOrphanAge - 2 })
	if s := f.expireNAT(t); s.Expired != 1 || f.hasBinding(t, old) {
		t.Fatalf("an orphan older than %d ticks stayed: %+v", natOrphanAge, s)
	}
	if !f.hasBinding(t, moved) || !f.hasFlow(t, m.p) {
		t.Fatal("the moved flow's binding or entry was swept")
	}

	// Flow entries: one whose binding is gone, one whose binding names
	// another flow (rewritten here), one live.
	f.apply(natDesired())
	var ps []pkt
	var keys []bpf.XlbFlowKey
	for i := range 3 {
		p := pkt{src: client4, dst: vip4, proto: protoUDP, sport: uint16(51000 + i), dport: 53, checksum: true}
		ps, keys = append(ps, p), append(keys, natKey(p, f.sendOn(t, p)))
	}
	if err := f.dp.NatBindings.Delete(keys[0]); err != nil {
		t.Fatal(err)
	}
	f.editBinding(t, keys[1], func(b *bpf.XlbNatBinding) {
		b.Client = flowKeyOf(pkt{src: client4, dst: vip4, proto: protoUDP, sport: 1, dport: 53})
	})
	f.expireNAT(t)
	if f.hasFlow(t, ps[0]) || f.hasFlow(t, ps[1]) {
		t.Fatalf("flow entries without their binding stayed: %v, %v", f.hasFlow(t, ps[0]), f.hasFlow(t, ps[1]))
	}
	if !f.hasBinding(t, keys[1]) {
		t.Fatal("a binding naming another flow went before it was an orphan natOrphanAge ticks")
	}
	if !f.hasFlow(t, ps[2]) || !f.hasBinding(t, keys[2]) {
		t.Fatal("a live flow was swept")
	}
}

// A port the sweep frees goes to the next flow that needs one: with one
// port in the range, a second flow is turned away until the first one's
// binding expires.
func TestExpireNATFreesPort(t *testing.T) {
	f := newNATFixture(t, NATPorts{First: 20000, Count: 1})
	now := nowTick(t)
	f.setTimeouts(FlowTimeouts{TCPSyn: 10 * FlowTick, TCPEstablished: 100 * FlowTick, TCPClosing: 50 * FlowTick, UDP: 30 * FlowTick}, now-1000)
	a := pkt{src: client4, dst: vip4, proto: protoUDP, sport: 52000, dport: 53, checksum: true}
	b := a
	b.src = netip.MustParseAddr("198.18.0.101")
	if port := f.sendOn(t, a); port != 20000 {
		t.Fatalf("first flow's port %d, want 20000", port)
	}
	f.expectOn(t, b.build(), xdpDrop, rNATPorts)

	f.editBinding(t, natKey(a, 20000), func(nb *bpf.XlbNatBinding) { nb.Seen = now - 32 })
	if s := f.expireNAT(t); s.Expired != 1 {
		t.Fatalf("sweep %+v, want the first flow's binding expired", s)
	}
	if port := f.sendOn(t, b); port != 20000 {
		t.Fatalf("second flow's port %d, want the freed 20000", port)
	}
	var nb bpf.XlbNatBinding
	if err := f.dp.NatBindings.Lookup(natKey(b, 20000), &nb); err != nil || nb.Client != flowKeyOf(b) {
		t.Fatalf("port 20000's binding %+v (%v), want the second flow's", nb, err)
	}
	if f.hasFlow(t, a) {
		t.Fatal("the expired flow's entry stayed")
	}
	f.expectOn(t, a.build(), xdpDrop, rNATPorts)
}

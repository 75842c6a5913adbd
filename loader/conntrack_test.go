package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xlb-dev/xlb/bpf"
	"github.com/xlb-dev/xlb/config"
)

// nowTick is the datapath's flow clock.
func nowTick(t testing.TB) uint32 {
	t.Helper()
	ns, err := monotonicNow()
	if err != nil {
		t.Fatal(err)
	}
	return uint32(ns >> bpf.XlbLimitsXLB_FLOW_TICK_SHIFT)
}

func flowKeyOf(p pkt) bpf.XlbFlowKey { return FlowKey(p.src, p.dst, p.sport, p.dport, p.proto) }

func (f *fixture) flow(p pkt) bpf.XlbFlowValue {
	f.t.Helper()
	var v bpf.XlbFlowValue
	if err := f.dp.Conntrack.Lookup(flowKeyOf(p), &v); err != nil {
		f.t.Fatalf("conntrack entry of %s:%d: %v", p.src, p.sport, err)
	}
	return v
}

func (f *fixture) backendID(svc ServiceSpec, a netip.Addr) uint32 {
	f.t.Helper()
	id, ok := f.rec.BackendID(f.serviceID(svc.VIP, svc.Port, svc.Proto), a)
	if !ok {
		f.t.Fatalf("no backend %s", a)
	}
	return id
}

// otherThan is a backend of be4 that is not a.
func otherThan(a netip.Addr) netip.Addr {
	if a == be4[0] {
		return be4[1]
	}
	return be4[0]
}

func seenNow(t *testing.T, seen, before uint32) {
	t.Helper()
	if after := nowTick(t); seen < before || seen > after {
		t.Fatalf("seen %d, want the tick of the packet (%d..%d)", seen, before, after)
	}
}

// An entry idle past the timeout of its protocol and TCP state is gone: its
// next packet is placed by the ring and overwrites it. One within it stays on
// its backend, however the ring would place it. TCP states follow the
// client's packets, and a SYN reopens a closed flow that fell silent.
func TestXDPFlowExpiry(t *testing.T) { forBuilds(t, testXDPFlowExpiry) }

func testXDPFlowExpiry(t *testing.T, b build) {
	d := standardDesired()
	f := newFixtureFor(t, b, d)
	tcp4, udp4 := d.Services[0], d.Services[1]
	const syn, est, closing = 10, 100, 50 // timeouts in ticks
	timeouts := FlowTimeouts{
		TCPSyn: syn * FlowTick, TCPEstablished: est * FlowTick, TCPClosing: closing * FlowTick, UDP: 30 * FlowTick,
	}
	E, C := flowEstablished, flowClosing
	const legacy = ^uint32(0) // seen 0: an entry from an older build
	cases := []struct {
		name      string
		udp       bool
		tcpFlags  uint8
		flags     uint16 // the entry's state
		age       uint32 // ticks since its last packet
		moved     bool   // placed anew by the ring
		wantFlags uint16
		started   uint32 // ticks since the seen floor (0: long ago)
	}{
		{"udp live", true, 0, 0, 28, false, 0, 0},
		{"udp expired", true, 0, 0, 32, true, 0, 0},
		{"syn only, live", false, tcpACK, 0, syn - 2, false, E, 0},
		{"syn only, expired", false, tcpACK, 0, syn + 2, true, E, 0},
		{"established past tcp_syn", false, tcpACK, E, est - 2, false, E, 0},
		{"established expired", false, tcpACK, E, est + 2, true, E, 0},
		{"closing live", false, tcpACK, C | E, closing - 2, false, C | E, 0},
		{"closing expired", false, tcpACK, C | E, closing + 2, true, E, 0},
		{"syn reopens a closed flow", false, tcpSYN, C, 3, true, 0, 0},
		// A closed flow still sending (a half-close, or a forged RST) keeps
		// its backend: a SYN re-steers only after the flow fell silent.
		{"syn on a closing flow still sending stays", false, tcpSYN, C | E, 1, false, C | E, 0},
		{"syn just after close stays", false, tcpSYN, C, 0, false, C, 0},
		{"syn on an established flow stays", false, tcpSYN, E, 0, false, E, 0},
		{"syn retransmitted", false, tcpSYN, 0, 3, false, 0, 0},
		{"fin closes", false, tcpFIN | tcpACK, E, 0, false, C | E, 0},
		{"rst closes a syn-only flow", false, tcpRST, 0, 0, false, C, 0},
		{"older build entry stays", false, tcpACK, 0, legacy, false, E, 2},
		{"older build udp entry", true, 0, 0, legacy, false, 0, 2},
		{"older build entry idle since the start", false, tcpACK, 0, legacy, true, E, est + 2},
		{"older build udp entry idle since the start", true, 0, 0, legacy, true, 0, 32},
		{"idle past its timeout, but not since the start", false, tcpACK, 0, syn + 5, false, E, 2},
		{"udp idle past its timeout since the start", true, 0, 0, 40, true, 0, 32},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			svc := tcp4
			p := pkt{src: netip.AddrFrom4([4]byte{198, 18, 9, byte(i + 1)}), dst: vip4, proto: protoTCP, sport: 5000, dport: 80, tcpFlags: tc.tcpFlags}
			if tc.udp {
				svc = udp4
				p.proto, p.dport = protoUDP, 53
			}
			pick := f.predict(svc, p.src, p.sport)
			old := otherThan(pick)
			now := nowTick(t)
			started := tc.started
			if started == 0 {
				started = 1000
			}
			f.setTimeouts(timeouts, now-started)
			v := bpf.XlbFlowValue{
				BackendId: f.backendID(svc, old), ServiceId: uint16(f.serviceID(svc.VIP, svc.Port, svc.Proto)),
				Flags: tc.flags, Packets: 5, Seen: now - tc.age,
			}
			if tc.age == legacy {
				v.Seen = 0
			}
			if err := f.dp.Conntrack.Put(flowKeyOf(p), v); err != nil {
				t.Fatal(err)
			}
			sid := f.serviceID(svc.VIP, svc.Port, svc.Proto)
			before, _ := f.dp.ServiceCounters(sid)
			out := f.expectOne(t, p.build(), xdpTX, rTX)
			want, newFlows := old, uint64(0)
			if tc.moved {
				want, newFlows = pick, 1
			}
			if got := backendOf(t, out, be4); got != want {
				t.Fatalf("sent to %s, want %s (entry's %s, ring's %s)", got, want, old, pick)
			}
			if after, _ := f.dp.ServiceCounters(sid); after.NewFlows-before.NewFlows != newFlows {
				t.Fatalf("%d new flows counted, want %d", after.NewFlows-before.NewFlows, newFlows)
			}
			got := f.flow(p)
			if got.BackendId != f.backendID(svc, want) || got.Flags != tc.wantFlags {
				t.Fatalf("entry after the packet: backend %d flags %d, want backend %d flags %d",
					got.BackendId, got.Flags, f.backendID(svc, want), tc.wantFlags)
			}
			seenNow(t, got.Seen, now)
		})
	}

	t.Run("zero timeouts never expire", func(t *testing.T) {
		if err := f.dp.SetFlowTimeouts(FlowTimeouts{}); err != nil {
			t.Fatal(err)
		}
		p := pkt{src: netip.MustParseAddr("198.18.9.200"), dst: vip4, proto: protoUDP, sport: 1, dport: 53}
		old := otherThan(f.predict(udp4, p.src, p.sport))
		v := bpf.XlbFlowValue{BackendId: f.backendID(udp4, old), ServiceId: uint16(f.serviceID(vip4, 53, protoUDP)), Seen: 1}
		if err := f.dp.Conntrack.Put(flowKeyOf(p), v); err != nil {
			t.Fatal(err)
		}
		if got := backendOf(t, f.expectOne(t, p.build(), xdpTX, rTX), be4); got != old {
			t.Fatalf("sent to %s, want the entry's %s", got, old)
		}
	})
}

// A new flow's state is what its first packet shows.
func TestXDPNewFlowState(t *testing.T) { forBuilds(t, testXDPNewFlowState) }

func testXDPNewFlowState(t *testing.T, b build) {
	f := newFixtureFor(t, b, standardDesired())
	for i, tc := range []struct {
		name     string
		proto    uint8
		tcpFlags uint8
		want     uint16
	}{
		{"syn", protoTCP, tcpSYN, 0},
		{"ack: picked up mid-stream", protoTCP, tcpACK, flowEstablished},
		{"syn ack", protoTCP, tcpSYN | tcpACK, 0},
		{"fin", protoTCP, tcpFIN | tcpACK, flowClosing},
		{"rst", protoTCP, tcpRST, flowClosing},
		{"udp", protoUDP, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pkt{src: netip.AddrFrom4([4]byte{198, 18, 10, byte(i + 1)}), dst: vip4, proto: tc.proto, sport: 1, dport: 80, tcpFlags: tc.tcpFlags}
			if tc.proto == protoUDP {
				p.dport = 53
			}
			now := nowTick(t)
			f.expectOne(t, p.build(), xdpTX, rTX)
			v := f.flow(p)
			if v.Flags != tc.want || v.Packets != 1 {
				t.Fatalf("new entry flags %d packets %d, want flags %d packets 1", v.Flags, v.Packets, tc.want)
			}
			seenNow(t, v.Seen, now)
		})
	}
}

// A sweep deletes exactly the entries the datapath treats as gone, in
// batches, writes no value (an older build's entries age from the seen
// floor), and counts both in the metrics; OpenFlows already leaves expired
// entries out.
func TestExpireFlows(t *testing.T) {
	d := standardDesired()
	f := newFixture(t, d)
	reg := prometheus.NewRegistry()
	f.rec.Metrics = NewMetrics(reg)
	now := nowTick(t)
	f.setTimeouts(FlowTimeouts{TCPSyn: 10 * FlowTick, TCPEstablished: 100 * FlowTick, TCPClosing: 50 * FlowTick, UDP: 30 * FlowTick}, now-60)
	udpSvc := uint16(f.serviceID(vip4, 53, protoUDP))
	tcpSvc := uint16(f.serviceID(vip4, 80, protoTCP))
	udpBe := f.backendID(d.Services[1], be4[0])
	tcpBe := f.backendID(d.Services[0], be4[1])

	// More than one batch of each, so that walks and deletes chunk.
	const n = flowBatch + 100
	var keys []bpf.XlbFlowKey
	var vals []bpf.XlbFlowValue
	expired := map[bpf.XlbFlowKey]bool{}
	for i := range 2 * n {
		k := FlowKey(netip.AddrFrom4([4]byte{198, 18, byte(100 + i>>8), byte(i)}), vip4, uint16(i), 53, protoUDP)
		v := bpf.XlbFlowValue{BackendId: udpBe, ServiceId: udpSvc, Packets: 1, Seen: now - 5}
		if i < n {
			v.Seen = now - 40
			expired[k] = true
		}
		keys, vals = append(keys, k), append(vals, v)
	}
	tcpKey := func(i int) bpf.XlbFlowKey {
		return FlowKey(netip.AddrFrom4([4]byte{198, 18, 50, byte(i)}), vip4, 9, 80, protoTCP)
	}
	special := []struct {
		v       bpf.XlbFlowValue
		expired bool
	}{
		{bpf.XlbFlowValue{Flags: 0, Packets: 1, Seen: now - 12}, true},                // syn only
		{bpf.XlbFlowValue{Flags: flowEstablished, Packets: 9, Seen: now - 12}, false}, // established
		{bpf.XlbFlowValue{Flags: flowClosing, Packets: 9, Seen: now - 52}, true},      // closing
		{bpf.XlbFlowValue{Packets: 9, CreatedNs: 1}, false},                           // older build: established
		{bpf.XlbFlowValue{Flags: flowClosing, Packets: 9, CreatedNs: 1}, true},        // older build: closed, started 60 ticks ago
		{bpf.XlbFlowValue{Packets: 1, CreatedNs: 1}, true},                            // older build: syn only
	}
	for i, s := range special {
		s.v.BackendId, s.v.ServiceId = tcpBe, tcpSvc
		keys, vals = append(keys, tcpKey(i)), append(vals, s.v)
		if s.expired {
			expired[tcpKey(i)] = true
		}
	}
	if _, err := f.dp.Conntrack.BatchUpdate(keys, vals, nil); err != nil {
		t.Fatal(err)
	}

	open, err := f.dp.OpenFlows()
	if err != nil {
		t.Fatal(err)
	}
	if open[udpBe] != n || open[tcpBe] != 2 {
		t.Fatalf("open flows %v, want %d on udp backend %d and 2 on tcp backend %d", open, n, udpBe, tcpBe)
	}

	sweep, err := f.rec.ExpireFlows()
	if err != nil {
		t.Fatal(err)
	}
	live := len(keys) - len(expired)
	if sweep.Expired != len(expired) || sweep.Live != live {
		t.Fatalf("sweep %+v, want %d expired and %d live", sweep, len(expired), live)
	}
	written := map[bpf.XlbFlowKey]bpf.XlbFlowValue{}
	for i, k := range keys {
		written[k] = vals[i]
	}
	left := 0
	if err := f.dp.walkFlows(func(k bpf.XlbFlowKey, v bpf.XlbFlowValue) {
		left++
		if expired[k] {
			t.Errorf("expired entry %v survived the sweep", k)
		}
		if v != written[k] {
			t.Errorf("entry %v rewritten by the sweep: %+v, was %+v", k, v, written[k])
		}
	}); err != nil {
		t.Fatal(err)
	}
	if left != live {
		t.Fatalf("%d entries left, want %d", left, live)
	}
	if got := gathered(t, reg, "xlb_conntrack_expired_total", nil); got != float64(len(expired)) {
		t.Errorf("xlb_conntrack_expired_total = %v, want %d", got, len(expired))
	}
	if got := gathered(t, reg, "xlb_conntrack_entries", nil); got != float64(live) {
		t.Errorf("xlb_conntrack_entries = %v, want %d", got, live)
	}
	again, err := f.rec.ExpireFlows()
	if err != nil || again.Expired != 0 || again.Live != live {
		t.Fatalf("second sweep %+v, %v: want nothing expired", again, err)
	}
}

// Table sizes are load-time settings: a restart with another size replaces
// that table (at Commit), and with the backend tables the connection table,
// whose flows name backend ids. The rest is adopted, flow timeouts included.
func TestAdoptResizedTables(t *testing.T) {
	requireRoot(t)
	dir := fmt.Sprintf("/sys/fs/bpf/xlb-test-resize-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := standardDesired()
	p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 4243, dport: 80, tcpFlags: tcpSYN}
	open := func(opts Options) *fixture {
		opts.PinDir, opts.Logger = dir, quietLogger()
		dp, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := NewReconciler(&dp.Maps, staticResolver{ifindex: loIfIndex}, loIfIndex, quietLogger())
		if err != nil {
			dp.Close(false)
			t.Fatal(err)
		}
		return &fixture{t: t, dp: dp, rec: rec}
	}
	hasFlow := func(f *fixture) bool {
		var v bpf.XlbFlowValue
		err := f.dp.Conntrack.Lookup(flowKeyOf(p), &v)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatal(err)
		}
		return err == nil
	}
	timeouts := FlowTimeouts{TCPSyn: 2 * FlowTick, TCPEstablished: 9 * FlowTick, TCPClosing: 3 * FlowTick, UDP: 4 * FlowTick}

	f := open(Options{})
	f.apply(d)
	if err := f.dp.SetFlowTimeouts(timeouts); err != nil {
		t.Fatal(err)
	}
	f.run(p.build())
	svcID := f.serviceID(vip4, 80, protoTCP)
	if err := f.dp.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := f.dp.Close(true); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name              string
		opts              Options
		conntrack, maxBes uint32
		flowKept          bool
	}{
		{"same sizes", Options{}, uint32(bpf.XlbLimitsXLB_CONNTRACK_SIZE), MaxBackends, true},
		{"conntrack resized", Options{ConntrackSize: 4096}, 4096, MaxBackends, false},
		{"backend tables resized", Options{ConntrackSize: 4096, MaxBackends: 64}, 4096, 64, false},
	}
	for _, st := range steps {
		g := open(st.opts)
		if !g.dp.Adopted {
			g.dp.Close(false)
			t.Fatalf("%s: nothing adopted", st.name)
		}
		if got := g.serviceID(vip4, 80, protoTCP); got != svcID {
			t.Errorf("%s: service id %d, was %d", st.name, got, svcID)
		}
		if got := g.dp.Conntrack.MaxEntries(); got != st.conntrack {
			t.Errorf("%s: conntrack holds %d entries, want %d", st.name, got, st.conntrack)
		}
		if a, b := g.dp.Backends.MaxEntries(), g.dp.BackendStats.MaxEntries(); a != st.maxBes || b != st.maxBes {
			t.Errorf("%s: backend tables hold %d and %d entries, want %d", st.name, a, b, st.maxBes)
		}
		if got := hasFlow(g); got != st.flowKept {
			t.Errorf("%s: flow kept = %v, want %v", st.name, got, st.flowKept)
		}
		if got, err := g.dp.ReadFlowTimeouts(); err != nil || got != timeouts {
			t.Errorf("%s: flow timeouts %+v (%v), want %+v", st.name, got, err, timeouts)
		}
		g.apply(d)
		g.run(p.build())
		if err := g.dp.Commit(); err != nil {
			t.Fatal(err)
		}
		if err := g.dp.Close(true); err != nil {
			t.Fatal(err)
		}
	}

	// The backend ids are bounded by the new size.
	g := open(Options{ConntrackSize: 4096, MaxBackends: 64})
	defer func() {
		if err := g.dp.Commit(); err != nil {
			t.Error(err)
		}
		g.dp.Close(false)
	}()
	big := Desired{RingSize: 251, Services: []ServiceSpec{webService(vip4, 80, protoTCP, HashIP, nil)}}
	for i := range 65 {
		big.Services[0].Backends = append(big.Services[0].Backends,
			BackendSpec{Address: netip.AddrFrom4([4]byte{198, 18, 20, byte(i + 1)}), Weight: 1, State: StateUp})
	}
	if _, err := g.rec.Apply(t.Context(), big); !errors.Is(err, ErrFull) {
		t.Fatalf("65 backends in a 64-entry table: %v, want ErrFull", err)
	}
}

// setTimeouts gives the datapath timeouts t with the seen floor at tick floor
// (as if the daemon had started then).
func (f *fixture) setTimeouts(t FlowTimeouts, floor uint32) {
	f.t.Helper()
	f.dp.seenFloor = floor
	if err := f.dp.SetFlowTimeouts(t); err != nil {
		f.t.Fatal(err)
	}
}

// setDefaultTimeouts gives the datapath the default flow timeouts, as the
// daemon does: the expiry check then runs in full.
func (f *fixture) setDefaultTimeouts() {
	f.t.Helper()
	if err := f.dp.SetFlowTimeouts(FlowTimeouts{
		TCPSyn: config.DefaultTCPSynTimeout, TCPEstablished: config.DefaultTCPEstablishedTimeout,
		TCPClosing: config.DefaultTCPClosingTimeout, UDP: config.DefaultUDPTimeout,
	}); err != nil {
		f.t.Fatal(err)
	}
}

// The config's default table sizes are the ones compiled into xlb.h, which a
// loader given no sizes uses.
func TestDefaultSizesAreCompiled(t *testing.T) {
	if config.DefaultConntrackSize != bpf.XlbLimitsXLB_CONNTRACK_SIZE || config.DefaultMaxBackends != MaxBackends {
		t.Fatalf("config defaults %d flows, %d backends; xlb.h %d, %d",
			config.DefaultConntrackSize, config.DefaultMaxBackends, bpf.XlbLimitsXLB_CONNTRACK_SIZE, MaxBackends)
	}
}

// Commit counts as a packet of every flow: the seen floor becomes the
// current tick, the timeouts in force stay.
func TestCommitRaisesSeenFloor(t *testing.T) {
	f := newFixture(t, standardDesired())
	timeouts := FlowTimeouts{TCPSyn: 2 * FlowTick, TCPEstablished: 9 * FlowTick, TCPClosing: 3 * FlowTick, UDP: 4 * FlowTick}
	before := nowTick(t)
	f.setTimeouts(timeouts, before-100)
	if err := f.dp.Commit(); err != nil {
		t.Fatal(err)
	}
	var v bpf.XlbIdleTimeouts
	if err := f.dp.FlowTimeouts.Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	if v.SeenFloor < before || v.SeenFloor > nowTick(t) {
		t.Fatalf("seen floor %d after Commit, want the tick of Commit (%d..)", v.SeenFloor, before)
	}
	if got, err := f.dp.ReadFlowTimeouts(); err != nil || got != timeouts {
		t.Fatalf("timeouts after Commit %+v (%v), want %+v", got, err, timeouts)
	}
	// A later write (a reload) keeps the floor.
	if err := f.dp.SetFlowTimeouts(FlowTimeouts{UDP: FlowTick}); err != nil {
		t.Fatal(err)
	}
	var after bpf.XlbIdleTimeouts
	if err := f.dp.FlowTimeouts.Lookup(uint32(0), &after); err != nil || after.SeenFloor != v.SeenFloor {
		t.Fatalf("seen floor %d after a reload (%v), want %d", after.SeenFloor, err, v.SeenFloor)
	}
}

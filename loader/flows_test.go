package loader

import (
	"math"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/bpf"
)

func TestToTicks(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want uint32
	}{
		{0, 0},
		{-time.Second, 0},
		{1, 1},
		{FlowTick, 1},
		{FlowTick + 1, 2},
		{30 * time.Second, 28}, // 27.9 ticks, rounded up: never early
		{time.Duration(math.MaxInt64), math.MaxInt32},
	} {
		if got := toTicks(tc.d); got != tc.want {
			t.Errorf("toTicks(%v) = %d, want %d", tc.d, got, tc.want)
		}
	}
}

// The Go reading of an entry agrees with flow_gone in xlb.c, and a drain
// waits only for entries that are neither gone nor closed nor abandoned
// handshakes.
func TestFlowRules(t *testing.T) {
	const now = 1000 // ticks
	r := flowRules{
		limits: bpf.XlbIdleTimeouts{TcpSyn: 10, TcpEstablished: 100, TcpClosing: 50, Udp: 30},
		now:    now,
		nowNs:  uint64(now) * uint64(FlowTick),
	}
	nsAgo := func(d time.Duration) uint64 { return r.nowNs - uint64(d) }
	tcp := bpf.XlbFlowKey{Proto: protoTCP}
	udp := bpf.XlbFlowKey{Proto: protoUDP}
	est, closing := flowEstablished, flowClosing
	cases := []struct {
		name          string
		k             bpf.XlbFlowKey
		v             bpf.XlbFlowValue
		expired, open bool
	}{
		{"udp just seen", udp, bpf.XlbFlowValue{Seen: now, Packets: 1, CreatedNs: nsAgo(time.Hour)}, false, true},
		{"udp idle its timeout", udp, bpf.XlbFlowValue{Seen: now - 30}, false, true},
		{"udp idle past its timeout", udp, bpf.XlbFlowValue{Seen: now - 31}, true, false},
		{"udp seen after the clock read", udp, bpf.XlbFlowValue{Seen: now + 1}, false, true},
		{"fresh syn", tcp, bpf.XlbFlowValue{Seen: now, Packets: 1, CreatedNs: nsAgo(time.Second)}, false, true},
		{"syn idle past tcp_syn", tcp, bpf.XlbFlowValue{Seen: now - 11, Packets: 1, CreatedNs: nsAgo(time.Second)}, true, false},
		{"syn retried, never answered", tcp, bpf.XlbFlowValue{Seen: now, Packets: 4, CreatedNs: nsAgo(10 * time.Second)}, false, false},
		{"established idle past tcp_syn", tcp, bpf.XlbFlowValue{Seen: now - 99, Flags: est, Packets: 9, CreatedNs: nsAgo(time.Hour)}, false, true},
		{"established idle past its timeout", tcp, bpf.XlbFlowValue{Seen: now - 101, Flags: est, Packets: 9}, true, false},
		{"closing within its timeout", tcp, bpf.XlbFlowValue{Seen: now - 49, Flags: closing | est}, false, false},
		{"closing past its timeout", tcp, bpf.XlbFlowValue{Seen: now - 51, Flags: closing | est}, true, false},
		{"closing, established timeout not yet", tcp, bpf.XlbFlowValue{Seen: now - 60, Flags: closing | est}, true, false},
		{"older build: established", tcp, bpf.XlbFlowValue{Packets: 12, CreatedNs: nsAgo(time.Hour)}, false, true},
		{"older build: syn never answered", tcp, bpf.XlbFlowValue{Packets: 1, CreatedNs: nsAgo(10 * time.Second)}, false, false},
		{"older build: client closed", tcp, bpf.XlbFlowValue{Packets: 40, Flags: closing, CreatedNs: nsAgo(time.Second)}, false, false},
		{"older build: udp", udp, bpf.XlbFlowValue{Packets: 1, CreatedNs: nsAgo(time.Hour)}, false, true},
	}
	for _, tc := range cases {
		if got := r.expired(tc.k, tc.v); got != tc.expired {
			t.Errorf("%s: expired = %v, want %v", tc.name, got, tc.expired)
		}
		if got := r.open(tc.k, tc.v); got != tc.open {
			t.Errorf("%s: open = %v, want %v", tc.name, got, tc.open)
		}
	}
	// A zero timeout never expires.
	off := flowRules{now: now}
	if off.expired(udp, bpf.XlbFlowValue{Seen: 1}) {
		t.Error("expired with no timeouts set")
	}
}

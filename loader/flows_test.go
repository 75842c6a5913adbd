package loader

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/bpf"
	"github.com/xlb-dev/xlb/internal/testenv"
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
// waits only for entries that are neither gone nor closed (and silent since)
// nor abandoned handshakes.
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
		floor         uint32 // the seen floor (0: none, long ago)
	}{
		{"udp just seen", udp, bpf.XlbFlowValue{Seen: now, Packets: 1, CreatedNs: nsAgo(time.Hour)}, false, true, 0},
		{"udp idle its timeout", udp, bpf.XlbFlowValue{Seen: now - 30}, false, true, 0},
		{"udp idle past its timeout", udp, bpf.XlbFlowValue{Seen: now - 31}, true, false, 0},
		{"udp seen after the clock read", udp, bpf.XlbFlowValue{Seen: now + 1}, false, true, 0},
		{"fresh syn", tcp, bpf.XlbFlowValue{Seen: now, Packets: 1, CreatedNs: nsAgo(time.Second)}, false, true, 0},
		{"syn idle past tcp_syn", tcp, bpf.XlbFlowValue{Seen: now - 11, Packets: 1, CreatedNs: nsAgo(time.Second)}, true, false, 0},
		{"syn retried, never answered", tcp, bpf.XlbFlowValue{Seen: now, Packets: 4, CreatedNs: nsAgo(10 * time.Second)}, false, false, 0},
		{"established idle past tcp_syn", tcp, bpf.XlbFlowValue{Seen: now - 99, Flags: est, Packets: 9, CreatedNs: nsAgo(time.Hour)}, false, true, 0},
		{"established idle past its timeout", tcp, bpf.XlbFlowValue{Seen: now - 101, Flags: est, Packets: 9}, true, false, 0},
		{"closing within its timeout", tcp, bpf.XlbFlowValue{Seen: now - 49, Flags: closing | est}, false, false, 0},
		{"closing, still sending (a half-close, or a forged RST)", tcp, bpf.XlbFlowValue{Seen: now - 1, Flags: closing | est}, false, true, 0},
		{"closing, silent since", tcp, bpf.XlbFlowValue{Seen: now - 2, Flags: closing | est}, false, false, 0},
		{"closing past its timeout", tcp, bpf.XlbFlowValue{Seen: now - 51, Flags: closing | est}, true, false, 0},
		{"closing, established timeout not yet", tcp, bpf.XlbFlowValue{Seen: now - 60, Flags: closing | est}, true, false, 0},
		{"older build: established", tcp, bpf.XlbFlowValue{Packets: 12, CreatedNs: nsAgo(time.Hour)}, false, true, now - 5},
		{"older build: syn never answered", tcp, bpf.XlbFlowValue{Packets: 1, CreatedNs: nsAgo(10 * time.Second)}, false, false, now - 5},
		{"older build: client closed", tcp, bpf.XlbFlowValue{Packets: 40, Flags: closing, CreatedNs: nsAgo(time.Second)}, false, false, now - 5},
		{"older build: udp", udp, bpf.XlbFlowValue{Packets: 1, CreatedNs: nsAgo(time.Hour)}, false, true, now - 5},
		{"older build: established, idle since the start past its timeout", tcp, bpf.XlbFlowValue{Packets: 12}, true, false, now - 101},
		{"older build: syn, idle since the start past tcp_syn", tcp, bpf.XlbFlowValue{Packets: 1}, true, false, now - 11},
		{"older build: udp, idle since the start past its timeout", udp, bpf.XlbFlowValue{Packets: 1}, true, false, now - 31},
		{"idle past its timeout, but not since the start", udp, bpf.XlbFlowValue{Seen: now - 40, CreatedNs: nsAgo(time.Hour)}, false, true, now - 5},
		{"idle past its timeout since the start", udp, bpf.XlbFlowValue{Seen: now - 40}, true, false, now - 31},
		{"seen after the start", udp, bpf.XlbFlowValue{Seen: now - 31}, true, false, now - 40},
	}
	for _, tc := range cases {
		r := r
		r.limits.SeenFloor = tc.floor
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

// In a time namespace the datapath's clock is the host's: the namespace's
// monotonic offset comes off the process's reading.
func TestParseMonotonicOffset(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{"monotonic           0         0\nboottime            0         0\n", 0, false},
		{"monotonic        3600       500\nboottime          -10         0\n", 3600*1e9 + 500, false},
		{"boottime 5 0\nmonotonic -86400 0\n", -86400 * 1e9, false},
		{"", 0, false},
		{"monotonic x 0\n", 0, true},
	} {
		got, err := parseMonotonicOffset(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("parseMonotonicOffset(%q) = %d, %v; want %d (error %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

// The same, for real: a copy of this test binary in a time namespace a day
// ahead reads the same flow clock as this process.
func TestFlowClockInTimeNamespace(t *testing.T) {
	if os.Getenv("XLB_PRINT_FLOW_TICK") != "" {
		now, err := currentTick()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("tick %d\n", now)
		return
	}
	requireRoot(t)
	unshare := testenv.RequireTool(t, "unshare", "util-linux")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, unshare, "--time", "--monotonic", "86400", "--",
		os.Args[0], "-test.run=^TestFlowClockInTimeNamespace$", "-test.count=1")
	cmd.Env = append(os.Environ(), "XLB_PRINT_FLOW_TICK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var child uint32
	if _, err := fmt.Sscanf(string(out), "tick %d", &child); err != nil {
		t.Fatalf("child said %q: %v", out, err)
	}
	parent, err := currentTick()
	if err != nil {
		t.Fatal(err)
	}
	if d := int32(parent - child); d < 0 || d > 30 {
		t.Fatalf("flow clock in the time namespace %d, here %d: %d ticks apart", child, parent, d)
	}
}

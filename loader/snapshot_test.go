package loader

import (
	"testing"
	"time"

	"github.com/xlb-dev/xlb/bpf"
)

func TestFlowOpen(t *testing.T) {
	now := uint64(100 * time.Second)
	ago := func(d time.Duration) uint64 { return now - uint64(d) }
	tcp := bpf.XlbFlowKey{Proto: protoTCP}
	udp := bpf.XlbFlowKey{Proto: protoUDP}
	closing := uint16(bpf.XlbFlowFlagsXLB_FLOW_CLOSING)
	cases := []struct {
		name string
		k    bpf.XlbFlowKey
		v    bpf.XlbFlowValue
		open bool
	}{
		{"established tcp", tcp, bpf.XlbFlowValue{Packets: 12, CreatedNs: ago(time.Hour)}, true},
		{"fresh syn", tcp, bpf.XlbFlowValue{Packets: 1, CreatedNs: ago(time.Second)}, true},
		{"syn never answered", tcp, bpf.XlbFlowValue{Packets: 1, CreatedNs: ago(10 * time.Second)}, false},
		{"client closed", tcp, bpf.XlbFlowValue{Packets: 40, Flags: closing, CreatedNs: ago(time.Second)}, false},
		{"old single udp datagram", udp, bpf.XlbFlowValue{Packets: 1, CreatedNs: ago(time.Hour)}, true},
	}
	for _, tc := range cases {
		if got := flowOpen(tc.k, tc.v, now); got != tc.open {
			t.Errorf("%s: open = %v, want %v", tc.name, got, tc.open)
		}
	}
}

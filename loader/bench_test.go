package loader

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/bpf"
)

// benchRepeat is how often BPF_PROG_TEST_RUN reruns a packet in the kernel.
const benchRepeat = 5_000_000

// benchNewFlows is how many distinct new flows the new-flow case sends.
const benchNewFlows = 200_000

// BenchmarkXDP measures the XDP program per packet under BPF_PROG_TEST_RUN
// next to the no-op program (xlb_noop) on the same packet. Run it with
// `make bench-xdp` (-benchtime 1x: each case does its own repetitions).
//
// Established flow and non-VIP pass rerun one packet benchRepeat times in the
// kernel; every rerun is counted in reason_stats and checked. A new flow can't
// be rerun (the first run creates the flow), so each of benchNewFlows distinct
// flows runs once; a single run also pays the test harness's own timing, so
// the no-op program is run the same way and its cost subtracted: new flow =
// floor + (new flow - no-op, both at repeat 1). That per-call figure runs with
// cold caches after every syscall, so the headline new-flow figure comes from
// the XlbBench build instead, which turns every in-kernel rerun into a new
// flow.
func BenchmarkXDP(b *testing.B) {
	f := newFixture(b, standardDesired())
	f.setDefaultTimeouts()
	established4 := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 40000, dport: 80, tcpFlags: tcpACK, payload: 64}.build()
	established6 := pkt{src: client6, dst: vip6, proto: protoTCP, sport: 40000, dport: 80, tcpFlags: tcpACK, payload: 64}.build()
	nonVIP := pkt{src: client4, dst: netip.MustParseAddr("198.19.0.99"), proto: protoTCP, sport: 40000, dport: 80, payload: 64}.build()
	f.run(established4)
	f.run(established6)

	floor := f.kernelNs(b, f.dp.Noop, established4, benchRepeat, xdpPass, -1)
	b.Run("noop", func(b *testing.B) { report(b, floor, floor) })
	b.Run("established-ipv4", func(b *testing.B) {
		report(b, f.kernelNs(b, f.dp.Program, established4, benchRepeat, xdpTX, rTX), floor)
	})
	b.Run("established-ipv6", func(b *testing.B) {
		report(b, f.kernelNs(b, f.dp.Program, established6, benchRepeat, xdpTX, rTX), floor)
	})
	b.Run("non-vip-pass", func(b *testing.B) {
		report(b, f.kernelNs(b, f.dp.Program, nonVIP, benchRepeat, xdpPass, rNoService), floor)
	})
	b.Run("new-flow-ipv4", func(b *testing.B) {
		// The XlbBench build bumps the source of every forwarded packet, so
		// each rerun is a new flow: a conntrack miss, a Maglev pick and an
		// insert (with LRU eviction once the table is full).
		nf := newFixtureWith(b, standardDesired(), bpf.LoadXlbBench)
		nf.setDefaultTimeouts()
		data := pkt{src: netip.MustParseAddr("198.18.0.0"), dst: vip4, proto: protoTCP, sport: 40000, dport: 80, tcpFlags: tcpSYN, payload: 64}.build()
		ns := nf.kernelNs(b, nf.dp.Program, data, benchRepeat, xdpTX, rTX)
		sc, _ := nf.dp.ServiceCounters(nf.serviceID(vip4, 80, protoTCP))
		if sc.NewFlows != benchRepeat {
			b.Fatalf("%d new flows counted, want %d", sc.NewFlows, benchRepeat)
		}
		report(b, ns, floor)
	})
	b.Run("new-flow-ipv4-per-call", func(b *testing.B) {
		var prog, noop time.Duration
		before := f.reasons()
		for i := range benchNewFlows {
			// Distinct 5-tuples with sources in 198.18.0.0/15.
			a := 198<<24 | 18<<16 | uint32(i%(1<<17))
			p := pkt{src: netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}),
				dst: vip4, proto: protoTCP, sport: 40000 + uint16(i>>17), dport: 80, tcpFlags: tcpSYN, payload: 64}
			data := p.build()
			prog += f.once(b, f.dp.Program, data, xdpTX)
			noop += f.once(b, f.dp.Noop, data, xdpPass)
		}
		after := f.reasons()
		if got := after[rTX].Packets - before[rTX].Packets; got != benchNewFlows {
			b.Fatalf("%d packets forwarded, want %d", got, benchNewFlows)
		}
		marginal := float64(prog-noop) / benchNewFlows
		report(b, floor+marginal, floor)
	})
}

func report(b *testing.B, ns, floor float64) {
	b.ReportMetric(ns, "ns/pkt")
	b.ReportMetric(ns/floor, "x-noop")
	b.ReportMetric(0, "ns/op") // the per-op wall time means nothing here
}

// kernelNs runs data repeat times in the kernel and returns ns per run. It
// checks the last verdict and, when reasonIdx >= 0, that every run was
// counted under that reason.
func (f *fixture) kernelNs(b *testing.B, prog *ebpf.Program, data []byte, repeat int, verdict uint32, reasonIdx int) float64 {
	b.Helper()
	before := f.reasons()
	ret, d, err := prog.Benchmark(data, repeat, nil)
	if err != nil {
		b.Fatal(err)
	}
	if ret != verdict {
		b.Fatalf("verdict %s, want %s", verdictNames[ret], verdictNames[verdict])
	}
	if reasonIdx >= 0 {
		after := f.reasons()
		if got := after[reasonIdx].Packets - before[reasonIdx].Packets; got != uint64(repeat) {
			b.Fatalf("%d of %d runs counted as %s", got, repeat, ReasonName(reasonIdx))
		}
	}
	return float64(d.Nanoseconds())
}

func (f *fixture) once(b *testing.B, prog *ebpf.Program, data []byte, verdict uint32) time.Duration {
	ret, d, err := prog.Benchmark(data, 1, nil)
	if err != nil {
		b.Fatal(err)
	}
	if ret != verdict {
		b.Fatalf("verdict %s, want %s", verdictNames[ret], verdictNames[verdict])
	}
	return d
}

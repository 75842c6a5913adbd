package loader

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

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
// flow. Forwarding that rewrites headers (nat, ipip) runs under XlbBench's
// restore harness (see rewriting).
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
	rewriting(b, floor)
}

// rewriting adds to BenchmarkXDP the forwarding that rewrites headers, nat
// both ways and ipip, on established flows of the NAT fixture (packets
// received on its xo0, sent back out of it: XDP_TX). Each rerun would see
// the previous one's output (a NAT source or a tunnel packet, passed to the
// kernel), so they run under the restore harness, whose own cost is
// measured with the no-op program and taken off (marginalNs).
func rewriting(b *testing.B, floor float64) {
	f := newNATFixture(b, natPorts())
	f.clientRoutes(b, 0)
	d := natDesired()
	d.Services = append(d.Services, ipipService(vip4, 90, netip.Prefix{}, routedBe4), ipipService(vip6, 90, netip.Prefix{}, routedBe6))
	f.apply(d)
	h := newRestoreHarness(b)
	xo0 := f.n.out
	established := func(client, vip netip.Addr, port uint16) pkt {
		syn := pkt{src: client, dst: vip, proto: protoTCP, sport: 40000, dport: port, tcpFlags: tcpSYN, payload: 64, checksum: true}
		f.kernelNsOn(b, f.dp.Program, syn.build(), xo0, 1, xdpTX, rTX)
		syn.tcpFlags = tcpACK
		return syn
	}
	ack4, ack6 := established(client4, vip4, 80), established(client6, vip6, 80)
	b.Run("restore-harness", func(b *testing.B) {
		// The harness's own cost, on the no-op program.
		h.load(b, ack4.build(), f.dp.Noop)
		report(b, f.kernelNsOn(b, h.Prog, ack4.build(), xo0, benchRepeat, xdpPass, -1), floor)
	})
	for _, c := range []struct {
		name string
		p    pkt
	}{{"ipv4", ack4}, {"ipv6", ack6}} {
		b.Run("nat-established-"+c.name, func(b *testing.B) {
			report(b, f.marginalNs(b, h, f.dp.Program, f.dp.Noop, c.p.build(), xo0, xdpTX, rTX, floor), floor)
		})
	}
	for _, c := range []struct {
		name string
		p    pkt
	}{{"ipv4", ack4}, {"ipv6", ack6}} {
		b.Run("nat-reply-"+c.name, func(b *testing.B) {
			nf, ok := f.natFlow(b, c.p)
			if !ok {
				b.Fatal("no NAT flow")
			}
			be, src, bport := natTarget(c.p.src.Is6(), protoTCP)
			a := pkt{srcMAC: kernelGwMAC, dstMAC: outMAC, src: be, dst: src, proto: protoTCP, sport: bport, dport: nf.Port,
				tcpFlags: tcpACK, payload: 64, checksum: true}
			report(b, f.marginalNs(b, h, f.dp.Program, f.dp.Noop, a.build(), xo0, xdpTX, rNATReply, floor), floor)
		})
	}
	for _, c := range []struct {
		name        string
		client, vip netip.Addr
	}{{"ipv4", client4, vip4}, {"ipv6", client6, vip6}} {
		b.Run("ipip-established-"+c.name, func(b *testing.B) {
			p := established(c.client, c.vip, 90)
			report(b, f.marginalNs(b, h, f.dp.Program, f.dp.Noop, p.build(), xo0, xdpTX, rTX, floor), floor)
		})
	}
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
	return f.kernelNsOn(b, prog, data, 0, repeat, verdict, reasonIdx)
}

// kernelNsOn is kernelNs for data received on interface ifindex (0: the
// namespace's lo), in f's namespace.
func (f *fixture) kernelNsOn(b *testing.B, prog *ebpf.Program, data []byte, ifindex, repeat int, verdict uint32, reasonIdx int) float64 {
	b.Helper()
	before := f.reasons()
	var ret uint32
	var ns float64
	var err error
	f.do(func() { ret, ns, err = testRun(prog, data, ifindex, repeat) })
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
	return ns
}

// testRun is BPF_PROG_TEST_RUN of prog on data, repeat times, as if
// received on ifindex (0: lo): it returns the last verdict and the kernel's
// ns per run. (cilium/ebpf's Benchmark takes no context, and Run returns
// no duration.)
func testRun(prog *ebpf.Program, data []byte, ifindex, repeat int) (uint32, float64, error) {
	ctx := xdpMD{DataEnd: uint32(len(data)), IngressIfindex: uint32(ifindex)}
	out := make([]byte, len(data)+256)
	attr := struct {
		progFD, retval, dataSizeIn, dataSizeOut uint32
		dataIn, dataOut                         uint64
		repeat, duration, ctxSizeIn, ctxSizeOut uint32
		ctxIn, ctxOut                           uint64
		flags, cpu, batchSize, _                uint32
	}{
		progFD: uint32(prog.FD()), dataSizeIn: uint32(len(data)), dataSizeOut: uint32(len(out)),
		dataIn: uint64(uintptr(unsafe.Pointer(&data[0]))), dataOut: uint64(uintptr(unsafe.Pointer(&out[0]))),
		repeat: uint32(repeat), ctxSizeIn: uint32(unsafe.Sizeof(ctx)), ctxIn: uint64(uintptr(unsafe.Pointer(&ctx))),
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(data)
	runtime.KeepAlive(out)
	runtime.KeepAlive(&ctx)
	if errno != 0 {
		return 0, 0, fmt.Errorf("BPF_PROG_TEST_RUN: %w", errno)
	}
	return attr.retval, float64(attr.duration), nil
}

// restoreHarness is XlbBench's xlb_bench_restore and its maps: before each
// rerun it puts the frame back as Frame holds it, then tail-calls Target's
// program (see bpf/xlb.c).
type restoreHarness struct {
	Prog   *ebpf.Program `ebpf:"xlb_bench_restore"`
	Frame  *ebpf.Map     `ebpf:"bench_frame"`
	Target *ebpf.Map     `ebpf:"bench_target"`
}

func newRestoreHarness(b *testing.B) *restoreHarness {
	b.Helper()
	spec, err := bpf.LoadXlbBench()
	if err != nil {
		b.Fatal(err)
	}
	var h restoreHarness
	if err := spec.LoadAndAssign(&h, nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Prog.Close(); h.Frame.Close(); h.Target.Close() })
	return &h
}

// harnessHead is bpf/xlb.c's XLB_BENCH_HEAD: the bytes the harness restores.
const harnessHead = 80

// load makes the harness restore data before each run and run target.
func (h *restoreHarness) load(b *testing.B, data []byte, target *ebpf.Program) {
	b.Helper()
	v := struct {
		Len  uint32
		Head [harnessHead]byte
	}{Len: uint32(len(data))}
	copy(v.Head[:], data)
	if err := h.Frame.Put(uint32(0), v); err != nil {
		b.Fatal(err)
	}
	if err := h.Target.Put(uint32(0), target); err != nil {
		b.Fatal(err)
	}
}

// marginalNs is what prog costs on data (received on ifindex) beyond the
// restore harness: every run restores data's start and tail-calls prog
// (each counted under reasonIdx, checked), then the same with the no-op
// program; the difference goes on floor, as the per-call new-flow case's.
func (f *fixture) marginalNs(b *testing.B, h *restoreHarness, prog, noop *ebpf.Program, data []byte, ifindex int, verdict uint32, reasonIdx int, floor float64) float64 {
	b.Helper()
	run := func(target *ebpf.Program, verdict uint32, reasonIdx int) float64 {
		h.load(b, data, target)
		return f.kernelNsOn(b, h.Prog, data, ifindex, benchRepeat, verdict, reasonIdx)
	}
	return floor + run(prog, verdict, reasonIdx) - run(noop, xdpPass, -1)
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

package control

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/bpf"
	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/internal/testenv"
	"github.com/xlb-dev/xlb/loader"
)

// udpFrame is an Ethernet frame of an IPv4 UDP datagram with 16 bytes of
// payload (the datapath checks no checksum).
func udpFrame(src, dst netip.Addr, sport, dport uint16) []byte {
	b := make([]byte, 14+20+8+16)
	copy(b[0:6], net.HardwareAddr{0x02, 0x1b, 0, 0, 0, 1})
	copy(b[6:12], net.HardwareAddr{0x02, 0, 0, 0, 0, 0x64})
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[20:], sport)
	binary.BigEndian.PutUint16(ip[22:], dport)
	binary.BigEndian.PutUint16(ip[24:], 8+16)
	return b
}

// newL4Controller is a controller of cfg over a loaded, unattached datapath
// (closed with the test) whose backends all sit behind interface 1.
func newL4Controller(t *testing.T, cfg *config.Config) (*loader.Datapath, *Controller) {
	t.Helper()
	return newL4ControllerSized(t, cfg, 0)
}

// newL4ControllerSized is newL4Controller with a backends table of
// maxBackends entries (0: the default).
func newL4ControllerSized(t *testing.T, cfg *config.Config, maxBackends uint32) (*loader.Datapath, *Controller) {
	t.Helper()
	return newL4ControllerWith(t, cfg, maxBackends, benchResolver{}, Options{})
}

// newL4ControllerWith is newL4ControllerSized with backends resolved by res
// and o's other options.
func newL4ControllerWith(t *testing.T, cfg *config.Config, maxBackends uint32, res loader.Resolver, o Options) (*loader.Datapath, *Controller) {
	t.Helper()
	testenv.RequireRoot(t, "needs root: loads the XDP datapath")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dp, err := loader.Open(loader.Options{Logger: quiet, MaxBackends: maxBackends})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close(false) })
	rec, err := loader.NewReconciler(&dp.Maps, res, 1, quiet)
	if err != nil {
		t.Fatal(err)
	}
	o.Reconciler, o.Maps, o.Logger = rec, &dp.Maps, quiet
	return dp, New(cfg, o)
}

// runController starts c and runs it until the test ends.
func runController(t *testing.T, c *Controller) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		c.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-runDone })
}

// Removing a UDP backend ends once its flows are idle for udp_timeout, long
// before drain_timeout: UDP has no FIN to wait for. While its client keeps
// sending, the removal waits.
func TestUDPRemovalEndsAfterIdleTimeout(t *testing.T) {
	// 8 s: far above the 300 ms between the client's packets even when this
	// VM stalls for seconds (runs on a stalling host saw gaps of 1.4 and 2.3 s
	// between packets, and then the flow idle past shorter timeouts), and
	// still far below drain_timeout.
	const udpTimeout = 8 * time.Second
	cfg, err := config.Parse([]byte(`
[health_check]
enabled = false
[admin]
drain_timeout = "60s"
[datapath]
udp_timeout = "8s"
[[service]]
name = "dns"
vip = "198.19.0.10"
port = 53
protocol = "udp"
hash = "flow_hash"
  [[service.backend]]
  address = "198.18.0.11"
  [[service.backend]]
  address = "198.18.0.12"
`), "udp.toml")
	if err != nil {
		t.Fatal(err)
	}
	dp, c := newL4Controller(t, cfg)
	runController(t, c)
	if got, err := dp.ReadFlowTimeouts(); err != nil || got.UDP < udpTimeout || got.UDP > udpTimeout+loader.FlowTick {
		t.Fatalf("datapath udp timeout %v (%v), want %v", got.UDP, err, udpTimeout)
	}

	frame := udpFrame(netip.MustParseAddr("198.18.0.100"), cfg.Services[0].VIP, 5353, 53)
	send := func() string {
		t.Helper()
		out := make([]byte, len(frame))
		ret, err := dp.Program.Run(&ebpf.RunOptions{Data: frame, DataOut: out, Repeat: 1})
		if err != nil || ret != 3 { // XDP_TX
			t.Fatalf("BPF_PROG_TEST_RUN: verdict %d, %v", ret, err)
		}
		return "dns@198.18.0." + map[byte]string{11: "11", 12: "12"}[out[5]]
	}
	id := send()
	if _, err := c.Remove(id); err != nil {
		t.Fatal(err)
	}
	present := func() bool {
		list, err := c.Backends("dns")
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range list {
			if b.ID == id {
				return true
			}
		}
		return false
	}

	// The client keeps its flow on the draining backend, and the removal
	// waits, for longer than the timeout.
	var last time.Time
	var maxGap time.Duration // between two packets: the premise is that it stays far below udp_timeout
	for end := time.Now().Add(udpTimeout + time.Second); time.Now().Before(end); time.Sleep(300 * time.Millisecond) {
		if got := send(); got != id {
			t.Fatalf("active flow moved from its draining backend %s to %s (longest gap between packets %v)", id, got, maxGap)
		}
		if !last.IsZero() {
			maxGap = max(maxGap, time.Since(last))
		}
		last = time.Now()
	}
	// The removal still waits, and the controller counts the flow (polled
	// while the client goes on sending; a failure prints the table, the
	// timeouts and the clock).
	for until := time.Now().Add(2 * time.Second); ; {
		if !present() {
			t.Fatalf("%s removed while its client was sending (longest gap between packets %v)", id, maxGap)
		}
		if stateOf(t, c, id).OpenFlows == 1 {
			break
		}
		if time.Now().After(until) {
			t.Fatalf("%s: %+v, want 1 open flow (longest gap between packets %v); %s", id, stateOf(t, c, id), maxGap, dumpFlows(dp))
		}
		if got := send(); got != id {
			t.Fatalf("active flow moved from its draining backend %s to %s", id, got)
		}
		last = time.Now()
		time.Sleep(300 * time.Millisecond)
	}

	// Quiet: the flow expires after udp_timeout (up to two ticks late) and
	// a poll ends the removal; a few seconds' slack for a busy machine, far
	// below drain_timeout.
	deadline := last.Add(udpTimeout + 2*loader.FlowTick + 2*flowsPoll + 5*time.Second)
	for present() {
		if time.Now().After(deadline) {
			t.Fatalf("%s still there %v after its last packet (udp_timeout %v, drain_timeout %v)",
				id, time.Since(last), udpTimeout, cfg.Admin.DrainTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if took := time.Since(last); took < udpTimeout {
		t.Fatalf("removed %v after the last packet, before udp_timeout %v", took, udpTimeout)
	}
	// New packets of the client go to the remaining backend.
	if got := send(); got == id {
		t.Fatalf("flow still sent to the removed %s", id)
	}
}

// A reload applies new flow timeouts at once; table sizes wait for a restart.
func TestReloadFlowTimeouts(t *testing.T) {
	parse := func(datapath string) *config.Config {
		t.Helper()
		cfg, err := config.Parse([]byte("[health_check]\nenabled = false\n[datapath]\n"+datapath+
			"[[service]]\nname = \"dns\"\nvip = \"198.19.0.10\"\nport = 53\nprotocol = \"udp\"\n"+
			"  [[service.backend]]\n  address = \"198.18.0.11\"\n"), "reload.toml")
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	dp, c := newL4Controller(t, parse("udp_timeout = \"10s\"\n"))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	udp := func() time.Duration {
		got, err := dp.ReadFlowTimeouts()
		if err != nil {
			t.Fatal(err)
		}
		return got.UDP
	}
	if got := udp(); got < 10*time.Second || got > 10*time.Second+loader.FlowTick {
		t.Fatalf("udp timeout %v after start, want 10s", got)
	}
	if err := c.Reload(parse("udp_timeout = \"90s\"\nconntrack_size = 4096\ntcp_syn_timeout = \"5s\"\n")); err != nil {
		t.Fatal(err)
	}
	got, err := dp.ReadFlowTimeouts()
	if err != nil || got.UDP < 90*time.Second || got.UDP > 90*time.Second+loader.FlowTick ||
		got.TCPSyn < 5*time.Second || got.TCPSyn > 5*time.Second+loader.FlowTick {
		t.Fatalf("timeouts after reload %+v (%v), want udp 90s, tcp_syn 5s", got, err)
	}
	if d := c.Config().Datapath; d.ConntrackSize != config.DefaultConntrackSize || d.UDPTimeout != 90*time.Second {
		t.Fatalf("running [datapath] %+v: want the loaded table size and the new timeout", d)
	}
}

// Backends added through the admin API take datapath ids too: together with
// the configured ones they stay within [datapath] max_backends.
func TestAddBackendWithinMaxBackends(t *testing.T) {
	cfg, err := config.Parse([]byte(`
[health_check]
enabled = false
[datapath]
max_backends = 3
[[service]]
name = "web"
vip = "198.19.0.10"
port = 80
  [[service.backend]]
  address = "198.18.0.11"
[[service]]
name = "dns"
vip = "198.19.0.10"
port = 53
protocol = "udp"
  [[service.backend]]
  address = "198.18.0.11"
`), "max.toml")
	if err != nil {
		t.Fatal(err)
	}
	c := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if _, err := c.AddBackend(AddRequest{Service: "web", Address: "198.18.0.12"}); err != nil {
		t.Fatalf("third backend: %v", err)
	}
	_, err = c.AddBackend(AddRequest{Service: "dns", Address: "198.18.0.12"})
	if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "max_backends = 3") {
		t.Fatalf("fourth backend: %v, want ErrBadRequest naming max_backends", err)
	}
}

// dumpFlows describes the connection table, the flow timeouts and the clock,
// for a failure message.
func dumpFlows(dp *loader.Datapath) string {
	var k bpf.XlbFlowKey
	var v bpf.XlbFlowValue
	var entries []string
	for it := dp.Conntrack.Iterate(); it.Next(&k, &v); {
		entries = append(entries, fmt.Sprintf("%+v", v))
	}
	limits, lerr := dp.ReadFlowTimeouts()
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts)
	open, oerr := dp.OpenFlows()
	return fmt.Sprintf("conntrack %v; timeouts %+v (%v); tick now %d; open flows by id %v (%v)",
		entries, limits, lerr, uint64(ts.Nano())>>bpf.XlbLimitsXLB_FLOW_TICK_SHIFT, open, oerr)
}

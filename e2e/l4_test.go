package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// l4Clients is every client address topology.sh can make. With fewer (120)
	// one backend of three gets under 25% of the IPv4 addresses.
	l4Clients = 155
	// l4BodyBytes pads every reply, so that replies dwarf what the client sends
	// and a load balancer on the reply path would show in its byte counters.
	l4BodyBytes = 50000
	// maxLBShare bounds the LB's bytes (in plus out) as a share of the reply bytes.
	maxLBShare = 0.10
	// minBackendShare and maxBackendShare bound each backend's share of the client
	// addresses (three backends of weight 1).
	minBackendShare = 0.25
	maxBackendShare = 0.42
	// holdSecs is the length of the stream held open across a restart.
	holdSecs = 8
)

// l4Ports are the service ports. Each load run makes exactly one connection per
// client address and port, so no two connections of a run share a 5-tuple (a
// reused one would find its old conntrack entry and not count as a new flow),
// while each address still connects several times.
var l4Ports = []int{80, 8080}

// l4Family is one address family of the L4 test.
type l4Family struct {
	name     string
	vip      string
	first    string   // first client address
	backends []string // backend addresses, in config order
	services []string // service names, one per l4Ports entry
}

func (f l4Family) url(port int, path string) string {
	return "http://" + netip.AddrPortFrom(netip.MustParseAddr(f.vip), uint16(port)).String() + path
}

func (f l4Family) sources(n int) string {
	a := addrRange(f.first, n)
	return "range:" + a[0].String() + "-" + a[n-1].String()
}

func l4Families(tp *Topology) []l4Family {
	f4 := l4Family{name: "ipv4", vip: VIP4, first: ClientAddr4}
	f6 := l4Family{name: "ipv6", vip: VIP6, first: ClientAddr6}
	for i := 1; i <= tp.Backends; i++ {
		f4.backends = append(f4.backends, tp.BackendAddr4(i))
		f6.backends = append(f6.backends, tp.BackendAddr6(i))
	}
	for _, port := range l4Ports {
		f4.services = append(f4.services, "web-"+strconv.Itoa(port))
		f6.services = append(f6.services, "web6-"+strconv.Itoa(port))
	}
	return []l4Family{f4, f6}
}

// TestL4 runs the XDP fast path in generic and in native mode over IPv4 and
// IPv6: Maglev IP-hash steering as the maglev package predicts it, replies that
// bypass the load balancer, counters that match the traffic, a clean teardown,
// and a restart with --keep-datapath that an open connection survives.
func TestL4(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	for _, mode := range []string{"generic", "native"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			testL4Mode(t, mode)
		})
	}
}

func testL4Mode(t *testing.T, mode string) {
	opts := []TopologyOption{WithClients(l4Clients)}
	// Random but recognisable: two runs of the suite on one host must not tear
	// down each other's topologies.
	prefix := "xl4g" + randomPrefix()[4:]
	if mode == "native" {
		prefix = "xl4n" + randomPrefix()[4:]
		opts = append(opts, WithNativeMode())
	}
	tp := NewTopology(t, prefix, opts...)
	pinDir := tp.PinDir(t)
	t.Cleanup(func() {
		if t.Failed() {
			tp.logDiagnostics(t)
		}
	})

	if mode == "native" {
		tp.attachPeerPass(t)
		if link := tp.LinkXDP(t, "br", tp.Peer); xdpFlag(link) != "xdp" {
			t.Fatalf("no driver-mode XDP program on the peer %s:\n%s", tp.Peer, link)
		}
	}
	if link := tp.LinkXDP(t, "lb", "eth0"); strings.Contains(link, "xdp") {
		t.Fatalf("XDP on the LB's eth0 before xlb runs:\n%s", link)
	}

	bin := Binary(t, "xlbtest")
	var listen []string
	for _, port := range l4Ports {
		listen = append(listen, netip.AddrPortFrom(netip.MustParseAddr(VIP4), uint16(port)).String(),
			netip.AddrPortFrom(netip.MustParseAddr(VIP6), uint16(port)).String())
	}
	for i, h := range tp.BackendHosts() {
		// The backend's own addresses too, for health checks should xlb make any.
		own := slices.Clone(listen)
		for _, port := range l4Ports {
			own = append(own, netip.AddrPortFrom(netip.MustParseAddr(tp.BackendAddr4(i+1)), uint16(port)).String(),
				netip.AddrPortFrom(netip.MustParseAddr(tp.BackendAddr6(i+1)), uint16(port)).String())
		}
		tp.StartReady(t, h, "ready ", 5*time.Second, bin, "serve", "--name", h,
			"--listen", strings.Join(own, ","), "--body-bytes", strconv.Itoa(l4BodyBytes))
	}

	families := l4Families(tp)
	var services []l4Service
	for _, f := range families {
		for i, port := range l4Ports {
			services = append(services, l4Service{Name: f.services[i], VIP: f.vip, Port: port, Backends: f.backends})
		}
	}
	config := writeConfig(t, t.TempDir(), mode, pinDir, services...)

	t.Run("steering", func(t *testing.T) {
		xlb := tp.StartXLB(t, config, pinDir, mode)
		tp.requireXDPMode(t, mode)
		for _, f := range families {
			t.Run(f.name, func(t *testing.T) { tp.checkSteering(t, pinDir, f) })
		}
		t.Run("clean stop", func(t *testing.T) { tp.requireCleanStop(t, xlb, pinDir) })
	})

	t.Run("restart keeps connections", func(t *testing.T) {
		tp.checkRestart(t, config, pinDir, mode, families)
	})
}

// requireXDPMode checks how the program sits on the LB's eth0: "xdpgeneric" in
// generic mode, driver-mode "xdp" otherwise.
func (tp *Topology) requireXDPMode(t *testing.T, mode string) {
	t.Helper()
	link := tp.LinkXDP(t, "lb", "eth0")
	if got := xdpFlag(link); got != map[string]string{"generic": "xdpgeneric", "native": "xdp"}[mode] {
		t.Errorf("XDP on the LB's eth0 is not attached in %s mode (%q):\n%s", mode, got, link)
	}
}

// xdpFlag is the XDP attachment `ip -d link show` lists in its first line:
// "xdp" (driver mode), "xdpgeneric", "xdpoffload", "xdpmulti" or "".
func xdpFlag(link string) string {
	first, _, _ := strings.Cut(link, "\n")
	for _, f := range strings.Fields(first) {
		if strings.HasPrefix(f, "xdp") {
			return f
		}
	}
	return ""
}

// checkSteering makes one connection per client address and service port of
// family f, then one more per address to the first port, and checks where they
// went, what the backends and the LB saw and what xlb counted.
func (tp *Topology) checkSteering(t *testing.T, pinDir string, f l4Family) {
	n := tp.Clients
	sources := addrRange(f.first, n)
	want := predictBackends(t, f.backends, sources)
	hostOf := map[string]string{} // backend address -> host
	for i, a := range f.backends {
		hostOf[netip.MustParseAddr(a).String()] = "b" + strconv.Itoa(i+1)
	}

	snap0 := tp.Status(t, pinDir)
	srv0 := map[string]map[string]int{}
	for _, h := range tp.BackendHosts() {
		srv0[h] = tp.ServerRequests(t, h, f.vip, l4Ports[0])
	}
	rx0, tx0 := tp.linkBytes(t, "lb")

	sums := make([]LoadSummary, len(l4Ports))
	for i, port := range l4Ports {
		sums[i] = tp.Load(t, "cl", "--target", f.url(port, "/"), "--sources", f.sources(n),
			"--conns", strconv.Itoa(n), "--parallel", "16", "--timeout", "3s", "--duration-max", "30s")
		if sums[i].OK == 0 { // nothing is delivered: spare the remaining timeouts
			t.Fatalf("%s: no connection succeeded (errors %v)", f.url(port, "/"), sums[i].Errors)
		}
	}

	rx1, tx1 := tp.linkBytes(t, "lb")
	snap1 := tp.Status(t, pinDir)
	srv1 := map[string]map[string]int{}
	for _, h := range tp.BackendHosts() {
		srv1[h] = tp.ServerRequests(t, h, f.vip, l4Ports[0])
	}

	// Once more on the first port, after the counters are read: a second
	// connection to the same service from every address (it may reuse an
	// earlier connection's 5-tuple, so it stays out of the new-flow counts).
	again := tp.Load(t, "cl", "--target", f.url(l4Ports[0], "/"), "--sources", f.sources(n),
		"--conns", strconv.Itoa(n), "--parallel", "16", "--timeout", "3s", "--duration-max", "30s")

	conns := 0
	for i, s := range sums {
		conns += s.OK
		if s.OK != n || s.Failed != 0 || s.Skipped != 0 || len(s.BySource) != n {
			t.Errorf("port %d: ok=%d failed=%d skipped=%d sources=%d errors=%v, want %d from %d sources",
				l4Ports[i], s.OK, s.Failed, s.Skipped, len(s.BySource), s.Errors, n, n)
		}
	}
	if again.OK != n || again.Failed != 0 || again.Skipped != 0 {
		t.Errorf("port %d again: ok=%d failed=%d skipped=%d errors=%v, want %d",
			l4Ports[0], again.OK, again.Failed, again.Skipped, again.Errors, n)
	}
	if t.Failed() {
		t.FailNow()
	}

	t.Run("every address sticks to the predicted backend", func(t *testing.T) {
		perHost := map[string]int{}
		var wrong []string
		for _, src := range sources {
			key := src.String()
			var got []string
			for _, s := range append(slices.Clone(sums), again) {
				got = append(got, s.BySource[key]...)
			}
			same := len(got) == len(l4Ports)+1
			for _, b := range got {
				same = same && b == want[key]
			}
			if !same {
				wrong = append(wrong, fmt.Sprintf("%s: %v, want %s", key, got, want[key]))
				continue
			}
			perHost[want[key]]++
		}
		if len(wrong) > 0 {
			t.Errorf("%d of %d addresses not (always) on the predicted backend, e.g. %v", len(wrong), n, wrong[:min(5, len(wrong))])
		}
		var split []string
		for _, h := range tp.BackendHosts() {
			share := float64(perHost[h]) / float64(n)
			split = append(split, fmt.Sprintf("%s=%d (%.1f%%)", h, perHost[h], 100*share))
			if share < minBackendShare || share > maxBackendShare {
				t.Errorf("%s has %d of %d client addresses (%.1f%%), want %.0f%%..%.0f%%",
					h, perHost[h], n, 100*share, 100*minBackendShare, 100*maxBackendShare)
			}
		}
		t.Logf("%s split of %d client addresses: %s", f.name, n, strings.Join(split, " "))
	})

	t.Run("backends see the client addresses", func(t *testing.T) {
		// Direct server return keeps the client's address: each backend saw
		// exactly its predicted addresses, once per port.
		for _, h := range tp.BackendHosts() {
			for _, src := range sources {
				key := src.String()
				got := srv1[h][key] - srv0[h][key]
				wantN := 0
				if want[key] == h {
					wantN = len(l4Ports)
				}
				if got != wantN {
					t.Errorf("%s served %d requests from %s, want %d", h, got, key, wantN)
				}
			}
		}
	})

	t.Run("replies bypass the load balancer", func(t *testing.T) {
		lbBytes := (rx1 - rx0) + (tx1 - tx0)
		replyBytes := uint64(conns) * l4BodyBytes // bodies only: a lower bound
		share := float64(lbBytes) / float64(replyBytes)
		t.Logf("%s: LB eth0 rx %d + tx %d = %d bytes for %d connections with %d reply body bytes: %.2f%%",
			f.name, rx1-rx0, tx1-tx0, lbBytes, conns, replyBytes, 100*share)
		if share >= maxLBShare {
			t.Errorf("the LB moved %d bytes, %.1f%% of the %d reply bytes, want under %.0f%%",
				lbBytes, 100*share, replyBytes, 100*maxLBShare)
		}
	})

	t.Run("counters", func(t *testing.T) {
		serverTotal := map[string]int{} // requests from client addresses
		for _, h := range tp.BackendHosts() {
			for _, src := range sources {
				serverTotal[h] += srv1[h][src.String()] - srv0[h][src.String()]
			}
		}
		flowsTotal := map[string]uint64{}
		var servicePackets uint64
		for i, name := range f.services {
			before, after := newFlows(snap0, name), newFlows(snap1, name)
			var sum uint64
			for addr, host := range hostOf {
				d := after[addr] - before[addr]
				sum += d
				flowsTotal[host] += d
				if d != uint64(sums[i].ByBackend[host]) {
					t.Errorf("service %s: backend %s (%s) counts %d new flows, the client got %d replies from it",
						name, addr, host, d, sums[i].ByBackend[host])
				}
			}
			if sum != uint64(n) {
				t.Errorf("service %s counts %d new flows over its backends, want the %d connections made", name, sum, n)
			}
			s0, s1 := service(snap0, name), service(snap1, name)
			if s0 == nil || s1 == nil {
				t.Fatalf("service %s missing from xlb status", name)
			}
			if d := s1.NewFlows - s0.NewFlows; d != uint64(n) {
				t.Errorf("service %s counts %d new flows, want %d", name, d, n)
			}
			servicePackets += s1.Packets - s0.Packets
		}
		for _, h := range tp.BackendHosts() {
			if flowsTotal[h] != uint64(serverTotal[h]) {
				t.Errorf("xlb counts %d new flows to %s, the server counted %d requests", flowsTotal[h], h, serverTotal[h])
			}
		}
		t.Logf("%s new flows per backend: %v", f.name, flowsTotal)

		v0, v1 := verdictPackets(snap0), verdictPackets(snap1)
		for k, p := range v1 {
			if strings.HasPrefix(k, "drop/") && p != v0[k] {
				t.Errorf("verdict %s: %d packets dropped", k, p-v0[k])
			}
		}
		if d := v1["tx/forwarded"] - v0["tx/forwarded"]; d != servicePackets {
			t.Errorf("verdict tx/forwarded counts %d packets, the services %d", d, servicePackets)
		}
	})
}

// checkRestart holds a stream open per family while xlb, started with
// --keep-datapath, stops and a new xlb adopts the pinned datapath.
func (tp *Topology) checkRestart(t *testing.T, config, pinDir, mode string, families []l4Family) {
	xlb1 := tp.StartXLB(t, config, pinDir, mode, "--keep-datapath")
	var holds []*heldConn
	for _, f := range families {
		// A secondary client address: the source is bound, not picked by the kernel.
		src := addrRange(f.first, 51)[50].String()
		want := predictBackends(t, f.backends, []netip.Addr{netip.MustParseAddr(src)})[src]
		holds = append(holds, &heldConn{service: f.services[0], url: f.url(l4Ports[0], "/hold"), src: src, want: want})
	}
	xlb2 := tp.restartUnderHolds(t, xlb1, config, pinDir, mode, holdSecs, holds)
	tp.requireCleanStop(t, xlb2, pinDir)
}

// heldConn is a stream (xlbtest hold) held open from the client through a
// service's VIP.
type heldConn struct {
	service string // the service whose packets it is
	url     string // the hold's --target
	src     string // client source address
	// want is the backend host the stream must come from; "" takes the one
	// its first tick names.
	want string
	cmd  *exec.Cmd
}

// startHolds starts every hold and waits for its first tick; a hold without
// want learns it from that tick.
func (tp *Topology) startHolds(t *testing.T, secs int, holds []*heldConn) {
	t.Helper()
	for _, h := range holds {
		h.cmd = tp.Start(t, "cl", Binary(t, "xlbtest"), "hold", "--target", h.url,
			"--secs", strconv.Itoa(secs), "--timeout", "3s", "--source", h.src)
	}
	for _, h := range holds {
		tp.WaitOutput(t, h.cmd, " tick 1/", 5*time.Second)
		if h.want == "" {
			out, _ := tp.Output(h.cmd)
			m := regexp.MustCompile(` tick 1/\d+ backend=(\S+)`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("hold from %s to %s: no backend in its first tick:\n%s", h.src, h.url, out)
			}
			h.want = m[1]
		}
	}
}

// restartUnderHolds opens the holds (secs long) while xlb1 (started with
// --keep-datapath) runs, stops it, checks that the streams flow on with no
// daemon, starts a new xlb that adopts the pinned datapath, and checks that
// every stream ends complete, from its backend. It returns the new xlb.
func (tp *Topology) restartUnderHolds(t *testing.T, xlb1 *exec.Cmd, config, pinDir, mode string, secs int, holds []*heldConn) *exec.Cmd {
	t.Helper()
	start := time.Now()
	tp.startHolds(t, secs, holds)
	time.Sleep(time.Until(start.Add(2 * time.Second)))

	if err := tp.Stop(xlb1); err != nil {
		t.Errorf("xlb --keep-datapath after SIGTERM: %v, want exit 0", err)
	}
	_, log1 := tp.Output(xlb1)
	if strings.Contains(log1, "level=ERROR") || logLine(log1, "datapath kept: XDP stays attached, maps stay pinned") == "" {
		t.Errorf("xlb --keep-datapath log:\n%s", log1)
	}
	if link := tp.LinkXDP(t, "lb", "eth0"); !strings.Contains(link, "xdp") {
		t.Errorf("no XDP on the LB's eth0 after xlb --keep-datapath stopped:\n%s", link)
	}
	entries, err := os.ReadDir(pinDir)
	var pins []string
	for _, e := range entries {
		pins = append(pins, e.Name())
	}
	if err != nil || !slices.Contains(pins, "xdp_link") || len(pins) < 2 {
		t.Errorf("pins after xlb --keep-datapath stopped: %v (%v), want the link and the maps", pins, err)
	}

	// The connections must keep flowing with no daemon at all. Ticks alone do not
	// show it (with DSR they go straight from the backend to the client); the
	// client's acknowledgements go through the LB, and the pinned counters count them.
	ticks := func(h *heldConn) int {
		out, _ := tp.Output(h.cmd)
		return strings.Count(out, " tick ")
	}
	var ticks0 []int
	for _, h := range holds {
		ticks0 = append(ticks0, ticks(h))
	}
	gap0 := tp.Status(t, pinDir)
	time.Sleep(time.Second)
	gap1 := tp.Status(t, pinDir)
	for i, h := range holds {
		if !tp.running(h.cmd) {
			out, _ := tp.Output(h.cmd)
			t.Errorf("hold from %s ended while no xlb ran:\n%s", h.src, out)
		}
		if n := ticks(h) - ticks0[i]; n < 3 {
			t.Errorf("hold from %s: %d ticks in the second without xlb, want about 5", h.src, n)
		}
		s0, s1 := service(gap0, h.service), service(gap1, h.service)
		if s0 == nil || s1 == nil || s1.Packets <= s0.Packets {
			t.Errorf("service %s forwarded no packets while no xlb ran (status %+v then %+v)", h.service, s0, s1)
		} else {
			t.Logf("%s: %d ticks and %d packets forwarded in the second without xlb", h.service, ticks(h)-ticks0[i], s1.Packets-s0.Packets)
		}
	}

	xlb2 := tp.StartXLB(t, config, pinDir, mode)
	_, log2 := tp.Output(xlb2)
	for _, msg := range []string{"adopted pinned maps: established flows keep their backends", "adopted pinned XDP link"} {
		if logLine(log2, msg) == "" {
			t.Errorf("restarted xlb did not log %q:\n%s", msg, log2)
		}
	}
	tp.requireXDPMode(t, mode)

	for _, h := range holds {
		err := tp.Wait(h.cmd, time.Until(start.Add(time.Duration(secs)*time.Second+10*time.Second)))
		out, stderr := tp.Output(h.cmd)
		wantDone := fmt.Sprintf(" done %d backend=%s\n", secs*5, h.want)
		if err != nil || !strings.Contains(out, wantDone) {
			t.Errorf("hold from %s across the restart: %v, want exit 0 and %q\nstdout:\n%s\nstderr:\n%s",
				h.src, err, wantDone, out, stderr)
		}
	}
	return xlb2
}

// logDiagnostics logs what explains a failed run: interface and XDP counters
// on both ends of the LB's veth, the backends' checksum errors and xlb's pins.
func (tp *Topology) logDiagnostics(t *testing.T) {
	run := func(args ...string) {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		t.Logf("$ %s (%v)\n%s", strings.Join(args, " "), err, out)
	}
	run("ip", "-n", tp.Namespace("lb"), "-s", "-d", "link", "show", "dev", "eth0")
	run("ip", "netns", "exec", tp.Namespace("lb"), "ethtool", "-S", "eth0")
	run("ip", "-n", tp.Namespace("br"), "-s", "-d", "link", "show", "dev", tp.Peer)
	run("ip", "netns", "exec", tp.Namespace("br"), "ethtool", "-S", tp.Peer)
	for _, h := range tp.BackendHosts() {
		run("ip", "netns", "exec", tp.Namespace(h), "nstat", "-az", "TcpInCsumErrors", "TcpInSegs", "TcpOutSegs")
	}
	dir := filepath.Join(pinRoot, "xlb-e2e-"+tp.Prefix)
	if _, err := os.Stat(dir); err == nil {
		if snap, err := tp.statusSnapshot(t, dir); err == nil {
			t.Logf("xlb status: %+v", *snap)
		}
	}
}

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"

	"github.com/xlb-dev/xlb/loader"
	"github.com/xlb-dev/xlb/maglev"
)

// pinRoot is where the tests pin: a bpffs directory per topology, named after its
// prefix so that concurrent tests never share pins.
const pinRoot = "/sys/fs/bpf"

// StartNet is Start for a command that must share the test's mount namespace:
// it enters only host's network namespace (nsenter --net). `ip netns exec` gives
// the command a private /sys, so a bpffs xlb mounts there would die with it and
// its pins could not outlive a restart. nsenter without --fork execs in place, so
// the PID stopped at the end of the test (or by Stop) is the command itself.
func (tp *Topology) StartNet(t *testing.T, host string, args ...string) *exec.Cmd {
	t.Helper()
	nsArgs := append([]string{"--net=/run/netns/" + tp.Namespace(host)}, args...)
	return tp.startCmd(t, host, exec.Command("nsenter", nsArgs...), args)
}

// WaitStderr is WaitOutput for what cmd (from Start or StartNet) writes to stderr,
// where xlb logs.
func (tp *Topology) WaitStderr(t *testing.T, cmd *exec.Cmd, substr string, timeout time.Duration) {
	t.Helper()
	p := tp.proc(cmd)
	if p == nil {
		t.Fatal("WaitStderr: command not started by this topology")
	}
	p.waitText(t, "stderr", p.stderr.String, substr, timeout)
}

// l4Service is one [[service]] of a test config: TCP, ip_hash, dsr.
type l4Service struct {
	Name     string
	VIP      string
	Port     int
	Backends []string // addresses, weight 1 each
}

// PinDir is the bpffs directory of the topology's xlb. The first call removes a
// stale one and registers its removal at the end of the test; register it before
// starting xlb, so that (cleanups running last-in first-out) xlb is stopped first.
func (tp *Topology) PinDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(pinRoot, "xlb-e2e-"+tp.Prefix)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatalf("remove stale pins: %v", err)
	}
	livePinDirs.add(dir)
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove pins: %v", err)
		}
		livePinDirs.remove(dir)
	})
	return dir
}

// livePinDirs are the pin directories not removed yet, for TestMain's signal
// handler (which runs after the topologies, and so every xlb, are down).
var livePinDirs = &pinDirSet{m: map[string]bool{}}

type pinDirSet struct {
	mu sync.Mutex
	m  map[string]bool
}

func (s *pinDirSet) add(dir string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[dir] = true
}

func (s *pinDirSet) remove(dir string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, dir)
}

func (s *pinDirSet) removeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for dir := range s.m {
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		}
		delete(s.m, dir)
	}
}

// writeConfig writes an xlb config for the LB's eth0 into dir and returns its path.
func writeConfig(t *testing.T, dir, xdpMode, pinDir string, services ...l4Service) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[daemon]\ninterface = \"eth0\"\nxdp_mode = %q\nbpffs_dir = %q\n", xdpMode, pinDir)
	for _, s := range services {
		fmt.Fprintf(&b, "\n[[service]]\nname = %q\nvip = %q\nport = %d\nprotocol = \"tcp\"\nmode = \"l4\"\nhash = \"ip_hash\"\nforwarding = \"dsr\"\n",
			s.Name, s.VIP, s.Port)
		for _, a := range s.Backends {
			fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n", a)
		}
	}
	path := filepath.Join(dir, "xlb.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// StartXLB runs `xlb run -c config [extra...]` in the LB's network namespace and
// waits until it runs and every backend of every service is up with a resolved
// MAC. It checks that xlb reports the XDP mode the config asks for.
func (tp *Topology) StartXLB(t *testing.T, config, pinDir, mode string, extra ...string) *exec.Cmd {
	t.Helper()
	args := append([]string{Binary(t, "xlb"), "run", "-c", config}, extra...)
	cmd := tp.StartNet(t, "lb", args...)
	tp.WaitStderr(t, cmd, `msg="xlb running"`, 20*time.Second)
	_, stderr := tp.Output(cmd)
	// A fresh start attaches (and says how); a restart adopts the pinned link.
	attached, adopted := "XDP attached", "adopted pinned XDP link"
	if mode == "tc" {
		attached, adopted = "TC attached", "adopted pinned TC link"
	}
	if line := logLine(stderr, attached); line != "" {
		if !strings.Contains(line, " mode="+mode) {
			t.Errorf("%s in another mode than %s: %s", attached, mode, line)
		}
	} else if logLine(stderr, adopted) == "" {
		t.Errorf("xlb logged neither %q nor %q:\n%s", attached, adopted, stderr)
	}
	tp.waitBackendsUp(t, pinDir, 10*time.Second)
	return cmd
}

// logLine is the first line of a text log whose message is msg, or "".
func logLine(log, msg string) string {
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		if strings.Contains(sc.Text(), `msg="`+msg+`"`) || strings.Contains(sc.Text(), "msg="+msg+" ") {
			return sc.Text()
		}
	}
	return ""
}

// waitBackendsUp polls xlb status until every backend of every L4 service is up,
// has a MAC and Maglev slots.
func (tp *Topology) waitBackendsUp(t *testing.T, pinDir string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		snap, err := tp.statusSnapshot(t, pinDir)
		pending := ""
		if err != nil {
			pending = err.Error()
		} else {
			for _, s := range snap.Services {
				for _, b := range s.Backends {
					if b.State != "up" || b.MAC == "" || b.MAC == "00:00:00:00:00:00" || b.Slots == 0 {
						pending = fmt.Sprintf("service %s backend %s: state %s mac %s slots %d", s.Name, b.Address, b.State, b.MAC, b.Slots)
					}
				}
			}
		}
		if pending == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backends not up within %v: %s", timeout, pending)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Status runs `xlb status --bpffs pinDir --json` and fails the test on an error.
// The pins are all it needs, but it runs in the LB's network namespace: should
// status also ask a daemon (admin API on localhost), it is this topology's.
func (tp *Topology) Status(t *testing.T, pinDir string) *loader.Snapshot {
	t.Helper()
	snap, err := tp.statusSnapshot(t, pinDir)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func (tp *Topology) statusSnapshot(t *testing.T, pinDir string) (*loader.Snapshot, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ExecTimeout)
	defer cancel()
	out, err := output(exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+tp.Namespace("lb"),
		Binary(t, "xlb"), "status", "--bpffs", pinDir, "--json"))
	if err != nil {
		return nil, err
	}
	// The datapath's part: the whole report, or its "datapath" member when the
	// report also carries the daemon's view (admin API).
	var parts map[string]json.RawMessage
	if err := json.Unmarshal(out, &parts); err != nil {
		return nil, fmt.Errorf("xlb status --json: %w: %s", err, out)
	}
	if dp, ok := parts["datapath"]; ok {
		out = dp
	} else if _, ok := parts["services"]; !ok {
		return nil, fmt.Errorf("xlb status --json: no datapath in %s", out)
	}
	var snap loader.Snapshot
	if err := json.Unmarshal(out, &snap); err != nil {
		return nil, fmt.Errorf("xlb status --json: %w: %s", err, out)
	}
	return &snap, nil
}

// service is the named service of a snapshot, or nil.
func service(snap *loader.Snapshot, name string) *loader.ServiceStatus {
	for i := range snap.Services {
		if snap.Services[i].Name == name {
			return &snap.Services[i]
		}
	}
	return nil
}

// newFlows is how many new flows each backend address of service name counts.
func newFlows(snap *loader.Snapshot, name string) map[string]uint64 {
	m := map[string]uint64{}
	if s := service(snap, name); s != nil {
		for _, b := range s.Backends {
			m[b.Address.String()] = b.NewFlows
		}
	}
	return m
}

// verdictPackets is the packet count of every verdict/reason.
func verdictPackets(snap *loader.Snapshot) map[string]uint64 {
	m := map[string]uint64{}
	for _, v := range snap.Verdicts {
		m[v.Verdict+"/"+v.Reason] += v.Packets
	}
	return m
}

// LinkXDP is `ip -d link show dev` of host's interface: it mentions "xdp" (driver
// mode) or "xdpgeneric" while a program is attached.
func (tp *Topology) LinkXDP(t *testing.T, host, dev string) string {
	t.Helper()
	out, err := output(exec.Command("ip", "-n", tp.Namespace(host), "-d", "link", "show", "dev", dev))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// requireCleanStop stops xlb with SIGTERM and checks that it exited 0, logged no
// error, detached its program from the LB's eth0 and removed its pins.
func (tp *Topology) requireCleanStop(t *testing.T, xlb *exec.Cmd, pinDir string) {
	t.Helper()
	if err := tp.Stop(xlb); err != nil {
		t.Errorf("xlb after SIGTERM: %v, want exit 0", err)
	}
	_, stderr := tp.Output(xlb)
	if strings.Contains(stderr, "level=ERROR") {
		t.Errorf("xlb logged errors:\n%s", stderr)
	}
	if logLine(stderr, "XDP detached and pins removed") == "" && logLine(stderr, "TC program detached and pins removed") == "" {
		t.Errorf("xlb did not log its teardown:\n%s", stderr)
	}
	if link := tp.LinkXDP(t, "lb", "eth0"); strings.Contains(link, "xdp") {
		t.Errorf("XDP still attached to the LB's eth0 after xlb stopped:\n%s", link)
	}
	if tcx := tp.tcxIngress(t, "lb"); strings.Contains(tcx, "xlb_tc") {
		t.Errorf("xlb_tc still at the LB's tcx ingress after xlb stopped: %s", tcx)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		entries, _ := os.ReadDir(pinDir)
		t.Errorf("pin directory %s still there after xlb stopped (%v): %v", pinDir, err, entries)
	}
}

// linkBytes is the rx and tx byte counters of host's eth0.
func (tp *Topology) linkBytes(t *testing.T, host string) (rx, tx uint64) {
	t.Helper()
	out, err := output(exec.Command("ip", "-n", tp.Namespace(host), "-s", "-j", "link", "show", "dev", "eth0"))
	if err != nil {
		t.Fatal(err)
	}
	var links []struct {
		Stats64 struct {
			RX struct {
				Bytes uint64 `json:"bytes"`
			} `json:"rx"`
			TX struct {
				Bytes uint64 `json:"bytes"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -s -j link: %v: %s", err, out)
	}
	return links[0].Stats64.RX.Bytes, links[0].Stats64.TX.Bytes
}

// ServerRequests is what a backend's `xlbtest serve` counted so far: requests
// per client address (GET /stats through the VIP on the backend's own lo). It
// uses bash's /dev/tcp, so it needs no HTTP client in the namespace.
func (tp *Topology) ServerRequests(t *testing.T, host, vip string, port int) map[string]int {
	t.Helper()
	script := fmt.Sprintf(`exec 3<>/dev/tcp/%s/%d && printf 'GET /stats HTTP/1.0\r\nHost: x\r\n\r\n' >&3 && cat <&3`, vip, port)
	out, err := tp.Exec(host, "timeout", "5", "bash", "-c", script)
	if err != nil {
		t.Fatalf("GET /stats on %s: %v", host, err)
	}
	_, body, ok := strings.Cut(string(out), "\r\n\r\n")
	if !ok || !strings.HasPrefix(string(out), "HTTP/1.") || !strings.Contains(string(out), " 200 ") {
		t.Fatalf("GET /stats on %s: bad reply %q", host, out)
	}
	m := map[string]int{}
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("GET /stats on %s: %v: %q", host, err, body)
	}
	return m
}

// attachPeerPass attaches an XDP_PASS program in driver mode to the bridge-side
// peer of the LB's eth0: native XDP_TX on a veth delivers only when the peer has
// an XDP program (LAB.md). The attachment belongs to the interface, not to a file
// descriptor, so it outlives the program's fd and goes with the namespace.
func (tp *Topology) attachPeerPass(t *testing.T) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "xlb_e2e_pass",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		t.Fatalf("load XDP_PASS program: %v", err)
	}
	defer prog.Close()
	ns, err := netns.GetFromName(tp.Namespace("br"))
	if err != nil {
		t.Fatalf("open namespace %s: %v", tp.Namespace("br"), err)
	}
	defer ns.Close()
	// netlink's Handle has no XDP setter: the package-level one talks to the
	// calling thread's namespace. So enter it on a locked thread of a goroutine
	// that never unlocks: the runtime discards the thread when the goroutine ends,
	// and no other goroutine ever runs in the bridge namespace.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter %s: %w", tp.Namespace("br"), err)
			return
		}
		l, err := netlink.LinkByName(tp.Peer)
		if err != nil {
			errc <- fmt.Errorf("peer %s: %w", tp.Peer, err)
			return
		}
		if err := netlink.LinkSetXdpFdWithFlags(l, prog.FD(), nl.XDP_FLAGS_DRV_MODE); err != nil {
			errc <- fmt.Errorf("attach XDP_PASS to %s in driver mode: %w", tp.Peer, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// addrRange is n consecutive addresses from first.
func addrRange(first string, n int) []netip.Addr {
	a := netip.MustParseAddr(first)
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = a
		a = a.Next()
	}
	return out
}

// predictBackends maps every source to the backend host ("b1".."bN") the
// datapath must pick: xlb's Maglev table over backendAddrs (weight 1 each, in
// config order, named by address) looked up with the source-address hash.
func predictBackends(t *testing.T, backendAddrs []string, sources []netip.Addr) map[string]string {
	t.Helper()
	bs := make([]maglev.Backend, len(backendAddrs))
	for i, a := range backendAddrs {
		bs[i] = maglev.Backend{Name: netip.MustParseAddr(a).String(), Weight: 1}
	}
	table, err := maglev.Build(bs, maglev.DefaultTableSize)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string, len(sources))
	for _, src := range sources {
		m[src.String()] = "b" + strconv.Itoa(int(table.Lookup(maglev.SourceHash(src)))+1)
	}
	return m
}

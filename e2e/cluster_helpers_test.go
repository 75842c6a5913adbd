package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/internal/testenv"
	"github.com/xlb-dev/xlb/loader"
)

// A Cluster is scripts/cluster.sh's topology: a client behind a router
// (bird2, ECMP over BGP routes) in front of several xlb nodes that share one
// segment with the backends (DSR).
type Cluster struct {
	Prefix   string
	Nodes    int
	Backends int
	Clients  int
	Hold     int // BGP hold time, seconds

	script, dir string
	owner       *testing.T // the test the cluster (and its xlb nodes) lives for
	tokenFile   string     // the nodes' admin token

	// Community is what nodeConfig writes in [bgp] communities, per node
	// (default "64512:80").
	Community map[int]string

	mu    sync.Mutex
	procs []*proc
	bird  *proc
	xlb   map[int]*proc // node -> its running xlb
}

// The cluster's fixed addresses (scripts/cluster.sh).
const (
	ClusterVIP    = "198.19.0.10"
	ClusterRouter = "198.18.0.1"
)

// NodeAddr is node i's (1-based) address: 198.18.0.(1+i).
func NodeAddr(i int) string { return fmt.Sprintf("198.18.0.%d", 1+i) }

// ClusterBackendAddr is backend i's (1-based) address: 198.18.0.(10+i).
func ClusterBackendAddr(i int) string { return fmt.Sprintf("198.18.0.%d", 10+i) }

// ClusterClient is client address i (0-based): 198.18.2.(100+i).
func ClusterClient(i int) string { return fmt.Sprintf("198.18.2.%d", 100+i) }

// requireBird skips the test without bird2, or fails it in CI (make deps
// installs it).
func requireBird(t *testing.T) {
	t.Helper()
	for _, b := range []string{"bird", "birdc"} {
		testenv.RequireTool(t, b, "bird2")
	}
}

// NewCluster builds the topology, starts the router's bird and one backend
// server per backend host, and tears it all down when the test ends.
func NewCluster(t *testing.T, nodes, backends, hold int) *Cluster {
	t.Helper()
	requireRoot(t)
	requireBird(t)
	c := &Cluster{
		Prefix: randomPrefix(), Nodes: nodes, Backends: backends, Clients: 100, Hold: hold,
		script: filepath.Join(repoRoot(t), "scripts", "cluster.sh"), dir: t.TempDir(),
		xlb: map[int]*proc{}, owner: t, Community: map[int]string{},
	}
	liveClusters.add(c)
	t.Cleanup(func() {
		if err := c.teardown(); err != nil {
			t.Errorf("cluster %s: %v", c.Prefix, err)
		}
	})
	out, err := c.runScript("up", c.Prefix)
	if err != nil {
		t.Fatalf("cluster up: %v", err)
	}
	t.Logf("%s", strings.TrimSpace(string(out)))

	conf, err := c.runScript("bird-conf", c.Prefix, strconv.Itoa(hold))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.path("bird.conf"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	c.bird = c.start(t, "rt", "bird", "-c", c.path("bird.conf"), "-s", c.path("bird.sock"), "-P", c.path("bird.pid"), "-f")
	for i := 1; i <= backends; i++ {
		host := "b" + strconv.Itoa(i)
		p := c.start(t, host, Binary(t, "xlbtest"), "serve", "--name", host,
			"--listen", ClusterVIP+":80,"+ClusterBackendAddr(i)+":80")
		waitProcOutput(t, p, "ready backend=", 20*time.Second)
	}
	_, c.tokenFile = writeToken(t, c.dir)
	return c
}

func (c *Cluster) path(name string) string { return filepath.Join(c.dir, name) }

func (c *Cluster) ns(host string) string { return c.Prefix + "-" + host }

func (c *Cluster) runScript(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ExecTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.script, args...)
	cmd.Env = append(os.Environ(), "NNODES="+strconv.Itoa(c.Nodes), "NBACKENDS="+strconv.Itoa(c.Backends),
		"NCLIENTS="+strconv.Itoa(c.Clients))
	return output(cmd)
}

// start runs args in host's namespace (ip netns exec: the command itself
// has the PID) until the test ends or it is stopped.
func (c *Cluster) start(t *testing.T, host string, args ...string) *proc {
	t.Helper()
	return c.track(t, host, exec.Command("ip", append([]string{"netns", "exec", c.ns(host)}, args...)...))
}

func (c *Cluster) track(t *testing.T, host string, cmd *exec.Cmd) *proc {
	t.Helper()
	return c.trackFor(t, t, host, cmd)
}

// trackFor is track for a process that outlives t (a subtest): it is
// stopped when owner ends.
func (c *Cluster) trackFor(owner, t *testing.T, host string, cmd *exec.Cmd) *proc {
	t.Helper()
	p, err := startProc(cmd)
	if err != nil {
		t.Fatalf("start %v: %v", cmd.Args, err)
	}
	p.host = host
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	owner.Cleanup(func() {
		p.stopWithin(30 * time.Second)
		if owner.Failed() {
			owner.Logf("%s %v (pid %d): %v\nstdout:\n%s\nstderr:\n%s", host, cmd.Args, cmd.Process.Pid, p.err,
				tail(p.stdout.String()), tail(p.stderr.String()))
		}
	})
	return p
}

// exec runs args in host's network namespace and returns stdout.
func (c *Cluster) exec(host string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ExecTimeout)
	defer cancel()
	return output(exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + c.ns(host)}, args...)...))
}

func (c *Cluster) teardown() error {
	c.mu.Lock()
	procs := c.procs
	c.mu.Unlock()
	for _, p := range procs {
		p.stopWithin(30 * time.Second)
	}
	_, err := c.runScript("down", c.Prefix)
	if err == nil {
		liveClusters.remove(c)
	}
	return err
}

func waitProcOutput(t *testing.T, p *proc, substr string, timeout time.Duration) {
	t.Helper()
	p.waitText(t, "stdout", p.stdout.String, substr, timeout)
}

func waitProcLog(t *testing.T, p *proc, substr string, timeout time.Duration) {
	t.Helper()
	p.waitText(t, "stderr", p.stderr.String, substr, timeout)
}

// pinDir is node i's bpffs directory; removed when the test ends (register
// before starting xlb, so that xlb stops first).
func (c *Cluster) pinDir(i int) string {
	dir := filepath.Join(pinRoot, fmt.Sprintf("xlb-e2e-%s-n%d", c.Prefix, i))
	return dir
}

// PreparePins removes stale pin directories of every node and registers
// their removal at the end of the test.
func (c *Cluster) PreparePins(t *testing.T) {
	t.Helper()
	for i := 1; i <= c.Nodes; i++ {
		dir := c.pinDir(i)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		livePinDirs.add(dir)
		t.Cleanup(func() {
			if err := os.RemoveAll(dir); err != nil {
				t.Errorf("remove pins: %v", err)
			}
			livePinDirs.remove(dir)
		})
	}
}

// nodeConfig writes node i's config: the same services, health checks and
// BGP settings on every node; only router_id and bpffs_dir differ.
func (c *Cluster) nodeConfig(t *testing.T, i int) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[daemon]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\nbpffs_dir = %q\n\n", c.pinDir(i))
	fmt.Fprintf(&b, "[admin]\ntoken_file = %q\n\n", c.tokenFile)
	b.WriteString("[health_check]\ntype = \"http\"\npath = \"/health\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n\n")
	community := c.Community[i]
	if community == "" {
		community = "64512:80"
	}
	fmt.Fprintf(&b, "[bgp]\nlocal_asn = 64512\nrouter_id = %q\nhold_time = \"%ds\"\nshutdown_grace = \"2s\"\ncommunities = [%q]\n\n", NodeAddr(i), c.Hold, community)
	fmt.Fprintf(&b, "[[bgp.peer]]\naddress = %q\nasn = 64500\n\n", ClusterRouter)
	fmt.Fprintf(&b, "[[service]]\nname = \"web\"\nvip = %q\nport = 80\n", ClusterVIP)
	for j := 1; j <= c.Backends; j++ {
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n", ClusterBackendAddr(j))
	}
	path := c.path(fmt.Sprintf("n%d.toml", i))
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// StartNode runs xlb on node i and waits until it runs.
func (c *Cluster) StartNode(t *testing.T, i int, extra ...string) *proc {
	t.Helper()
	args := append([]string{Binary(t, "xlb"), "run", "-c", c.nodeConfig(t, i)}, extra...)
	host := "n" + strconv.Itoa(i)
	p := c.trackFor(c.owner, t, host, exec.Command("nsenter", append([]string{"--net=/run/netns/" + c.ns(host)}, args...)...))
	waitProcLog(t, p, `msg="xlb running"`, 30*time.Second)
	c.mu.Lock()
	c.xlb[i] = p
	c.mu.Unlock()
	return p
}

// Node is node i's running (or last) xlb.
func (c *Cluster) Node(i int) *proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.xlb[i]
}

// StopNode sends SIGTERM to node i's xlb and waits for its exit (after
// its shutdown grace); it returns the exit error.
func (c *Cluster) StopNode(t *testing.T, i int) error {
	t.Helper()
	p := c.Node(i)
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(60 * time.Second):
		t.Fatalf("node %d: xlb still running 60 s after SIGTERM", i)
		return nil
	}
}

// NextHops are the next hops of the router's kernel route to the VIP.
func (c *Cluster) NextHops(t *testing.T) []string {
	t.Helper()
	out, err := c.exec("rt", "ip", "route", "show", ClusterVIP+"/32")
	if err != nil {
		t.Fatal(err)
	}
	var hops []string
	for _, m := range viaPattern.FindAllStringSubmatch(string(out), -1) {
		hops = append(hops, m[1])
	}
	slices.Sort(hops)
	return hops
}

var viaPattern = regexp.MustCompile(`via (\S+)`)

// WaitNextHops waits until the router's route to the VIP goes through the
// given nodes exactly, and returns how long it took.
func (c *Cluster) WaitNextHops(t *testing.T, timeout time.Duration, nodes ...int) time.Duration {
	t.Helper()
	want := make([]string, len(nodes))
	for k, i := range nodes {
		want[k] = NodeAddr(i)
	}
	slices.Sort(want)
	start := time.Now()
	for {
		got := c.NextHops(t)
		if slices.Equal(got, want) {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("router's next hops for %s: %v, want %v after %v\n%s", ClusterVIP, got, want, timeout, c.Birdc(t, "show", "protocols"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// SessionSince is when bird's session with node i came up ("" if down).
func (c *Cluster) SessionSince(t *testing.T, i int) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^n` + strconv.Itoa(i) + `\s+BGP\s+\S+\s+up\s+(\S+)\s+Established`).FindStringSubmatch(c.Birdc(t, "show", "protocols"))
	if m == nil {
		return ""
	}
	return m[1]
}

// Birdc runs birdc on the router's control socket.
func (c *Cluster) Birdc(t *testing.T, args ...string) string {
	t.Helper()
	out, err := output(exec.Command("birdc", append([]string{"-s", c.path("bird.sock")}, args...)...))
	if err != nil {
		t.Fatalf("birdc %v: %v", args, err)
	}
	return string(out)
}

// Snapshot is node i's datapath as `xlb status --json` reads its pins.
func (c *Cluster) Snapshot(t *testing.T, i int) *loader.Snapshot {
	t.Helper()
	out, err := c.exec("n"+strconv.Itoa(i), Binary(t, "xlb"), "status", "--bpffs", c.pinDir(i), "--json")
	if err != nil {
		t.Fatal(err)
	}
	var parts map[string]json.RawMessage
	if err := json.Unmarshal(out, &parts); err != nil {
		t.Fatalf("xlb status --json: %v: %s", err, out)
	}
	raw := out
	if dp, ok := parts["datapath"]; ok {
		raw = dp
	}
	var snap loader.Snapshot
	if err := json.Unmarshal(raw, &snap); err != nil {
		t.Fatalf("xlb status --json: %v: %s", err, out)
	}
	return &snap
}

// NodeNewFlows is how many new flows node i's datapath placed, in all.
func (c *Cluster) NodeNewFlows(t *testing.T, i int) uint64 {
	t.Helper()
	var n uint64
	for _, v := range newFlows(c.Snapshot(t, i), "web") {
		n += v
	}
	return n
}

// NodeOpenFlows is how many flows node i's connection table holds.
func (c *Cluster) NodeOpenFlows(t *testing.T, i int) int {
	t.Helper()
	n := 0
	if s := service(c.Snapshot(t, i), "web"); s != nil {
		for _, b := range s.Backends {
			n += int(b.OpenFlows)
		}
	}
	return n
}

// CLI runs `xlb ARGS... -c nI.toml` in node i's namespace (the admin API
// address and token come from its config).
func (c *Cluster) CLI(t *testing.T, i int, args ...string) string {
	t.Helper()
	out, err := c.exec("n"+strconv.Itoa(i), append([]string{Binary(t, "xlb")}, append(args, "-c", c.path(fmt.Sprintf("n%d.toml", i)))...)...)
	if err != nil {
		t.Fatalf("xlb %v on n%d: %v", args, i, err)
	}
	return string(out)
}

// Load runs `xlbtest load` in the client's namespace.
func (c *Cluster) Load(t *testing.T, args ...string) LoadSummary {
	t.Helper()
	out, err := c.exec("cl", append([]string{Binary(t, "xlbtest"), "load", "--target", "http://" + ClusterVIP + "/"}, args...)...)
	var sum LoadSummary
	if jerr := json.Unmarshal(out, &sum); jerr != nil {
		t.Fatalf("xlbtest load %v: no report (%v): %v", args, jerr, err)
	}
	return sum
}

// Holds are long-lived connections from the client, one per source address,
// each streaming /hold for secs seconds.
type Holds struct {
	procs []*proc
}

// StartHolds opens n connections (sources 198.18.2.100...) that stream for
// secs seconds, and waits until each has received its first line.
func (c *Cluster) StartHolds(t *testing.T, n, secs int) *Holds {
	t.Helper()
	h := &Holds{}
	for k := 0; k < n; k++ {
		h.procs = append(h.procs, c.start(t, "cl", Binary(t, "xlbtest"), "hold", "--target", "http://"+ClusterVIP+"/",
			"--secs", strconv.Itoa(secs), "--source", ClusterClient(k), "--timeout", "30s"))
	}
	for _, p := range h.procs {
		waitProcOutput(t, p, "tick 1/", 20*time.Second)
	}
	return h
}

// Wait waits for every stream to end and returns how many arrived whole on
// one backend, with the reasons of the others.
func (h *Holds) Wait(t *testing.T) (ok int, failures []string) {
	t.Helper()
	for k, p := range h.procs {
		select {
		case <-p.done:
		case <-time.After(3 * time.Minute):
			p.stopWithin(time.Second)
		}
		backends := map[string]bool{}
		for _, m := range holdBackend.FindAllStringSubmatch(p.stdout.String(), -1) {
			backends[m[1]] = true
		}
		switch {
		case p.err != nil:
			failures = append(failures, fmt.Sprintf("%s: %v: %s", ClusterClient(k), p.err, strings.TrimSpace(p.stderr.String())))
		case len(backends) != 1:
			failures = append(failures, fmt.Sprintf("%s: backends %v", ClusterClient(k), backends))
		default:
			ok++
		}
	}
	return ok, failures
}

var holdBackend = regexp.MustCompile(`backend=(\S+)`)

// clusterSources are the first n client addresses.
func clusterSources(n int) []netip.Addr { return addrRange(ClusterClient(0), n) }

// liveClusters are the clusters not torn down yet, for TestMain's signal
// handler.
var liveClusters = &liveSet[*Cluster]{m: map[*Cluster]bool{}}

func (c *Cluster) name() string { return "cluster " + c.Prefix }

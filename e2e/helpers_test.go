package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/internal/testenv"
)

// Addresses of the test topology (scripts/topology.sh, /tmp/contract.md).
const (
	VIP4        = "198.19.0.10"
	VIP6        = "2001:db8:19::10"
	LBAddr4     = "198.18.0.2"
	LBAddr6     = "2001:db8:18::2"
	ClientAddr4 = "198.18.0.100" // the client's first (primary) address
	ClientAddr6 = "2001:db8:18::100"
)

const (
	// ExecTimeout bounds every Exec and every topology.sh run.
	ExecTimeout = 2 * time.Minute
	// stopGrace is how long Stop waits after SIGTERM before SIGKILL.
	stopGrace = 5 * time.Second
)

// prefixPattern is what topology.sh accepts as PREFIX.
var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9]{1,6}$`)

// TestMain removes the binaries built by Binary, and tears down live topologies
// when the test binary is interrupted (t.Cleanup does not run on SIGINT/SIGTERM).
func TestMain(m *testing.M) {
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigc
		fmt.Fprintf(os.Stderr, "e2e: %v: tearing down live topologies\n", sig)
		liveTopologies.downAll()
		liveClusters.downAll()
		livePinDirs.removeAll()
		removeBinDir()
		os.Exit(1)
	}()
	code := m.Run()
	signal.Stop(sigc)
	removeBinDir()
	os.Exit(code)
}

// requireRoot skips the test without root, or fails it in CI (where a
// skipped end-to-end suite would pass unnoticed).
func requireRoot(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "end-to-end tests need root")
}

// repoRoot is the module root: the parent of this package's directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("repository root not found: %v", err)
	}
	return dir
}

// binaryPackages maps the binaries Binary knows to their packages.
var binaryPackages = map[string]string{
	"xlbtest": "./scripts/xlbtest",
	"xlb":     "./cmd/xlb",
}

var (
	binDirOnce sync.Once
	binDir     string
	binDirErr  error
	builds     sync.Map // name -> *buildResult
)

type buildResult struct {
	once sync.Once
	path string
	err  error
}

// Binary returns the path of binary name ("xlbtest" or "xlb"): $XLB_BIN_DIR/name if
// XLB_BIN_DIR is set, else a build made once per test binary into a temporary
// directory that TestMain removes.
func Binary(t *testing.T, name string) string {
	t.Helper()
	pkg, ok := binaryPackages[name]
	if !ok {
		t.Fatalf("Binary: unknown binary %q", name)
	}
	if dir := os.Getenv("XLB_BIN_DIR"); dir != "" {
		p, err := filepath.Abs(filepath.Join(dir, name))
		if err == nil {
			_, err = os.Stat(p)
		}
		if err != nil {
			t.Fatalf("XLB_BIN_DIR: %v", err)
		}
		return p
	}
	binDirOnce.Do(func() { binDir, binDirErr = os.MkdirTemp("", "xlb-e2e-bin-") })
	if binDirErr != nil {
		t.Fatal(binDirErr)
	}
	v, _ := builds.LoadOrStore(name, &buildResult{})
	b := v.(*buildResult)
	b.once.Do(func() {
		b.path = filepath.Join(binDir, name)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool(), "build", "-o", b.path, pkg)
		cmd.Dir = repoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// goTool is the go command: from PATH, else from GOROOT (PATH may lack it under sudo).
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(build.Default.GOROOT, "bin", "go")
}

func removeBinDir() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// Topology is one running instance of scripts/topology.sh: namespaces Prefix-br
// (bridge br0), Prefix-cl (client), Prefix-lb and Prefix-b1..bN, each host with eth0.
type Topology struct {
	Prefix   string
	Backends int    // backends are hosts "b1".."bN"
	Clients  int    // client addresses: ClientAddr4/6 and the ones after them
	Routed   int    // routed backends "r1".."rN" behind the router "rt" (NROUTED)
	Mode     string // "generic" or "native"
	// Peer is the bridge-side end of the LB's eth0, in namespace Prefix-br
	// (native XDP_TX needs an XDP program on it).
	Peer string
	// PlainRouted makes the routed backends plain hosts: no VIPs, no ARP
	// sysctls (ROUTED_PLAIN).
	PlainRouted bool

	script string

	mu    sync.Mutex
	procs []*proc
}

// TopologyOption changes what NewTopology builds.
type TopologyOption func(*Topology)

// WithBackends sets the number of backends (default 3).
func WithBackends(n int) TopologyOption { return func(tp *Topology) { tp.Backends = n } }

// WithClients sets the number of client addresses (default 120).
func WithClients(n int) TopologyOption { return func(tp *Topology) { tp.Clients = n } }

// WithRouted adds a router and n routed backends behind it (NROUTED in
// topology.sh).
func WithRouted(n int) TopologyOption { return func(tp *Topology) { tp.Routed = n } }

// WithPlainRouted makes the routed backends plain hosts, as NAT takes
// them: no VIP on lo, no ARP sysctls (ROUTED_PLAIN=1 in topology.sh).
func WithPlainRouted() TopologyOption { return func(tp *Topology) { tp.PlainRouted = true } }

// WithNativeMode prepares the veths for native XDP (MODE=native in topology.sh).
func WithNativeMode() TopologyOption { return func(tp *Topology) { tp.Mode = "native" } }

// NewTopology builds a topology named prefix (1..6 letters or digits; "" picks a
// random one) and tears it down when the test ends, whether it passed, failed or
// panicked. It skips or fails the test without root (see requireRoot).
func NewTopology(t *testing.T, prefix string, opts ...TopologyOption) *Topology {
	t.Helper()
	requireRoot(t)
	if prefix == "" {
		prefix = randomPrefix()
	}
	if !prefixPattern.MatchString(prefix) {
		t.Fatalf("NewTopology: bad prefix %q: want 1..6 letters or digits", prefix)
	}
	tp := &Topology{
		Prefix:   prefix,
		Backends: 3,
		Clients:  120,
		Mode:     "generic",
		script:   filepath.Join(repoRoot(t), "scripts", "topology.sh"),
	}
	for _, o := range opts {
		o(tp)
	}
	// Registered before "up", so a half-built topology goes away too.
	liveTopologies.add(tp)
	t.Cleanup(func() {
		if err := tp.teardown(); err != nil {
			t.Errorf("topology %s: %v", tp.Prefix, err)
		}
	})

	out, err := tp.runScript("up", tp.Prefix)
	if err != nil {
		t.Fatalf("topology %s up: %v", tp.Prefix, err)
	}
	m := regexp.MustCompile(`\bpeer=(\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("topology %s up: no peer= in %q", tp.Prefix, out)
	}
	tp.Peer = string(m[1])
	t.Logf("%s", bytes.TrimSpace(out))
	return tp
}

// randomPrefix is "x" and five random letters or digits.
func randomPrefix() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 6)
	rand.Read(b)
	b[0] = 'x'
	for i := 1; i < len(b); i++ {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// script2 runs topology.sh with args and returns its stdout; errors carry stderr.
func (tp *Topology) runScript(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ExecTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tp.script, args...)
	cmd.Env = append(os.Environ(),
		"NBACKENDS="+strconv.Itoa(tp.Backends),
		"NCLIENTS="+strconv.Itoa(tp.Clients),
		"NROUTED="+strconv.Itoa(tp.Routed),
		"ROUTED_PLAIN="+map[bool]string{false: "0", true: "1"}[tp.PlainRouted],
		"MODE="+tp.Mode)
	return output(cmd)
}

// output runs cmd and returns its stdout; a failure's error includes stderr.
func output(cmd *exec.Cmd) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// Namespace is the network namespace of host ("br", "cl", "lb", "b1", ...).
func (tp *Topology) Namespace(host string) string { return tp.Prefix + "-" + host }

// BackendHosts lists the backend hosts: "b1".."bN".
func (tp *Topology) BackendHosts() []string {
	hosts := make([]string, tp.Backends)
	for i := range hosts {
		hosts[i] = "b" + strconv.Itoa(i+1)
	}
	return hosts
}

// BackendAddr4 is backend i's (1-based) eth0 address: 198.18.0.(10+i).
func (tp *Topology) BackendAddr4(i int) string { return fmt.Sprintf("198.18.0.%d", 10+i) }

// BackendAddr6 is backend i's (1-based) eth0 address: 2001:db8:18::(10+i), the same
// digits as the IPv4 octet.
func (tp *Topology) BackendAddr6(i int) string { return fmt.Sprintf("2001:db8:18::%d", 10+i) }

// RoutedAddr4 is routed backend i's (1-based) address: 198.18.1.(10+i).
func (tp *Topology) RoutedAddr4(i int) string { return fmt.Sprintf("198.18.1.%d", 10+i) }

// RoutedAddr6 is routed backend i's (1-based) address: 2001:db8:18:1::(10+i).
func (tp *Topology) RoutedAddr6(i int) string { return fmt.Sprintf("2001:db8:18:1::%d", 10+i) }

// ClientSources4 is every IPv4 client address as an xlbtest --sources range.
func (tp *Topology) ClientSources4() string {
	return fmt.Sprintf("range:%s-198.18.0.%d", ClientAddr4, 100+tp.Clients-1)
}

// ClientSources6 is every IPv6 client address as an xlbtest --sources range
// (hexadecimal: 120 addresses end at ::177).
func (tp *Topology) ClientSources6() string {
	return fmt.Sprintf("range:%s-2001:db8:18::%x", ClientAddr6, 0x100+tp.Clients-1)
}

// Exec runs args in host's namespace, bounded by ExecTimeout, and returns stdout.
// A failure's error includes stderr; stdout is returned either way.
func (tp *Topology) Exec(host string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ExecTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", tp.Namespace(host)}, args...)...)
	return output(cmd)
}

// proc is a background process started by Start.
type proc struct {
	host           string
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	done           chan struct{} // closed when the process has exited
	err            error         // from Wait, valid after done
}

// Start runs args in host's namespace in the background. `ip netns exec` execs the
// command in place, so cmd.Process.Pid is the command itself; it is stopped by
// that PID (SIGTERM, then SIGKILL) when the test ends or by Stop/Down.
func (tp *Topology) Start(t *testing.T, host string, args ...string) *exec.Cmd {
	t.Helper()
	return tp.startCmd(t, host, exec.Command("ip", append([]string{"netns", "exec", tp.Namespace(host)}, args...)...), args)
}

// startCmd starts cmd for host, tracks it and stops it by PID when the test
// ends, logging its output if the test failed.
func (tp *Topology) startCmd(t *testing.T, host string, cmd *exec.Cmd, args []string) *exec.Cmd {
	t.Helper()
	return tp.startOwnedCmd(t, t, host, cmd, args)
}

// startOwnedCmd is startCmd for a process that outlives test t (a subtest):
// it is stopped when owner (t or an ancestor of t) ends.
func (tp *Topology) startOwnedCmd(owner, t *testing.T, host string, cmd *exec.Cmd, args []string) *exec.Cmd {
	t.Helper()
	p, err := startProc(cmd)
	if err != nil {
		t.Fatalf("start %v in %s: %v", args, host, err)
	}
	p.host = host
	tp.mu.Lock()
	tp.procs = append(tp.procs, p)
	tp.mu.Unlock()
	owner.Cleanup(func() {
		p.stop()
		if owner.Failed() {
			owner.Logf("%s %v (pid %d): %v\nstdout:\n%s\nstderr:\n%s", host, args, p.cmd.Process.Pid, p.err, tail(p.stdout.String()), tail(p.stderr.String()))
		}
	})
	return p.cmd
}

// startProc starts cmd with its output captured and a goroutine waiting for it.
func startProc(cmd *exec.Cmd) (*proc, error) {
	p := &proc{done: make(chan struct{}), cmd: cmd}
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// startBackground starts args outside any topology; it is stopped by PID
// (SIGTERM, then SIGKILL) when t ends, or by its stop method.
func startBackground(t *testing.T, args ...string) *proc {
	t.Helper()
	p, err := startProc(exec.Command(args[0], args[1:]...))
	if err != nil {
		t.Fatalf("start %v: %v", args, err)
	}
	t.Cleanup(p.stop)
	return p
}

// tail is the end of a long process output (a streaming load prints a line per
// connection), whole if short.
func tail(s string) string {
	const keep = 64 << 10
	if len(s) <= keep {
		return s
	}
	cut := len(s) - keep
	if i := strings.IndexByte(s[cut:], '\n'); i >= 0 {
		cut += i + 1
	}
	return fmt.Sprintf("[... %d bytes omitted ...]\n%s", cut, s[cut:])
}

// StartReady is Start followed by WaitOutput(cmd, ready, timeout).
func (tp *Topology) StartReady(t *testing.T, host, ready string, timeout time.Duration, args ...string) *exec.Cmd {
	t.Helper()
	cmd := tp.Start(t, host, args...)
	tp.WaitOutput(t, cmd, ready, timeout)
	return cmd
}

func (tp *Topology) proc(cmd *exec.Cmd) *proc {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for _, p := range tp.procs {
		if p.cmd == cmd {
			return p
		}
	}
	return nil
}

// WaitOutput waits until cmd (from Start) has written substr to stdout, and fails
// the test if it exits or the timeout passes first.
func (tp *Topology) WaitOutput(t *testing.T, cmd *exec.Cmd, substr string, timeout time.Duration) {
	t.Helper()
	p := tp.proc(cmd)
	if p == nil {
		t.Fatal("WaitOutput: command not started by this topology")
	}
	p.waitText(t, "stdout", p.stdout.String, substr, timeout)
}

// waitText waits until text (p's stdout or stderr, as stream says) holds
// substr, and fails the test if p exits or the timeout passes first.
func (p *proc) waitText(t *testing.T, stream string, text func() string, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(text(), substr) {
		select {
		case <-p.done:
			if strings.Contains(text(), substr) {
				return
			}
			t.Fatalf("%v exited (%v) before writing %q to %s; stderr: %s", p.cmd.Args, p.err, substr, stream, tail(p.stderr.String()))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v did not write %q to %s within %v; stdout: %s stderr: %s", p.cmd.Args, substr, stream, timeout,
				tail(p.stdout.String()), tail(p.stderr.String()))
		}
	}
}

// Output returns what cmd (from Start) has written so far.
func (tp *Topology) Output(cmd *exec.Cmd) (stdout, stderr string) {
	if p := tp.proc(cmd); p != nil {
		return p.stdout.String(), p.stderr.String()
	}
	return "", ""
}

// Stop ends cmd (from Start) by PID: SIGTERM, SIGKILL after a grace period. It
// returns the command's exit error (nil for a clean exit 0).
func (tp *Topology) Stop(cmd *exec.Cmd) error {
	p := tp.proc(cmd)
	if p == nil {
		return errors.New("Stop: command not started by this topology")
	}
	p.stop()
	return p.err
}

// Wait waits up to timeout for cmd (from Start) to exit on its own and returns its
// exit error; it stops the command and reports a timeout if it does not exit.
func (tp *Topology) Wait(cmd *exec.Cmd, timeout time.Duration) error {
	p := tp.proc(cmd)
	if p == nil {
		return errors.New("Wait: command not started by this topology")
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.stop()
		return fmt.Errorf("%v still running after %v (stopped)", cmd.Args, timeout)
	}
}

func (p *proc) stop() { p.stopWithin(stopGrace) }

// stopWithin ends p by PID: SIGTERM, SIGKILL after grace.
func (p *proc) stopWithin(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// Down stops every process started in the topology and deletes its namespaces. It
// is idempotent; NewTopology's cleanup calls it too.
func (tp *Topology) Down(t *testing.T) {
	t.Helper()
	if err := tp.teardown(); err != nil {
		t.Fatalf("topology %s down: %v", tp.Prefix, err)
	}
}

func (tp *Topology) teardown() error {
	tp.mu.Lock()
	procs := tp.procs
	tp.mu.Unlock()
	for _, p := range procs {
		p.stop()
	}
	_, err := tp.runScript("down", tp.Prefix)
	if err == nil {
		liveTopologies.remove(tp)
	}
	return err
}

// Namespaces lists the existing network namespaces of the topology named prefix.
func Namespaces(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := output(exec.Command("ip", "netns", "list"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
			names = append(names, f[0])
		}
	}
	return names
}

// LoadSummary is the JSON report of `xlbtest load`.
type LoadSummary struct {
	OK             int                 `json:"ok"`
	Failed         int                 `json:"failed"`
	Skipped        int                 `json:"skipped"`
	Errors         map[string]int      `json:"errors"`
	BySource       map[string][]string `json:"by_source"`
	FailedBySource map[string]int      `json:"failed_by_source"`
	ByBackend      map[string]int      `json:"by_backend"`
	ElapsedMS      int64               `json:"elapsed_ms"`
}

// Load runs `xlbtest load ARGS...` in host's namespace and returns its report. A
// run with failed connections is a result, not an error; a usage error or a
// missing report fails the test.
func (tp *Topology) Load(t *testing.T, host string, args ...string) LoadSummary {
	t.Helper()
	out, err := tp.Exec(host, append([]string{Binary(t, "xlbtest"), "load"}, args...)...)
	var sum LoadSummary
	if jerr := json.Unmarshal(out, &sum); jerr != nil {
		t.Fatalf("xlbtest load %v in %s: no report (%v): %v", args, host, jerr, err)
	}
	return sum
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// liveTopologies are the topologies not torn down yet, for TestMain's signal handler.
var liveTopologies = &liveSet[*Topology]{m: map[*Topology]bool{}}

// liveSet holds what a test built and has not torn down yet (topologies,
// clusters), for TestMain's signal handler.
type liveSet[T interface {
	comparable
	teardown() error
	name() string
}] struct {
	mu sync.Mutex
	m  map[T]bool
}

func (s *liveSet[T]) add(x T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[x] = true
}

func (s *liveSet[T]) remove(x T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, x)
}

func (s *liveSet[T]) downAll() {
	s.mu.Lock()
	var live []T
	for x := range s.m {
		live = append(live, x)
	}
	s.mu.Unlock()
	for _, x := range live {
		if err := x.teardown(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s: %v\n", x.name(), err)
		}
	}
}

func (tp *Topology) name() string { return "topology " + tp.Prefix }

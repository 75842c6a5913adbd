package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netns"

	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/loader"
	"github.com/xlb-dev/xlb/maglev"
)

// Health check settings of the health tests: fast, so that the suite stays short.
const (
	hcInterval  = 300 * time.Millisecond
	hcTimeout   = 200 * time.Millisecond
	hcUnhealthy = 2
	hcHealthy   = 2
	// hcDrainTimeout is [admin] drain_timeout: removals must end long before it.
	hcDrainTimeout = 60 * time.Second

	// downBound is how soon a stopped backend must be out of the Maglev tables:
	// unhealthy_threshold x interval + timeout + 1 s (the bound).
	downBound = hcUnhealthy*hcInterval + hcTimeout + time.Second
	// upBound is how soon a backend back must be in the tables again:
	// healthy_threshold intervals, plus the same slack.
	upBound = hcHealthy*hcInterval + hcTimeout + time.Second
	// maxApplyDelay bounds the time from a health transition to the maps
	// (xlb's "after="). The target is 100 ms, which bench-control
	// measures on a quiet machine; here two topologies, continuous loads and
	// status polling share the CPUs, and a v4 and a v6 transition decided
	// together are reconciled one after the other, so the bound is looser.
	maxApplyDelay = 250 * time.Millisecond
	// swapSlack is added to a table swap's log time before a connection must see
	// the new table: the log's millisecond resolution and a SYN in flight.
	swapSlack = 100 * time.Millisecond

	// adminAddr is where xlb's admin API listens, in the LB's namespace.
	adminAddr = "127.0.0.1:9090"
	// hcPort is the service port (and the health check port).
	hcPort = 80
	// noTokenEnv is a token_env nobody sets: a daemon with the admin endpoints disabled.
	noTokenEnv = "XLB_E2E_NO_SUCH_TOKEN"

	// streamRate, streamParallel and streamTimeout shape the continuous loads:
	// each of the 155 client addresses connects about once a second.
	streamRate     = 150
	streamParallel = 96
	streamTimeout  = time.Second
	// streamPorts is the source port span of one continuous load.
	streamPorts = 2000
)

// hcFamily is one service of a health test: an address family's VIP and backends.
type hcFamily struct {
	name     string   // "ipv4", "ipv6"
	service  string   // service name
	vip      string   // VIP
	first    string   // first client address
	backends []string // backend addresses, b1..bN
}

func (f hcFamily) url(path string) string {
	return "http://" + netip.AddrPortFrom(netip.MustParseAddr(f.vip), hcPort).String() + path
}

// sources is every client address of the family as an xlbtest --sources range.
func (f hcFamily) sources() string {
	a := addrRange(f.first, l4Clients)
	return "range:" + a[0].String() + "-" + a[len(a)-1].String()
}

// sourceAddrs is every client address of the family.
func (f hcFamily) sourceAddrs() []netip.Addr { return addrRange(f.first, l4Clients) }

// id is backend i's (1-based) admin API id.
func (f hcFamily) id(i int) string { return f.service + "@" + f.backends[i-1] }

// target is backend i's health check target as the control loop logs it.
func (f hcFamily) target(i int) string {
	return netip.AddrPortFrom(netip.MustParseAddr(f.backends[i-1]), hcPort).String()
}

func ipv4Family(tp *Topology, service string) hcFamily {
	f := hcFamily{name: "ipv4", service: service, vip: VIP4, first: ClientAddr4}
	for i := 1; i <= tp.Backends; i++ {
		f.backends = append(f.backends, tp.BackendAddr4(i))
	}
	return f
}

func ipv6Family(tp *Topology, service string) hcFamily {
	f := hcFamily{name: "ipv6", service: service, vip: VIP6, first: ClientAddr6}
	for i := 1; i <= tp.Backends; i++ {
		f.backends = append(f.backends, tp.BackendAddr6(i))
	}
	return f
}

// hcEnv is a topology running xlb with health checks and the admin API.
type hcEnv struct {
	owner    *testing.T // the test that owns the servers and loads
	tp       *Topology
	pinDir   string
	config   string
	token    string // "" : no token configured, admin endpoints disabled
	xlb      *exec.Cmd
	admin    *adminClient
	families []hcFamily

	mu       sync.Mutex
	servers  map[int]*exec.Cmd // backend number -> its xlbtest serve
	nextPort int
}

// newHCEnv builds a topology (155 client addresses, three backends), starts an
// xlbtest server on every backend (the VIPs and the backend's own addresses, port
// 80) and xlb in generic mode with the families' services, health checks every
// hcInterval and the admin API on adminAddr; withToken writes a token file.
func newHCEnv(t *testing.T, prefix string, withToken bool, families func(*Topology) []hcFamily) *hcEnv {
	t.Helper()
	tp := NewTopology(t, prefix+randomPrefix()[len(prefix):], WithClients(l4Clients))
	e := &hcEnv{owner: t, tp: tp, servers: map[int]*exec.Cmd{}, nextPort: 10000}
	e.pinDir = tp.PinDir(t)
	e.families = families(tp)
	e.admin = newAdminClient(tp.Namespace("lb"))
	t.Cleanup(func() {
		if t.Failed() {
			tp.logDiagnostics(t)
		}
	})
	for i := 1; i <= tp.Backends; i++ {
		e.startServer(t, i, false)
	}
	dir := t.TempDir()
	tokenFile := ""
	if withToken {
		e.token, tokenFile = writeToken(t, dir)
	}
	e.config = writeHCConfig(t, dir, e.pinDir, tokenFile, e.families)
	e.xlb = tp.StartXLB(t, e.config, e.pinDir, "generic")
	e.waitHealth(t, "", http.StatusOK, "healthy", 5*time.Second)
	return e
}

// writeToken writes a random admin token into dir and returns it and the
// file's path.
func writeToken(t *testing.T, dir string) (token, file string) {
	t.Helper()
	b := make([]byte, 16)
	rand.Read(b)
	token = hex.EncodeToString(b)
	file = filepath.Join(dir, "admin.token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return token, file
}

// writeHCHead writes the [daemon] table of a config for the LB's eth0
// (generic XDP) and a [health_check] table with the health tests' settings.
func writeHCHead(b *strings.Builder, pinDir string) {
	fmt.Fprintf(b, "[daemon]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\nbpffs_dir = %q\n", pinDir)
	fmt.Fprintf(b, "\n[health_check]\ntype = \"http\"\npath = \"/health\"\ninterval = %q\ntimeout = %q\n"+
		"unhealthy_threshold = %d\nhealthy_threshold = %d\n",
		hcInterval.String(), hcTimeout.String(), hcUnhealthy, hcHealthy)
}

// writeHCConfig writes the config of an hcEnv into dir.
func writeHCConfig(t *testing.T, dir, pinDir, tokenFile string, families []hcFamily) string {
	t.Helper()
	var b strings.Builder
	writeHCHead(&b, pinDir)
	fmt.Fprintf(&b, "\n[admin]\nlisten = %q\ndrain_timeout = %q\n", adminAddr, hcDrainTimeout.String())
	if tokenFile != "" {
		fmt.Fprintf(&b, "token_file = %q\n", tokenFile)
	} else {
		fmt.Fprintf(&b, "token_env = %q\n", noTokenEnv)
	}
	for _, f := range families {
		fmt.Fprintf(&b, "\n[[service]]\nname = %q\nvip = %q\nport = %d\nprotocol = \"tcp\"\nmode = \"l4\"\nhash = \"ip_hash\"\n",
			f.service, f.vip, hcPort)
		for _, a := range f.backends {
			fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n", a)
		}
	}
	path := filepath.Join(dir, "xlb.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startServer starts backend i's xlbtest server (hang: one that accepts TCP and
// never answers) on the VIPs and its own addresses.
func (e *hcEnv) startServer(t *testing.T, i int, hang bool) {
	t.Helper()
	tp := e.tp
	e.startServerOn(t, i, hang,
		netip.AddrPortFrom(netip.MustParseAddr(VIP4), hcPort).String(),
		netip.AddrPortFrom(netip.MustParseAddr(VIP6), hcPort).String(),
		netip.AddrPortFrom(netip.MustParseAddr(tp.BackendAddr4(i)), hcPort).String(),
		netip.AddrPortFrom(netip.MustParseAddr(tp.BackendAddr6(i)), hcPort).String())
}

// startServerOn starts backend i's xlbtest server on the listen addresses.
func (e *hcEnv) startServerOn(t *testing.T, i int, hang bool, listen ...string) {
	t.Helper()
	tp := e.tp
	host := "b" + strconv.Itoa(i)
	args := []string{Binary(t, "xlbtest"), "serve", "--name", host, "--listen", strings.Join(listen, ",")}
	if hang {
		args = append(args, "--hang")
	}
	// Owned by the whole test: a server started in a phase (a subtest) keeps
	// running after it.
	cmd := tp.startOwnedCmd(e.owner, t, host,
		exec.Command("ip", append([]string{"netns", "exec", tp.Namespace(host)}, args...)...), args)
	tp.WaitOutput(t, cmd, "ready ", 5*time.Second)
	e.mu.Lock()
	e.servers[i] = cmd
	e.mu.Unlock()
}

// stopServer stops backend i's server and checks that it exited cleanly.
func (e *hcEnv) stopServer(t *testing.T, i int) {
	t.Helper()
	e.mu.Lock()
	cmd := e.servers[i]
	delete(e.servers, i)
	e.mu.Unlock()
	if cmd == nil {
		t.Fatalf("backend %d has no server running", i)
	}
	if err := e.tp.Stop(cmd); err != nil {
		t.Errorf("b%d server after SIGTERM: %v, want exit 0", i, err)
	}
}

// ports reserves n source ports for one load run. They lie below the kernel's
// ephemeral range, so no run, nor a kernel-picked port, ever reuses a 5-tuple
// (which xlb's connection table would take for an old flow).
func (e *hcEnv) ports(t *testing.T, n int) string {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	first := e.nextPort
	e.nextPort += n
	if e.nextPort > 32000 {
		t.Fatalf("out of source ports")
	}
	return fmt.Sprintf("%d-%d", first, first+n-1)
}

// load runs one bounded `xlbtest load` from every client address of f, once
// each, with source ports of its own.
func (e *hcEnv) load(t *testing.T, f hcFamily) LoadSummary {
	t.Helper()
	return e.tp.Load(t, "cl", "--target", f.url("/"), "--sources", f.sources(), "--conns", strconv.Itoa(l4Clients),
		"--parallel", "16", "--timeout", "3s", "--duration-max", "30s", "--source-ports", e.ports(t, 1))
}

// ---------------------------------------------------------------------------
// Continuous load.

// loadRecord is one connection of a streaming `xlbtest load`.
type loadRecord struct {
	I       int       `json:"i"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Source  string    `json:"source"`
	Port    int       `json:"port"`
	Backend string    `json:"backend"`
	Error   string    `json:"error"`
}

// streamLoad is a continuous `xlbtest load --conns 0 --stream` in the client's
// namespace.
type streamLoad struct {
	tp  *Topology
	cmd *exec.Cmd
	f   hcFamily
}

// startStream starts continuous new connections from every client address of f
// to its VIP: streamRate a second, each bounded by streamTimeout. It runs until
// stopped (at most two minutes).
func (e *hcEnv) startStream(t *testing.T, f hcFamily) *streamLoad {
	t.Helper()
	args := []string{Binary(t, "xlbtest"), "load", "--target", f.url("/"), "--sources", f.sources(),
		"--conns", "0", "--duration-max", "120s", "--rate", strconv.Itoa(streamRate),
		"--parallel", strconv.Itoa(streamParallel), "--timeout", streamTimeout.String(),
		"--source-ports", e.ports(t, streamPorts), "--stream"}
	cmd := e.tp.startOwnedCmd(e.owner, t, "cl",
		exec.Command("ip", append([]string{"netns", "exec", e.tp.Namespace("cl")}, args...)...), args)
	return &streamLoad{tp: e.tp, cmd: cmd, f: f}
}

// records parses the connections reported so far.
func (s *streamLoad) records() []loadRecord {
	out, _ := s.tp.Output(s.cmd)
	recs, _ := parseStream(out)
	return recs
}

// parseStream splits a streaming load's output into its records and its final
// report (nil until printed). An unfinished last line is ignored.
func parseStream(out string) ([]loadRecord, *LoadSummary) {
	var recs []loadRecord
	var sum *LoadSummary
	for line := range strings.Lines(out) {
		if !strings.HasSuffix(line, "\n") {
			break
		}
		if strings.HasPrefix(line, `{"i":`) {
			var r loadRecord
			if json.Unmarshal([]byte(line), &r) == nil {
				recs = append(recs, r)
			}
			continue
		}
		var s LoadSummary
		if json.Unmarshal([]byte(line), &s) == nil {
			sum = &s
		}
	}
	return recs, sum
}

// waitOK waits until the load has made n successful connections.
func (s *streamLoad) waitOK(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s load: %d connections", s.f.name, n), timeout, 50*time.Millisecond, func() bool {
		ok := 0
		for _, r := range s.records() {
			if r.Error == "" {
				ok++
			}
		}
		return ok >= n
	})
}

// stop ends the load (SIGTERM: running connections finish) and returns every
// record and the report.
func (s *streamLoad) stop(t *testing.T) ([]loadRecord, LoadSummary) {
	t.Helper()
	s.tp.Stop(s.cmd) // exit 1 when a connection failed: judged by the caller
	out, stderr := s.tp.Output(s.cmd)
	recs, sum := parseStream(out)
	if sum == nil {
		t.Fatalf("%s load printed no report; stderr: %s", s.f.name, stderr)
	}
	if sum.OK+sum.Failed != len(recs) || sum.Skipped != 0 {
		t.Errorf("%s load: %d records, report ok=%d failed=%d skipped=%d", s.f.name, len(recs), sum.OK, sum.Failed, sum.Skipped)
	}
	return recs, *sum
}

// ---------------------------------------------------------------------------
// Maglev predictions.

// maglevHosts maps every source of f to the host ("b1".."bN") that xlb's table
// over backends (numbers, 1-based; weight 1) picks for it.
func maglevHosts(t *testing.T, f hcFamily, backends ...int) map[string]string {
	t.Helper()
	var bs []maglev.Backend
	for _, i := range backends {
		bs = append(bs, maglev.Backend{Name: netip.MustParseAddr(f.backends[i-1]).String(), Weight: 1})
	}
	table, err := maglev.Build(bs, maglev.DefaultTableSize)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, src := range f.sourceAddrs() {
		m[src.String()] = "b" + strconv.Itoa(backends[table.Lookup(maglev.SourceHash(src))])
	}
	return m
}

// ---------------------------------------------------------------------------
// Admin API, status and CLI.

// adminClient talks HTTP to xlb's admin API inside a network namespace.
type adminClient struct {
	hc *http.Client
}

func newAdminClient(ns string) *adminClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialInNetns(ctx, ns, network, addr)
		},
		DisableKeepAlives: true,
	}
	return &adminClient{hc: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// dialInNetns opens a connection from network namespace ns (see inNetns).
func dialInNetns(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// inNetns runs fn on a thread that entered network namespace ns: a socket fn
// makes stays in ns. The thread goes back to its namespace, or is discarded
// if it cannot.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("namespace %s: %w", ns, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter %s: %w", ns, err)
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread() // else the thread ends with the goroutine
		}
		errc <- err
	}()
	return <-errc
}

// call sends method path to the admin API with the Authorization header auth
// (none if "") and body (none if ""), and returns the status and body.
func (c *adminClient) call(t *testing.T, method, path, auth, body string) (int, []byte) {
	t.Helper()
	code, _, b := c.callHeader(t, method, path, auth, body)
	return code, b
}

func (c *adminClient) callHeader(t *testing.T, method, path, auth, body string) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+adminAddr+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, b
}

// bearer is an Authorization header value.
func bearer(token string) string { return "Bearer " + token }

// backends is GET /lb/backends.
func (e *hcEnv) backends(t *testing.T) []control.BackendInfo {
	t.Helper()
	code, body := e.admin.call(t, http.MethodGet, "/lb/backends", "", "")
	var list []control.BackendInfo
	if code != http.StatusOK || json.Unmarshal(body, &list) != nil {
		t.Fatalf("GET /lb/backends: %d %s", code, body)
	}
	return list
}

// health is GET /lb/health (?service=).
func (e *hcEnv) health(t *testing.T, service string) (int, control.HealthReport) {
	t.Helper()
	path := "/lb/health"
	if service != "" {
		path += "?service=" + service
	}
	code, body := e.admin.call(t, http.MethodGet, path, "", "")
	var rep control.HealthReport
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatalf("GET %s: %d %s: %v", path, code, body, err)
	}
	return code, rep
}

// waitHealth waits until GET /lb/health answers code with status; it returns
// when it first did.
func (e *hcEnv) waitHealth(t *testing.T, service string, code int, status string, timeout time.Duration) (time.Time, control.HealthReport) {
	t.Helper()
	var rep control.HealthReport
	at := waitFor(t, fmt.Sprintf("/lb/health?service=%s: %d %s", service, code, status), timeout, 25*time.Millisecond, func() bool {
		var c int
		c, rep = e.health(t, service)
		return c == code && rep.Status == status
	})
	return at, rep
}

// daemonStatus is `xlb status --json` with a daemon running.
type daemonStatus struct {
	Datapath *loader.Snapshot      `json:"datapath"`
	Health   *control.HealthReport `json:"health"`
	Backends []control.BackendInfo `json:"backends"`
}

// status runs `xlb status --json` in the LB's namespace (pins and admin API).
func (e *hcEnv) status(t *testing.T) (*daemonStatus, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ExecTimeout)
	defer cancel()
	out, err := output(exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+e.tp.Namespace("lb"),
		Binary(t, "xlb"), "status", "--bpffs", e.pinDir, "--json"))
	if err != nil {
		return nil, err
	}
	var ds daemonStatus
	if err := json.Unmarshal(out, &ds); err != nil {
		return nil, fmt.Errorf("xlb status --json: %w: %s", err, out)
	}
	if ds.Datapath == nil || ds.Health == nil || ds.Backends == nil {
		return nil, fmt.Errorf("xlb status --json lacks the datapath or the daemon's view: %s", out)
	}
	return &ds, nil
}

func (e *hcEnv) mustStatus(t *testing.T) *daemonStatus {
	t.Helper()
	ds, err := e.status(t)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// waitStatus polls `xlb status --json` until cond holds; it returns when the
// status that satisfied it had been read (an upper bound) and that status.
func (e *hcEnv) waitStatus(t *testing.T, what string, timeout time.Duration, cond func(*daemonStatus) bool) (time.Time, *daemonStatus) {
	t.Helper()
	var last *daemonStatus
	var lastErr error
	deadline := time.Now().Add(timeout)
	for {
		ds, err := e.status(t)
		at := time.Now()
		if err == nil {
			last = ds
			if cond(ds) {
				return at, ds
			}
		} else {
			lastErr = err
		}
		if at.After(deadline) {
			b, _ := json.MarshalIndent(last, "", " ")
			t.Fatalf("%s: not within %v (last error %v); last status:\n%s", what, timeout, lastErr, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dpBackend is the datapath's view of backend addr of service, or nil.
func (ds *daemonStatus) dpBackend(svc, addr string) *loader.BackendStatus {
	s := service(ds.Datapath, svc)
	if s == nil {
		return nil
	}
	a := netip.MustParseAddr(addr)
	for i := range s.Backends {
		if s.Backends[i].Address == a {
			return &s.Backends[i]
		}
	}
	return nil
}

// info is the daemon's view of backend id, or nil.
func (ds *daemonStatus) info(id string) *control.BackendInfo { return findInfo(ds.Backends, id) }

func findInfo(list []control.BackendInfo, id string) *control.BackendInfo {
	for i := range list {
		if list[i].ID == id {
			return &list[i]
		}
	}
	return nil
}

// slots is how many Maglev slots each backend address of service svc has.
func (ds *daemonStatus) slots(svc string) map[string]uint32 {
	m := map[string]uint32{}
	if s := service(ds.Datapath, svc); s != nil {
		for _, b := range s.Backends {
			m[b.Address.String()] = b.Slots
		}
	}
	return m
}

// outOfTables reports whether backend i is down and has no slot in every family.
func (e *hcEnv) outOfTables(ds *daemonStatus, i int, state string) bool {
	for _, f := range e.families {
		b := ds.dpBackend(f.service, f.backends[i-1])
		if b == nil || b.Slots != 0 || b.State != state {
			return false
		}
		if in := ds.info(f.id(i)); in == nil || in.State != state {
			return false
		}
	}
	return true
}

// inTables reports whether backend i is up with slots in every family.
func (e *hcEnv) inTables(ds *daemonStatus, i int) bool {
	for _, f := range e.families {
		b := ds.dpBackend(f.service, f.backends[i-1])
		if b == nil || b.Slots == 0 || b.State != "up" {
			return false
		}
		if in := ds.info(f.id(i)); in == nil || in.State != "up" {
			return false
		}
	}
	return true
}

// cli runs `xlb ARGS...` in the LB's namespace, with no XLB_ADMIN_TOKEN in its
// environment, and returns its exit code and output.
func (e *hcEnv) cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + e.tp.Namespace("lb"), Binary(t, "xlb")}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "XLB_ADMIN_TOKEN=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	code := 0
	switch {
	case ctx.Err() != nil:
		t.Fatalf("xlb %v did not exit within %v", args, cliTimeout)
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("xlb %v: %v", args, err)
	}
	return code, out.String(), errb.String()
}

// running reports whether cmd (from Start) has not exited yet.
func (tp *Topology) running(cmd *exec.Cmd) bool {
	p := tp.proc(cmd)
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// statusText is `xlb status` (text) in the LB's namespace.
func (e *hcEnv) statusText(t *testing.T) string {
	t.Helper()
	return e.tp.statusText(t, e.pinDir)
}

// backendRow is one row of the backend table `xlb status` and `xlb backend list`
// print: BACKEND STATE HEALTH ADMIN WEIGHT OPEN-FLOWS NEW-FLOWS PACKETS CHECKED-AT.
type backendRow struct {
	ID, State, Health, Admin string
	Weight, OpenFlows        int
	NewFlows, Packets        uint64
	CheckedAt                string // address, vip or -
}

// backendRows parses the backend table of `xlb status` or `xlb backend list`.
func backendRows(t *testing.T, out string) map[string]backendRow {
	t.Helper()
	rows := map[string]backendRow{}
	in := false
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == "BACKEND" {
			in = true
			continue
		}
		if !in {
			continue
		}
		if len(f) != 9 {
			break
		}
		r := backendRow{ID: f[0], State: f[1], Health: f[2], Admin: f[3], CheckedAt: f[8]}
		var err error
		nums := []any{&r.Weight, &r.OpenFlows, &r.NewFlows, &r.Packets}
		for i, p := range nums {
			switch p := p.(type) {
			case *int:
				*p, err = strconv.Atoi(f[4+i])
			case *uint64:
				*p, err = strconv.ParseUint(f[4+i], 10, 64)
			}
			if err != nil {
				t.Fatalf("backend table row %q: %v", line, err)
			}
		}
		rows[r.ID] = r
	}
	if len(rows) == 0 {
		t.Fatalf("no backend table in:\n%s", out)
	}
	return rows
}

// ---------------------------------------------------------------------------
// Metrics.

// scrape is GET /metrics, parsed as the Prometheus text format.
func (e *hcEnv) scrape(t *testing.T) metrics {
	t.Helper()
	return e.admin.scrape(t)
}

func (c *adminClient) scrape(t *testing.T) metrics {
	t.Helper()
	code, hdr, body := c.callHeader(t, http.MethodGet, "/metrics", "", "")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("GET /metrics: Content-Type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return metrics(fams)
}

// metrics are parsed metric families by name.
type metrics map[string]*dto.MetricFamily

// series lists the metrics of family name whose labels include every label of want.
func (m metrics) series(name string, want map[string]string) []*dto.Metric {
	fam := m[name]
	if fam == nil {
		return nil
	}
	var out []*dto.Metric
next:
	for _, mt := range fam.GetMetric() {
		have := map[string]string{}
		for _, lp := range mt.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		out = append(out, mt)
	}
	return out
}

// labelMap is the labels of a metric.
func labelMap(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

// value is the sum of the counter or gauge values of the matching series, and
// whether there was any.
func (m metrics) value(name string, want map[string]string) (float64, bool) {
	ss := m.series(name, want)
	sum := 0.0
	for _, s := range ss {
		switch {
		case s.Counter != nil:
			sum += s.GetCounter().GetValue()
		case s.Gauge != nil:
			sum += s.GetGauge().GetValue()
		case s.Untyped != nil:
			sum += s.GetUntyped().GetValue()
		}
	}
	return sum, len(ss) > 0
}

// histCount is the sample count of the matching histogram series.
func (m metrics) histCount(name string, want map[string]string) uint64 {
	var n uint64
	for _, s := range m.series(name, want) {
		n += s.GetHistogram().GetSampleCount()
	}
	return n
}

// labelValues is every value label takes in family name.
func (m metrics) labelValues(name, label string) []string {
	var out []string
	for _, s := range m.series(name, nil) {
		for _, lp := range s.GetLabel() {
			if lp.GetName() == label {
				out = append(out, lp.GetValue())
			}
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Logs.

// logEvent is one line of xlb's text log.
type logEvent struct {
	Time  time.Time
	Level string
	Msg   string
	Attrs map[string]string
}

// logEvents are the lines of xlb's log with message msg whose attributes
// include every one of match.
func (e *hcEnv) logEvents(msg string, match map[string]string) []logEvent {
	_, stderr := e.tp.Output(e.xlb)
	return parseLogEvents(stderr, msg, match)
}

func parseLogEvents(log, msg string, match map[string]string) []logEvent {
	var out []logEvent
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		kv := parseLogfmt(sc.Text())
		if kv["msg"] != msg {
			continue
		}
		for k, v := range match {
			if kv[k] != v {
				continue next
			}
		}
		ts, err := time.Parse(time.RFC3339Nano, kv["time"])
		if err != nil {
			continue
		}
		out = append(out, logEvent{Time: ts, Level: kv["level"], Msg: kv["msg"], Attrs: kv})
	}
	return out
}

// parseLogfmt splits a log/slog text line into its keys and (unquoted) values.
func parseLogfmt(line string) map[string]string {
	m := map[string]string{}
	for {
		line = strings.TrimLeft(line, " ")
		eq := strings.IndexByte(line, '=')
		if eq <= 0 {
			return m
		}
		key := line[:eq]
		line = line[eq+1:]
		if strings.HasPrefix(line, `"`) {
			i := 1
			for i < len(line) && line[i] != '"' {
				if line[i] == '\\' {
					i++
				}
				i++
			}
			if i >= len(line) {
				return m
			}
			v, err := strconv.Unquote(line[:i+1])
			if err != nil {
				v = line[1:i]
			}
			m[key] = v
			line = line[i+1:]
			continue
		}
		sp := strings.IndexByte(line, ' ')
		if sp < 0 {
			sp = len(line)
		}
		m[key] = line[:sp]
		line = line[sp:]
	}
}

// waitLogEvent waits until xlb logged msg with match at or after since (the
// log has millisecond resolution) and returns the first such line.
func (e *hcEnv) waitLogEvent(t *testing.T, msg string, match map[string]string, since time.Time, timeout time.Duration) logEvent {
	t.Helper()
	var ev logEvent
	waitFor(t, fmt.Sprintf("xlb log %q %v", msg, match), timeout, 20*time.Millisecond, func() bool {
		for _, x := range e.logEvents(msg, match) {
			if !x.Time.Before(since.Truncate(time.Millisecond)) {
				ev = x
				return true
			}
		}
		return false
	})
	return ev
}

// ---------------------------------------------------------------------------

// waitFor polls cond every poll until it holds and returns when it first did;
// it fails the test after timeout.
func waitFor(t *testing.T, what string, timeout, poll time.Duration, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(poll)
	}
}

// ms formats a duration in milliseconds for reports.
func ms(d time.Duration) string { return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond)) }

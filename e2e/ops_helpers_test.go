package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/internal/testenv"
)

// Ports of the operator tests: one VIP, an L4 service and an L7 one, as in
// TestHybridL4L7.
const (
	opsL4Port = 8080
	opsL7Port = 80
)

// opsEnv is a topology with two backends running xlb with an L4 and an L7
// service, fast health checks, the admin API (no token) and the access log
// in a file, and the admin listener forwarded to the host's loopback.
type opsEnv struct {
	tp        *Topology
	pinDir    string
	xlb       *exec.Cmd
	accessLog string
	adminURL  string // http://127.0.0.1:PORT on the host, forwarded into the LB's namespace
	servers   map[string]*exec.Cmd
	cfg       string
	opts      opsOptions
}

type opsOptions struct {
	wrap  []string // runs xlb: setpriv ... (TestDeployCapabilities)
	extra []string // more arguments of xlb run
}

type opsOption func(*opsOptions)

func withWrapper(wrap ...string) opsOption { return func(o *opsOptions) { o.wrap = wrap } }
func withRunArgs(args ...string) opsOption { return func(o *opsOptions) { o.extra = args } }

// startXLB starts xlb with the env's wrapper and arguments and waits until
// it runs with every backend up.
func (e *opsEnv) startXLB(t *testing.T) *exec.Cmd {
	t.Helper()
	if e.opts.wrap == nil {
		return e.tp.StartXLB(t, e.cfg, e.pinDir, "generic", e.opts.extra...)
	}
	args := append(slices.Clone(e.opts.wrap), Binary(t, "xlb"), "run", "-c", e.cfg)
	cmd := e.tp.StartNet(t, "lb", append(args, e.opts.extra...)...)
	e.tp.WaitStderr(t, cmd, `msg="xlb running"`, 20*time.Second)
	e.tp.waitBackendsUp(t, e.pinDir, 10*time.Second)
	return cmd
}

// newOpsEnv starts it all; xlb runs as `WRAP... xlb run -c CONFIG
// EXTRA...` with wrap and extra from opts (none: as the other tests run it).
func newOpsEnv(t *testing.T, prefix string, opts ...opsOption) *opsEnv {
	t.Helper()
	var o opsOptions
	for _, f := range opts {
		f(&o)
	}
	tp := NewTopology(t, prefix+randomPrefix()[len(prefix):], WithBackends(2), WithClients(8))
	e := &opsEnv{tp: tp, pinDir: tp.PinDir(t), servers: map[string]*exec.Cmd{}}
	t.Cleanup(func() {
		if t.Failed() {
			tp.logDiagnostics(t)
		}
	})
	var backends []string
	for i, h := range tp.BackendHosts() {
		backends = append(backends, tp.BackendAddr4(i+1))
		e.servers[h] = tp.serveHybrid(t, i+1, opsL4Port, opsL7Port)
	}
	dir := t.TempDir()
	e.accessLog = filepath.Join(dir, "access.log")
	var b strings.Builder
	fmt.Fprintf(&b, "[daemon]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\nbpffs_dir = %q\nshutdown_grace = \"5s\"\n", e.pinDir)
	fmt.Fprintf(&b, "access_log = %q\naccess_log_format = \"json\"\n", e.accessLog)
	b.WriteString("\n[health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n")
	fmt.Fprintf(&b, "\n[admin]\nlisten = %q\ntoken_env = %q\n", adminAddr, noTokenEnv)
	fmt.Fprintf(&b, "\n[[service]]\nname = \"ops-l4\"\nvip = %q\nport = %d\nmode = \"l4\"\n", VIP4, opsL4Port)
	for _, a := range backends {
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n", a)
	}
	fmt.Fprintf(&b, "\n[[service]]\nname = \"ops-l7\"\nvip = %q\nport = %d\nmode = \"l7\"\nadd_vip = true\n", VIP4, opsL7Port)
	for _, a := range backends {
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n  port = %d\n", a, opsL7Port)
	}
	cfg := filepath.Join(dir, "xlb.toml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	e.cfg, e.opts = cfg, o
	e.xlb = e.startXLB(t)
	e.adminURL = "http://" + forwardToNetns(t, tp.Namespace("lb"), adminAddr)
	return e
}

// traffic sends n L4 connections and n L7 requests from the client.
func (e *opsEnv) traffic(t *testing.T, n int, ports string) {
	t.Helper()
	sum := e.tp.Load(t, "cl", "--target", fmt.Sprintf("http://%s:%d/", VIP4, opsL4Port), "--sources", e.tp.ClientSources4(),
		"--conns", strconv.Itoa(n), "--parallel", "4", "--timeout", "3s", "--duration-max", "20s", "--source-ports", ports)
	if sum.OK != n {
		t.Fatalf("L4 load: ok=%d failed=%d %v", sum.OK, sum.Failed, sum.Errors)
	}
	c := nsClient(e.tp.Namespace("cl"), 10*time.Second)
	for range n {
		if r := do(t, c, "GET", fmt.Sprintf("http://%s:%d/ops", VIP4, opsL7Port)); r.Code != 200 {
			t.Fatalf("L7 request: %d", r.Code)
		}
	}
}

// stopServer stops backend host's xlbtest (its health endpoints with it).
func (e *opsEnv) stopServer(t *testing.T, host string) {
	t.Helper()
	if err := e.tp.Stop(e.servers[host]); err != nil {
		t.Errorf("%s server after SIGTERM: %v, want exit 0", host, err)
	}
}

// serveHybrid starts backend i's (1-based) xlbtest server for an L4 and an
// L7 service on VIP4: on the VIP at l4Port (DSR keeps the VIP), on its own
// address at l4Port (the L4 health checks) and at l7Port (the proxy
// connects to the backend itself).
func (tp *Topology) serveHybrid(t *testing.T, i, l4Port, l7Port int) *exec.Cmd {
	t.Helper()
	h, own := "b"+strconv.Itoa(i), tp.BackendAddr4(i)
	listen := []string{
		netip.AddrPortFrom(netip.MustParseAddr(VIP4), uint16(l4Port)).String(),
		own + ":" + strconv.Itoa(l4Port),
		own + ":" + strconv.Itoa(l7Port),
	}
	return tp.StartReady(t, h, "ready ", 10*time.Second,
		Binary(t, "xlbtest"), "serve", "--name", h, "--listen", strings.Join(listen, ","))
}

// forwardToNetns listens on a free port of the host's 127.0.0.1 and
// forwards each connection to addr in network namespace ns, until the test
// ends; it returns the host's address. A browser on the host reaches a
// daemon inside a namespace through it.
func forwardToNetns(t *testing.T, ns, addr string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	track := func(c net.Conn, on bool) bool {
		mu.Lock()
		defer mu.Unlock()
		if on && conns == nil {
			return false // closed
		}
		if on {
			conns[c] = true
		} else {
			delete(conns, c)
		}
		return true
	}
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				out, err := dialInNetns(ctx, ns, "tcp", addr)
				cancel()
				if err != nil {
					in.Close()
					return
				}
				if !track(in, true) || !track(out, true) {
					in.Close()
					out.Close()
					return
				}
				defer func() { track(in, false); track(out, false) }()
				done := make(chan struct{})
				go func() { io.Copy(out, in); out.Close(); close(done) }()
				io.Copy(in, out)
				in.Close()
				<-done
			})
		}
	})
	return l.Addr().String()
}

// chromiumPath is Debian's chromium. Without it the browser tests skip,
// except in CI, where they fail: CI installs it (make deps).
const chromiumPath = "/usr/bin/chromium"

func requireChromium(t *testing.T) {
	t.Helper()
	testenv.RequireTool(t, chromiumPath, "chromium")
}

// browserDirArg is the --user-data-dir argument that browser process pid
// runs with: every process of that browser has it.
func browserDirArg(pid int) (string, error) {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "", err
	}
	for arg := range bytes.SplitSeq(cmdline, []byte{0}) {
		if bytes.HasPrefix(arg, []byte("--user-data-dir=")) {
			return string(arg), nil
		}
	}
	return "", errors.New("the browser runs without --user-data-dir")
}

// killProcessesWith kills (by PID, SIGKILL) the processes whose command
// line has the argument arg, and says how many there were.
func killProcessesWith(arg string) int {
	n := 0
	want := append([]byte(arg), 0)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == os.Getpid() {
			continue
		}
		cl, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Contains(cl, want) {
			syscall.Kill(p, syscall.SIGKILL)
			n++
		}
	}
	return n
}

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// modeCase is one forwarding mode of TestModesOpenConnection: a service of
// that name on VIP4, with two backends.
type modeCase struct {
	mode      string   // dsr, ipip, nat: also the service's name
	port      int      // service port
	bport     int      // nat: the backends' port
	checkPort int      // where its backends answer its health checks
	hosts     []string // backend hosts
	addrs     []string // their addresses, in the same order
	src       string   // client address of its held connections
	// restart and drain: whether the phase runs for this mode; dsr's are
	// TestL4's restart and TestAdminAPI's drain.
	restart, drain bool
}

func (m modeCase) url(path string) string { return fmt.Sprintf("http://%s:%d%s", VIP4, m.port, path) }

// addr is backend host's address.
func (m modeCase) addr(host string) string {
	for i, h := range m.hosts {
		if h == host {
			return m.addrs[i]
		}
	}
	return ""
}

// id is backend host's admin API id.
func (m modeCase) id(host string) string { return m.mode + "@" + m.addr(host) }

// modesSources are the client addresses of the loads that check where new
// connections go: enough that each backend gets some.
const modesSources = "range:198.18.0.100-198.18.0.115"

// TestModesOpenConnection holds connections open through each forwarding
// mode (dsr to backends on the LB's network, ipip and nat to backends
// behind a router; ipip's run xlb decap) while their backends change:
//   - drain (admin API; ipip, nat): the open connection completes on its
//     backend, new connections all go to the other one;
//   - a backend failing its health check (dsr, ipip, nat; the check has a
//     port of its own, so only the check fails): new connections all go to
//     the other backend, and the open one is reset. That is the documented
//     behaviour of a down backend ("its connection-table entries are
//     ignored, so its flows move to another backend"): the client's next
//     packet goes to the other backend, which knows no such connection and
//     answers with a reset. With nat, the flow gets a new port toward the
//     other backend and that backend's reset is translated back to the
//     client like any answer;
//   - a restart with --keep-datapath (ipip, nat): the open connection flows
//     on with no daemon and completes on its backend after the next daemon
//     adopted the datapath and swept it (nat's ports included).
func TestModesOpenConnection(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	tp := NewTopology(t, "xmd"+randomPrefix()[3:], WithBackends(2), WithRouted(2), WithClients(16))
	e := &hcEnv{owner: t, tp: tp, pinDir: tp.PinDir(t), admin: newAdminClient(tp.Namespace("lb"))}
	t.Cleanup(func() {
		if t.Failed() {
			tp.logDiagnostics(t)
			tp.logNATDiagnostics(t, e.pinDir)
		}
	})
	modes := []modeCase{
		{mode: "dsr", port: 80, checkPort: 7080, hosts: []string{"b1", "b2"}, addrs: []string{tp.BackendAddr4(1), tp.BackendAddr4(2)}, src: "198.18.0.101"},
		{mode: "ipip", port: 81, checkPort: 7081, hosts: []string{"r1", "r2"}, addrs: []string{tp.RoutedAddr4(1), tp.RoutedAddr4(2)}, src: "198.18.0.102",
			restart: true, drain: true},
		{mode: "nat", port: 82, bport: 8082, checkPort: 7082, hosts: []string{"r1", "r2"}, addrs: []string{tp.RoutedAddr4(1), tp.RoutedAddr4(2)}, src: "198.18.0.103",
			restart: true, drain: true},
	}

	tp.natPrepare(t, "r1", "r2")
	xlbtest := Binary(t, "xlbtest")
	for i, h := range []string{"r1", "r2"} {
		decap := tp.Start(t, h, Binary(t, "xlb"), "decap", "--interface", "eth0", "--vip", VIP4)
		tp.WaitStderr(t, decap, `msg="xlb decap running"`, 10*time.Second)
		tp.StartReady(t, h, "ready ", 5*time.Second, xlbtest, "serve", "--name", h, "--listen",
			fmt.Sprintf("%s:%d,%s:%d", VIP4, modes[1].port, tp.RoutedAddr4(i+1), modes[2].bport))
	}
	for _, h := range []string{"b1", "b2"} {
		tp.StartReady(t, h, "ready ", 5*time.Second, xlbtest, "serve", "--name", h, "--listen", fmt.Sprintf("%s:%d", VIP4, modes[0].port))
	}
	// Each service's checks go to a server of their own, which the test stops.
	checks := map[string]*exec.Cmd{} // mode/host -> its check server
	startCheck := func(t *testing.T, m modeCase, host string) {
		args := []string{xlbtest, "serve", "--name", host, "--listen", fmt.Sprintf("%s:%d", m.addr(host), m.checkPort)}
		cmd := tp.startOwnedCmd(e.owner, t, host, exec.Command("ip", append([]string{"netns", "exec", tp.Namespace(host)}, args...)...), args)
		tp.WaitOutput(t, cmd, "ready ", 5*time.Second)
		checks[m.mode+"/"+host] = cmd
	}
	for _, m := range modes {
		for _, h := range m.hosts {
			startCheck(t, m, h)
		}
	}

	dir := t.TempDir()
	var tokenFile string
	e.token, tokenFile = writeToken(t, dir)
	e.config = writeModesConfig(t, dir, e.pinDir, tokenFile, modes)
	e.xlb = tp.StartXLB(t, e.config, e.pinDir, "generic", "--keep-datapath")

	// spread checks that new connections from every source succeed, on the
	// backends of hosts only.
	spread := func(t *testing.T, m modeCase, hosts ...string) {
		t.Helper()
		sum := tp.Load(t, "cl", "--target", m.url("/"), "--sources", modesSources, "--conns", "16",
			"--parallel", "4", "--timeout", "3s", "--duration-max", "20s")
		n := 0
		for _, h := range hosts {
			n += sum.ByBackend[h]
			if len(hosts) > 1 && sum.ByBackend[h] == 0 {
				t.Errorf("%s: no connection reached %s: by backend %v", m.mode, h, sum.ByBackend)
			}
		}
		if sum.OK != 16 || n != 16 {
			t.Errorf("%s: %d of 16 connections succeeded, by backend %v (errors %v), want all on %v", m.mode, sum.OK, sum.ByBackend, sum.Errors, hosts)
		}
	}
	// waitBackend waits until host's backend of m is in state, with Maglev
	// slots (up) or without.
	waitBackend := func(t *testing.T, m modeCase, host, state string, timeout time.Duration) time.Time {
		t.Helper()
		at, _ := e.waitStatus(t, fmt.Sprintf("%s %s %s", m.mode, host, state), timeout, func(ds *daemonStatus) bool {
			b := ds.dpBackend(m.mode, m.addr(host))
			return b != nil && b.State == state && (b.Slots > 0) == (state == "up")
		})
		return at
	}
	other := func(m modeCase, host string) string {
		if host == m.hosts[0] {
			return m.hosts[1]
		}
		return m.hosts[0]
	}

	ok := t.Run("every backend gets connections", func(t *testing.T) {
		for _, m := range modes {
			spread(t, m, m.hosts...)
		}
	})
	if !ok {
		t.FailNow()
	}

	ok = t.Run("restart with --keep-datapath", func(t *testing.T) {
		var holds []*heldConn
		for _, m := range modes {
			if m.restart {
				holds = append(holds, &heldConn{service: m.mode, url: m.url("/hold"), src: m.src})
			}
		}
		// Long enough for the next daemon to sweep the flows while they run.
		secs := int((natSweep + 8*time.Second) / time.Second)
		xlb2 := tp.restartUnderHolds(t, e.xlb, e.config, e.pinDir, "generic", secs, holds)
		for _, m := range modes {
			spread(t, m, m.hosts...)
		}
		tp.requireCleanStop(t, xlb2, e.pinDir)
	})
	if !ok {
		t.FailNow()
	}
	// A daemon of this test's own: the restarted one ended with its subtest.
	e.xlb = tp.StartXLB(t, e.config, e.pinDir, "generic")

	t.Run("drain", func(t *testing.T) {
		for _, m := range modes {
			if !m.drain {
				continue
			}
			t.Run(m.mode, func(t *testing.T) {
				const secs = 4
				h := &heldConn{service: m.mode, url: m.url("/hold"), src: m.src}
				tp.startHolds(t, secs, []*heldConn{h})
				x := h.want
				code, body := e.admin.call(t, http.MethodPut, "/lb/admin/backends/"+m.id(x)+"/drain", bearer(e.token), "")
				if code != http.StatusOK {
					t.Fatalf("drain %s: %d %s", m.id(x), code, body)
				}
				waitBackend(t, m, x, "draining", 3*time.Second)
				spread(t, m, other(m, x))
				err := tp.Wait(h.cmd, secs*time.Second+10*time.Second)
				out, stderr := tp.Output(h.cmd)
				if want := fmt.Sprintf(" done %d backend=%s\n", secs*5, x); err != nil || !strings.Contains(out, want) {
					t.Errorf("the connection held through the drain of %s: %v, want exit 0 and %q\n%s%s", x, err, want, out, stderr)
				}
				code, body = e.admin.call(t, http.MethodPut, "/lb/admin/backends/"+m.id(x)+"/ready", bearer(e.token), "")
				if code != http.StatusOK {
					t.Fatalf("ready %s: %d %s", m.id(x), code, body)
				}
				waitBackend(t, m, x, "up", 3*time.Second)
			})
		}
	})

	t.Run("backend fails its health check", func(t *testing.T) {
		for _, m := range modes {
			t.Run(m.mode, func(t *testing.T) {
				const secs = 30 // ended by the reset long before
				h := &heldConn{service: m.mode, url: m.url("/hold"), src: m.src}
				tp.startHolds(t, secs, []*heldConn{h})
				x := h.want
				stopped := time.Now()
				if err := tp.Stop(checks[m.mode+"/"+x]); err != nil {
					t.Errorf("%s's check server after SIGTERM: %v", x, err)
				}
				down := waitBackend(t, m, x, "down", downBound+3*time.Second)
				t.Logf("check server stopped -> %s down: %v", x, ms(down.Sub(stopped)))

				err := tp.Wait(h.cmd, 10*time.Second)
				out, stderr := tp.Output(h.cmd)
				ended := time.Now()
				if err == nil || !strings.Contains(stderr, "connection reset") {
					t.Errorf("the connection held to %s as it went down: %v, %q; want it reset (the other backend knows no such connection)\n%s", x, err, stderr, out)
				} else {
					t.Logf("the connection held to %s: %d ticks, then %s (%v after the swap was seen)",
						x, strings.Count(out, " tick "), strings.TrimSpace(stderr), ms(ended.Sub(down)))
				}
				spread(t, m, other(m, x))

				startCheck(t, m, x)
				waitBackend(t, m, x, "up", upBound+3*time.Second)
			})
		}
	})
	// Not requireCleanStop: "marked UNHEALTHY" is logged as an error.
	if err := tp.Stop(e.xlb); err != nil {
		t.Errorf("xlb after SIGTERM: %v, want exit 0", err)
	}
}

// writeModesConfig: a service per mode on VIP4, HTTP checks on its own
// port, the admin API with a token.
func writeModesConfig(t *testing.T, dir, pinDir, tokenFile string, modes []modeCase) string {
	t.Helper()
	var b strings.Builder
	writeHCHead(&b, pinDir)
	fmt.Fprintf(&b, "\n[admin]\nlisten = %q\ntoken_file = %q\n", adminAddr, tokenFile)
	for _, m := range modes {
		fmt.Fprintf(&b, "\n[[service]]\nname = %q\nvip = %q\nport = %d\nforwarding = %q\n  [service.health_check]\n  port = %d\n",
			m.mode, VIP4, m.port, m.mode, m.checkPort)
		for _, a := range m.addrs {
			fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n", a)
			if m.bport != 0 {
				fmt.Fprintf(&b, "  port = %d\n", m.bport)
			}
		}
	}
	path := filepath.Join(dir, "xlb.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

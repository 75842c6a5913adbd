package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHealthCheckViaVIP runs xlb with an L4 DSR service per address family
// and two backends serving HTTP on every address: b1 holds the VIPs on its
// lo, b2 does not, so b2 drops every packet for them. A plain check, sent to
// each backend's own address, marks both up. With check_via_vip the check
// goes to the VIP with the backend's MAC, as the datapath sends packets: b2
// is marked down and gets no traffic, and once it holds the VIPs it comes up
// and gets its share. xlb's policy rules and routes exist only while it
// checks through a VIP: a reload that turns the key off removes them, so
// does exiting, and a start after a kill removes the killed daemon's.
func TestHealthCheckViaVIP(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	tp := NewTopology(t, "xcv"+randomPrefix()[3:], WithBackends(2), WithClients(l4Clients))
	e := &hcEnv{owner: t, tp: tp, servers: map[int]*exec.Cmd{}, nextPort: 10000,
		families: []hcFamily{ipv4Family(tp, "web4"), ipv6Family(tp, "web6")},
		admin:    newAdminClient(tp.Namespace("lb"))}
	e.pinDir = tp.PinDir(t)
	t.Cleanup(func() {
		if t.Failed() {
			tp.logDiagnostics(t)
		}
	})
	// Registered before xlb starts, so it runs once xlb has been stopped,
	// whether the test passed or failed.
	t.Cleanup(func() { requireNoCheckRoutes(t, tp, "after xlb stopped") })

	setVIPs(t, tp, "b2", "del")
	for i := 1; i <= tp.Backends; i++ {
		e.startServerOn(t, i, false, ":"+strconv.Itoa(hcPort)) // every address: the VIPs too, once there
	}
	e.config = writeHCConfig(t, t.TempDir(), e.pinDir, "", e.families)
	base, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	e.xlb = tp.StartXLB(t, e.config, e.pinDir, "generic")

	ok := t.Run("plain check marks both up", func(t *testing.T) {
		e.waitHealth(t, "", http.StatusOK, "healthy", 5*time.Second)
		time.Sleep(downBound) // long enough for b2 to fail, were it checked at the VIP
		ds := e.mustStatus(t)
		for _, f := range e.families {
			for i := 1; i <= 2; i++ {
				want := fmt.Sprintf("http %s/health", f.target(i))
				if in := ds.info(f.id(i)); in.Health != "healthy" || in.CheckVia != "address" || in.Check != want {
					t.Errorf("%s: health %s, checked at %q (%q), want healthy at the address (%q)", f.id(i), in.Health, in.CheckVia, in.Check, want)
				}
			}
		}
		requireNoCheckRoutes(t, tp, "with plain checks")
	})
	if !ok {
		t.FailNow()
	}

	ok = t.Run("check through the vip marks b2 down", func(t *testing.T) {
		at := e.reloadVia(t, string(base), true)
		_, ds := e.waitStatus(t, "b2 out of the tables", downBound+3*time.Second,
			func(ds *daemonStatus) bool { return e.outOfTables(ds, 2, "down") && e.inTables(ds, 1) })
		for _, f := range e.families {
			for i, want := range map[int]string{1: "healthy", 2: "unhealthy"} {
				check := fmt.Sprintf("http [%s]:%d/health via %s", f.vip, hcPort, f.backends[i-1])
				if f.name == "ipv4" {
					check = fmt.Sprintf("http %s:%d/health via %s", f.vip, hcPort, f.backends[i-1])
				}
				if in := ds.info(f.id(i)); in.Health != want || in.CheckVia != "vip" || in.Check != check {
					t.Errorf("%s: health %s, checked at %q (%q), want %s at the vip (%q)", f.id(i), in.Health, in.CheckVia, in.Check, want, check)
				}
			}
			ev := e.waitLogEvent(t, "marked UNHEALTHY", map[string]string{"backend": f.backends[1], "service": f.service}, at, time.Second)
			// IPv4 drops the SYN; IPv6 may answer that it has no route.
			if r := ev.Attrs["reason"]; r != "timeout" && r != "unreachable" || !strings.HasSuffix(ev.Attrs["check"], " via "+f.backends[1]) {
				t.Errorf("%s: marked UNHEALTHY with %v, want a timeout (or unreachable) of the check through the vip", f.name, ev.Attrs)
			} else {
				t.Logf("%s: b2 marked UNHEALTHY %v after the reload: %s, reason %s", f.name, ms(ev.Time.Sub(at)), ev.Attrs["check"], ev.Attrs["reason"])
			}
		}
		for id, r := range backendRows(t, e.statusText(t)) {
			if r.CheckedAt != "vip" {
				t.Errorf("xlb status: %s checked at %q, want vip", id, r.CheckedAt)
			}
		}
		requireCheckRoutes(t, tp)
		t.Logf("check routes in the LB's namespace:\n%s", strings.Join(checkRoutes(t, tp), "\n"))
		// Every client lands on b1: b2 gets nothing.
		for _, f := range e.families {
			before := ds.dpBackend(f.service, f.backends[1]).NewFlows
			if sum := e.load(t, f); sum.OK != l4Clients || sum.ByBackend["b1"] != l4Clients {
				t.Errorf("%s: %+v, want all %d connections answered by b1", f.name, sum, l4Clients)
			}
			if after := e.mustStatus(t).dpBackend(f.service, f.backends[1]).NewFlows; after != before {
				t.Errorf("%s: b2 got %d new flows while down", f.name, after-before)
			}
		}
	})
	if !ok {
		t.FailNow()
	}

	ok = t.Run("b2 with the vips comes up", func(t *testing.T) {
		at := time.Now()
		setVIPs(t, tp, "b2", "add")
		e.waitStatus(t, "b2 back in the tables", upBound+3*time.Second,
			func(ds *daemonStatus) bool { return e.inTables(ds, 2) })
		for _, f := range e.families {
			e.waitLogEvent(t, "marked HEALTHY", map[string]string{"backend": f.backends[1], "service": f.service}, at, time.Second)
			want := map[string]int{}
			for _, h := range maglevHosts(t, f, 1, 2) {
				want[h]++
			}
			if sum := e.load(t, f); sum.OK != l4Clients || sum.ByBackend["b1"] != want["b1"] || sum.ByBackend["b2"] != want["b2"] {
				t.Errorf("%s: %+v, want every connection answered, by backend %v", f.name, sum, want)
			}
		}
	})
	if !ok {
		t.FailNow()
	}

	// A killed daemon's routes go at the next start (at the top level: the
	// new xlb must outlive this phase).
	if err := e.xlb.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	tp.Wait(e.xlb, 5*time.Second)
	left := checkRoutes(t, tp)
	if len(left) == 0 {
		t.Fatalf("no check routes left by the killed daemon")
	}
	e.xlb = tp.StartXLB(t, e.config, e.pinDir, "generic")
	ev := e.waitLogEvent(t, "removed check routes left by an earlier run", nil, time.Time{}, time.Second)
	if ev.Attrs["rules_and_routes"] != strconv.Itoa(len(left)) {
		t.Errorf("removed %s leftovers, want %d", ev.Attrs["rules_and_routes"], len(left))
	}
	waitFor(t, "check routes back", 5*time.Second, 50*time.Millisecond, func() bool {
		return slices.Equal(checkRoutes(t, tp), left)
	})
	e.waitHealth(t, "", http.StatusOK, "healthy", 5*time.Second)

	// A reload turning the key off removes the routes, one turning it on
	// puts them back.
	e.reloadVia(t, string(base), false)
	requireNoCheckRoutes(t, tp, "after a reload turning check_via_vip off")
	e.reloadVia(t, string(base), true)
	requireCheckRoutes(t, tp)

	tp.requireCleanStop(t, e.xlb, e.pinDir)
	requireNoCheckRoutes(t, tp, "after SIGTERM")
}

// reloadVia writes base with check_via_vip = via as the config, sends SIGHUP
// and waits until xlb has applied it; it returns when it was sent.
func (e *hcEnv) reloadVia(t *testing.T, base string, via bool) time.Time {
	t.Helper()
	cfg := strings.Replace(base, "[health_check]\n", fmt.Sprintf("[health_check]\ncheck_via_vip = %v\n", via), 1)
	if err := os.WriteFile(e.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if err := e.xlb.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	e.waitLogEvent(t, "config reloaded", nil, at, 5*time.Second)
	return at
}

// setVIPs adds or deletes (op) the VIPs on host's lo.
func setVIPs(t *testing.T, tp *Topology, host, op string) {
	t.Helper()
	for _, args := range [][]string{
		{"addr", op, VIP4 + "/32", "dev", "lo"},
		{"-6", "addr", op, VIP6 + "/128", "dev", "lo", "nodad"},
	} {
		if op == "del" && args[len(args)-1] == "nodad" {
			args = args[:len(args)-1]
		}
		if _, err := output(exec.Command("ip", append([]string{"-n", tp.Namespace(host)}, args...)...)); err != nil {
			t.Fatal(err)
		}
	}
}

// checkRoutes lists xlb's policy rules and routes (protocol 177) in the LB's
// namespace, as ip prints them, sorted.
func checkRoutes(t *testing.T, tp *Topology) []string {
	t.Helper()
	ns := tp.Namespace("lb")
	var out []string
	for _, fam := range []string{"-4", "-6"} {
		rules, err := output(exec.Command("ip", "-n", ns, fam, "rule", "show"))
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(rules)) {
			if strings.Contains(line, "proto 177") {
				out = append(out, "rule "+fam+" "+strings.TrimSpace(line))
			}
		}
		routes, err := output(exec.Command("ip", "-n", ns, fam, "route", "show", "table", "all", "proto", "177"))
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(routes)) {
			out = append(out, "route "+strings.TrimSpace(line))
		}
	}
	slices.Sort(out)
	return out
}

// requireCheckRoutes checks that the LB holds a rule, a route through the
// backend and an unreachable default for each backend of each family.
func requireCheckRoutes(t *testing.T, tp *Topology) {
	t.Helper()
	got := checkRoutes(t, tp)
	joined := strings.Join(got, "\n")
	for i := 1; i <= tp.Backends; i++ {
		for _, vb := range [][2]string{{VIP4, tp.BackendAddr4(i)}, {VIP6, tp.BackendAddr6(i)}} {
			if !strings.Contains(joined, "route "+vb[0]+" via "+vb[1]+" dev eth0 table ") {
				t.Errorf("no route to %s via %s in:\n%s", vb[0], vb[1], joined)
			}
		}
	}
	// Per path: a rule, the route through the backend, the unreachable default.
	if want := 3 * 2 * tp.Backends; len(got) != want {
		t.Errorf("%d check rules and routes, want %d:\n%s", len(got), want, joined)
	}
}

// requireNoCheckRoutes fails the test if xlb's rules or routes are in the
// LB's namespace, and removes them (the namespace goes at the end anyway).
func requireNoCheckRoutes(t *testing.T, tp *Topology, when string) {
	t.Helper()
	left := checkRoutes(t, tp)
	if len(left) == 0 {
		return
	}
	t.Errorf("check rules and routes %s:\n%s", when, strings.Join(left, "\n"))
	ns := tp.Namespace("lb")
	for _, l := range left {
		f := strings.Fields(l)
		switch {
		case f[0] == "rule": // rule -4 32000: from all fwmark ...
			exec.Command("ip", "-n", ns, f[1], "rule", "del", "pref", strings.TrimSuffix(f[2], ":"), "proto", "177").Run()
		case slices.Contains(f, "table"):
			table := f[slices.Index(f, "table")+1]
			exec.Command("ip", "-n", ns, "-4", "route", "flush", "table", table).Run()
			exec.Command("ip", "-n", ns, "-6", "route", "flush", "table", table).Run()
		}
	}
}

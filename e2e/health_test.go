package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/control"
)

// window is a stretch of a test's timeline in which some connections may fail:
// those from sources whose backend (by the full table) is in hosts (all sources
// when hosts is empty) that start in [from, to].
type window struct {
	name     string
	from, to time.Time
	hosts    []string
}

func (w window) allows(r loadRecord, full map[string]string) bool {
	if r.Start.Before(w.from) || r.Start.After(w.to) {
		return false
	}
	return len(w.hosts) == 0 || slices.Contains(w.hosts, full[r.Source])
}

// between is the records that started in (from, to).
func between(recs []loadRecord, from, to time.Time) []loadRecord {
	var out []loadRecord
	for _, r := range recs {
		if r.Start.After(from) && r.Start.Before(to) {
			out = append(out, r)
		}
	}
	return out
}

// familyTimes are the moments of one family's timeline that the analysis needs.
type familyTimes struct {
	b2Down, b2Up       time.Time // table swaps (xlb's log)
	b3Down, b3Up       time.Time
	allDown, recovered time.Time // last backend out, first back in
}

// TestHealthChecks runs continuous new connections from 155 client addresses
// over IPv4 and IPv6 while backends fail and come back: a stopped server, one
// that hangs, and all of them. It checks how fast xlb swaps the Maglev tables
// (status and log), that only the clients of a failed backend ever see a
// failure and only until the swap, where the others go, and that everything
// recovers by itself.
func TestHealthChecks(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	start := time.Now()
	e := newHCEnv(t, "xhc", true, func(tp *Topology) []hcFamily {
		return []hcFamily{ipv4Family(tp, "web4"), ipv6Family(tp, "web6")}
	})
	t.Logf("setup: %v", time.Since(start).Round(time.Millisecond))

	var loads []*streamLoad
	for _, f := range e.families {
		loads = append(loads, e.startStream(t, f))
	}
	for _, l := range loads {
		l.waitOK(t, 100, 10*time.Second)
	}
	times := map[string]*familyTimes{}
	for _, f := range e.families {
		times[f.name] = &familyTimes{}
	}
	var windows []window

	// Backend 2's server stops: out of the tables, its clients re-spread, and
	// nothing reaches it any more.
	var stop2, back2 time.Time
	ok := t.Run("backend down", func(t *testing.T) {
		stop2 = time.Now()
		e.stopServer(t, 2)
		seen, ds := e.waitStatus(t, "b2 out of the tables", downBound+3*time.Second,
			func(ds *daemonStatus) bool { return e.outOfTables(ds, 2, "down") })
		if d := seen.Sub(stop2); d > downBound {
			t.Errorf("b2 left the tables %v after its server stopped (seen in xlb status), want within %v", d, downBound)
		} else {
			t.Logf("stop -> b2 out of the tables, seen in xlb status: %v (bound %v)", ms(d), downBound)
		}
		for _, f := range e.families {
			ev := e.checkTransition(t, f, 2, "unhealthy", stop2, downBound, true)
			times[f.name].b2Down = ev.Time
			fail := e.waitLogEvent(t, "marked UNHEALTHY", map[string]string{"backend": f.backends[1], "service": f.service}, stop2, time.Second)
			// A stopped server refuses connections (or closes a kept one).
			if reason := fail.Attrs["reason"]; fail.Level != "ERROR" || fail.Attrs["failures"] != "2/2" ||
				!slices.Contains([]string{"refused", "closed", "reset"}, reason) {
				t.Errorf("%s: marked UNHEALTHY line %v, want level ERROR, reason refused (or closed, reset), failures 2/2", f.name, fail.Attrs)
			} else {
				t.Logf("%s: b2 %s: reason=%s failures=%s", f.name, fail.Msg, reason, fail.Attrs["failures"])
			}
			if ev := e.logEvents("health check failed (1/2)", map[string]string{"backend": f.backends[1]}); len(ev) == 0 || ev[len(ev)-1].Level != "WARN" {
				t.Errorf("%s: no WARN line for the first failed check of b2", f.name)
			}
			e.checkShares(t, ds, f, 1, 3)
			in := ds.info(f.id(2))
			if in.Health != "unhealthy" || in.Admin != "ready" {
				t.Errorf("%s: b2 is %+v, want health unhealthy, admin ready", f.name, *in)
			}
		}
		if ds.Health.Status != "degraded" || ds.Health.HealthyBackends != 4 || ds.Health.TotalBackends != 6 {
			t.Errorf("health in xlb status = %+v, want degraded, 4 of 6", *ds.Health)
		}
		if code, rep := e.health(t, ""); code != http.StatusOK || rep.Status != "degraded" {
			t.Errorf("GET /lb/health = %d %+v, want 200 degraded", code, rep)
		}
		text := e.statusText(t)
		if !strings.Contains(text, "health: degraded (4 of 6 backends healthy)") {
			t.Errorf("xlb status does not show the health:\n%s", text)
		}
		for _, f := range e.families {
			if r := backendRows(t, text)[f.id(2)]; r.State != "down" || r.Health != "unhealthy" {
				t.Errorf("xlb status row of %s: %+v, want down, unhealthy", f.id(2), r)
			}
		}

		// From now on b2 gets nothing: its new-flow counters (datapath and
		// daemon) stay put while the clients keep connecting.
		flows0 := map[string][2]uint64{}
		for _, f := range e.families {
			flows0[f.name] = [2]uint64{ds.dpBackend(f.service, f.backends[1]).NewFlows, ds.info(f.id(2)).NewFlows}
		}
		for range 8 {
			time.Sleep(250 * time.Millisecond)
			ds := e.mustStatus(t)
			for _, f := range e.families {
				got := [2]uint64{ds.dpBackend(f.service, f.backends[1]).NewFlows, ds.info(f.id(2)).NewFlows}
				if got != flows0[f.name] {
					t.Errorf("%s: b2 new flows (datapath, daemon) went from %v to %v while it was down", f.name, flows0[f.name], got)
				}
			}
		}
		for _, f := range e.families {
			windows = append(windows, window{f.name + ": b2 stopped, until the swap", stop2.Add(-streamTimeout), times[f.name].b2Down.Add(swapSlack), []string{"b2"}})
		}
	})
	if !ok {
		t.FailNow()
	}

	// It comes back: in the tables again after healthy_threshold checks, and
	// its clients return to it.
	t.Run("backend back", func(t *testing.T) {
		ds0 := e.mustStatus(t)
		back2 = time.Now()
		e.startServer(t, 2, false)
		seen, _ := e.waitStatus(t, "b2 back in the tables", upBound+3*time.Second,
			func(ds *daemonStatus) bool { return e.inTables(ds, 2) })
		if d := seen.Sub(back2); d > upBound {
			t.Errorf("b2 back in the tables %v after its server started (seen in xlb status), want within %v", d, upBound)
		} else {
			t.Logf("start -> b2 back in the tables, seen in xlb status: %v (bound %v)", ms(d), upBound)
		}
		for _, f := range e.families {
			ev := e.checkTransition(t, f, 2, "healthy", back2, upBound, true)
			times[f.name].b2Up = ev.Time
			up := e.waitLogEvent(t, "marked HEALTHY", map[string]string{"backend": f.backends[1], "service": f.service}, back2, time.Second)
			if up.Level != "INFO" || up.Attrs["successes"] != "2/2" {
				t.Errorf("%s: marked HEALTHY line %v, want level INFO, successes 2/2", f.name, up.Attrs)
			}
		}
		// New clients reach it again: xlb counts them and so does the server.
		waitFor(t, "new flows to b2 in every family", 5*time.Second, 100*time.Millisecond, func() bool {
			ds := e.mustStatus(t)
			for _, f := range e.families {
				if ds.dpBackend(f.service, f.backends[1]).NewFlows < ds0.dpBackend(f.service, f.backends[1]).NewFlows+20 {
					return false
				}
			}
			return true
		})
		ds := e.mustStatus(t)
		for _, f := range e.families {
			e.checkShares(t, ds, f, 1, 2, 3)
		}
		reqs := e.tp.ServerRequests(t, "b2", VIP4, hcPort)
		if len(reqs) == 0 {
			t.Errorf("b2's new server counted no request")
		}
		time.Sleep(500 * time.Millisecond) // clients connect with b2 back
	})

	// Backend 3 accepts TCP and never answers HTTP: its checks time out.
	var hang3, restore3 time.Time
	t.Run("hanging backend", func(t *testing.T) {
		hang3 = time.Now()
		e.stopServer(t, 3)
		e.startServer(t, 3, true)
		seen, _ := e.waitStatus(t, "hanging b3 out of the tables", downBound+3*time.Second,
			func(ds *daemonStatus) bool { return e.outOfTables(ds, 3, "down") })
		t.Logf("hang -> b3 out of the tables, seen in xlb status: %v (bound %v)", ms(seen.Sub(hang3)), downBound)
		if d := seen.Sub(hang3); d > downBound {
			t.Errorf("hanging b3 left the tables after %v, want within %v", d, downBound)
		}
		for _, f := range e.families {
			ev := e.checkTransition(t, f, 3, "unhealthy", hang3, downBound, true)
			times[f.name].b3Down = ev.Time
			fail := e.waitLogEvent(t, "marked UNHEALTHY", map[string]string{"backend": f.backends[2], "service": f.service}, hang3, time.Second)
			d, err := time.ParseDuration(fail.Attrs["duration"])
			if fail.Level != "ERROR" || fail.Attrs["reason"] != "timeout" || err != nil || d < hcTimeout || d > hcTimeout+300*time.Millisecond {
				t.Errorf("%s: marked UNHEALTHY line %v, want level ERROR, reason timeout, duration about %v", f.name, fail.Attrs, hcTimeout)
			} else {
				t.Logf("%s: b3 %s: reason=%s duration=%s", f.name, fail.Msg, fail.Attrs["reason"], fail.Attrs["duration"])
			}
			windows = append(windows, window{f.name + ": b3 hangs, until the swap", hang3.Add(-streamTimeout), ev.Time.Add(swapSlack), []string{"b3"}})
		}
		time.Sleep(time.Second) // clients connect with b3 out of the tables
		// Back to a working server.
		restore3 = time.Now()
		e.stopServer(t, 3)
		e.startServer(t, 3, false)
		e.waitStatus(t, "b3 back in the tables", upBound+3*time.Second,
			func(ds *daemonStatus) bool { return e.inTables(ds, 3) })
		for _, f := range e.families {
			times[f.name].b3Up = e.checkTransition(t, f, 3, "healthy", restore3, upBound, true).Time
		}
		time.Sleep(time.Second) // clients connect with every backend in the tables
	})

	// Every backend down: the service is unhealthy, its packets are dropped
	// and counted, and it recovers by itself.
	var allStop, v1At time.Time
	var dropped uint64
	t.Run("all backends down", func(t *testing.T) {
		ds0 := e.mustStatus(t)
		allStop = time.Now()
		for i := 1; i <= e.tp.Backends; i++ {
			e.stopServer(t, i)
		}
		at, rep := e.waitHealth(t, "", http.StatusServiceUnavailable, "unhealthy", downBound+3*time.Second)
		t.Logf("stop all -> /lb/health unhealthy: %v", ms(at.Sub(allStop)))
		if rep.HealthyBackends != 0 || rep.TotalBackends != 6 {
			t.Errorf("/lb/health = %+v, want 0 of 6 healthy", rep)
		}
		for _, f := range e.families {
			if code, rep := e.health(t, f.service); code != http.StatusServiceUnavailable || rep.Status != "unhealthy" {
				t.Errorf("/lb/health?service=%s = %d %+v, want 503 unhealthy", f.service, code, rep)
			}
			var last time.Time
			for i := 1; i <= e.tp.Backends; i++ {
				if ev := e.checkTransition(t, f, i, "unhealthy", allStop, downBound+time.Second, false); ev.Time.After(last) {
					last = ev.Time
				}
			}
			times[f.name].allDown = last
		}
		ds := e.mustStatus(t)
		for _, f := range e.families {
			for i := 1; i <= e.tp.Backends; i++ {
				if b := ds.dpBackend(f.service, f.backends[i-1]); b.Slots != 0 || b.State != "down" {
					t.Errorf("%s: b%d %+v, want down with no slot", f.name, i, *b)
				}
			}
		}
		text := e.statusText(t)
		if !strings.Contains(text, "health: unhealthy (0 of 6 backends healthy)") ||
			strings.Count(text, "(no usable backend: packets to this service are dropped)") != 2 {
			t.Errorf("xlb status does not say that both services drop their packets:\n%s", text)
		}

		time.Sleep(1500 * time.Millisecond) // the clients keep trying: dropped
		ds1 := e.mustStatus(t)
		v1At = time.Now()
		v0, v1 := verdictPackets(ds0.Datapath), verdictPackets(ds1.Datapath)
		dropped = v1["drop/no_backend"] - v0["drop/no_backend"]
		t.Logf("drop/no_backend: +%d packets while every backend was down", dropped)
		if dropped == 0 {
			t.Errorf("no packet counted as drop/no_backend while every backend was down")
		}

		back := time.Now()
		for i := 1; i <= e.tp.Backends; i++ {
			e.startServer(t, i, false)
		}
		at, rep = e.waitHealth(t, "", http.StatusOK, "healthy", upBound+3*time.Second)
		t.Logf("start all -> /lb/health healthy: %v", ms(at.Sub(back)))
		if rep.HealthyBackends != 6 {
			t.Errorf("/lb/health = %+v, want 6 of 6 healthy", rep)
		}
		for _, f := range e.families {
			first := time.Time{}
			for i := 1; i <= e.tp.Backends; i++ {
				if ev := e.checkTransition(t, f, i, "healthy", back, upBound+time.Second, false); first.IsZero() || ev.Time.Before(first) {
					first = ev.Time
				}
			}
			times[f.name].recovered = first
			windows = append(windows, window{f.name + ": all down, until the first is back", allStop.Add(-streamTimeout), first.Add(swapSlack), nil})
		}
		for _, l := range loads {
			n := len(l.records())
			waitFor(t, l.f.name+" load: connections after the recovery", 5*time.Second, 50*time.Millisecond, func() bool {
				return len(l.records()) >= n+100
			})
		}
	})

	// The whole run as the clients saw it.
	t.Run("clients", func(t *testing.T) {
		totalDialTimeouts := 0
		for _, l := range loads {
			recs, sum := l.stop(t)
			f := l.f
			tm := times[f.name]
			full, no2, no3 := maglevHosts(t, f, 1, 2, 3), maglevHosts(t, f, 1, 3), maglevHosts(t, f, 1, 2)
			t.Logf("%s: %d connections, %d ok, %d failed %v, %.0f/s",
				f.name, len(recs), sum.OK, sum.Failed, sum.Errors, float64(len(recs))/(float64(sum.ElapsedMS)/1000))

			// Failures only where allowed: a failed backend's own clients,
			// until the table without it is in place.
			perWindow := map[string]int{}
			// window is the failure window that explains r's failure, if any.
			window := func(r loadRecord) string {
				for _, w := range windows {
					if strings.HasPrefix(w.name, f.name+":") && w.allows(r, full) {
						return w.name
					}
				}
				return ""
			}
			var bad []string
			for _, r := range recs {
				if r.Error == "" {
					continue
				}
				if w := window(r); w != "" {
					perWindow[w]++
				} else {
					bad = append(bad, fmt.Sprintf("%s (backend %s) at %s: %s", r.Source, full[r.Source], r.Start.Format("15:04:05.000"), r.Error))
				}
			}
			if len(bad) > 0 {
				t.Errorf("%s: %d connections failed outside the failure windows, e.g. %v", f.name, len(bad), bad[:min(len(bad), 8)])
			}
			t.Logf("%s failures per window: %v", f.name, perWindow)

			// Where the connections went while a backend was out, and after.
			checkSteer := func(what string, from, to time.Time, table map[string]string, wantMoved string) {
				rs := between(recs, from, to)
				moved := 0
				for _, r := range rs {
					switch {
					case r.Error != "" && window(r) != "":
						// Started in the steady period but cut by the next
						// event (a connection lasts up to streamTimeout).
					case r.Error != "":
						t.Errorf("%s %s: connection from %s failed: %s", f.name, what, r.Source, r.Error)
					case r.Backend != table[r.Source]:
						t.Errorf("%s %s: connection from %s reached %s, the table says %s", f.name, what, r.Source, r.Backend, table[r.Source])
					case full[r.Source] == wantMoved:
						moved++
					}
				}
				if wantMoved == "" {
					if len(rs) < 50 {
						t.Errorf("%s %s: %d connections: too few to judge", f.name, what, len(rs))
					}
					t.Logf("%s %s: %d connections, all on the predicted backend", f.name, what, len(rs))
					return
				}
				if len(rs) < 50 || moved == 0 {
					t.Errorf("%s %s: %d connections, %d of them from %s's clients: too few to judge", f.name, what, len(rs), moved, wantMoved)
				}
				t.Logf("%s %s: %d connections, all on the predicted backend, %d of them from %s's clients", f.name, what, len(rs), moved, wantMoved)
			}
			checkSteer("while b2 was out", tm.b2Down.Add(swapSlack), back2, no2, "b2")
			checkSteer("after b2 was back", tm.b2Up.Add(swapSlack), hang3, full, "b2")
			checkSteer("while b3 was out", tm.b3Down.Add(swapSlack), restore3, no3, "b3")
			checkSteer("with all backends", tm.b3Up.Add(swapSlack), allStop, full, "")
			if !slices.ContainsFunc(between(recs, tm.b2Up.Add(swapSlack), hang3), func(r loadRecord) bool { return r.Backend == "b2" }) {
				t.Errorf("%s: no client reached b2 after it came back", f.name)
			}

			// With every backend down the packets were dropped: nothing
			// succeeded, and what did not live into the recovery timed out
			// in the handshake.
			kinds := map[string]int{}
			for _, r := range between(recs, tm.allDown.Add(swapSlack), tm.recovered.Add(-swapSlack)) {
				kinds[r.Error]++
				if !strings.HasSuffix(r.Error, ": timeout") {
					t.Errorf("%s: connection from %s while every backend was down: %q, want a timeout", f.name, r.Source, r.Error)
				}
				if r.Start.Before(v1At) && r.Error == "dial: timeout" {
					totalDialTimeouts++
				}
				// (A SYN retransmitted after 1 s may just catch the recovery.)
				if r.Start.Before(tm.recovered.Add(-streamTimeout-300*time.Millisecond)) && r.Error != "dial: timeout" {
					t.Errorf("%s: connection from %s that ended before the recovery: %q, want \"dial: timeout\"", f.name, r.Source, r.Error)
				}
			}
			if kinds["dial: timeout"] == 0 {
				t.Errorf("%s: no connection timed out while every backend was down: %v", f.name, kinds)
			}
			t.Logf("%s: connections while every backend was down: %v", f.name, kinds)
			// Recovered: everything succeeds after the first backend is back.
			for _, r := range recs {
				if r.Start.After(tm.recovered.Add(swapSlack)) && r.Error != "" {
					t.Errorf("%s: connection from %s failed after the recovery: %s", f.name, r.Source, r.Error)
				}
			}
		}
		if dropped < uint64(totalDialTimeouts) {
			t.Errorf("drop/no_backend counted %d packets, fewer than the %d connections that timed out", dropped, totalDialTimeouts)
		}
	})
	t.Logf("TestHealthChecks: %v", time.Since(start).Round(time.Millisecond))
}

// checkTransition finds xlb's "health transition applied" line for backend i of
// f turning state at or after since, checks it came within bound and, for a
// lone transition, that the maps were written within maxApplyDelay of the
// deciding check, and logs the latencies. (Transitions of several backends at
// once are applied one reconcile after the other, so there the later ones
// wait for the earlier ones' reconciles.)
func (e *hcEnv) checkTransition(t *testing.T, f hcFamily, i int, state string, since time.Time, bound time.Duration, lone bool) logEvent {
	t.Helper()
	ev := e.waitLogEvent(t, "health transition applied", map[string]string{"backend": f.target(i), "state": state}, since, bound+2*time.Second)
	after, err := time.ParseDuration(ev.Attrs["after"])
	if err != nil {
		t.Errorf("health transition applied: bad after=%q", ev.Attrs["after"])
	}
	d := ev.Time.Sub(since)
	if d > bound {
		t.Errorf("%s: b%d %s applied %v after the change, want within %v", f.name, i, state, d, bound)
	}
	if lone && after > maxApplyDelay {
		t.Errorf("%s: b%d %s reached the maps %v after the deciding check, want within %v", f.name, i, state, after, maxApplyDelay)
	}
	t.Logf("%s: b%d %s: table swapped %v after the change (log), %s after the deciding check (reconcile %s)",
		f.name, i, state, ms(d), ev.Attrs["after"], ev.Attrs["reconcile"])
	return ev
}

// checkShares checks that exactly the backends hosts (numbers) of f hold
// Maglev slots, about evenly, filling the table.
func (e *hcEnv) checkShares(t *testing.T, ds *daemonStatus, f hcFamily, hosts ...int) {
	t.Helper()
	slots := ds.slots(f.service)
	var total uint32
	for i := 1; i <= len(f.backends); i++ {
		n := slots[f.backends[i-1]]
		total += n
		share := float64(n) / 65537
		switch {
		case !slices.Contains(hosts, i) && n != 0:
			t.Errorf("%s: b%d holds %d Maglev slots, want none", f.name, i, n)
		case slices.Contains(hosts, i) && (share < 0.8/float64(len(hosts)) || share > 1.2/float64(len(hosts))):
			t.Errorf("%s: b%d holds %.1f%% of the table, want about %.1f%%", f.name, i, 100*share, 100/float64(len(hosts)))
		}
	}
	if total != 65537 {
		t.Errorf("%s: the backends hold %d slots, want the whole table (65537): %v", f.name, total, slots)
	}
}

// stateView is what must not change in /lb/backends when a request is refused:
// everything but the traffic counters.
func stateView(list []control.BackendInfo) []string {
	var out []string
	for _, b := range list {
		out = append(out, fmt.Sprintf("%s %s %s %s %s w=%d cfg=%v", b.ID, b.Service, b.State, b.Health, b.Admin, b.Weight, b.FromConfig))
	}
	sort.Strings(out)
	return out
}

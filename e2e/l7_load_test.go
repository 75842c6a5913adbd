package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/control"
)

// Load shape of the tests under load: a few keep-alive workers, each with a
// short pause, so that parallel tests keep their CPU.
const (
	loadWorkers = 4
	loadPause   = 2 * time.Millisecond
)

// waitState waits until /lb/metrics (of the listener or admin API at base)
// shows backend addr of service in state; it returns when it first did.
func waitState(t *testing.T, base, service, addr, state string, timeout time.Duration) time.Time {
	t.Helper()
	return waitFor(t, fmt.Sprintf("%s backend %s %s", service, addr, state), timeout, 10*time.Millisecond, func() bool {
		b := backendMetrics(lbMetrics(t, base, service), addr)
		return b != nil && b.State == state
	})
}

// TestL7HealthUnderLoad: while keep-alive clients send requests, a
// health-checked backend is stopped (SIGTERM: it finishes what it has and
// closes), marked down, started again and marked up: no request fails, the
// backend takes no request while down and takes its share again once up.
// Then the same with SIGKILL, where only requests the backend already had
// when it died may fail (see below).
func TestL7HealthUnderLoad(t *testing.T) {
	t.Parallel()
	e := newL7Env(t)
	b1, b2, svc := e.twoBackends(t)
	// A short passive ejection: the connect errors before the checks notice
	// eject b2 too, and a long one would delay its return (by design).
	e.runXLB(t, e.writeConfig(t, e.header(t, 5*time.Second, false)+l7HC+l7Service("web", svc, `
  [service.passive_health]
  ejection = "200ms"
  max_ejection = "400ms"
`, b1, b2)))
	base := "http://" + svc

	// cycle stops b2 with stop, which returns when it did, and starts it
	// again under load; excused says which failed requests are expected.
	cycle := func(t *testing.T, how string, stop func() (from, to time.Time), excused func(r loadResult, from, to time.Time) bool) int {
		load := startLoad(t, base+"/", loadWorkers, loadPause, nil)
		load.waitOK(t, 200, 5*time.Second)
		stopped, gone := stop()
		down := waitState(t, base, "web", b2, "down", 5*time.Second)
		load.waitOK(t, 300, 5*time.Second)
		e.backend(t, "b2", b2)
		restarted := time.Now()
		up := waitState(t, base, "web", b2, "up", 5*time.Second)
		back := waitFor(t, "b2 answering again", 5*time.Second, 10*time.Millisecond, func() bool {
			return byBackend(load.results(), up, time.Time{})["b2"] > 0
		})
		load.waitOK(t, 300, 5*time.Second)
		nExcused := 0
		res := load.finish(t, how, func(r loadResult) bool {
			if excused != nil && excused(r, stopped, gone) {
				nExcused++
				return true
			}
			return false
		})

		if n := byBackend(res, down, restarted)["b2"]; n != 0 {
			t.Errorf("%d requests answered by b2 while it was down", n)
		}
		after := byBackend(res, back, time.Time{})
		if after["b1"] == 0 || after["b2"] < after["b1"]/3 {
			t.Errorf("after b2 came back: %v, want both sharing", after)
		}
		t.Logf("%s: %d requests, %d failed (at the stop); b2 down %v after the stop, up %v after the restart, answering %v later; %d connections for %d workers",
			how, len(res), nExcused, down.Sub(stopped).Round(time.Millisecond), up.Sub(restarted).Round(time.Millisecond),
			back.Sub(up).Round(time.Millisecond), load.dials.Load(), loadWorkers)
		return nExcused
	}
	t.Run("graceful stop", func(t *testing.T) {
		cycle(t, "SIGTERM", func() (time.Time, time.Time) {
			at := time.Now()
			e.stopBackend(t, "b2")
			return at, time.Now()
		}, nil)
	})
	// SIGKILL: a request that b2 had already received when it died cannot be
	// retried (it was sent: only connect failures are, by design), so it gets
	// 502 when its connection was new; on a reused keep-alive connection Go's
	// transport resends it, and new connections are refused and retried on
	// b1. So the only failures allowed are 502s of requests in flight while
	// b2 was being killed (from the signal to the process reaped), at most
	// one per worker.
	var killed int
	t.Run("kill", func(t *testing.T) {
		killed = cycle(t, "SIGKILL", func() (time.Time, time.Time) {
			e.mu.Lock()
			cmd := e.backs["b2"]
			delete(e.backs, "b2")
			e.mu.Unlock()
			at := time.Now()
			cmd.Process.Kill()
			e.procs.Wait(cmd, 5*time.Second)
			return at, time.Now()
		}, func(r loadResult, from, to time.Time) bool {
			return r.Code == http.StatusBadGateway && r.Start.Before(to) && r.End.After(from)
		})
		if killed > loadWorkers {
			t.Errorf("%d requests failed at the kill, more than the %d in flight", killed, loadWorkers)
		}
	})
	m := lbMetrics(t, base, "web")
	if m.TotalErrors != uint64(killed) {
		t.Errorf("/lb/metrics counts %d failed requests, want the %d at the kill: %+v", m.TotalErrors, killed, m)
	}
}

// TestL7DrainUnderLoad drains a backend through the admin API while
// keep-alive clients send requests and slow requests are in flight on it,
// then removes it: no request fails, the slow ones finish on the drained
// backend, no new request reaches it once drained, and the removal waits for
// its last request.
func TestL7DrainUnderLoad(t *testing.T) {
	t.Parallel()
	e := newL7Env(t)
	b1, b2, svc := e.twoBackends(t)
	e.runXLB(t, e.writeConfig(t, e.header(t, 5*time.Second, true)+l7HC+l7Service("web", svc, "", b1, b2)))
	base, admin := "http://"+svc, "http://"+e.admin
	id := "web@" + b2

	// Slow requests until one is in flight on b2 (before the load starts,
	// whose quick requests would show in the in-flight count too).
	type slowResult struct {
		r   httpResult
		err error
		end time.Time
	}
	var slowWG sync.WaitGroup
	var slowMu sync.Mutex
	var slow []slowResult
	startSlow := func() {
		slowWG.Go(func() {
			r, err := tryDo(newClient("", 15*time.Second), "GET", base+"/slow?ms=2000")
			slowMu.Lock()
			slow = append(slow, slowResult{r, err, time.Now()})
			slowMu.Unlock()
		})
	}
	waitFor(t, "a slow request in flight on b2", 5*time.Second, 20*time.Millisecond, func() bool {
		if b := backendMetrics(lbMetrics(t, admin, "web"), b2); b != nil && b.ActiveConnections > 0 {
			return true
		}
		startSlow()
		return false
	})
	load := startLoad(t, base+"/", loadWorkers, loadPause, nil)
	load.waitOK(t, 100, 5*time.Second)

	if r := e.adminCall(t, "PUT", "/lb/admin/backends/"+id+"/drain"); r.Code != 200 {
		t.Fatalf("PUT drain: %d %s", r.Code, r.Body)
	}
	drained := waitState(t, admin, "web", b2, "draining", 5*time.Second)
	load.waitOK(t, 100, 5*time.Second)

	// Remove it while its slow request runs: the removal waits for it.
	removeAt := time.Now()
	if r := e.adminCall(t, "DELETE", "/lb/admin/backends/"+id); r.Code != 200 && r.Code != 202 {
		t.Fatalf("DELETE: %d %s", r.Code, r.Body)
	}
	ev := e.waitLog(t, "backend removed", map[string]string{"backend": id}, 1, 10*time.Second)
	load.waitOK(t, 100, 5*time.Second)
	slowWG.Wait()
	res := load.finish(t, "drain")

	var lastOnB2 time.Time
	for _, s := range slow {
		if s.err != nil || s.r.Code != 200 {
			t.Errorf("slow request: %v %d %q, want it to finish", s.err, s.r.Code, s.r.Body)
			continue
		}
		if backendOf(s.r.Body) == "b2" && s.end.After(lastOnB2) {
			lastOnB2 = s.end
		}
	}
	if lastOnB2.IsZero() {
		t.Fatalf("no slow request finished on b2")
	}
	if !lastOnB2.After(removeAt) {
		t.Errorf("the slow request on b2 ended before the removal was asked: the test proves nothing")
	}
	if ev.Time.Before(lastOnB2.Truncate(time.Millisecond)) || ev.Attrs["reason"] != "flows ended" {
		t.Errorf("b2 removed at %s (%s), its last request ended at %s: want after, once its requests ended",
			ev.Time.Format("15:04:05.000"), ev.Attrs["reason"], lastOnB2.Format("15:04:05.000"))
	}
	if n := byBackend(res, drained, time.Time{})["b2"]; n != 0 {
		t.Errorf("%d requests went to b2 after it was draining", n)
	}
	before := byBackend(res, time.Time{}, drained)
	if before["b2"] == 0 {
		t.Errorf("b2 took no request before the drain: %v", before)
	}
	m := lbMetrics(t, admin, "web")
	if backendMetrics(m, b2) != nil || len(m.Backends) != 1 {
		t.Errorf("b2 still in /lb/metrics after its removal: %+v", m.Backends)
	}
	var list []control.BackendInfo
	if r := e.adminCall(t, "GET", "/lb/backends"); r.Code != 200 || json.Unmarshal(r.Body, &list) != nil || findInfo(list, id) != nil {
		t.Errorf("GET /lb/backends after the removal: %d %s", r.Code, r.Body)
	}
	t.Logf("drain: %d requests, none failed; %d slow requests; b2 removed %v after DELETE, %v after its last request",
		len(res), len(slow), ev.Time.Sub(removeAt).Round(time.Millisecond), ev.Time.Sub(lastOnB2).Round(time.Millisecond))
}

// TestL7ReloadUnderLoad reloads the config (SIGHUP, then POST
// /lb/admin/reload) while keep-alive clients send requests: a backend
// removed, one added, one back, a header rule changed each time; then a bad
// config, refused both ways with its reason while the running one stays. No
// request fails, no client connection is cut (open or idle), every request
// runs on one config (the rule the backend saw matches the backends of that
// config), and the health state of an unchanged backend (down) is kept.
func TestL7ReloadUnderLoad(t *testing.T) {
	t.Parallel()
	e := newL7Env(t)
	a, b, c, d := e.addr(t, 2), e.addr(t, 3), e.addr(t, 4), e.addr(t, 5)
	e.backend(t, "A", a)
	e.backend(t, "B", b)
	e.backend(t, "D", d)
	// C never runs: the health checks keep it down.
	svc := e.addr(t, 1)
	head := e.header(t, 5*time.Second, true)
	config := func(rule string, backends ...string) string {
		return head + l7HC + l7Service("web", svc, fmt.Sprintf(`
  [service.headers]
  request_set = { "X-Rule" = %q }
  response_set = { "X-Rule-Out" = %q }
`, rule, rule), backends...)
	}
	e.runXLB(t, e.writeConfig(t, config("v1", a, b, c)))
	base, admin := "http://"+svc, "http://"+e.admin
	waitState(t, admin, "web", c, "down", 5*time.Second)
	cReqs := backendMetrics(lbMetrics(t, admin, "web"), c).TotalRequests

	note := func(r httpResult) string {
		var s seen
		json.Unmarshal(r.Body, &s)
		if v := s.Headers["X-Rule"]; len(v) == 1 && r.Header.Get("X-Rule-Out") == v[0] {
			return v[0]
		}
		return fmt.Sprintf("rule in %v, out %q", s.Headers["X-Rule"], r.Header.Get("X-Rule-Out"))
	}
	load := startLoad(t, base+"/headers", loadWorkers, loadPause, note)
	load.waitOK(t, 100, 5*time.Second)
	idle := newClient("", 30*time.Second)
	var idleDials atomic.Int64
	idle.Transport.(*http.Transport).DialContext = countingDial(&idleDials)
	if r := do(t, idle, "GET", base+"/"); r.Code != 200 {
		t.Fatalf("idle client: %d", r.Code)
	}

	// keptDown checks, for a while after a reload, that C stays down and
	// gets no request.
	keptDown := func(t *testing.T) {
		t.Helper()
		deadline := time.Now().Add(500 * time.Millisecond)
		for time.Now().Before(deadline) {
			m := lbMetrics(t, admin, "web")
			bc := backendMetrics(m, c)
			if bc == nil || bc.State != "down" || bc.TotalRequests != cReqs {
				t.Fatalf("after the reload C is %+v: want it kept down with %d requests", bc, cReqs)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitRule := func(t *testing.T, rule string) time.Time {
		t.Helper()
		return waitFor(t, "requests with rule "+rule, 5*time.Second, 5*time.Millisecond, func() bool {
			for _, r := range load.results() {
				if r.Note == rule {
					return true
				}
			}
			return false
		})
	}
	slowAcross := func(t *testing.T, wg *sync.WaitGroup) {
		for range 4 {
			wg.Go(func() {
				r, err := tryDo(newClient("", 15*time.Second), "GET", base+"/slow?ms=800")
				if err != nil || r.Code != 200 {
					t.Errorf("slow request across the reload: %v %d %q", err, r.Code, r.Body)
				}
			})
		}
		time.Sleep(100 * time.Millisecond)
	}

	t.Run("SIGHUP", func(t *testing.T) {
		var wg sync.WaitGroup
		slowAcross(t, &wg)
		e.writeConfig(t, config("v2", a, c, d)) // B out, D in
		if err := e.xlb.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitRule(t, "v2")
		keptDown(t)
		load.waitOK(t, 100, 5*time.Second)
		wg.Wait()
	})
	t.Run("POST reload", func(t *testing.T) {
		var wg sync.WaitGroup
		slowAcross(t, &wg)
		e.writeConfig(t, config("v3", a, b, c, d)) // B back
		if r := e.adminCall(t, "POST", "/lb/admin/reload"); r.Code != 200 || !strings.Contains(string(r.Body), "reloaded") {
			t.Fatalf("POST /lb/admin/reload: %d %s", r.Code, r.Body)
		}
		waitRule(t, "v3")
		keptDown(t)
		load.waitOK(t, 100, 5*time.Second)
		wg.Wait()
	})
	t.Run("bad config refused", func(t *testing.T) {
		bad := strings.Replace(config("v4", a, d), `mode = "l7"`, "mode = \"l7\"\nalgorithm = \"fastest\"", 1)
		e.writeConfig(t, bad)
		if err := e.xlb.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		ev := e.waitLog(t, "reload refused: the running config stays in force", nil, 1, 5*time.Second)
		if !strings.Contains(ev.Attrs["err"], e.cfg) || !strings.Contains(ev.Attrs["err"], "algorithm") {
			t.Errorf("SIGHUP with a bad config logged %q: want the file, line and field", ev.Attrs["err"])
		}
		r := e.adminCall(t, "POST", "/lb/admin/reload")
		var msg struct{ Error string }
		json.Unmarshal(r.Body, &msg)
		if r.Code != 400 || !strings.Contains(msg.Error, "reload refused") || !strings.Contains(msg.Error, "algorithm") ||
			!strings.Contains(msg.Error, e.cfg) {
			t.Errorf("POST /lb/admin/reload with a bad config: %d %s, want 400 with the reason", r.Code, r.Body)
		}
		mark := time.Now()
		load.waitOK(t, 200, 5*time.Second)
		for _, r := range load.results() {
			if !r.Start.Before(mark) && r.Note != "v3" {
				t.Fatalf("a request after the refused reload ran with %q, want the running config's v3", r.Note)
			}
		}
		keptDown(t)
	})

	t.Run("config that cannot be applied refused", func(t *testing.T) {
		// Valid, but its second listener's address is taken: the L7 tier
		// cannot apply it, so the reload must be refused as a whole, and
		// health transitions must keep reaching the running config.
		busy, err := net.Listen("tcp", e.addr(t, 1))
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		e.writeConfig(t, config("v5", a, d)+l7Service("other", busy.Addr().String(), "", a))
		r := e.adminCall(t, "POST", "/lb/admin/reload")
		if r.Code != 400 || !strings.Contains(string(r.Body), "address already in use") {
			t.Errorf("POST /lb/admin/reload with a taken listen address: %d %s, want 400 with the reason", r.Code, r.Body)
		}
		e.stopBackend(t, "D")
		waitState(t, admin, "web", d, "down", 3*time.Second)
		mark := time.Now()
		load.waitOK(t, 200, 5*time.Second)
		for _, r := range load.results() {
			if !r.Start.Before(mark) && (r.Note != "v3" || r.Backend == "D") {
				t.Fatalf("a request after the refused reload ran with %q on %s, want v3 on A or B", r.Note, r.Backend)
			}
		}
	})

	res := load.finish(t, "reloads")
	allowed := map[string]map[string]bool{
		"v1": {"A": true, "B": true}, "v2": {"A": true, "D": true}, "v3": {"A": true, "B": true, "D": true},
	}
	seenRules := map[string]map[string]int{}
	for _, r := range res {
		if r.failed() {
			continue
		}
		if !allowed[r.Note][r.Backend] {
			t.Errorf("a request with rule %q answered by %s: not a backend of that config", r.Note, r.Backend)
			continue
		}
		if seenRules[r.Note] == nil {
			seenRules[r.Note] = map[string]int{}
		}
		seenRules[r.Note][r.Backend]++
	}
	for rule, backs := range allowed {
		for bk := range backs {
			if seenRules[rule][bk] == 0 {
				t.Errorf("config %s: no request answered by %s (%v)", rule, bk, seenRules[rule])
			}
		}
	}
	if n := load.dials.Load(); n != loadWorkers {
		t.Errorf("the load opened %d connections for %d workers: reloads cut client connections", n, loadWorkers)
	}
	if r := do(t, idle, "GET", base+"/"); r.Code != 200 || idleDials.Load() != 1 {
		t.Errorf("idle client after the reloads: %d, %d connections: want its first one still open", r.Code, idleDials.Load())
	}
	t.Logf("reloads: %d requests, none failed, by config and backend %v; %d connections", len(res), seenRules, load.dials.Load())
}

// TestL7AdminAddReady: an L7 backend added through the admin API takes
// requests; after passive health ejected both backends (no usable one: 503),
// `ready` readmits the one it names, which then takes every request while
// the other stays ejected.
func TestL7AdminAddReady(t *testing.T) {
	t.Parallel()
	e := newL7Env(t)
	b1, b2, svc := e.twoBackends(t)
	passive := "[service.passive_health]\nmax_fails = 1\nejection = \"1m\"\nmax_ejection = \"1h\"\n"
	e.runXLB(t, e.writeConfig(t, e.header(t, 5*time.Second, true)+l7HC+l7Service("web", svc, passive, b1)))
	base, admin := "http://"+svc, "http://"+e.admin
	host, port, _ := net.SplitHostPort(b2)

	r := e.adminCall(t, "POST", "/lb/admin/backends", fmt.Sprintf(`{"service":"web","address":%q,"port":%s}`, host, port))
	if r.Code != 200 && r.Code != 201 {
		t.Fatalf("POST /lb/admin/backends: %d %s", r.Code, r.Body)
	}
	waitState(t, admin, "web", b2, "up", 5*time.Second)
	c := newClient("", 5*time.Second)
	seen := map[string]int{}
	for range 4 {
		r := do(t, c, "GET", base+"/")
		seen[backendOf(r.Body)]++
	}
	if seen["b1"] != 2 || seen["b2"] != 2 {
		t.Errorf("requests by backend after the add: %v, want 2 each", seen)
	}

	for range 2 { // one 500 each (round robin) ejects both
		if r := do(t, c, "GET", base+"/status?code=500"); r.Code != 500 {
			t.Fatalf("GET /status?code=500: %d, want the backend's 500", r.Code)
		}
	}
	waitState(t, admin, "web", b1, "ejected", 2*time.Second)
	waitState(t, admin, "web", b2, "ejected", 2*time.Second)
	if r := do(t, c, "GET", base+"/"); r.Code != 503 {
		t.Errorf("both ejected: %d %s, want 503", r.Code, r.Body)
	}

	if r := e.adminCall(t, "PUT", "/lb/admin/backends/web@"+b2+"/ready"); r.Code != 200 {
		t.Fatalf("PUT ready: %d %s", r.Code, r.Body)
	}
	waitState(t, admin, "web", b2, "up", 2*time.Second)
	for range 4 {
		r := do(t, c, "GET", base+"/")
		if r.Code != 200 || backendOf(r.Body) != "b2" {
			t.Errorf("after ready: %d from %q, want 200 from b2 (b1 still ejected)", r.Code, backendOf(r.Body))
		}
	}
	if b := backendMetrics(lbMetrics(t, admin, "web"), b1); b == nil || b.State != "ejected" {
		t.Errorf("b1 after b2's ready: %+v, want still ejected", b)
	}
}

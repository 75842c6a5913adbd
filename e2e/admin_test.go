package e2e

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/control"
)

// adminCase is one admin API request that must be refused.
type adminCase struct {
	name         string
	method, path string
	auth, body   string
	code         int
	want         string // in the "error" message
}

// checkRefused sends every case and checks its status and message, and that
// none changed the backends (/lb/backends without traffic counters) or the
// Maglev tables (slots in xlb status).
func (e *hcEnv) checkRefused(t *testing.T, cases []adminCase) {
	t.Helper()
	before := stateView(e.backends(t))
	slots0 := map[string]map[string]uint32{}
	ds0 := e.mustStatus(t)
	for _, f := range e.families {
		slots0[f.service] = ds0.slots(f.service)
	}
	for _, c := range cases {
		code, hdr, body := e.admin.callHeader(t, c.method, c.path, c.auth, c.body)
		var msg struct{ Error string }
		json.Unmarshal(body, &msg)
		if code != c.code || !strings.Contains(msg.Error, c.want) {
			t.Errorf("%s: %s %s: %d %s, want %d with an error saying %q", c.name, c.method, c.path, code, body, c.code, c.want)
		}
		if code == http.StatusUnauthorized && !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: 401 without a WWW-Authenticate: Bearer header (%q)", c.name, hdr.Get("WWW-Authenticate"))
		}
	}
	if after := stateView(e.backends(t)); !slices.Equal(before, after) {
		t.Errorf("refused requests changed the backends:\nbefore %v\nafter  %v", before, after)
	}
	ds1 := e.mustStatus(t)
	for _, f := range e.families {
		if s := ds1.slots(f.service); !mapsEqualU32(s, slots0[f.service]) {
			t.Errorf("refused requests changed the Maglev table of %s: %v, was %v", f.service, s, slots0[f.service])
		}
	}
}

func mapsEqualU32(a, b map[string]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestAdminAPI drives backends through the admin API and the xlb CLI while 155
// client addresses keep connecting: refused requests change nothing; a drained
// backend keeps its open connection to the end and takes no new one, xlb status
// shows it draining with its open flow, and its removal completes when the flow
// ends; ready brings a drained backend back; add puts a removed one back.
func TestAdminAPI(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	start := time.Now()
	e := newHCEnv(t, "xad", true, func(tp *Topology) []hcFamily { return []hcFamily{ipv4Family(tp, "web")} })
	f := e.families[0]
	full, no2, only1 := maglevHosts(t, f, 1, 2, 3), maglevHosts(t, f, 1, 3), maglevHosts(t, f, 1)
	id1, id2, id3 := f.id(1), f.id(2), f.id(3)
	load := e.startStream(t, f)
	load.waitOK(t, 100, 10*time.Second)

	t.Run("refused requests change nothing", func(t *testing.T) {
		tok := bearer(e.token)
		add := "/lb/admin/backends"
		e.checkRefused(t, []adminCase{
			{"no token", "POST", add, "", `{"service":"web","address":"198.18.0.14"}`, 401, "missing bearer token"},
			{"basic auth", "POST", add, "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:"+e.token)),
				`{"service":"web","address":"198.18.0.14"}`, 401, "missing bearer token"},
			{"wrong token", "POST", add, bearer(e.token + "x"), `{"service":"web","address":"198.18.0.14"}`, 403, "wrong token"},
			{"drain, wrong token", "PUT", "/lb/admin/backends/" + id1 + "/drain", bearer("nope"), "", 403, "wrong token"},
			{"drain, no token", "PUT", "/lb/admin/backends/" + id1 + "/drain", "", "", 401, "missing bearer token"},
			{"ready, no token", "PUT", "/lb/admin/backends/" + id1 + "/ready", "", "", 401, "missing bearer token"},
			{"delete, no token", "DELETE", "/lb/admin/backends/" + id1, "", "", 401, "missing bearer token"},
			{"delete, wrong token", "DELETE", "/lb/admin/backends/" + id1, bearer("nope"), "", 403, "wrong token"},
			{"config, no token", "GET", "/lb/admin/config", "", "", 401, "missing bearer token"},
			{"malformed JSON", "POST", add, tok, `{"service": "web", "address": `, 400, "malformed JSON"},
			{"not JSON", "POST", add, tok, `service=web&address=198.18.0.14`, 400, "malformed JSON"},
			{"unknown field", "POST", add, tok, `{"service":"web","address":"198.18.0.14","bogus":1}`, 400, "unknown field"},
			{"no address", "POST", add, tok, `{"service":"web"}`, 400, "required"},
			{"unknown service", "POST", add, tok, `{"service":"nope","address":"198.18.0.14"}`, 400, "unknown service"},
			{"bad address", "POST", add, tok, `{"service":"web","address":"198.18.0.300"}`, 400, "not an IP address"},
			{"other family", "POST", add, tok, `{"service":"web","address":"2001:db8:18::14"}`, 400, "differ in family"},
			{"port on l4", "POST", add, tok, `{"service":"web","address":"198.18.0.14","port":8080}`, 400, "port"},
			{"bad mac", "POST", add, tok, `{"service":"web","address":"198.18.0.14","mac":"zz"}`, 400, "mac"},
			{"weight out of range", "POST", add, tok, `{"service":"web","address":"198.18.0.14","weight":70000}`, 400, "weight"},
			{"existing backend", "POST", add, tok, `{"service":"web","address":"` + f.backends[0] + `"}`, 409, "already exists"},
			{"drain unknown backend", "PUT", "/lb/admin/backends/web@198.18.0.99/drain", tok, "", 404, "unknown backend"},
			{"ready unknown backend", "PUT", "/lb/admin/backends/web@198.18.0.99/ready", tok, "", 404, "unknown backend"},
			{"delete unknown backend", "DELETE", "/lb/admin/backends/web@198.18.0.99", tok, "", 404, "unknown backend"},
			{"drain, unknown service", "PUT", "/lb/admin/backends/nope@" + f.backends[0] + "/drain", tok, "", 404, "unknown backend"},
			{"health of unknown service", "GET", "/lb/health?service=nope", "", "", 400, "unknown service"},
			{"backends of unknown service", "GET", "/lb/backends?service=nope", "", "", 400, "unknown service"},
		})

		// The CLI maps the refusals to exit codes: 2 for a bad request, 1 otherwise.
		before := stateView(e.backends(t))
		for _, c := range []struct {
			args []string
			code int
			want string
		}{
			{[]string{"backend", "drain", id1}, 1, "401"},
			{[]string{"backend", "drain", "--token", "nope", id1}, 1, "403"},
			{[]string{"backend", "remove", "--token", "nope", id1}, 1, "403"},
			{[]string{"backend", "drain", "-c", e.config, "web@198.18.0.99"}, 1, "404"},
			{[]string{"backend", "add", "-c", e.config, "--service", "nope", "--address", "198.18.0.14"}, 2, "unknown service"},
			{[]string{"backend", "add", "-c", e.config, "--service", "web", "--address", "not-an-ip"}, 2, "not an IP address"},
			{[]string{"backend", "drain", "-c", e.config}, 2, "exactly one backend ID"},
		} {
			code, _, stderr := e.cli(t, c.args...)
			if code != c.code || !strings.Contains(stderr, c.want) {
				t.Errorf("xlb %v: exit %d, %q; want exit %d saying %q", c.args, code, stderr, c.code, c.want)
			}
		}
		if after := stateView(e.backends(t)); !slices.Equal(before, after) {
			t.Errorf("refused CLI commands changed the backends:\nbefore %v\nafter  %v", before, after)
		}

		// With the token the config is readable; the token appears nowhere.
		code, body := e.admin.call(t, "GET", "/lb/admin/config", bearer(e.token), "")
		if code != http.StatusOK || !strings.Contains(string(body), f.backends[0]) || strings.Contains(string(body), e.token) {
			t.Errorf("GET /lb/admin/config with the token: %d %s", code, body)
		}
		_, log := e.tp.Output(e.xlb)
		if strings.Contains(log, e.token) {
			t.Errorf("xlb logged its admin token")
		}
		if len(e.logEvents("admin API: wrong token", nil)) == 0 {
			t.Errorf("xlb did not log the wrong tokens")
		}
	})

	// Drain b2 while a long-lived connection to it is open, then remove it.
	var drained2, readded2, drainReq3, drained3, readyReq3, ready3, addReq2 time.Time
	ok := t.Run("drain with an open connection, then remove", func(t *testing.T) {
		src := ""
		for _, a := range f.sourceAddrs() {
			if full[a.String()] == "b2" {
				src = a.String()
				break
			}
		}
		const holdSecs = 6
		hold := e.tp.Start(t, "cl", Binary(t, "xlbtest"), "hold", "--target", f.url("/hold"),
			"--secs", strconv.Itoa(holdSecs), "--timeout", "2s", "--source", src)
		e.tp.WaitOutput(t, hold, " tick 1/", 5*time.Second)

		req := time.Now()
		code, body := e.admin.call(t, "PUT", "/lb/admin/backends/"+id2+"/drain", bearer(e.token), "")
		var info control.BackendInfo
		if code != http.StatusOK || json.Unmarshal(body, &info) != nil || info.Admin != "draining" || info.State != "draining" {
			t.Fatalf("PUT drain %s: %d %s, want 200 and the backend draining", id2, code, body)
		}
		var ds *daemonStatus
		drained2, ds = e.waitStatus(t, "b2 draining, out of the table", 3*time.Second, func(ds *daemonStatus) bool {
			b := ds.dpBackend(f.service, f.backends[1])
			return b != nil && b.State == "draining" && b.Slots == 0
		})
		t.Logf("drain request -> b2 out of the table, seen in xlb status: %v", ms(drained2.Sub(req)))
		if ev := e.logEvents("backend admin state changed", map[string]string{"backend": id2, "from": "ready", "to": "draining"}); len(ev) != 1 {
			t.Errorf("xlb logged %d admin state changes of %s to draining, want 1", len(ev), id2)
		}
		e.checkShares(t, ds, f, 1, 3)
		in, dp := ds.info(id2), ds.dpBackend(f.service, f.backends[1])
		if in.State != "draining" || in.Admin != "draining" || in.Health != "healthy" || in.OpenFlows < 1 || dp.OpenFlows < 1 {
			t.Errorf("xlb status --json: %s is %+v (datapath %+v), want draining, healthy, at least the held flow open", id2, *in, *dp)
		}
		rows := backendRows(t, e.statusText(t))
		if r := rows[id2]; r.State != "draining" || r.Admin != "draining" || r.OpenFlows < 1 {
			t.Errorf("xlb status: %s row %+v, want draining with at least one open flow", id2, r)
		} else {
			t.Logf("xlb status: %s %s, admin %s, %d open flows", id2, r.State, r.Admin, r.OpenFlows)
		}
		if code, rep := e.health(t, ""); code != http.StatusOK || rep.Status != "healthy" || rep.HealthyBackends != 3 {
			t.Errorf("/lb/health with a drained backend = %d %+v, want healthy, 3 of 3", code, rep)
		}
		flows0 := [2]uint64{dp.NewFlows, in.NewFlows}

		// One connection from every client address: none lands on b2.
		sum := e.load(t, f)
		if sum.OK != l4Clients || sum.ByBackend["b2"] != 0 {
			t.Errorf("load while b2 drains: ok=%d by_backend=%v errors=%v, want %d ok and none on b2", sum.OK, sum.ByBackend, sum.Errors, l4Clients)
		}
		for s, got := range sum.BySource {
			if len(got) != 1 || got[0] != no2[s] {
				t.Errorf("load while b2 drains: %s reached %v, the table without b2 says %s", s, got, no2[s])
			}
		}
		ds = e.mustStatus(t)
		if got := [2]uint64{ds.dpBackend(f.service, f.backends[1]).NewFlows, ds.info(id2).NewFlows}; got != flows0 {
			t.Errorf("b2 new flows (datapath, daemon) went from %v to %v while draining", flows0, got)
		}

		// Remove it while the connection is open: it stays until the flow ends.
		removeReq := time.Now()
		code2, out, stderr := e.cli(t, "backend", "remove", "-c", e.config, id2)
		if code2 != 0 || !strings.Contains(out, id2+": state draining, admin removing") {
			t.Fatalf("xlb backend remove %s: exit %d %q %q", id2, code2, out, stderr)
		}
		e.waitLogEvent(t, "backend removal started: draining", map[string]string{"backend": id2, "drain_timeout": hcDrainTimeout.String()}, removeReq, time.Second)
		time.Sleep(1500 * time.Millisecond) // more than one poll of the open flows
		if !e.tp.running(hold) {
			out, _ := e.tp.Output(hold)
			t.Fatalf("the held connection ended early:\n%s", out)
		}
		if in := findInfo(e.backends(t), id2); in == nil || in.Admin != "removing" || in.OpenFlows < 1 {
			t.Errorf("%s while its flow is open: %+v, want still listed, removing, with an open flow", id2, in)
		}
		if in := findInfo(e.backends(t), id2); in != nil && in.NewFlows != flows0[1] {
			t.Errorf("b2 new flows went from %d to %d while being removed", flows0[1], in.NewFlows)
		}

		// The held connection works to the end, on b2...
		if err := e.tp.Wait(hold, holdSecs*time.Second+10*time.Second); err != nil {
			out, stderr := e.tp.Output(hold)
			t.Fatalf("hold through the drain: %v\n%s\n%s", err, out, stderr)
		}
		out, _ = e.tp.Output(hold)
		doneLine := ""
		for line := range strings.Lines(out) {
			if strings.Contains(line, " done ") {
				doneLine = strings.TrimSpace(line)
			}
		}
		ts, rest, _ := strings.Cut(doneLine, " ")
		ended, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil || rest != "done "+strconv.Itoa(holdSecs*5)+" backend=b2" {
			t.Fatalf("hold output ends with %q, want the whole stream from b2:\n%s", doneLine, out)
		}
		// ...and the removal completes once it has ended, long before drain_timeout.
		gone := waitFor(t, id2+" removed", 10*time.Second, 50*time.Millisecond, func() bool {
			return findInfo(e.backends(t), id2) == nil
		})
		wait := gone.Sub(ended)
		t.Logf("hold ended -> %s removed: %v (removal requested %v earlier; drain_timeout %v)", id2, ms(wait), ms(gone.Sub(removeReq)), hcDrainTimeout)
		if wait > 5*time.Second {
			t.Errorf("%s removed %v after its last flow ended, want within a few seconds (drain_timeout %v)", id2, wait, hcDrainTimeout)
		}
		e.waitLogEvent(t, "backend removed", map[string]string{"backend": id2, "reason": "flows ended"}, removeReq, 2*time.Second)
		ds, _ = e.status(t)
		if b := ds.dpBackend(f.service, f.backends[1]); b != nil && b.State != "draining" {
			t.Errorf("removed b2 still in the datapath: %+v", *b)
		}
	})
	if !ok {
		t.FailNow()
	}

	t.Run("drain and ready from the CLI", func(t *testing.T) {
		drainReq3 = time.Now()
		code, out, stderr := e.cli(t, "backend", "drain", "--token", e.token, id3)
		if code != 0 || !strings.Contains(out, id3+": state draining, admin draining") {
			t.Fatalf("xlb backend drain %s: exit %d %q %q", id3, code, out, stderr)
		}
		var ds *daemonStatus
		drained3, ds = e.waitStatus(t, "b3 draining", 3*time.Second, func(ds *daemonStatus) bool {
			b := ds.dpBackend(f.service, f.backends[2])
			return b != nil && b.State == "draining" && b.Slots == 0
		})
		e.checkShares(t, ds, f, 1)
		code, out, stderr = e.cli(t, "backend", "list", "-c", e.config)
		rows := backendRows(t, out)
		if code != 0 || len(rows) != 2 || rows[id1].State != "up" || rows[id1].Admin != "ready" ||
			rows[id3].State != "draining" || rows[id3].Admin != "draining" || rows[id3].Health != "healthy" {
			t.Errorf("xlb backend list: exit %d, %v %q", code, rows, stderr)
		}
		time.Sleep(700 * time.Millisecond) // every client on b1

		readyReq3 = time.Now()
		code, out, stderr = e.cli(t, "backend", "ready", "--token", e.token, id3)
		if code != 0 || !strings.Contains(out, id3+": state up, admin ready") {
			t.Fatalf("xlb backend ready %s: exit %d %q %q", id3, code, out, stderr)
		}
		ready3, ds = e.waitStatus(t, "b3 ready", 3*time.Second, func(ds *daemonStatus) bool {
			b := ds.dpBackend(f.service, f.backends[2])
			return b != nil && b.State == "up" && b.Slots > 0
		})
		t.Logf("ready -> b3 back in the table, seen in xlb status: %v", ms(ready3.Sub(readyReq3)))
		e.checkShares(t, ds, f, 1, 3)
		n0 := ds.dpBackend(f.service, f.backends[2]).NewFlows
		waitFor(t, "new flows to b3", 5*time.Second, 100*time.Millisecond, func() bool {
			return e.mustStatus(t).dpBackend(f.service, f.backends[2]).NewFlows >= n0+20
		})
	})

	t.Run("add a backend from the CLI", func(t *testing.T) {
		before := e.tp.ServerRequests(t, "b2", VIP4, hcPort)
		addReq2 = time.Now()
		code, out, stderr := e.cli(t, "backend", "add", "-c", e.config, "--service", f.service, "--address", f.backends[1])
		if code != 0 || !strings.Contains(out, id2+": state up, admin ready") {
			t.Fatalf("xlb backend add: exit %d %q %q", code, out, stderr)
		}
		var ds *daemonStatus
		readded2, ds = e.waitStatus(t, "b2 added", 3*time.Second, func(ds *daemonStatus) bool {
			b := ds.dpBackend(f.service, f.backends[1])
			return b != nil && b.State == "up" && b.Slots > 0 && b.MAC != "" && b.MAC != "00:00:00:00:00:00"
		})
		t.Logf("add -> b2 in the table, seen in xlb status: %v", ms(readded2.Sub(addReq2)))
		e.checkShares(t, ds, f, 1, 2, 3)
		if in := ds.info(id2); in == nil || in.FromConfig || in.Admin != "ready" || in.State != "up" {
			t.Errorf("added %s: %+v, want up, ready, not from the config", id2, in)
		}
		e.waitLogEvent(t, "backend added through the admin API", map[string]string{"backend": id2}, addReq2, time.Second)
		waitFor(t, "new flows to the added b2", 5*time.Second, 100*time.Millisecond, func() bool {
			return e.mustStatus(t).dpBackend(f.service, f.backends[1]).NewFlows >= 20
		})
		after := e.tp.ServerRequests(t, "b2", VIP4, hcPort)
		n := 0
		for k, v := range after {
			n += v - before[k]
		}
		if n < 20 {
			t.Errorf("b2's server counted %d new requests after the add, want its clients back", n)
		}
		// And it is health-checked like the others (its checker was stopped
		// at the removal).
		e.waitLogEvent(t, "health checks updated", map[string]string{"added": "1"}, addReq2, 2*time.Second)
		waitFor(t, "checks of the added b2", 3*time.Second, 100*time.Millisecond, func() bool {
			ok := map[string]string{"service": f.service, "backend": f.backends[1], "result": "success"}
			v, _ := e.scrape(t).value("xlb_health_checks_total", ok)
			return v >= 1
		})
		text := e.statusText(t)
		if !strings.Contains(text, "health: healthy (3 of 3 backends healthy)") {
			t.Errorf("xlb status:\n%s", text)
		}
	})

	t.Run("clients", func(t *testing.T) {
		recs, sum := load.stop(t)
		t.Logf("%d connections, %d ok, %d failed %v", len(recs), sum.OK, sum.Failed, sum.Errors)
		if sum.Failed != 0 {
			t.Errorf("%d connections failed (%v): draining, removing, readying and adding must not break any", sum.Failed, sum.Errors)
		}
		onB2 := 0
		for _, r := range between(recs, drained2, addReq2) {
			if r.Backend == "b2" {
				onB2++
			}
		}
		if onB2 != 0 {
			t.Errorf("%d connections started while b2 was drained or removed reached it", onB2)
		}
		check := func(what string, from, to time.Time, table map[string]string, host string) {
			rs := between(recs, from, to)
			n := 0
			for _, r := range rs {
				if r.Error == "" && r.Backend != table[r.Source] {
					t.Errorf("%s: connection from %s reached %s, the table says %s", what, r.Source, r.Backend, table[r.Source])
				}
				if r.Backend == host {
					n++
				}
			}
			if len(rs) < 30 || n == 0 {
				t.Errorf("%s: %d connections, %d on %s: too few to judge", what, len(rs), n, host)
			}
			t.Logf("%s: %d connections on the predicted backends, %d on %s", what, len(rs), n, host)
		}
		check("b2 drained", drained2, drainReq3, no2, "b3")
		check("b3 drained too", drained3, readyReq3, only1, "b1")
		check("b3 ready", ready3, addReq2, no2, "b3")
		check("b2 added", readded2, time.Now(), full, "b2")
	})
	t.Logf("TestAdminAPI: %v", time.Since(start).Round(time.Millisecond))
}

// TestMetrics scrapes /metrics from the LB's namespace, parses it with the
// Prometheus text parser and checks the counters against the traffic sent, the
// gauges and counters of a stopped backend, and (this daemon has no token) that
// the admin endpoints are disabled.
func TestMetrics(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	start := time.Now()
	e := newHCEnv(t, "xme", false, func(tp *Topology) []hcFamily { return []hcFamily{ipv4Family(tp, "web")} })
	f := e.families[0]
	lbl := func(i int) map[string]string {
		return map[string]string{"service": f.service, "backend": f.backends[i-1]}
	}
	tx := map[string]string{"verdict": "tx", "reason": "forwarded"}

	t.Run("counters match the traffic", func(t *testing.T) {
		m0 := e.scrape(t)
		sum := e.load(t, f)
		if sum.OK != l4Clients {
			t.Fatalf("load: ok=%d failed=%d %v, want %d", sum.OK, sum.Failed, sum.Errors, l4Clients)
		}
		m1 := e.scrape(t)
		ds := e.mustStatus(t)

		var flows, packets float64
		for i := 1; i <= len(f.backends); i++ {
			host := "b" + strconv.Itoa(i)
			d := delta(m0, m1, "xlb_l4_new_flows_total", lbl(i))
			flows += d
			if d != float64(sum.ByBackend[host]) {
				t.Errorf("xlb_l4_new_flows_total%v grew by %v, the client made %d connections to %s", lbl(i), d, sum.ByBackend[host], host)
			}
			if v, _ := m1.value("xlb_l4_new_flows_total", lbl(i)); uint64(v) != ds.dpBackend(f.service, f.backends[i-1]).NewFlows {
				t.Errorf("xlb_l4_new_flows_total%v = %v, xlb status says %d", lbl(i), v, ds.dpBackend(f.service, f.backends[i-1]).NewFlows)
			}
			p := delta(m0, m1, "xlb_l4_packets_total", lbl(i))
			packets += p
			if p < 3*d || delta(m0, m1, "xlb_l4_bytes_total", lbl(i)) <= 0 {
				t.Errorf("%s: %v packets and %v bytes for %v connections", host, p, delta(m0, m1, "xlb_l4_bytes_total", lbl(i)), d)
			}
			t.Logf("%s: +%v new flows (client: %d), +%v packets", host, d, sum.ByBackend[host], p)
		}
		if flows != l4Clients {
			t.Errorf("xlb_l4_new_flows_total grew by %v in all, want the %d connections made", flows, l4Clients)
		}
		if d := delta(m0, m1, "xlb_xdp_verdicts_total", tx); d != packets || d < 3*l4Clients {
			t.Errorf("xlb_xdp_verdicts_total{tx,forwarded} grew by %v, the backends' packets by %v", d, packets)
		}
		if d := delta(m0, m1, "xlb_service_packets_total", map[string]string{"service": f.service}); d != packets {
			t.Errorf("xlb_service_packets_total grew by %v, the backends' packets by %v", d, packets)
		}
		if delta(m0, m1, "xlb_xdp_verdict_bytes_total", tx) <= 0 {
			t.Errorf("xlb_xdp_verdict_bytes_total{tx,forwarded} did not grow")
		}
		for _, s := range m1.series("xlb_xdp_verdicts_total", map[string]string{"verdict": "drop"}) {
			if v0, _ := m0.value("xlb_xdp_verdicts_total", labelMap(s)); s.GetCounter().GetValue() != v0 {
				t.Errorf("xlb_xdp_verdicts_total%v grew during the load", labelMap(s))
			}
		}
		for i := 1; i <= len(f.backends); i++ {
			if v, ok := m1.value("xlb_backend_up", lbl(i)); !ok || v != 1 {
				t.Errorf("xlb_backend_up%v = %v (%v), want 1", lbl(i), v, ok)
			}
			up := map[string]string{"service": f.service, "backend": f.backends[i-1], "state": "up"}
			if v, _ := m1.value("xlb_backend_state", up); v != 1 {
				t.Errorf("xlb_backend_state%v = %v, want 1", up, v)
			}
			ok := map[string]string{"service": f.service, "backend": f.backends[i-1], "result": "success"}
			if v, _ := m1.value("xlb_health_checks_total", ok); v < 1 {
				t.Errorf("xlb_health_checks_total%v = %v, want some", ok, v)
			}
		}
		if n := m1.histCount("xlb_health_check_duration_seconds", map[string]string{"result": "success"}); n == 0 {
			t.Errorf("xlb_health_check_duration_seconds has no successful sample")
		}
		if n := m1.histCount("xlb_reconcile_duration_seconds", nil); n == 0 {
			t.Errorf("xlb_reconcile_duration_seconds has no sample")
		}
		if v, _ := m1.value("xlb_maglev_rebuilds_total", nil); v < 1 {
			t.Errorf("xlb_maglev_rebuilds_total = %v, want at least the first table", v)
		}
		// Labels stay within the configuration.
		for _, name := range []string{"xlb_l4_new_flows_total", "xlb_l4_packets_total", "xlb_backend_up", "xlb_health_checks_total"} {
			for _, b := range m1.labelValues(name, "backend") {
				if !slices.Contains(f.backends, b) {
					t.Errorf("%s has a backend label %q outside the configuration", name, b)
				}
			}
		}
	})

	t.Run("a stopped backend", func(t *testing.T) {
		m0 := e.scrape(t)
		stop := time.Now()
		e.stopServer(t, 2)
		var m1 metrics
		at := waitFor(t, "xlb_backend_up of b2 = 0", downBound+3*time.Second, 25*time.Millisecond, func() bool {
			m1 = e.scrape(t)
			v, ok := m1.value("xlb_backend_up", lbl(2))
			return ok && v == 0
		})
		t.Logf("stop -> xlb_backend_up{b2} 0: %v", ms(at.Sub(stop)))
		if d := at.Sub(stop); d > downBound {
			t.Errorf("xlb_backend_up of b2 fell %v after the stop, want within %v", d, downBound)
		}
		for state, want := range map[string]float64{"down": 1, "up": 0, "draining": 0, "unresolved": 0} {
			l := map[string]string{"service": f.service, "backend": f.backends[1], "state": state}
			if v, ok := m1.value("xlb_backend_state", l); !ok || v != want {
				t.Errorf("xlb_backend_state%v = %v (%v), want %v", l, v, ok, want)
			}
		}
		fail := map[string]string{"service": f.service, "backend": f.backends[1], "result": "failure"}
		if d := delta(m0, m1, "xlb_health_checks_total", fail); d < hcUnhealthy {
			t.Errorf("xlb_health_checks_total%v grew by %v, want at least %d", fail, d, hcUnhealthy)
		}
		if d := delta(m0, m1, "xlb_maglev_rebuilds_total", nil); d < 1 {
			t.Errorf("xlb_maglev_rebuilds_total grew by %v after the transition, want at least 1", d)
		}
		if n0, n1 := m0.histCount("xlb_reconcile_duration_seconds", nil), m1.histCount("xlb_reconcile_duration_seconds", nil); n1 <= n0 {
			t.Errorf("xlb_reconcile_duration_seconds: %d samples, %d before the transition", n1, n0)
		}
		if n := m1.histCount("xlb_health_check_duration_seconds", map[string]string{"result": "failure"}); n < hcUnhealthy {
			t.Errorf("xlb_health_check_duration_seconds has %d failed samples", n)
		}
		for _, i := range []int{1, 3} {
			if v, _ := m1.value("xlb_backend_up", lbl(i)); v != 1 {
				t.Errorf("xlb_backend_up%v = %v, want 1", lbl(i), v)
			}
		}
		e.startServer(t, 2, false)
		e.waitStatus(t, "b2 back in the table", upBound+3*time.Second, func(ds *daemonStatus) bool { return e.inTables(ds, 2) })
	})

	t.Run("admin endpoints disabled without a token", func(t *testing.T) {
		const disabled = "admin API disabled"
		anyTok := bearer("anything")
		add := `{"service":"web","address":"198.18.0.14"}`
		e.checkRefused(t, []adminCase{
			{"add", "POST", "/lb/admin/backends", anyTok, add, 403, disabled},
			{"add, no header", "POST", "/lb/admin/backends", "", add, 403, disabled},
			{"drain", "PUT", "/lb/admin/backends/" + f.id(1) + "/drain", anyTok, "", 403, disabled},
			{"ready", "PUT", "/lb/admin/backends/" + f.id(1) + "/ready", anyTok, "", 403, disabled},
			{"delete", "DELETE", "/lb/admin/backends/" + f.id(1), anyTok, "", 403, disabled},
			{"config", "GET", "/lb/admin/config", anyTok, "", 403, disabled},
		})
		if code, _, stderr := e.cli(t, "backend", "drain", "--token", "anything", f.id(1)); code != 1 || !strings.Contains(stderr, "403") {
			t.Errorf("xlb backend drain without a token configured: exit %d %q, want 1 and 403", code, stderr)
		}
		if len(e.logEvents("admin API: no token configured, mutating endpoints are disabled", nil)) != 1 {
			t.Errorf("xlb did not warn that the admin endpoints are disabled")
		}
		// The read endpoints stay open.
		if code, _ := e.admin.call(t, "GET", "/lb/backends", "", ""); code != http.StatusOK {
			t.Errorf("GET /lb/backends: %d", code)
		}
	})
	t.Logf("TestMetrics: %v", time.Since(start).Round(time.Millisecond))
}

// delta is how much the matching series grew from m0 to m1.
func delta(m0, m1 metrics, name string, labels map[string]string) float64 {
	v0, _ := m0.value(name, labels)
	v1, _ := m1.value(name, labels)
	return v1 - v0
}

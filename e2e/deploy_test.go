package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/xlb-dev/xlb/internal/testenv"
)

// dashboardQueries are the PromQL expressions of deploy/grafana/xlb.json:
// its panels' targets and its variables' queries.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "grafana", "xlb.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Targets []struct{ Expr string } `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("deploy/grafana/xlb.json: %v", err)
	}
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Definition != "" {
			out = append(out, v.Definition)
		}
	}
	return out
}

var (
	metricName = regexp.MustCompile(`\b(?:xlb|process|go)_[a-z0-9_]+\b`)
	// The labels an expression names: in selectors, and by/without lists.
	selectorLabels = regexp.MustCompile(`([a-z_]+)\s*(?:=~|!~|!=|=)\s*"`)
	byLabels       = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	labelValuesOf  = regexp.MustCompile(`label_values\([^,]+,\s*([a-z_]+)\)`)
)

// TestGrafanaDashboardMetrics scrapes /metrics of the real xlb (an L4 and
// an L7 service, after traffic and health checks) and checks that every
// metric the Grafana dashboard queries is there, with every label the
// query selects or groups by (instance and job are Prometheus' own).
func TestGrafanaDashboardMetrics(t *testing.T) {
	queries := dashboardQueries(t)
	if len(queries) < 20 {
		t.Fatalf("only %d queries in the dashboard", len(queries))
	}
	e := newOpsEnv(t, "xgd")
	e.traffic(t, 8, "22000-22099")
	e.refusedRequest(t) // xlb_l7_refused_requests_total has a series once one is refused
	c := &http.Client{Timeout: 10 * time.Second}
	var fams map[string]*dto.MetricFamily
	// Health checks and a sweep have run by now; the counters of traffic
	// are in place at once.
	waitFor(t, "health check metrics", 5*time.Second, 100*time.Millisecond, func() bool {
		resp, err := c.Get(e.adminURL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		p := expfmt.NewTextParser(model.UTF8Validation)
		if fams, err = p.TextToMetricFamilies(bytes.NewReader(body)); err != nil {
			t.Fatalf("parse /metrics: %v", err)
		}
		return fams["xlb_health_checks_total"] != nil
	})
	family := func(name string) *dto.MetricFamily {
		if f := fams[name]; f != nil {
			return f
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok {
				if f := fams[base]; f != nil && f.GetType() == dto.MetricType_HISTOGRAM {
					return f
				}
			}
		}
		return nil
	}
	hasLabel := func(f *dto.MetricFamily, label string) bool {
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label {
					return true
				}
			}
		}
		return false
	}
	checked := map[string]bool{}
	for _, q := range queries {
		names := metricName.FindAllString(q, -1)
		slices.Sort(names)
		names = slices.Compact(names)
		if len(names) == 0 {
			t.Errorf("query names no metric: %s", q)
		}
		var labels []string
		for _, m := range selectorLabels.FindAllStringSubmatch(q, -1) {
			labels = append(labels, m[1])
		}
		for _, m := range byLabels.FindAllStringSubmatch(q, -1) {
			for l := range strings.SplitSeq(m[1], ",") {
				labels = append(labels, strings.TrimSpace(l))
			}
		}
		for _, m := range labelValuesOf.FindAllStringSubmatch(q, -1) {
			labels = append(labels, m[1])
		}
		for _, name := range names {
			f := family(name)
			if f == nil {
				t.Errorf("the dashboard queries %s, which xlb's /metrics lacks: %s", name, q)
				continue
			}
			checked[name] = true
			for _, l := range labels {
				if slices.Contains([]string{"instance", "job", "le", ""}, l) {
					continue
				}
				if !hasLabel(f, l) && len(names) == 1 {
					t.Errorf("%s has no label %q, which the dashboard uses: %s", name, l, q)
				}
			}
		}
	}
	t.Logf("%d queries over %d metrics, all in a real scrape", len(queries), len(checked))
	if !checked["xlb_l7_access_log_dropped_total"] || !checked["xlb_xdp_verdicts_total"] {
		t.Errorf("the dashboard misses panels: checked %v", checked)
	}
}

// refusedRequest sends the L7 listener a request line that is no HTTP: the
// HTTP/1 server refuses it with 400.
func (e *opsEnv) refusedRequest(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := dialInNetns(ctx, e.tp.Namespace("cl"), "tcp", net.JoinHostPort(VIP4, strconv.Itoa(opsL7Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "NOT HTTP AT ALL\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(conn).ReadString('\n')
	if !strings.Contains(line, " 400 ") {
		t.Fatalf("a request line that is no HTTP: %q, want 400", line)
	}
}

// unitService reads the [Service] keys of deploy/xlb.service (the last
// value of a key given more than once).
func unitService(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "xlb.service"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	section := ""
	for line := range strings.Lines(string(raw)) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, _ := strings.Cut(line, "=")
			out[k] = v
		}
	}
	return out
}

// capNumbers are the capabilities a unit may name here, by number.
var capNumbers = map[string]uint{
	"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24,
	"CAP_PERFMON": 38, "CAP_BPF": 39,
}

// TestDeployCapabilities runs the real daemon as deploy/xlb.service does:
// root with exactly the unit's CapabilityBoundingSet (setpriv), its
// ExecStart flags (--keep-datapath). With only those capabilities it
// attaches XDP and serves L4 and L7 traffic, checks health and applies a
// transition, reloads on SIGHUP (ExecReload), reopens the access log on
// SIGUSR1, and a restart adopts the datapath it kept.
func TestDeployCapabilities(t *testing.T) {
	unit := unitService(t)
	if !strings.Contains(unit["ExecStart"], " run ") || !strings.Contains(unit["ExecStart"], "--keep-datapath") ||
		!strings.Contains(unit["ExecReload"], "-HUP $MAINPID") || unit["Restart"] != "on-failure" {
		t.Errorf("deploy/xlb.service: ExecStart %q, ExecReload %q, Restart %q", unit["ExecStart"], unit["ExecReload"], unit["Restart"])
	}
	caps := strings.Fields(unit["CapabilityBoundingSet"])
	if len(caps) == 0 || unit["User"] != "root" {
		t.Fatalf("CapabilityBoundingSet %q, User %q: want a bounded root", unit["CapabilityBoundingSet"], unit["User"])
	}
	bounding := "-all"
	var mask uint64
	for _, c := range caps {
		n, ok := capNumbers[c]
		if !ok {
			t.Fatalf("CapabilityBoundingSet names %s, unknown here", c)
		}
		mask |= 1 << n
		bounding += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	e := newOpsEnv(t, "xcap", withWrapper("setpriv", "--bounding-set", bounding, "--"), withRunArgs("--keep-datapath"))
	// What the unit asks for and this test may give (its own bounding set).
	self, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var bnd uint64
	if m := regexp.MustCompile(`CapBnd:\s+([0-9a-f]+)`).FindSubmatch(self); m != nil {
		fmt.Sscanf(string(m[1]), "%x", &bnd)
	}
	for _, c := range caps {
		if bnd&(1<<capNumbers[c]) == 0 {
			t.Logf("%s: not in this test's own bounding set, so xlb runs without it here", c)
		}
	}
	mask &= bnd
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.xlb.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`CapEff:\s+([0-9a-f]+)`).FindSubmatch(status); m == nil || string(m[1]) != fmt.Sprintf("%016x", mask) {
		t.Fatalf("xlb runs with CapEff %q, want %016x (the unit's set)", m, mask)
	}
	if testing.Verbose() {
		t.Logf("xlb runs with CapEff %016x", mask)
	}
	e.traffic(t, 8, "23000-23099")

	c := &http.Client{Timeout: 10 * time.Second}
	backendState := func(id string) string {
		resp, err := c.Get(e.adminURL + "/lb/backends")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var list []struct{ ID, State string }
		json.NewDecoder(resp.Body).Decode(&list)
		for _, b := range list {
			if b.ID == id {
				return b.State
			}
		}
		return ""
	}
	e.stopServer(t, "b2")
	down := "ops-l4@" + e.tp.BackendAddr4(2)
	waitFor(t, down+" down", 5*time.Second, 50*time.Millisecond, func() bool { return backendState(down) == "down" })

	if err := e.xlb.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	e.tp.WaitStderr(t, e.xlb, `msg="config reloaded"`, 5*time.Second)
	if err := e.xlb.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	e.tp.WaitStderr(t, e.xlb, `msg="access log reopened"`, 5*time.Second)

	// A restart (an upgrade) under the same unit adopts what it kept.
	if err := e.tp.Stop(e.xlb); err != nil {
		t.Fatalf("xlb after SIGTERM: %v", err)
	}
	if _, stderr := e.tp.Output(e.xlb); !strings.Contains(stderr, "datapath kept") {
		t.Fatalf("xlb did not keep its datapath:\n%s", stderr)
	}
	e.servers["b2"] = e.tp.serveHybrid(t, 2, opsL4Port, opsL7Port)
	e.xlb = e.startXLB(t)
	e.tp.WaitStderr(t, e.xlb, "adopted pinned maps", 5*time.Second)
	e.traffic(t, 8, "23100-23199")
}

// TestMakeInstall runs `make install` into a DESTDIR with another PREFIX:
// the binary, the unit pointing at them, the config (kept on a second
// install), completions and docs, each where it belongs.
func TestMakeInstall(t *testing.T) {
	testenv.RequireTool(t, "make", "make")
	dest := t.TempDir()
	install := func() string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "make", "--no-print-directory", "install", "DESTDIR="+dest, "PREFIX=/opt/xlb", "SYSCONFDIR=/opt/xlb/etc")
		cmd.Dir = repoRoot(t)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make install: %v\n%s", err, out)
		}
		return string(out)
	}
	install()
	for _, f := range []string{"opt/xlb/bin/xlb", "opt/xlb/lib/systemd/system/xlb.service", "opt/xlb/etc/xlb/xlb.toml",
		"opt/xlb/share/bash-completion/completions/xlb", "opt/xlb/share/zsh/site-functions/_xlb",
		"opt/xlb/share/doc/xlb/README.md", "opt/xlb/share/doc/xlb/grafana/xlb.json"} {
		if fi, err := os.Stat(filepath.Join(dest, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(dest, "opt/xlb/lib/systemd/system/xlb.service"))
	if !strings.Contains(string(unit), "ExecStart=/opt/xlb/bin/xlb run -c /opt/xlb/etc/xlb/xlb.toml --keep-datapath") ||
		strings.Contains(string(unit), "/usr/local") {
		t.Errorf("the installed unit does not point at the PREFIX:\n%s", unit)
	}
	out, err := exec.Command(filepath.Join(dest, "opt/xlb/bin/xlb"), "validate", "-c", filepath.Join(dest, "opt/xlb/etc/xlb/xlb.toml")).CombinedOutput()
	if err != nil {
		t.Errorf("the installed xlb on the installed config: %v %s", err, out)
	}
	cfg := filepath.Join(dest, "opt/xlb/etc/xlb/xlb.toml")
	if err := os.WriteFile(cfg, []byte("# the operator's\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if out := install(); !strings.Contains(out, "left as it is") {
		t.Errorf("second install said:\n%s", out)
	}
	if b, _ := os.ReadFile(cfg); string(b) != "# the operator's\n" {
		t.Errorf("a second install overwrote the config: %q", b)
	}
}

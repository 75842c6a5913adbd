package statuspage

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xlb-dev/xlb/admin"
	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/loader"
)

const secret = "s3cret-admin-token-value"

// fakeSource is a daemon with one L4 and one L7 service; it also serves as
// the admin API's controller, so that the page is tested as mounted.
type fakeSource struct {
	events *control.Events
	writes int // admin calls that would change something
}

func (f *fakeSource) Health(string) (control.HealthReport, error) {
	return control.HealthReport{Status: "degraded", HealthyBackends: 2, TotalBackends: 3}, nil
}

func (f *fakeSource) Backends(string) ([]control.BackendInfo, error) {
	return []control.BackendInfo{
		{ID: "web@198.18.0.11", Service: "web", Address: "198.18.0.11", Weight: 1, State: "up", Health: "healthy", Admin: "ready"},
		{ID: "web@198.18.0.12", Service: "web", Address: "198.18.0.12", Weight: 1, State: "down", Health: "unhealthy", Admin: "ready"},
		{ID: "api@198.18.0.11:8080", Service: "api", Address: "198.18.0.11", Port: 8080, Weight: 1, State: "up", Health: "healthy", Admin: "ready"},
	}, nil
}

func (f *fakeSource) Services() []control.ServiceSummary {
	return []control.ServiceSummary{
		{Name: "web", VIP: "198.19.0.10", Port: 80, Protocol: "tcp", Mode: "l4", Policy: "ip_hash, dsr"},
		{Name: "api", VIP: "198.19.0.10", Port: 8080, Protocol: "tcp", Mode: "l7", Policy: "round_robin"},
	}
}

func (f *fakeSource) Datapath() (*loader.Snapshot, error) {
	return &loader.Snapshot{Verdicts: []loader.VerdictStatus{{Verdict: "tx", Reason: "forwarded", Packets: 10}}}, nil
}

func (f *fakeSource) Events() *control.Events { return f.events }

func (f *fakeSource) AddBackend(control.AddRequest) (control.BackendInfo, error) {
	f.writes++
	return control.BackendInfo{}, nil
}

func (f *fakeSource) SetAdminState(string, control.AdminState) (control.BackendInfo, error) {
	f.writes++
	return control.BackendInfo{}, nil
}

func (f *fakeSource) Remove(string) (control.BackendInfo, error) {
	f.writes++
	return control.BackendInfo{}, nil
}

func (f *fakeSource) Config() *config.Config { return &config.Config{} }

// newTestPage mounts a page over a fakeSource on an admin API with a token.
func newTestPage(t *testing.T, g prometheus.Gatherer) (*httptest.Server, *fakeSource, *Page) {
	t.Helper()
	src := &fakeSource{events: control.NewEvents(16)}
	if g == nil {
		g = prometheus.NewRegistry()
	}
	page := New(src, g, Options{Version: "xlb test", Interval: time.Hour})
	// Not Run: the tests take the samples themselves. Ending it is what
	// ends the event streams.
	srv := httptest.NewServer(admin.New(src, admin.Options{Token: secret, Status: page}))
	t.Cleanup(func() {
		page.runOnce.Do(func() { close(page.done) })
		srv.Close()
	})
	return srv, src, page
}

func fetch(t *testing.T, method, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(`{"service":"web","address":"198.18.0.13"}`))
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestPageIsSelfContainedAndSafe: every file of the page is served with a
// Content-Security-Policy that allows this origin only and nosniff; the
// HTML has no inline script, style or handler and names nothing outside
// /lb/status and the admin listener; no answer carries the token; nothing
// under /lb/status takes a write, and GET / leads to the page.
func TestPageIsSelfContainedAndSafe(t *testing.T) {
	srv, src, _ := newTestPage(t, nil)
	for path, ctype := range map[string]string{
		"/lb/status": "text/html", "/lb/status/app.js": "text/javascript", "/lb/status/style.css": "text/css",
		"/lb/status/favicon.svg": "image/svg+xml", "/lb/status/data": "application/json",
	} {
		resp, body := fetch(t, http.MethodGet, srv.URL+path)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) {
			t.Errorf("GET %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		csp := resp.Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s: CSP %q lacks %q", path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe") {
			t.Errorf("GET %s: CSP %q allows unsafe sources", path, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no X-Content-Type-Options: nosniff", path)
		}
		if strings.Contains(body, secret) {
			t.Errorf("GET %s shows the admin token", path)
		}
		body = strings.ReplaceAll(body, "http://www.w3.org/2000/svg", "") // a namespace, loaded from nowhere
		for _, bad := range []string{"http://", "https://", "//fonts", "cdn"} {
			if path != "/lb/status/data" && strings.Contains(body, bad) {
				t.Errorf("GET %s refers to %q: the page loads nothing from elsewhere", path, bad)
			}
		}
	}
	_, html := fetch(t, http.MethodGet, srv.URL+"/lb/status")
	if m := regexp.MustCompile(`<script(?:\s[^>]*)?>`).FindAllString(html, -1); len(m) != 1 || !strings.Contains(m[0], `src="/lb/status/app.js"`) {
		t.Errorf("scripts in the page: %q, want the one file", m)
	}
	if regexp.MustCompile(`(?i)\son[a-z]+=|\sstyle=|<style`).MatchString(html) {
		t.Error("the page has an inline handler or style")
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		for _, path := range []string{"/lb/status", "/lb/status/data", "/lb/status/events"} {
			if resp, _ := fetch(t, m, srv.URL+path); resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: %d, want 405", m, path, resp.StatusCode)
			}
		}
	}
	if resp, _ := fetch(t, http.MethodPost, srv.URL+"/lb/admin/backends"); resp.StatusCode != http.StatusUnauthorized || src.writes != 0 {
		t.Errorf("a write without the token: %d, %d writes", resp.StatusCode, src.writes)
	}
	if resp, _ := fetch(t, http.MethodGet, srv.URL+"/"); resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/lb/status" {
		t.Errorf("GET /: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// TestDataSamplesRates: /lb/status/data has the state and the samples,
// whose rates come from the metrics' increase between two readings.
func TestDataSamplesRates(t *testing.T) {
	reg := prometheus.NewRegistry()
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricL7Requests}, []string{"service", "backend", "code"})
	pkts := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricPackets}, []string{"service"})
	l4 := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricL4Packets}, []string{"service", "backend"})
	verdicts := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricVerdicts}, []string{"verdict", "reason"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: metricL7Duration, Buckets: []float64{.001, .01, .1}}, []string{"service"})
	reg.MustRegister(reqs, pkts, l4, verdicts, dur)
	srv, _, page := newTestPage(t, reg)

	t0 := time.Now()
	page.series.Sample(t0)
	reqs.WithLabelValues("api", "198.18.0.11:8080", "200").Add(18)
	reqs.WithLabelValues("api", "198.18.0.11:8080", "502").Add(2)
	pkts.WithLabelValues("web").Add(400)
	l4.WithLabelValues("web", "198.18.0.11").Add(300)
	verdicts.WithLabelValues("tx", "forwarded").Add(400)
	for range 10 {
		dur.WithLabelValues("api").Observe(0.005) // all in (1ms, 10ms]
	}
	for range 10 {
		dur.WithLabelValues("api").Observe(0.05) // all in (10ms, 100ms]
	}
	page.series.Sample(t0.Add(2 * time.Second))

	resp, body := fetch(t, http.MethodGet, srv.URL+"/lb/status/data?since=0")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var d struct {
		Health   *control.HealthReport    `json:"health"`
		Services []control.ServiceSummary `json:"services"`
		Backends []control.BackendInfo    `json:"backends"`
		Datapath *loader.Snapshot         `json:"datapath"`
		Samples  []Sample                 `json:"samples"`
		Interval int64                    `json:"interval_ms"`
	}
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatal(err)
	}
	if d.Health == nil || d.Health.Status != "degraded" || len(d.Services) != 2 || len(d.Backends) != 3 || d.Datapath == nil || len(d.Samples) != 1 {
		t.Fatalf("data = %s", body)
	}
	sm := d.Samples[0]
	api, web := sm.Services["api"], sm.Services["web"]
	if api.Requests != 10 || api.Errors != 1 || web.Packets != 200 || sm.Backends["web@198.18.0.11"] != 150 ||
		sm.Backends["api@198.18.0.11:8080"] != 10 || sm.Verdicts["tx/forwarded"] != 200 {
		t.Errorf("sample = %+v", sm)
	}
	if api.Mean != 27.5 || api.P50 != 10 || math.Abs(api.P99-98.2) > 0.01 {
		t.Errorf("latency mean %v p50 %v p99 %v, want 27.5, 10, 98.2", api.Mean, api.P50, api.P99)
	}
	if _, body := fetch(t, http.MethodGet, srv.URL+"/lb/status/data?since=1"); !strings.Contains(body, `"samples":[]`) {
		t.Errorf("since=1 still returns samples: %s", body)
	}
}

// TestQuantile checks the interpolation against hand-computed values.
func TestQuantile(t *testing.T) {
	bounds := []float64{1, 2, 4}
	cum := []float64{10, 30, 40} // 10 in (0,1], 20 in (1,2], 10 in (2,4]
	for _, tc := range []struct{ q, want float64 }{{0.1, 0.4}, {0.5, 1.5}, {0.75, 2}, {0.875, 3}, {1, 4}} {
		if got := quantile(tc.q, bounds, cum, 40); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if got := quantile(0.99, bounds, cum, 50); got != 4 { // 10 past the last bound
		t.Errorf("past the last bound: %v, want 4", got)
	}
	if got := quantile(0.5, bounds, []float64{0, 0, 0}, 0); got != 0 {
		t.Errorf("no observations: %v", got)
	}
}

// TestEventStream: the stream sends the events kept, then each new one as
// it is added, and resumes after Last-Event-ID.
func TestEventStream(t *testing.T) {
	srv, src, _ := newTestPage(t, nil)
	src.events.Add(control.EventStart, "", "", "started with 2 services")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/lb/status/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	rd := bufio.NewReader(resp.Body)
	next := func() control.Event {
		t.Helper()
		var id string
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("stream ended: %v", err)
			}
			if v, ok := strings.CutPrefix(line, "id: "); ok {
				id = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(line, "data: "); ok {
				var ev control.Event
				if err := json.Unmarshal([]byte(v), &ev); err != nil {
					t.Fatal(err)
				}
				if id == "" || id != strings.TrimSpace(strings.Split(strings.Split(v, `"seq":`)[1], ",")[0]) {
					t.Errorf("event id %q for %s", id, v)
				}
				return ev
			}
		}
	}
	if ev := next(); ev.Seq != 1 || ev.Kind != control.EventStart {
		t.Errorf("backlog: %+v", ev)
	}
	src.events.Add(control.EventHealth, "web", "web@198.18.0.12", "healthy → unhealthy (refused)")
	if ev := next(); ev.Seq != 2 || ev.Backend != "web@198.18.0.12" || !strings.Contains(ev.Message, "unhealthy") {
		t.Errorf("live: %+v", ev)
	}
	cancel()

	// A reconnection after event 1 gets event 2 first.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	req, _ = http.NewRequestWithContext(ctx2, http.MethodGet, srv.URL+"/lb/status/events", nil)
	req.Header.Set("Last-Event-ID", "1")
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	rd = bufio.NewReader(resp2.Body)
	if ev := next(); ev.Seq != 2 {
		t.Errorf("resumed at %+v, want event 2", ev)
	}
}

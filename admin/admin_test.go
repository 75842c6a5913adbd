package admin

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/control"
)

const testConfig = `
[health_check]
enabled = false

[[service]]
name = "web"
vip = "198.19.0.10"
port = 80
  [[service.backend]]
  address = "198.18.0.11"
  [[service.backend]]
  address = "198.18.0.12"

[[service]]
name = "api"
vip = "198.19.0.10"
port = 8080
mode = "l7"
  [[service.backend]]
  address = "198.18.0.11"
  port = 3001
`

// newTestServer runs the admin API over a real controller (no datapath: the
// L4 maps are exercised by the loader and end-to-end tests).
func newTestServer(t *testing.T, token string) (*httptest.Server, *control.Controller) {
	t.Helper()
	cfg, err := config.Parse([]byte(testConfig), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	ctl := control.New(cfg, control.Options{Logger: log, Metrics: control.NewMetrics(reg)})
	if err := ctl.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(ctl, Options{Token: token, Gatherer: reg, Logger: log}))
	t.Cleanup(srv.Close)
	return srv, ctl
}

func call(t *testing.T, srv *httptest.Server, method, path, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func backends(t *testing.T, srv *httptest.Server) []control.BackendInfo {
	t.Helper()
	code, body := call(t, srv, "GET", "/lb/backends", "", "")
	if code != 200 {
		t.Fatalf("GET /lb/backends: %d %s", code, body)
	}
	var list []control.BackendInfo
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatal(err)
	}
	return list
}

func TestAdminRejectsWithoutChangingState(t *testing.T) {
	srv, _ := newTestServer(t, "s3cret")
	before := backends(t, srv)
	cases := []struct {
		name, method, path, token, body string
		code                            int
	}{
		{"no token", "PUT", "/lb/admin/backends/web@198.18.0.11/drain", "", "", 401},
		{"wrong token", "PUT", "/lb/admin/backends/web@198.18.0.11/drain", "nope", "", 403},
		{"wrong token add", "POST", "/lb/admin/backends", "s3cret-", `{"service":"web","address":"198.18.0.13"}`, 403},
		{"no token config", "GET", "/lb/admin/config", "", "", 401},
		{"malformed json", "POST", "/lb/admin/backends", "s3cret", `{"service":"web",`, 400},
		{"unknown field", "POST", "/lb/admin/backends", "s3cret", `{"service":"web","address":"198.18.0.13","wieght":2}`, 400},
		{"missing address", "POST", "/lb/admin/backends", "s3cret", `{"service":"web"}`, 400},
		{"unknown service", "POST", "/lb/admin/backends", "s3cret", `{"service":"nope","address":"198.18.0.13"}`, 400},
		{"bad address", "POST", "/lb/admin/backends", "s3cret", `{"service":"web","address":"198.18.0"}`, 400},
		{"family mismatch", "POST", "/lb/admin/backends", "s3cret", `{"service":"web","address":"2001:db8::1"}`, 400},
		{"bad weight", "POST", "/lb/admin/backends", "s3cret", `{"service":"web","address":"198.18.0.13","weight":70000}`, 400},
		{"port on l4", "POST", "/lb/admin/backends", "s3cret", `{"service":"web","address":"198.18.0.13","port":81}`, 400},
		{"duplicate", "POST", "/lb/admin/backends", "s3cret", `{"service":"web","address":"198.18.0.11"}`, 409},
		{"unknown backend drain", "PUT", "/lb/admin/backends/web@198.18.0.99/drain", "s3cret", "", 404},
		{"unknown backend delete", "DELETE", "/lb/admin/backends/web@198.18.0.99", "s3cret", "", 404},
		{"unknown service health", "GET", "/lb/health?service=nope", "", "", 400},
		{"wrong method", "GET", "/lb/admin/backends", "s3cret", "", 405},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := call(t, srv, tc.method, tc.path, tc.token, tc.body)
			if code != tc.code {
				t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.path, code, body, tc.code)
			}
			if code >= 400 && code != 405 && !strings.Contains(body, `"error"`) {
				t.Fatalf("error answer without a message: %s", body)
			}
		})
	}
	if after := backends(t, srv); !reflect.DeepEqual(before, after) {
		t.Fatalf("state changed by rejected requests:\nbefore %+v\nafter  %+v", before, after)
	}
}

func TestAdminDisabledWithoutToken(t *testing.T) {
	srv, _ := newTestServer(t, "")
	for _, tc := range []struct{ method, path, token string }{
		{"PUT", "/lb/admin/backends/web@198.18.0.11/drain", ""},
		{"PUT", "/lb/admin/backends/web@198.18.0.11/drain", "anything"},
		{"POST", "/lb/admin/reload", ""},
	} {
		if code, body := call(t, srv, tc.method, tc.path, tc.token, ""); code != 403 || !strings.Contains(body, "disabled") {
			t.Fatalf("%s %s: %d %s, want 403 disabled", tc.method, tc.path, code, body)
		}
	}
	// Read endpoints stay open.
	if code, _ := call(t, srv, "GET", "/lb/health", "", ""); code != 200 {
		t.Fatalf("GET /lb/health: %d", code)
	}
}

func TestAdminBackendLifecycle(t *testing.T) {
	srv, _ := newTestServer(t, "s3cret")
	find := func(id string) *control.BackendInfo {
		for _, b := range backends(t, srv) {
			if b.ID == id {
				return &b
			}
		}
		return nil
	}
	code, body := call(t, srv, "POST", "/lb/admin/backends", "s3cret", `{"service":"web","address":"198.18.0.13","weight":2}`)
	if code != 201 {
		t.Fatalf("add: %d %s", code, body)
	}
	if b := find("web@198.18.0.13"); b == nil || b.Weight != 2 || b.State != "up" || b.FromConfig {
		t.Fatalf("added backend: %+v", b)
	}
	code, body = call(t, srv, "POST", "/lb/admin/backends", "s3cret", `{"service":"api","address":"198.18.0.12","port":3002}`)
	if code != 201 || find("api@198.18.0.12:3002") == nil {
		t.Fatalf("add l7: %d %s", code, body)
	}
	if code, body := call(t, srv, "PUT", "/lb/admin/backends/web@198.18.0.11/drain", "s3cret", ""); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	if b := find("web@198.18.0.11"); b.State != "draining" || b.Admin != "draining" {
		t.Fatalf("drained backend: %+v", b)
	}
	if code, body := call(t, srv, "PUT", "/lb/admin/backends/web@198.18.0.11/ready", "s3cret", ""); code != 200 {
		t.Fatalf("ready: %d %s", code, body)
	}
	if b := find("web@198.18.0.11"); b.State != "up" || b.Admin != "ready" {
		t.Fatalf("readied backend: %+v", b)
	}
	if code, body := call(t, srv, "DELETE", "/lb/admin/backends/web@198.18.0.13", "s3cret", ""); code != 202 {
		t.Fatalf("remove: %d %s", code, body)
	}
	if b := find("web@198.18.0.13"); b == nil || b.Admin != "removing" || b.State != "draining" {
		t.Fatalf("removing backend: %+v", b)
	}
	code, body = call(t, srv, "GET", "/lb/admin/config", "s3cret", "")
	if code != 200 || !strings.Contains(body, "198.19.0.10") {
		t.Fatalf("config: %d %s", code, body)
	}
	code, body = call(t, srv, "GET", "/metrics", "", "")
	if code != 200 || !strings.Contains(body, `xlb_backend_up{backend="198.18.0.11",service="web"} 1`) {
		t.Fatalf("metrics: %d\n%s", code, body)
	}
}

func TestAdminHealth(t *testing.T) {
	srv, _ := newTestServer(t, "s3cret")
	code, body := call(t, srv, "GET", "/lb/health?service=web", "", "")
	var rep control.HealthReport
	if err := json.Unmarshal([]byte(body), &rep); err != nil || code != 200 {
		t.Fatalf("health: %d %s", code, body)
	}
	if rep.Status != "healthy" || rep.HealthyBackends != 2 || rep.TotalBackends != 2 {
		t.Fatalf("health report %+v", rep)
	}
}

package l7

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"
)

func TestLBEndpoints(t *testing.T) {
	okAddr := startBackend(t, named("ok"))
	errAddr := startBackendOn(t, "127.0.0.2", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", 500)
	}))
	otherAddr := startBackend(t, named("other"))
	h := newHarness(t)
	web := svcConf("web", listenA, okAddr, errAddr)
	web.LBEndpoints = true
	other := svcConf("other", listenA, otherAddr)
	other.Hosts = []string{"other.example"}
	h.update(web, other)
	cl := testClient(t)
	for range 4 {
		get(t, cl, h.url(listenA, "/"))
	}

	lbGet := func(host, path string) (int, []byte, http.Header) {
		t.Helper()
		req, _ := http.NewRequest("GET", h.url(listenA, path), nil)
		req.Host = host
		resp, err := cl.Do(req)
		mustf(t, err, "GET %s", path)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b, resp.Header
	}

	t.Run("metrics fields", func(t *testing.T) {
		code, body, hdr := lbGet("web.example", "/lb/metrics")
		if code != 200 || hdr.Get("Content-Type") != "application/json" {
			t.Fatalf("%d %s", code, hdr.Get("Content-Type"))
		}
		var raw map[string]any
		mustf(t, json.Unmarshal(body, &raw), "json")
		for _, k := range []string{"total_requests", "total_errors", "requests_per_second", "avg_latency_us",
			"healthy_backends", "total_backends", "backends", "services",
			"successful_requests", "success_rate", "status_codes"} {
			if _, ok := raw[k]; !ok {
				t.Errorf("no %q in %s", k, body)
			}
		}
		be := raw["backends"].([]any)[0].(map[string]any)
		var keys []string
		for k := range be {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range []string{"address", "state", "active_connections", "total_requests", "total_errors", "avg_latency_us", "error_rate"} {
			if _, ok := be[k]; !ok {
				t.Errorf("backend has no %q: %v", k, keys)
			}
		}
		// This listener shows only its services with LBEndpoints.
		if svcs := raw["services"].([]any); len(svcs) != 1 {
			t.Errorf("%d services shown, want 1 (web)", len(svcs))
		}
	})

	t.Run("metrics values", func(t *testing.T) {
		_, body, _ := lbGet("x", "/lb/metrics?service=web")
		var m MetricsReport
		mustf(t, json.Unmarshal(body, &m), "json")
		if m.Service != "web" || m.TotalRequests != 4 || m.TotalErrors != 2 || m.HealthyBackends != 2 ||
			m.TotalBackends != 2 || m.AvgLatencyUs <= 0 || m.RequestsPerSecond < 0 || len(m.Services) != 0 {
			t.Errorf("service report: %+v", m)
		}
		if m.SuccessfulRequests != 2 || m.SuccessRate != 0.5 || len(m.StatusCodes) != 2 ||
			m.StatusCodes["200"] != 2 || m.StatusCodes["500"] != 2 {
			t.Errorf("success %d rate %v codes %v", m.SuccessfulRequests, m.SuccessRate, m.StatusCodes)
		}
		want := map[string][2]float64{okAddr.String(): {0, 0}, errAddr.String(): {2, 1}}
		for _, b := range m.Backends {
			w, ok := want[b.Address]
			if !ok || b.State != "up" || b.TotalRequests != 2 || float64(b.TotalErrors) != w[0] ||
				b.ErrorRate != w[1] || b.AvgLatencyUs <= 0 || b.ActiveConnections != 0 || b.ID != "web@"+b.Address {
				t.Errorf("backend %+v", b)
			}
		}
	})

	t.Run("unknown service", func(t *testing.T) {
		if code, body, _ := lbGet("x", "/lb/metrics?service=nope"); code != 400 || !strings.Contains(string(body), "unknown service") {
			t.Errorf("%d %s", code, body)
		}
	})

	t.Run("health", func(t *testing.T) {
		code, body, _ := lbGet("x", "/lb/health")
		var rep HealthReport
		mustf(t, json.Unmarshal(body, &rep), "json")
		if code != 200 || rep.Status != "healthy" || rep.HealthyBackends != 2 {
			t.Errorf("%d %+v", code, rep)
		}
		h.srv.SetBackendState("web", "web@"+okAddr.String(), StateDown)
		_, body, _ = lbGet("x", "/lb/health")
		mustf(t, json.Unmarshal(body, &rep), "json")
		if rep.Status != "degraded" {
			t.Errorf("one down: %+v", rep)
		}
		h.srv.SetBackendState("web", "web@"+errAddr.String(), StateDown)
		code, body, _ = lbGet("x", "/lb/health")
		mustf(t, json.Unmarshal(body, &rep), "json")
		if code != 503 || rep.Status != "unhealthy" {
			t.Errorf("all down: %d %+v", code, rep)
		}
		h.srv.SetBackendState("web", "web@"+okAddr.String(), StateUp)
		h.srv.SetBackendState("web", "web@"+errAddr.String(), StateUp)
	})

	t.Run("off: proxied like any path", func(t *testing.T) {
		code, body, hdr := lbGet("other.example", "/lb/metrics")
		if code != 200 || string(body) != "other" || hdr.Get("X-Backend") != "other" {
			t.Errorf("%d %q", code, body)
		}
	})

	t.Run("LBHandler covers every service", func(t *testing.T) {
		rec := httptest.NewRecorder()
		h.srv.LBHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/lb/metrics", nil))
		var m MetricsReport
		mustf(t, json.Unmarshal(rec.Body.Bytes(), &m), "json")
		var names []string
		for _, s := range m.Services {
			names = append(names, s.Service)
		}
		if !slices.Equal(names, []string{"other", "web"}) || m.TotalRequests != 5 || m.TotalBackends != 3 || len(m.Backends) != 3 {
			t.Errorf("services %v, %d requests, %d backends", names, m.TotalRequests, m.TotalBackends)
		}
		rec = httptest.NewRecorder()
		h.srv.LBHandler().ServeHTTP(rec, httptest.NewRequest("POST", "/lb/health", nil))
		if rec.Code != 405 {
			t.Errorf("POST: %d", rec.Code)
		}
	})
}

func TestRateRing(t *testing.T) {
	var r rateRing
	const now = 1_700_000_000
	for sec := int64(now - 15); sec <= now; sec++ {
		for range int(sec - (now - 15)) { // 0, 1, 2, ... 15 requests
			r.add(sec)
		}
	}
	// The 10 complete seconds before now: 5+6+...+14 = 95.
	if got := r.rate(now); got != 9.5 {
		t.Errorf("rate = %v, want 9.5", got)
	}
	// Seconds later, stale slots do not count.
	if got := r.rate(now + 30); got != 0 {
		t.Errorf("rate 30 s later = %v, want 0", got)
	}
	if got := r.rate(now + 5); got != (10+11+12+13+14+15)/10.0 { // now-5 .. now+4
		t.Errorf("rate 5 s later = %v", got)
	}
}

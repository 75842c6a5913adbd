package l7

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
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
			"successful_requests", "failed_requests", "success_rate", "status_codes"} {
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
		for _, k := range []string{"address", "state", "active_connections", "total_requests", "total_errors", "failed_requests", "avg_latency_us", "error_rate"} {
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

// metricsWire is /lb/metrics as a client reads it: the JSON names, with
// pointers so that a missing field shows.
type metricsWire struct {
	Total      *uint64           `json:"total_requests"`
	Successful *uint64           `json:"successful_requests"`
	Failed     *uint64           `json:"failed_requests"`
	Errors     *uint64           `json:"total_errors"`
	Codes      map[string]uint64 `json:"status_codes"`
	Services   []metricsWire     `json:"services"`
	Backends   []struct {
		Address string  `json:"address"`
		Total   *uint64 `json:"total_requests"`
		Failed  *uint64 `json:"failed_requests"`
		Errors  *uint64 `json:"total_errors"`
	} `json:"backends"`
}

// TestMetricsFailedRequests: /lb/metrics counts the failed requests (gateway
// errors such as the 502 of an unreachable backend, and 5xx answers) in
// failed_requests for the service, the whole and each backend, next to
// total_errors, and total_requests = successful_requests + failed_requests.
func TestMetricsFailedRequests(t *testing.T) {
	fail500 := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) })
	tests := []struct {
		name     string
		backends []string // "ok", "500" or "dead" (nothing listens)
		method   string   // POST is not retried on another backend
		n        int
		failed   uint64
		codes    map[string]uint64
		perBack  map[string]uint64 // failed_requests by backend kind
	}{
		{name: "unreachable backend", backends: []string{"dead"}, method: "GET", n: 3, failed: 3,
			codes: map[string]uint64{"502": 3}, perBack: map[string]uint64{"dead": 3}},
		{name: "one of two unreachable", backends: []string{"ok", "dead"}, method: "POST", n: 4, failed: 2,
			codes: map[string]uint64{"200": 2, "502": 2}, perBack: map[string]uint64{"ok": 0, "dead": 2}},
		{name: "5xx answers", backends: []string{"ok", "500"}, method: "GET", n: 4, failed: 2,
			codes: map[string]uint64{"200": 2, "500": 2}, perBack: map[string]uint64{"ok": 0, "500": 2}},
		{name: "no failures", backends: []string{"ok"}, method: "GET", n: 3, failed: 0,
			codes: map[string]uint64{"200": 3}, perBack: map[string]uint64{"ok": 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind := map[string]string{} // address -> backend kind
			var addrs []netip.AddrPort
			for i, k := range tt.backends {
				var a netip.AddrPort
				switch k {
				case "ok":
					a = startBackendOn(t, fmt.Sprintf("127.0.0.%d", i+1), named("ok"))
				case "500":
					a = startBackendOn(t, fmt.Sprintf("127.0.0.%d", i+1), fail500)
				case "dead":
					a = deadAddr(t)
				}
				kind[a.String()] = k
				addrs = append(addrs, a)
			}
			h := newHarness(t)
			h.update(svcConf("web", listenA, addrs...))
			cl := testClient(t)
			for range tt.n {
				req, _ := http.NewRequest(tt.method, h.url(listenA, "/"), strings.NewReader("x"))
				// A connection each: after a 502 to a POST whose body it did
				// not forward, the proxy closes the client connection without
				// saying Connection: close, and a reuse can race the close.
				req.Close = true
				resp, err := cl.Do(req)
				mustf(t, err, "%s", tt.method)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}

			for _, path := range []string{"/lb/metrics?service=web", "/lb/metrics"} {
				rec := httptest.NewRecorder()
				h.srv.LBHandler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
				var m metricsWire
				mustf(t, json.Unmarshal(rec.Body.Bytes(), &m), "json")
				reports := map[string]metricsWire{path: m}
				if len(m.Services) > 0 {
					reports[path+" services[0]"] = m.Services[0]
				} else if path == "/lb/metrics" {
					t.Errorf("%s: no services[]", path)
				}
				for where, r := range reports {
					if r.Total == nil || r.Successful == nil || r.Failed == nil || r.Errors == nil {
						t.Fatalf("%s: a count is missing: %s", where, rec.Body)
					}
					if *r.Total != uint64(tt.n) || *r.Failed != tt.failed || *r.Successful != uint64(tt.n)-tt.failed {
						t.Errorf("%s: total %d successful %d failed %d, want %d, %d, %d",
							where, *r.Total, *r.Successful, *r.Failed, tt.n, uint64(tt.n)-tt.failed, tt.failed)
					}
					if *r.Total != *r.Successful+*r.Failed || *r.Errors != *r.Failed {
						t.Errorf("%s: total %d != successful %d + failed %d, or total_errors %d != failed",
							where, *r.Total, *r.Successful, *r.Failed, *r.Errors)
					}
					if !maps.Equal(r.Codes, tt.codes) {
						t.Errorf("%s: status codes %v, want %v", where, r.Codes, tt.codes)
					}
					if len(r.Backends) != len(tt.backends) {
						t.Fatalf("%s: %d backends, want %d", where, len(r.Backends), len(tt.backends))
					}
					for _, b := range r.Backends {
						k := kind[b.Address]
						if b.Failed == nil || b.Errors == nil {
							t.Fatalf("%s: backend %s: failed_requests or total_errors missing", where, b.Address)
						}
						if *b.Failed != tt.perBack[k] || *b.Errors != *b.Failed || *b.Failed > *b.Total {
							t.Errorf("%s: %s backend: failed %d errors %d of %d, want %d failed",
								where, k, *b.Failed, *b.Errors, *b.Total, tt.perBack[k])
						}
					}
				}
			}
		})
	}
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

package l7

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestPrometheus(t *testing.T) {
	ok := startBackend(t, named("ok"))
	teapot := startBackendOn(t, "127.0.0.2", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	}))
	dead := deadAddr(t)
	h := newHarness(t)
	web := svcConf("web", listenA, ok, teapot)
	web.Policy = PolicyRoundRobin
	api := svcConf("api", listenB, dead)
	h.update(web, api)
	cl := testClient(t)
	for range 4 {
		get(t, cl, h.url(listenA, "/"))
	}
	get(t, cl, h.url(listenB, "/")) // 502 connect

	expected := fmt.Sprintf(`
# HELP xlb_l7_requests_total HTTP requests proxied, by service, backend and status code sent to the client.
# TYPE xlb_l7_requests_total counter
xlb_l7_requests_total{backend=%[1]q,code="200",service="web"} 2
xlb_l7_requests_total{backend=%[2]q,code="418",service="web"} 2
xlb_l7_requests_total{backend=%[3]q,code="502",service="api"} 1
# HELP xlb_l7_in_flight Requests in flight (WebSocket tunnels included), by service and backend.
# TYPE xlb_l7_in_flight gauge
xlb_l7_in_flight{backend=%[1]q,service="web"} 0
xlb_l7_in_flight{backend=%[2]q,service="web"} 0
xlb_l7_in_flight{backend=%[3]q,service="api"} 0
`, ok, teapot, dead)
	if err := testutil.CollectAndCompare(h.srv, strings.NewReader(expected), "xlb_l7_requests_total", "xlb_l7_in_flight"); err != nil {
		t.Error(err)
	}
	for _, tc := range []struct {
		backend, kind string
		want          float64
	}{{dead.String(), "connect", 1}, {dead.String(), "timeout", 0}, {ok.String(), "broken", 0}} {
		if v := promValue(t, h.reg, "xlb_l7_upstream_errors_total", map[string]string{"backend": tc.backend, "kind": tc.kind}); v != tc.want {
			t.Errorf("upstream_errors{%s,%s} = %v, want %v", tc.backend, tc.kind, v, tc.want)
		}
	}
	if n := testutil.CollectAndCount(h.srv, "xlb_l7_upstream_errors_total"); n != 3*int(numErrKinds-errConnect) {
		t.Errorf("%d upstream error series, want every kind for each of 3 backends", n)
	}
	if v := promValue(t, h.reg, "xlb_l7_request_duration_seconds", map[string]string{"service": "web"}); v != 4 {
		t.Errorf("duration samples for web = %v, want 4", v)
	}
	if problems, err := testutil.GatherAndLint(h.reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}

	// Removed backends and services take their series with them.
	h.update(svcConf("web", listenA, ok))
	if n := testutil.CollectAndCount(h.srv, "xlb_l7_requests_total"); n != 1 {
		t.Errorf("%d request series after removals, want 1", n)
	}
	if n := testutil.CollectAndCount(h.srv, "xlb_l7_in_flight"); n != 1 {
		t.Errorf("%d in-flight series after removals, want 1", n)
	}
	if n := testutil.CollectAndCount(h.srv, "xlb_l7_request_duration_seconds"); n != 1 {
		t.Errorf("%d histograms after removing api, want 1", n)
	}
	// The kept backend's counters survived.
	if v := promValue(t, h.reg, "xlb_l7_requests_total", map[string]string{"backend": ok.String(), "code": "200"}); v != 2 {
		t.Errorf("kept backend's counter = %v, want 2", v)
	}
}

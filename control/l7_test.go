package control

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/health"
	"github.com/xlb-dev/xlb/internal/promtest"
	"github.com/xlb-dev/xlb/l7"
)

// TestL7ConfigsCarryEveryKey: each L7 key of a service reaches the L7 tier.
// The config sets every one to a value other than its default; a key the
// controller forgot to copy (or a new l7.ServiceConfig field nobody fills)
// fails here.
func TestL7ConfigsCarryEveryKey(t *testing.T) {
	cfg, err := config.Load("testdata/l7_every_key.toml")
	if err != nil {
		t.Fatal(err)
	}
	c := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	c.mu.Lock()
	got := c.l7Configs()
	c.mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("%d L7 services, want 1", len(got))
	}
	want := l7.ServiceConfig{
		Name:                  "every",
		Listen:                netip.MustParseAddrPort("127.0.0.1:8080"),
		Hosts:                 []string{"a.example", "*.b.example"},
		PathPrefix:            "/api/",
		Policy:                "least_connections",
		MaxInFlight:           7,
		MaglevSize:            251,
		ConnectTimeout:        time.Second,
		ResponseHeaderTimeout: 2 * time.Second,
		RequestTimeout:        3 * time.Second,
		RetryIdempotent:       false,
		LBEndpoints:           false,
		Sticky:                &l7.StickyConfig{Cookie: "pin", TTL: 2 * time.Minute},
		Passive:               l7.PassiveConfig{MaxFails: 3, BaseEjection: 4 * time.Second, MaxEjection: 40 * time.Second},
		Headers: l7.HeaderRules{
			RequestAdd: map[string]string{"X-Add": "1"}, RequestSet: map[string]string{"X-Set": "2"},
			RequestRemove: []string{"X-Remove"},
			ResponseAdd:   map[string]string{"X-Radd": "3"}, ResponseSet: map[string]string{"X-Rset": "4"},
			ResponseRemove: []string{"X-Rremove"},
			Forwarded:      true, XTimestamp: true,
			TrustedProxies: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")},
			ProxyHeader:    "Via-Lb", ProxyHeaderValue: "edge", ResponseTimeHeader: "X-Took",
		},
		Backends: []l7.BackendConfig{{
			ID: "every@127.0.0.1:1", Addr: netip.MustParseAddrPort("127.0.0.1:1"), Weight: 3, State: l7.StateUp,
		}},
	}
	if !reflect.DeepEqual(got[0], want) {
		t.Errorf("l7Configs:\n got %+v\nwant %+v", got[0], want)
	}
	// Every field of want is set (bools to their non-default false above):
	// a new field of l7.ServiceConfig must be added here and to l7Configs.
	v := reflect.ValueOf(want)
	for i := range v.NumField() {
		if f := v.Field(i); f.IsZero() && f.Kind() != reflect.Bool {
			t.Errorf("l7.ServiceConfig.%s is not covered by this test", v.Type().Field(i).Name)
		}
	}
}

// An L7 backend that passive health ejected counts as down everywhere the
// controller reports it: /lb/health's healthy backends, the backend list's
// state, and xlb_backend_up / xlb_backend_state within a poll, though the
// active checks still pass.
func TestL7EjectionIsVisible(t *testing.T) {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	t.Cleanup(be.Close)
	beAddr := netip.MustParseAddrPort(be.Listener.Addr().String())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
[health_check]
interval = "50ms"
timeout = "40ms"
path = "/health"
[[service]]
name = "api"
vip = "127.0.0.1"
port = %d
mode = "l7"
  [service.passive_health]
  max_fails = 1
  ejection = "1m"
  max_ejection = "1h"
  [[service.backend]]
  address = "127.0.0.1"
  port = %d
`, listen.Port(), beAddr.Port())), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := l7.NewServer(l7.Options{Logger: log})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	hm := health.NewManager(log, nil)
	t.Cleanup(hm.Close)
	reg := prometheus.NewRegistry()
	c := New(cfg, Options{L7: srv, Health: hm, Logger: log, Metrics: NewMetrics(reg)})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	go c.Run(ctx)
	id := "api@" + beAddr.String()
	gauge := func(name string, labels map[string]string) float64 {
		v, found, err := promtest.Value(reg, name, labels)
		if err != nil || !found {
			return -1
		}
		return v
	}
	eventually(t, "the backend checked healthy", func() bool {
		rep, _ := c.Health("api")
		return rep.HealthyBackends == 1 && gauge("xlb_backend_up", map[string]string{"backend": beAddr.String()}) == 1
	})

	resp, err := http.Get("http://" + listen.String() + "/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("status %d, want the backend's 500", resp.StatusCode)
	}
	if rep, _ := c.Health("api"); rep.HealthyBackends != 0 || rep.Status != "unhealthy" {
		t.Errorf("/lb/health after the ejection: %+v, want no healthy backend", rep)
	}
	if st := stateOf(t, c, id).State; st != "ejected" {
		t.Errorf("backend state %q, want ejected", st)
	}
	eventually(t, "the gauges to show the ejection", func() bool {
		b := beAddr.String()
		return gauge("xlb_backend_up", map[string]string{"backend": b}) == 0 &&
			gauge("xlb_backend_state", map[string]string{"backend": b, "state": "ejected"}) == 1 &&
			gauge("xlb_backend_state", map[string]string{"backend": b, "state": "up"}) == 0
	})
}

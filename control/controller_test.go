package control

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/health"
)

// flipServer is a loopback HTTP backend whose health answer can be switched.
type flipServer struct {
	addr netip.AddrPort
	ok   atomic.Bool
}

func newFlipServer(t *testing.T) *flipServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fs := &flipServer{addr: netip.MustParseAddrPort(l.Addr().String())}
	fs.ok.Store(true)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !fs.ok.Load() {
			w.WriteHeader(503)
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return fs
}

// l7Config makes an L7 service over the servers (L7 so no datapath is needed:
// the L4 side of the control loop is covered end to end).
func l7Config(t *testing.T, extra string, servers ...*flipServer) *config.Config {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[health_check]\ninterval = \"40ms\"\ntimeout = \"30ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n%s\n", extra)
	b.WriteString("[[service]]\nname = \"api\"\nvip = \"127.0.0.1\"\nport = 8080\nmode = \"l7\"\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = \"%s\"\n  port = %d\n", s.addr.Addr(), s.addr.Port())
	}
	cfg, err := config.Parse([]byte(b.String()), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startController(t *testing.T, cfg *config.Config) *Controller {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hm := health.NewManager(log, nil)
	t.Cleanup(hm.Close)
	c := New(cfg, Options{Health: hm, Logger: log})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	go c.Run(ctx)
	return c
}

func stateOf(t *testing.T, c *Controller, id string) BackendInfo {
	t.Helper()
	list, err := c.Backends("")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range list {
		if b.ID == id {
			return b
		}
	}
	t.Fatalf("no backend %s in %+v", id, list)
	return BackendInfo{}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	// A deadline, not a speed target: a loaded host may take seconds to run
	// a check (a 3 s deadline failed TestControllerEvents under make test).
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func id(s *flipServer) string { return "api@" + s.addr.String() }

// Backends start up (the default), go down after the failure threshold, come
// back after the success threshold; the report follows.
func TestHealthDrivesState(t *testing.T) {
	a, b := newFlipServer(t), newFlipServer(t)
	c := startController(t, l7Config(t, "", a, b))
	if st := stateOf(t, c, id(a)); st.State != "up" || st.Health != "healthy" {
		t.Fatalf("initial state %+v, want up and healthy", st)
	}
	b.ok.Store(false)
	eventually(t, "b down", func() bool { return stateOf(t, c, id(b)).State == "down" })
	rep, _ := c.Health("")
	if rep.Status != "degraded" || rep.HealthyBackends != 1 || rep.TotalBackends != 2 {
		t.Fatalf("report with one down: %+v", rep)
	}
	a.ok.Store(false)
	eventually(t, "a down", func() bool { return stateOf(t, c, id(a)).State == "down" })
	if rep, _ := c.Health("api"); rep.Status != "unhealthy" || rep.HealthyBackends != 0 {
		t.Fatalf("report with all down: %+v", rep)
	}
	a.ok.Store(true)
	b.ok.Store(true)
	eventually(t, "recovery", func() bool {
		rep, _ := c.Health("")
		return rep.Status == "healthy"
	})
}

// initial_state = "down" keeps a backend out until it passes its checks.
func TestInitialStateDown(t *testing.T) {
	a := newFlipServer(t)
	a.ok.Store(false)
	c := startController(t, l7Config(t, `initial_state = "down"`, a))
	if st := stateOf(t, c, id(a)); st.State != "down" {
		t.Fatalf("initial state %+v, want down", st)
	}
	a.ok.Store(true)
	eventually(t, "up after healthy_threshold", func() bool { return stateOf(t, c, id(a)).State == "up" })
}

// A drained backend that fails its checks is down: nothing goes to a dead
// backend, drained or not. Readying it again follows its health.
func TestAdminAndHealthPrecedence(t *testing.T) {
	a, b := newFlipServer(t), newFlipServer(t)
	c := startController(t, l7Config(t, "", a, b))
	if _, err := c.SetAdminState(id(a), AdminDraining); err != nil {
		t.Fatal(err)
	}
	if st := stateOf(t, c, id(a)); st.State != "draining" {
		t.Fatalf("drained: %+v", st)
	}
	a.ok.Store(false)
	eventually(t, "drained and dead is down", func() bool { return stateOf(t, c, id(a)).State == "down" })
	a.ok.Store(true)
	eventually(t, "drained and alive", func() bool { return stateOf(t, c, id(a)).State == "draining" })
	if _, err := c.SetAdminState(id(a), AdminReady); err != nil {
		t.Fatal(err)
	}
	if st := stateOf(t, c, id(a)); st.State != "up" {
		t.Fatalf("readied: %+v", st)
	}
}

// A reload keeps health state and admin state of unchanged backends and the
// backends added through the admin API; a changed check starts afresh.
func TestReloadKeepsState(t *testing.T) {
	a, b, extra := newFlipServer(t), newFlipServer(t), newFlipServer(t)
	c := startController(t, l7Config(t, "", a, b))
	b.ok.Store(false)
	eventually(t, "b down", func() bool { return stateOf(t, c, id(b)).State == "down" })
	if _, err := c.SetAdminState(id(a), AdminDraining); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddBackend(AddRequest{Service: "api", Address: "127.0.0.1", Port: extra.addr.Port()}); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(l7Config(t, "", a, b)); err != nil {
		t.Fatal(err)
	}
	if st := stateOf(t, c, id(b)); st.State != "down" {
		t.Fatalf("b after reload: %+v (health state lost)", st)
	}
	if st := stateOf(t, c, id(a)); st.Admin != "draining" {
		t.Fatalf("a after reload: %+v (admin state lost)", st)
	}
	if st := stateOf(t, c, id(extra)); st.FromConfig {
		t.Fatalf("admin-added backend after reload: %+v", st)
	}
	// Same backends, a different check path: a new check, starting up.
	if err := c.Reload(l7Config(t, `path = "/other"`, a, b)); err != nil {
		t.Fatal(err)
	}
	if st := stateOf(t, c, id(b)); st.Health != "healthy" {
		t.Fatalf("b with a new check: %+v, want the initial state", st)
	}
}

// Several services using the same backend and check share one checker and
// so one state.
func TestSharedCheckState(t *testing.T) {
	a := newFlipServer(t)
	cfg := l7Config(t, "", a)
	second := cfg.Services[0]
	second.Name = "api2"
	second.Port = 8081
	cfg.Services = append(cfg.Services, second)
	c := startController(t, cfg)
	a.ok.Store(false)
	eventually(t, "both down", func() bool {
		return stateOf(t, c, id(a)).State == "down" && stateOf(t, c, "api2@"+a.addr.String()).State == "down"
	})
}

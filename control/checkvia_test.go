package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/xlb-dev/xlb/checkroute"
	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/health"
)

// fakeRoutes is CheckRoutes without a kernel. It checks the order the
// controller promises: a path is installed before a check uses it and pruned
// only once no check does.
type fakeRoutes struct {
	t  *testing.T
	hm *health.Manager

	mu        sync.Mutex
	marks     map[checkroute.Path]uint32
	installed map[checkroute.Path]bool
	fail      error // returned by the next Install, then by Retry until cleared
	retries   int
}

func newFakeRoutes(t *testing.T, hm *health.Manager) *fakeRoutes {
	return &fakeRoutes{t: t, hm: hm, marks: map[checkroute.Path]uint32{}, installed: map[checkroute.Path]bool{}}
}

func (f *fakeRoutes) Mark(p checkroute.Path) (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m, ok := f.marks[p]; ok {
		return m, nil
	}
	m := checkroute.Base + uint32(len(f.marks)) + 1
	f.marks[p] = m
	return m, nil
}

func (f *fakeRoutes) Install(paths []checkroute.Path) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range paths {
		if _, ok := f.marks[p]; !ok {
			f.t.Errorf("Install of %s, which has no mark", p)
		}
		f.installed[p] = true
	}
	return f.fail
}

func (f *fakeRoutes) Retry() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.retries++
	return f.fail
}

func (f *fakeRoutes) Prune(keep []checkroute.Path) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for p := range f.installed {
		if !slices.Contains(keep, p) {
			delete(f.installed, p)
			delete(f.marks, p)
		}
	}
	// Every check through a VIP still running has its route.
	for _, st := range f.hm.Snapshot() {
		if st.Spec.Via.IsValid() && !f.installed[checkroute.Path{VIP: st.Spec.Target.Addr(), Backend: st.Spec.Via}] {
			f.t.Errorf("check %s runs without its route", st.Spec)
		}
	}
	return nil
}

func (f *fakeRoutes) paths() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for p := range f.installed {
		out = append(out, fmt.Sprintf("%s %#x", p, f.marks[p]))
	}
	slices.Sort(out)
	return out
}

// viaConfig is an L4 service on loopback addresses (checks, should one run,
// stay on this host) checked through its VIP when via.
func viaConfig(t *testing.T, via bool, backends ...string) *config.Config {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[health_check]\ntype = \"tcp\"\ninterval = \"1h\"\ntimeout = \"1s\"\ncheck_via_vip = %v\n", via)
	b.WriteString("[[service]]\nname = \"web\"\nvip = \"127.0.0.10\"\nport = 80\n")
	for _, a := range backends {
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n", a)
	}
	cfg, err := config.Parse([]byte(b.String()), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startViaController(t *testing.T, cfg *config.Config, routes bool) (*Controller, *fakeRoutes, *health.Manager) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hm := health.NewManager(log, nil)
	t.Cleanup(hm.Close)
	f := newFakeRoutes(t, hm)
	o := Options{Health: hm, Logger: log}
	if routes {
		o.CheckRoutes = f
	}
	c := New(cfg, o)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c, f, hm
}

func specs(hm *health.Manager) []string {
	var out []string
	for _, st := range hm.Snapshot() {
		out = append(out, fmt.Sprintf("%s %#x", st.Spec, st.Spec.Mark))
	}
	return out
}

// Checks through the VIP get one route per (VIP, backend), in place before
// they start; a reload keeps their marks and checkers, an admin-added
// backend gets its own, and turning the key off removes the routes once the
// checks have stopped.
func TestCheckViaVIPRoutes(t *testing.T) {
	c, f, hm := startViaController(t, viaConfig(t, true, "127.0.0.11", "127.0.0.12"), true)
	wantSpecs := []string{"tcp 127.0.0.10:80 via 127.0.0.11 0x786c0001", "tcp 127.0.0.10:80 via 127.0.0.12 0x786c0002"}
	if got := specs(hm); !slices.Equal(got, wantSpecs) {
		t.Fatalf("checks %v, want %v", got, wantSpecs)
	}
	wantPaths := []string{"127.0.0.10 via 127.0.0.11 0x786c0001", "127.0.0.10 via 127.0.0.12 0x786c0002"}
	if got := f.paths(); !slices.Equal(got, wantPaths) {
		t.Fatalf("routes %v, want %v", got, wantPaths)
	}
	if bi := stateOf(t, c, "web@127.0.0.12"); bi.Check != "tcp 127.0.0.10:80 via 127.0.0.12" || bi.CheckVia != "vip" {
		t.Errorf("backend info: check %q via %q, want the check through the vip", bi.Check, bi.CheckVia)
	}

	if err := c.Reload(viaConfig(t, true, "127.0.0.11", "127.0.0.12")); err != nil {
		t.Fatal(err)
	}
	if got := specs(hm); !slices.Equal(got, wantSpecs) {
		t.Errorf("after a reload: checks %v, want %v", got, wantSpecs)
	}
	if _, err := c.AddBackend(AddRequest{Service: "web", Address: "127.0.0.13"}); err != nil {
		t.Fatal(err)
	}
	if got := f.paths(); len(got) != 3 || got[2] != "127.0.0.10 via 127.0.0.13 0x786c0003" {
		t.Errorf("after adding a backend: routes %v", got)
	}

	if err := c.Reload(viaConfig(t, false, "127.0.0.11", "127.0.0.12")); err != nil {
		t.Fatal(err)
	}
	if got := f.paths(); len(got) != 0 {
		t.Errorf("check_via_vip off: routes left %v", got)
	}
	wantDirect := []string{"tcp 127.0.0.11:80 0x0", "tcp 127.0.0.12:80 0x0", "tcp 127.0.0.13:80 0x0"}
	if got := specs(hm); !slices.Equal(got, wantDirect) {
		t.Errorf("check_via_vip off: checks %v, want %v", got, wantDirect)
	}
	if bi := stateOf(t, c, "web@127.0.0.12"); bi.Check != "tcp 127.0.0.12:80" || bi.CheckVia != "address" {
		t.Errorf("backend info: check %q via %q, want the check at its address", bi.Check, bi.CheckVia)
	}
}

// Routes that cannot be installed are retried (the poll calls retryRoutes)
// until they can; without check routes at all the backends are not checked.
func TestCheckViaVIPProblems(t *testing.T) {
	t.Run("retried", func(t *testing.T) {
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		hm := health.NewManager(log, nil)
		t.Cleanup(hm.Close)
		f := newFakeRoutes(t, hm)
		f.fail = errors.Join(fmt.Errorf("check route x: %w", checkroute.ErrNotOnLink))
		c := New(viaConfig(t, true, "127.0.0.11"), Options{Health: hm, Logger: log, CheckRoutes: f})
		if err := c.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		c.retryRoutes()
		c.retryRoutes()
		f.mu.Lock()
		f.fail = nil
		f.mu.Unlock()
		c.retryRoutes()
		c.retryRoutes() // nothing failing: not called
		if f.retries != 3 {
			t.Errorf("Retry called %d times, want 3", f.retries)
		}
	})
	t.Run("no routes", func(t *testing.T) {
		c, _, hm := startViaController(t, viaConfig(t, true, "127.0.0.11"), false)
		if got := specs(hm); len(got) != 0 {
			t.Errorf("checks without check routes: %v", got)
		}
		if bi := stateOf(t, c, "web@127.0.0.11"); bi.Health != "unchecked" || bi.CheckVia != "" {
			t.Errorf("backend info %+v, want unchecked", bi)
		}
	})
}

var _ CheckRoutes = (*checkroute.Router)(nil)

// checkroute.Path values are what viaPath makes of a spec.
func TestViaPath(t *testing.T) {
	spec := &health.Spec{Target: netip.MustParseAddrPort("198.19.0.10:8080"), Via: netip.MustParseAddr("198.18.0.12")}
	if got := viaPath(spec); got != (checkroute.Path{VIP: netip.MustParseAddr("198.19.0.10"), Backend: netip.MustParseAddr("198.18.0.12")}) {
		t.Errorf("viaPath = %v", got)
	}
}

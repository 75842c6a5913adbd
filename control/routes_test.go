package control

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/internal/testenv"
	"github.com/xlb-dev/xlb/loader"
)

// countingResolver is benchResolver, counting its resolutions.
type countingResolver struct{ n atomic.Int64 }

func (r *countingResolver) Resolve(ctx context.Context, a netip.Addr, mac net.HardwareAddr) (loader.Neighbour, error) {
	r.n.Add(1)
	return benchResolver{}.Resolve(ctx, a, mac)
}

// A route change has the next poll resolve every L4 backend again, and no
// later poll without another change.
func TestRouteChangeResolvesAgain(t *testing.T) {
	testenv.RequireRoot(t, "needs root: loads the XDP datapath")
	cfg, err := config.Parse([]byte(`
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
`), "routes.toml")
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dp, err := loader.Open(loader.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close(false)
	res := &countingResolver{}
	rec, err := loader.NewReconciler(&dp.Maps, res, 1, quiet)
	if err != nil {
		t.Fatal(err)
	}
	changes := make(chan struct{}, 1)
	c := New(cfg, Options{Reconciler: rec, Maps: &dp.Maps, Logger: quiet, RouteChanges: changes})
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	defer func() { cancel(); <-runDone }()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(runDone)
		c.Run(ctx)
	}()
	if got := res.n.Load(); got != 2 {
		t.Fatalf("%d resolutions at start, want 2", got)
	}
	changes <- struct{}{}
	deadline := time.Now().Add(3 * flowsPoll)
	for res.n.Load() < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * flowsPoll) // no more without another change
	if got := res.n.Load(); got != 4 {
		t.Errorf("%d resolutions after one route change, want 4", got)
	}
}

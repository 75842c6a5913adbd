package control

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

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
	cfg := maxConfig(t, 16, "198.18.0.11", "198.18.0.12")
	res := &countingResolver{}
	changes := make(chan struct{}, 1)
	_, c := newL4ControllerWith(t, cfg, 0, res, Options{RouteChanges: changes})
	runController(t, c)
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

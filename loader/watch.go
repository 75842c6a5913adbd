package loader

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
)

// WatchRoutes calls changed after IPv4 and IPv6 route changes in the calling
// thread's network namespace that ignore does not match (nil: none), until
// ctx ends. A route change can move a backend, or an ipip backend's next hop,
// behind another interface: the caller has the reconciler resolve again
// (Reconciler.Reresolve). changed must not block; calls come in bursts, one
// per route, so the caller coalesces them. When the subscription breaks (its
// socket overflowed) changes may have been missed: it calls changed and
// subscribes again.
func WatchRoutes(ctx context.Context, ignore func(netlink.Route) bool, changed func()) error {
	for {
		err := watchRoutesOnce(ctx, ignore, changed)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		changed()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// watchRoutesOnce is one subscription: nil when it ended (ctx or a broken
// subscription), an error when it could not start.
func watchRoutesOnce(ctx context.Context, ignore func(netlink.Route) bool, changed func()) error {
	updates := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.RouteSubscribeWithOptions(updates, done, netlink.RouteSubscribeOptions{}); err != nil {
		return fmt.Errorf("subscribe to route changes: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-updates:
			if !ok {
				return nil
			}
			if ignore == nil || !ignore(u.Route) {
				changed()
			}
		}
	}
}

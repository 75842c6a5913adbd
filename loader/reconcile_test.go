package loader

import (
	"context"
	"net/netip"
	"slices"
	"testing"
)

// With every backend id in use, a change that removes as many backends as it
// adds still applies: the removed backends' ids go to the new ones once no
// ring names them, and each ring ends up over its own service's backends.
func TestApplyReusesRemovedIDsAtLimit(t *testing.T) {
	requireRoot(t)
	be := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	desired := func(svcs ...ServiceSpec) Desired { return Desired{RingSize: 251, Services: svcs} }
	tests := []struct {
		name        string
		first, next Desired
	}{
		{"same service",
			desired(webService(vip4, 80, protoTCP, HashIP, be("198.18.0.11", "198.18.0.12"))),
			desired(webService(vip4, 80, protoTCP, HashIP, be("198.18.0.13", "198.18.0.14")))},
		{"one service replaces another",
			desired(webService(vip4, 80, protoTCP, HashIP, be("198.18.0.11", "198.18.0.12"))),
			desired(webService(vip4, 8080, protoTCP, HashIP, be("198.18.0.13", "198.18.0.14")))},
		{"backends move between services",
			desired(webService(vip4, 80, protoTCP, HashIP, be("198.18.0.11")), webService(vip4, 53, protoUDP, HashIP, be("198.18.0.12"))),
			desired(webService(vip4, 80, protoTCP, HashIP, be("198.18.0.13")), webService(vip4, 53, protoUDP, HashIP, be("198.18.0.14")))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dp, err := Open(Options{Logger: quietLogger(), MaxBackends: 2})
			if err != nil {
				t.Fatal(err)
			}
			defer dp.Close(false)
			rec, err := NewReconciler(&dp.Maps, staticResolver{ifindex: loIfIndex}, loIfIndex, quietLogger())
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if _, err := rec.Apply(ctx, tt.first); err != nil {
				t.Fatal(err)
			}
			if _, err := rec.Apply(ctx, tt.next); err != nil {
				t.Fatalf("apply at the limit: %v", err)
			}
			for _, s := range tt.next.Services {
				sid, ok := rec.ServiceID(s.VIP, s.Port, s.Proto)
				if !ok {
					t.Fatalf("service %s missing", s.Name)
				}
				var want []uint32
				for _, b := range s.Backends {
					id, st, ok := rec.BackendState(sid, b.Address)
					if !ok || st != StateUp {
						t.Fatalf("backend %s: id %d state %s present %v", b.Address, id, st, ok)
					}
					want = append(want, id)
				}
				ring, err := dp.Ring(sid)
				if err != nil {
					t.Fatal(err)
				}
				if len(ring) == 0 {
					t.Fatalf("service %s has no ring", s.Name)
				}
				for _, id := range ring {
					if !slices.Contains(want, id) {
						t.Fatalf("ring of %s names id %d, want only %v", s.Name, id, want)
					}
				}
			}
		})
	}
}

package loader

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/bpf"
	"github.com/xlb-dev/xlb/maglev"
)

const (
	benchServices = 64
	benchBackends = 100 // per service
	benchRounds   = 5
)

// benchDesired is benchServices L4 services of benchBackends backends each,
// all up, at the default M (65537).
func benchDesired() Desired {
	d := Desired{RingSize: maglev.DefaultTableSize}
	for i := range benchServices {
		s := ServiceSpec{
			Name: fmt.Sprintf("svc-%02d", i), VIP: netip.AddrFrom4([4]byte{198, 19, 1, byte(i)}),
			Port: 80, Proto: protoTCP, Kind: KindL4, Hash: HashIP,
		}
		for j := range benchBackends {
			s.Backends = append(s.Backends, BackendSpec{
				Address: netip.AddrFrom4([4]byte{198, 18, byte(i), byte(j + 1)}), Weight: 1, State: StateUp,
			})
		}
		d.Services = append(d.Services, s)
	}
	return d
}

// BenchmarkReconcile times Reconciler.Apply on the real maps with 64 services
// of 100 backends each (6400 backends, M = 65537): a full reconcile from
// empty maps, an idempotent re-apply of the same state, one backend of one
// service going down (what a health transition costs at that size), and the
// removal of everything; each is the median of benchRounds rounds. It also
// times NewReconciler over the full maps (a restart adopting them). Run it
// with `make bench-control`.
func BenchmarkReconcile(b *testing.B) {
	f := newFixture(b, Desired{})
	full := benchDesired()
	oneDown := benchDesired()
	oneDown.Services[7].Backends[42].State = StateDown

	var fromEmpty, idempotent, transition, teardown []time.Duration
	apply := func(d Desired, check func(Change) error) time.Duration {
		start := time.Now()
		ch, err := f.rec.Apply(context.Background(), d)
		elapsed := time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if err := check(ch); err != nil {
			b.Fatalf("apply: %v (%+v)", err, ch)
		}
		return elapsed
	}
	want := func(added, swapped, removed int) func(Change) error {
		return func(ch Change) error {
			if ch.BackendsAdded != added || ch.RingsSwapped != swapped || ch.BackendsRemoved != removed {
				return fmt.Errorf("%d backends added, %d rings swapped, %d backends removed; want %d, %d, %d",
					ch.BackendsAdded, ch.RingsSwapped, ch.BackendsRemoved, added, swapped, removed)
			}
			return nil
		}
	}
	n := benchServices * benchBackends
	for range benchRounds {
		fromEmpty = append(fromEmpty, apply(full, want(n, benchServices, 0)))
		idempotent = append(idempotent, apply(full, func(ch Change) error {
			if !ch.Empty() {
				return fmt.Errorf("re-apply changed something")
			}
			return nil
		}))
		transition = append(transition, apply(oneDown, want(0, 1, 0)))
		f.checkRings(b, oneDown)
		apply(full, want(0, 1, 0))
		teardown = append(teardown, apply(Desired{}, want(0, 0, n)))
	}
	b.ReportMetric(ms(median(fromEmpty)), "full-ms")
	b.ReportMetric(ms(median(idempotent)), "reapply-ms")
	b.ReportMetric(ms(median(transition)), "one-backend-down-ms")
	b.ReportMetric(ms(median(teardown)), "teardown-ms")

	// A restart: NewReconciler reads the full maps back.
	f.apply(full)
	var recoverT, perID, batch []time.Duration
	for range benchRounds {
		start := time.Now()
		rec, err := NewReconciler(&f.dp.Maps, staticResolver{ifindex: loIfIndex}, loIfIndex, quietLogger())
		recoverT = append(recoverT, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		if ch, err := rec.Apply(context.Background(), full); err != nil || !ch.Empty() {
			b.Fatalf("apply after recovery: %+v, %v (want no change)", ch, err)
		}
		// The backends array read by id, as recovery did before, and in one batch.
		start = time.Now()
		var be bpf.XlbBackend
		for id := range MaxBackends {
			if err := f.dp.Backends.Lookup(id, &be); err != nil {
				b.Fatal(err)
			}
		}
		perID = append(perID, time.Since(start))
		start = time.Now()
		if _, err := f.dp.BackendEntries(); err != nil {
			b.Fatal(err)
		}
		batch = append(batch, time.Since(start))
	}
	b.ReportMetric(ms(median(recoverT)), "recover-ms")
	b.ReportMetric(ms(median(perID)), "read-backends-per-id-ms")
	b.ReportMetric(ms(median(batch)), "read-backends-batch-ms")
	b.ReportMetric(0, "ns/op")
}

// checkRings checks that every service's ring holds exactly its up backends.
func (f *fixture) checkRings(b *testing.B, d Desired) {
	b.Helper()
	for _, s := range d.Services {
		sid := f.serviceID(s.VIP, s.Port, s.Proto)
		ring, err := f.dp.Ring(sid)
		if err != nil || len(ring) != int(d.RingSize) {
			b.Fatalf("ring of %s: %d entries, %v", s.Name, len(ring), err)
		}
		in := map[uint32]bool{}
		for _, id := range ring {
			in[id] = true
		}
		for _, be := range s.Backends {
			id, ok := f.rec.BackendID(sid, be.Address)
			if !ok || in[id] != (be.State == StateUp) {
				b.Fatalf("%s backend %s (%v): in ring %v", s.Name, be.Address, be.State, in[id])
			}
		}
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

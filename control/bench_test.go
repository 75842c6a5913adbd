package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/health"
	"github.com/xlb-dev/xlb/internal/testenv"
	"github.com/xlb-dev/xlb/loader"
)

const (
	benchBackendCount = 100
	benchTransitions  = 100 // half down, half back up
	benchCheckEvery   = 100 * time.Millisecond
	benchPollEvery    = 50 * time.Microsecond
)

// BenchmarkTransitionToTable measures the time from a health transition to
// the swapped Maglev table, through the real path: a checker of a
// health.Manager sees a loopback backend's /health flip between 200 and 503
// and publishes the transition; the Controller (subscribed, as in the
// daemon) reconciles; Reconciler.Apply builds the table (M = 65537, 100
// backends in one L4 service), creates the inner ring map, fills it with one
// BatchUpdate and swaps it into the outer rings map of a loaded (unattached)
// XDP datapath.
//
// From Transition.At (the end of the deciding check) it reports:
//   - visible: until the rings map holds the new inner map, which a
//     goroutine reading the outer map every 50 µs sees (what packets see);
//   - applied: until the controller logs "health transition applied", after
//     Apply has returned (it includes the RCU grace period the kernel waits
//     for after a map-in-map update).
//
// After each transition the ring is read back and must hold the backend
// (up) or not (down). A sample during which another backend changed state
// (a check that overran its 90 ms timeout on a busy machine) is counted as
// disturbed and left out. The 100 backends are checked every 100 ms with
// thresholds of 1, so the other checks run in the background as they would
// (1000 checks a second). Run it with `make bench-control`.
func BenchmarkTransitionToTable(b *testing.B) {
	testenv.RequireRoot(b, "needs root: loads the XDP datapath")
	backends := make([]*benchBackend, benchBackendCount)
	for i := range backends {
		backends[i] = newBenchBackend(b, netip.AddrFrom4([4]byte{127, 3, 0, byte(i + 1)}))
	}
	cfg := benchConfig(b, backends)

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dp, err := loader.Open(loader.Options{Logger: quiet})
	if err != nil {
		b.Fatalf("load datapath: %v", err)
	}
	defer dp.Close(false)
	rec, err := loader.NewReconciler(&dp.Maps, benchResolver{}, 1, quiet)
	if err != nil {
		b.Fatal(err)
	}
	hm := health.NewManager(quiet, nil)
	defer hm.Close()
	applied := make(chan slog.Record, 16)
	ctl := New(cfg, Options{Reconciler: rec, Maps: &dp.Maps, Health: hm, Logger: slog.New(recordHandler{applied})})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	transitions, unsubscribe := hm.Subscribe(16)
	defer unsubscribe()
	if err := ctl.Start(ctx); err != nil {
		b.Fatal(err)
	}
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		ctl.Run(ctx)
	}()
	defer func() { cancel(); <-runDone }()

	svc := cfg.Services[0]
	sid, ok := rec.ServiceID(svc.VIP, svc.Port, svc.Protocol.Number())
	if !ok {
		b.Fatal("service not in the datapath")
	}
	ringHolds := func(be *benchBackend) bool {
		id, ok := rec.BackendID(sid, be.addr.Addr())
		if !ok {
			b.Fatalf("backend %s not in the datapath", be.addr)
		}
		ring, err := dp.Ring(sid)
		if err != nil || len(ring) != int(cfg.Daemon.MaglevTableSize) {
			b.Fatalf("ring: %d entries, %v", len(ring), err)
		}
		return slices.Contains(ring, id)
	}
	for _, be := range backends {
		if !ringHolds(be) {
			b.Fatalf("backend %s not in the first table", be.addr)
		}
	}
	drain(applied)
	drainTransitions(transitions)

	// The pollers stop before the datapath closes, also after a Fatal.
	pollStop := make(chan struct{})
	var pollers sync.WaitGroup
	defer func() { close(pollStop); pollers.Wait() }()

	var visible, appliedAt, reconcile []time.Duration
	disturbed := 0
	for i := range benchTransitions {
		be := backends[(i/2)%len(backends)]
		down := i%2 == 0
		before := innerID(b, dp, sid)
		seen := make(chan time.Time, 1)
		pollers.Go(func() { pollSwap(dp, sid, before, seen, pollStop, 5*time.Second) })
		be.healthy.Store(!down)

		// A transition of another backend (a check that overran its
		// timeout on a busy machine) makes this sample meaningless: the
		// swap seen may be its own. Such samples are counted, not kept.
		others := 0
		var tr health.Transition
		for {
			select {
			case tr = <-transitions:
			case <-time.After(5 * time.Second):
				b.Fatalf("transition %d: none within 5 s", i)
			}
			if tr.Spec.Target == be.addr {
				break
			}
			others++
		}
		if (tr.To == health.Unhealthy) != down {
			b.Fatalf("transition %d: %s -> %v, want down=%v", i, tr.Spec.Target, tr.To, down)
		}
		at, ok := <-seen
		if !ok {
			b.Fatalf("transition %d: the rings map did not change within 5 s", i)
		}
		rec := waitApplied(b, applied, be.addr.String(), tr.To)
		others += drainTransitions(transitions)
		if others > 0 {
			disturbed++
		} else {
			visible = append(visible, at.Sub(tr.At))
			appliedAt = append(appliedAt, rec.Time.Sub(tr.At))
			reconcile = append(reconcile, attrDuration(rec, "reconcile"))
		}
		if ringHolds(be) == down {
			b.Fatalf("transition %d: backend %s down=%v, but the table says otherwise", i, be.addr, down)
		}
	}
	if disturbed > benchTransitions/10 {
		b.Fatalf("%d of %d samples disturbed by transitions of other backends: machine too busy", disturbed, benchTransitions)
	}
	b.ReportMetric(ms(percentile(visible, 50)), "visible-p50-ms")
	b.ReportMetric(ms(percentile(visible, 99)), "visible-p99-ms")
	b.ReportMetric(ms(percentile(appliedAt, 50)), "applied-p50-ms")
	b.ReportMetric(ms(percentile(appliedAt, 99)), "applied-p99-ms")
	b.ReportMetric(ms(percentile(reconcile, 50)), "reconcile-p50-ms")
	b.ReportMetric(float64(len(visible)), "transitions")
	b.ReportMetric(float64(disturbed), "disturbed")
	b.ReportMetric(0, "ns/op")
}

// benchBackend is a loopback HTTP server whose /health answers 200 or 503.
type benchBackend struct {
	addr    netip.AddrPort
	healthy atomic.Bool
}

func newBenchBackend(b *testing.B, addr netip.Addr) *benchBackend {
	b.Helper()
	l, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		b.Fatal(err)
	}
	be := &benchBackend{addr: netip.MustParseAddrPort(l.Addr().String())}
	be.healthy.Store(true)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !be.healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Close() })
	return be
}

// benchConfig is one L4 service whose backends are the servers' addresses,
// each checked on its server's port.
func benchConfig(b *testing.B, backends []*benchBackend) *config.Config {
	b.Helper()
	var sb strings.Builder
	fmt.Fprintf(&sb, "[daemon]\nmaglev_table_size = 65537\n\n[health_check]\ntype = \"http\"\npath = \"/health\"\n"+
		"interval = \"%s\"\ntimeout = \"90ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n\n", benchCheckEvery)
	sb.WriteString("[[service]]\nname = \"bench\"\nvip = \"198.19.0.10\"\nport = 80\n")
	for _, be := range backends {
		fmt.Fprintf(&sb, "  [[service.backend]]\n  address = \"%s\"\n  health_check_port = %d\n", be.addr.Addr(), be.addr.Port())
	}
	cfg, err := config.Parse([]byte(sb.String()), "bench.toml")
	if err != nil {
		b.Fatal(err)
	}
	return cfg
}

// benchResolver puts every backend on interface 1 with a made-up MAC.
type benchResolver struct{}

func (benchResolver) Resolve(_ context.Context, a netip.Addr, _ net.HardwareAddr) (loader.Neighbour, error) {
	s := a.As4()
	return loader.Neighbour{
		IfIndex: 1,
		MAC:     net.HardwareAddr{0x02, 0xbe, 0, 0, s[2], s[3]},
		SrcMAC:  net.HardwareAddr{0x02, 0x1b, 0, 0, 0, 1},
	}, nil
}

// innerID is the id of the service's current inner ring map.
func innerID(b *testing.B, dp *loader.Datapath, sid uint32) ebpf.MapID {
	var id ebpf.MapID
	if err := dp.Rings.Lookup(sid, &id); err != nil {
		b.Fatal(err)
	}
	return id
}

// pollSwap reads the outer rings map every benchPollEvery until the
// service's inner map is another than before, and sends when it saw that
// (closes seen after limit, or when stop is closed).
func pollSwap(dp *loader.Datapath, sid uint32, before ebpf.MapID, seen chan<- time.Time, stop <-chan struct{}, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-stop:
			close(seen)
			return
		default:
		}
		var id ebpf.MapID
		err := dp.Rings.Lookup(sid, &id)
		now := time.Now()
		if err == nil && id != before {
			seen <- now
			return
		}
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		time.Sleep(benchPollEvery)
	}
	close(seen)
}

// recordHandler sends the controller's "health transition applied" records.
type recordHandler struct{ out chan<- slog.Record }

func (h recordHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "health transition applied" {
		h.out <- r.Clone()
	}
	return nil
}
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordHandler) WithGroup(string) slog.Handler      { return h }

func waitApplied(b *testing.B, ch <-chan slog.Record, backend string, to health.State) slog.Record {
	b.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case r := <-ch:
			if attrString(r, "backend") == backend && attrString(r, "state") == to.String() {
				return r
			}
		case <-timeout:
			b.Fatalf("the controller did not log the transition of %s to %v within 5 s", backend, to)
		}
	}
}

// drainTransitions empties ch and says how many transitions it held.
func drainTransitions(ch <-chan health.Transition) int {
	n := 0
	for {
		select {
		case <-ch:
			n++
		default:
			return n
		}
	}
}

func drain(ch <-chan slog.Record) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func attrString(r slog.Record, key string) string {
	var v string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value.String()
			return false
		}
		return true
	})
	return v
}

func attrDuration(r slog.Record, key string) time.Duration {
	d, _ := time.ParseDuration(attrString(r, key))
	return d
}

// percentile is the nearest-rank p-th percentile.
func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

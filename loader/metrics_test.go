package loader

import (
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xlb-dev/xlb/internal/promtest"
)

// gathered returns the value of the series of name with these labels.
func gathered(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	v, found, err := promtest.Value(reg, name, labels)
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("no %s%v", name, labels)
	}
	return v
}

// The collector reports the BPF counters at scrape time, labelled by the
// configured names.
func TestCollector(t *testing.T) {
	d := standardDesired()
	reg := prometheus.NewRegistry()
	f := newFixture(t, Desired{})
	f.rec.Metrics = NewMetrics(reg)
	f.apply(d)
	reg.MustRegister(NewCollector(&f.dp.Maps, f.rec))

	sent := map[string]float64{}
	for i := range 40 {
		p := pkt{src: random4Seq(i), dst: vip4, proto: protoTCP, sport: 1, dport: 80, tcpFlags: tcpSYN}
		_, out := f.run(p.build())
		sent[backendOf(t, out, be4).String()]++
	}
	for i := range 5 {
		f.run(pkt{src: random4Seq(i), dst: vip4, proto: protoTCP, sport: 1, dport: 9}.build())
	}
	name := d.Services[0].Name
	for be, n := range sent {
		if got := gathered(t, reg, "xlb_l4_packets_total", map[string]string{"service": name, "backend": be}); got != n {
			t.Errorf("xlb_l4_packets_total{%s} = %v, sent %v", be, got, n)
		}
		if got := gathered(t, reg, "xlb_l4_new_flows_total", map[string]string{"service": name, "backend": be}); got != n {
			t.Errorf("xlb_l4_new_flows_total{%s} = %v, sent %v", be, got, n)
		}
	}
	if got := gathered(t, reg, "xlb_xdp_verdicts_total", map[string]string{"verdict": "tx", "reason": "forwarded"}); got != 40 {
		t.Errorf("tx verdicts %v, want 40", got)
	}
	if got := gathered(t, reg, "xlb_xdp_verdicts_total", map[string]string{"verdict": "pass", "reason": "no_service"}); got != 5 {
		t.Errorf("no_service verdicts %v, want 5", got)
	}
	if got := gathered(t, reg, "xlb_maglev_rebuilds_total", nil); got != 4 {
		t.Errorf("maglev rebuilds %v, want 4 (one per L4 service)", got)
	}
	if got := gathered(t, reg, "xlb_reconcile_duration_seconds", nil); got != 1 {
		t.Errorf("reconcile observations %v, want 1", got)
	}
}

func random4Seq(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 7, byte(i)}) }

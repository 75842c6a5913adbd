package health

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	mx := NewMetrics(reg)
	m, _ := newTestManager(t, mx)
	up := Spec{Kind: KindTCP, Target: tcpServer(t), Interval: 20 * time.Millisecond}
	down := Spec{Kind: KindTCP, Target: closedPort(t), Interval: 20 * time.Millisecond}
	if err := m.Set([]Target{
		{Spec: up, Subjects: []Subject{{"web", "b1"}, {"api", "b1"}}},
		{Spec: down, Subjects: []Subject{{"web", "b2"}}},
	}); err != nil {
		t.Fatal(err)
	}
	// Every subject's series exist from the start, at 0.
	if n := testutil.CollectAndCount(mx, "xlb_health_checks_total"); n != 6 {
		t.Errorf("%d check series, want 6 (3 subjects x 2 results)", n)
	}
	count := func(service, backend, result string) float64 {
		return testutil.ToFloat64(mx.checks.WithLabelValues(service, backend, result))
	}
	waitFor(t, 2*time.Second, "3 checks of each", func() bool {
		return count("web", "b1", "success") >= 3 && count("web", "b2", "failure") >= 3
	})
	// Both subjects of the shared checker count each check.
	if a, w := count("api", "b1", "success"), count("web", "b1", "success"); a < 3 || a-w > 1 || w-a > 1 {
		t.Errorf("shared checker counted %v for api/b1 and %v for web/b1", a, w)
	}
	if n := count("web", "b1", "failure") + count("web", "b2", "success"); n != 0 {
		t.Errorf("%v checks counted with the wrong result", n)
	}
	if n := testutil.CollectAndCount(mx, "xlb_health_check_duration_seconds"); n != 2 {
		t.Errorf("%d duration series, want 2 (tcp success, tcp failure)", n)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
	// Removing a subject deletes its series.
	if err := m.Set([]Target{{Spec: up, Subjects: []Subject{{"web", "b1"}}}}); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(mx, "xlb_health_checks_total"); n != 2 {
		t.Errorf("%d check series after removing api/b1 and web/b2, want 2", n)
	}
	time.Sleep(60 * time.Millisecond) // the stopped checker must not bring them back
	if n := testutil.CollectAndCount(mx, "xlb_health_checks_total"); n != 2 {
		t.Errorf("%d check series after a while, want 2", n)
	}
	m.Close()
	if n := testutil.CollectAndCount(mx, "xlb_health_checks_total"); n != 0 {
		t.Errorf("%d check series after Close, want 0", n)
	}
}

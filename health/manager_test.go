package health

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestJitterBounds(t *testing.T) {
	tests := []struct {
		interval time.Duration
		jitter   float64
	}{
		{time.Second, 0.1},
		{50 * time.Millisecond, 0.1},
		{5 * time.Second, 0.5},
		{time.Second, 0.99},
	}
	const samples = 10000
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v±%v", tt.interval, tt.jitter), func(t *testing.T) {
			lo := time.Duration(float64(tt.interval) * (1 - tt.jitter))
			hi := time.Duration(float64(tt.interval) * (1 + tt.jitter))
			spread := hi - lo
			distinct := map[time.Duration]bool{}
			minD, maxD := hi, lo
			for range samples {
				d := nextDelay(tt.interval, tt.jitter, rand.Float64())
				if d < lo || d > hi {
					t.Fatalf("delay %v outside [%v, %v]", d, lo, hi)
				}
				distinct[d] = true
				minD, maxD = min(minD, d), max(maxD, d)
				if f := firstDelay(tt.interval, tt.jitter, rand.Float64()); f < 0 || f > hi-tt.interval {
					t.Fatalf("first delay %v outside [0, %v]", f, hi-tt.interval)
				}
			}
			if len(distinct) < samples/2 {
				t.Errorf("only %d distinct delays in %d", len(distinct), samples)
			}
			// Uniform over the range: the extremes are near its ends.
			if minD > lo+spread/50 || maxD < hi-spread/50 {
				t.Errorf("delays span [%v, %v], want most of [%v, %v]", minD, maxD, lo, hi)
			}
			// Extremes of u.
			if d := nextDelay(tt.interval, tt.jitter, 0); d != lo {
				t.Errorf("u=0: %v, want %v", d, lo)
			}
		})
	}
	t.Run("none", func(t *testing.T) {
		s := mustNormalize(t, Spec{Kind: KindTCP, Target: closedPort(t), Interval: time.Second, Jitter: NoJitter})
		if d := nextDelay(s.Interval, s.jitterFraction(), rand.Float64()); d != time.Second {
			t.Errorf("no jitter: %v", d)
		}
		if d := firstDelay(s.Interval, s.jitterFraction(), rand.Float64()); d != 0 {
			t.Errorf("no jitter: first delay %v", d)
		}
	})
}

// A hanging backend does not delay the others: while ten targets hang until
// their 500 ms timeout, a healthy target checked every 50 ms keeps its
// cadence, measured by the arrival times of its checks at its server.
func TestHangingTargetDoesNotDelayOthers(t *testing.T) {
	const (
		interval = 50 * time.Millisecond
		jitter   = 0.1
	)
	hang := hangServer(t)
	srv := newRecServer(t)
	m, _ := newTestManager(t, nil)
	var targets []Target
	for i := range 10 {
		targets = append(targets, Target{Spec: Spec{
			Kind: KindHTTP, Target: hang, Path: fmt.Sprintf("/hang/%d", i),
			Interval: 100 * time.Millisecond, Timeout: 500 * time.Millisecond,
		}})
	}
	ok := Spec{Kind: KindHTTP, Target: srv.addr, Path: "/ok", Interval: interval, Jitter: jitter, Timeout: time.Second}
	targets = append(targets, Target{Spec: ok})
	if err := m.Set(targets); err != nil {
		t.Fatal(err)
	}
	// Until every hanging target has timed out once, and then some.
	waitFor(t, 3*time.Second, "the hanging targets to time out", func() bool {
		for _, st := range m.Snapshot() {
			if st.Spec.Target == hang && st.Reason != "timeout" {
				return false
			}
		}
		return true
	})
	time.Sleep(2 * interval)

	times := srv.times("/ok")
	if len(times) < 10 {
		t.Fatalf("only %d checks of the healthy target while the others hung", len(times))
	}
	// A checker held up by the hanging ones would show a gap of their 500 ms
	// timeout; half of it separates that from scheduling noise on a loaded
	// machine, which has reached 125 ms here.
	maxGap := 250 * time.Millisecond
	for i := 1; i < len(times); i++ {
		gap := times[i].Sub(times[i-1])
		if gap > maxGap {
			t.Errorf("gap %d between checks of the healthy target: %v > %v", i, gap, maxGap)
		}
		if gap < interval/2 {
			t.Errorf("gap %d between checks of the healthy target: %v, too short", i, gap)
		}
	}
	if st, _ := m.State(ok); st != Healthy {
		t.Errorf("healthy target is %v", st)
	}
}

// Set keeps the checker, state and counts of an unchanged Spec, stops a
// removed one and starts a new one in its Initial state.
func TestSetDiff(t *testing.T) {
	srvA := newRecServer(t)
	srvA.setStatus(http.StatusServiceUnavailable)
	tcpB := tcpServer(t)
	tcpC := tcpServer(t)
	m, _ := newTestManager(t, nil)
	ch, _ := m.Subscribe(8)

	specA := Spec{Kind: KindHTTP, Target: srvA.addr, Interval: 20 * time.Millisecond, UnhealthyThreshold: 2}
	specB := Spec{Kind: KindTCP, Target: tcpB, Interval: 20 * time.Millisecond}
	specC := Spec{Kind: KindTCP, Target: tcpC, Interval: 20 * time.Millisecond}
	web := func(b string) Subject { return Subject{Service: "web", Backend: b} }
	if err := m.Set([]Target{
		{Spec: specA, Subjects: []Subject{web("a")}},
		{Spec: specB, Subjects: []Subject{web("b")}},
	}); err != nil {
		t.Fatal(err)
	}
	if got := m.running.Load(); got != 2 {
		t.Fatalf("%d checkers running, want 2", got)
	}
	tr := recv(t, ch, 2*time.Second)
	if tr.Spec != mustNormalize(t, specA) || tr.To != Unhealthy || tr.Reason != "status 503" {
		t.Fatalf("transition %+v, want A unhealthy by status 503", tr)
	}
	before := statusOf(t, m, specA)

	// Reload: A unchanged (but with a new subject, and an Initial that
	// must be ignored), B removed, C new and initially unhealthy.
	if err := m.Set([]Target{
		{Spec: specA, Initial: Healthy, Subjects: []Subject{web("a"), {Service: "api", Backend: "a"}}},
		{Spec: specC, Initial: Unhealthy, Subjects: []Subject{web("c")}},
	}); err != nil {
		t.Fatal(err)
	}
	if st, ok := m.State(specA); !ok || st != Unhealthy {
		t.Errorf("A after reload: %v, %v; want kept unhealthy", st, ok)
	}
	after := statusOf(t, m, specA)
	if after.Failures < before.Failures || !after.Since.Equal(before.Since) {
		t.Errorf("A's counts were reset: before %+v, after %+v", before, after)
	}
	if got := joinSubjects(after.Subjects); got != "api/a web/a" {
		t.Errorf("A's subjects: %s", got)
	}
	if _, ok := m.State(specB); ok {
		t.Error("B still has a checker")
	}
	if st, ok := m.State(specC); !ok || st != Unhealthy {
		t.Errorf("C: %v, %v; want its initial unhealthy", st, ok)
	}
	waitFor(t, time.Second, "B's goroutine to exit", func() bool { return m.running.Load() == 2 })

	// C recovers after HealthyThreshold successes.
	tr = recv(t, ch, 2*time.Second)
	if tr.Spec != mustNormalize(t, specC) || tr.From != Unhealthy || tr.To != Healthy {
		t.Fatalf("transition %+v, want C healthy", tr)
	}
	if got := joinSubjects(tr.Subjects); got != "web/c" {
		t.Errorf("C's transition subjects: %s", got)
	}

	if err := m.Set(nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "every checker to exit", func() bool { return m.running.Load() == 0 })
	if s := m.Snapshot(); len(s) != 0 {
		t.Errorf("snapshot after Set(nil): %+v", s)
	}
}

func statusOf(t *testing.T, m *Manager, spec Spec) Status {
	t.Helper()
	spec = mustNormalize(t, spec)
	for _, st := range m.Snapshot() {
		if st.Spec == spec {
			return st
		}
	}
	t.Fatalf("no status for %s", spec)
	return Status{}
}

// Targets with equal normalized Specs share one checker: the server sees one
// check per interval, not two.
func TestSharedChecker(t *testing.T) {
	const interval = 40 * time.Millisecond
	srv := newRecServer(t)
	m, _ := newTestManager(t, nil)
	// Equal once normalized.
	s1 := Spec{Kind: KindHTTP, Target: srv.addr, Path: "/shared", Interval: interval}
	s2 := Spec{Kind: KindHTTP, Target: srv.addr, Path: "/shared", Interval: interval, Jitter: DefaultJitter,
		ExpectStatus: "200-299", HealthyThreshold: 2, Timeout: DefaultTimeout}
	if err := m.Set([]Target{
		{Spec: s1, Subjects: []Subject{{"l4", "b1"}}, Initial: Unhealthy},
		{Spec: s2, Subjects: []Subject{{"l7", "b1"}, {"l4", "b1"}}},
	}); err != nil {
		t.Fatal(err)
	}
	if got := m.running.Load(); got != 1 {
		t.Fatalf("%d checkers for one spec", got)
	}
	snap := m.Snapshot()
	if len(snap) != 1 || joinSubjects(snap[0].Subjects) != "l4/b1 l7/b1" {
		t.Fatalf("snapshot %+v, want one checker with both subjects", snap)
	}
	if snap[0].State != Healthy {
		t.Errorf("initial state %v: one target said healthy", snap[0].State)
	}

	const n = 8
	waitFor(t, 2*time.Second, "checks", func() bool { return srv.count("/shared") >= n })
	times := srv.times("/shared")[:n]
	// n checks of one checker take at least n-1 minimal delays; two
	// checkers would have done them in about half that.
	minSpan := time.Duration(float64(interval)*(1-DefaultJitter))*(n-1) - 15*time.Millisecond
	if span := times[n-1].Sub(times[0]); span < minSpan {
		t.Errorf("%d checks in %v, want at least %v: more than one checker?", n, span, minSpan)
	}
}

func TestSetInvalid(t *testing.T) {
	m, _ := newTestManager(t, nil)
	good := Target{Spec: Spec{Kind: KindTCP, Target: tcpServer(t)}}
	err := m.Set([]Target{good, {Spec: Spec{Kind: "icmp", Target: good.Spec.Target}}, {Spec: good.Spec, Initial: 9}})
	if !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("Set = %v, want ErrInvalidSpec", err)
	}
	for _, want := range []string{"health target 1:", `unknown kind "icmp"`, "health target 2:", "initial state 9"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if n := m.running.Load(); n != 0 || len(m.Snapshot()) != 0 {
		t.Errorf("an invalid Set started %d checkers", n)
	}
}

// A subscriber sees the target go unhealthy when its server stops and
// healthy when it is back, promptly after the deciding check.
func TestSubscribeOffOn(t *testing.T) {
	const (
		interval = 30 * time.Millisecond
		timeout  = 200 * time.Millisecond
		latency  = 100 * time.Millisecond
	)
	srv := newRecServer(t)
	m, logs := newTestManager(t, nil)
	ch, unsubscribe := m.Subscribe(1)
	spec := Spec{Kind: KindHTTP, Target: srv.addr, Path: "/health", Interval: interval, Timeout: timeout,
		HealthyThreshold: 2, UnhealthyThreshold: 3}
	subjects := []Subject{{"web", "b1"}, {"api", "b1"}}
	if err := m.Set([]Target{{Spec: spec, Subjects: subjects}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "a first check", func() bool { return srv.count("/health") > 0 })

	srv.off()
	off := time.Now()
	tr := recv(t, ch, 2*time.Second)
	got := time.Now()
	if tr.From != Healthy || tr.To != Unhealthy || tr.Reason != "refused" {
		t.Fatalf("transition %+v, want healthy -> unhealthy, refused", tr)
	}
	if d := got.Sub(tr.At); d > latency {
		t.Errorf("transition delivered %v after the deciding check", d)
	}
	// Three failures: within 3 intervals (+ jitter) of the server stopping.
	if d := got.Sub(off); d > 3*(interval+interval/10)+timeout {
		t.Errorf("unhealthy %v after the server stopped", d)
	}
	if st, _ := m.State(spec); st != Unhealthy {
		t.Errorf("State = %v", st)
	}

	srv.on()
	tr = recv(t, ch, 2*time.Second)
	got = time.Now()
	if tr.From != Unhealthy || tr.To != Healthy || tr.Reason != "status 200" {
		t.Fatalf("transition %+v, want unhealthy -> healthy, status 200", tr)
	}
	times := srv.times("/health")
	if d := got.Sub(times[len(times)-1]); d > latency {
		t.Errorf("transition delivered %v after the deciding check reached the server", d)
	}
	if got := joinSubjects(tr.Subjects); got != "api/b1 web/b1" {
		t.Errorf("subjects %s", got)
	}

	// The log lines, at warn and above, in order.
	var lines []string
	for _, r := range logs.records(slog.LevelInfo) {
		if r.msg == "health checks updated" {
			continue
		}
		lines = append(lines, fmt.Sprintf("%s %s service=%s backend=%s reason=%s",
			r.level, r.msg, r.attrs["service"], r.attrs["backend"], r.attrs["reason"]))
	}
	want := []string{
		"WARN health check failed (1/3) service=api,web backend=b1 reason=refused",
		"WARN health check failed (2/3) service=api,web backend=b1 reason=refused",
		"ERROR marked UNHEALTHY service=api,web backend=b1 reason=refused",
		"INFO marked HEALTHY service=api,web backend=b1 reason=status 200",
	}
	if !slices.Equal(lines, want) {
		t.Errorf("log lines:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}

	unsubscribe()
	unsubscribe()
	if _, ok := <-ch; ok {
		t.Error("channel open after unsubscribe")
	}
}

// Close stops every checker, even in the middle of a hanging check, closes
// the subscriptions and leaves no goroutine behind.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	hang := hangServer(t)
	tcp := tcpServer(t)
	srv := newRecServer(t)
	base := runtime.NumGoroutine()

	m := NewManager(slog.New(newLogRecorder()), NewMetrics(nil))
	var targets []Target
	for i := range 20 {
		targets = append(targets,
			Target{Spec: Spec{Kind: KindHTTP, Target: hang, Path: fmt.Sprintf("/%d", i), Interval: 20 * time.Millisecond}},
			Target{Spec: Spec{Kind: KindHTTP, Target: srv.addr, Path: fmt.Sprintf("/%d", i), Interval: 20 * time.Millisecond}},
			Target{Spec: Spec{Kind: KindTCP, Target: tcp, Interval: time.Duration(20+i) * time.Millisecond}},
		)
	}
	if err := m.Set(targets); err != nil {
		t.Fatal(err)
	}
	ch1, _ := m.Subscribe(0)
	ch2, unsub2 := m.Subscribe(10)
	time.Sleep(100 * time.Millisecond)
	if n := m.running.Load(); n != 60 {
		t.Errorf("%d checkers running, want 60", n)
	}

	start := time.Now()
	m.Close()
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Close took %v", d)
	}
	if n := m.running.Load(); n != 0 {
		t.Errorf("%d checkers still running after Close", n)
	}
	for _, ch := range []<-chan Transition{ch1, ch2} {
		for range ch { // drains what was buffered, then sees it closed
		}
	}
	unsub2()
	m.Close()
	if err := m.Set(targets); !errors.Is(err, ErrClosed) {
		t.Errorf("Set after Close = %v, want ErrClosed", err)
	}
	ch3, unsub3 := m.Subscribe(1)
	if _, ok := <-ch3; ok {
		t.Error("Subscribe after Close: channel open")
	}
	unsub3()
	waitFor(t, 2*time.Second, fmt.Sprintf("goroutines back to %d", base), func() bool {
		return runtime.NumGoroutine() <= base
	})
}

// 1000 targets at a 1 s interval: one goroutine each, every target checked
// once per interval, and the cost is logged (process CPU, which includes the
// test server's side).
func TestManyTargets(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 2 s")
	}
	const n = 1000
	srv := newRecServer(t)
	base := runtime.NumGoroutine()
	m, _ := newTestManager(t, nil)
	targets := make([]Target, n)
	for i := range targets {
		targets[i] = Target{Spec: Spec{Kind: KindHTTP, Target: srv.addr, Path: fmt.Sprintf("/t/%d", i), Interval: time.Second}}
	}
	cpu0 := processCPU(t)
	start := time.Now()
	if err := m.Set(targets); err != nil {
		t.Fatal(err)
	}
	maxG := 0
	// Under the race detector the 1000 checks a second can fall behind on
	// two cores: the checks due by 2 s get until 6 s to happen, and the
	// upper bound follows the time that took.
	wait := 2 * time.Second
	if raceEnabled {
		wait = 6 * time.Second
	}
	checkedTwice := func() bool {
		for i := range n {
			if srv.count(fmt.Sprintf("/t/%d", i)) < 2 {
				return false
			}
		}
		return true
	}
	for time.Since(start) < 2*time.Second || time.Since(start) < wait && !checkedTwice() {
		maxG = max(maxG, runtime.NumGoroutine()-base)
		time.Sleep(5 * time.Millisecond)
	}
	elapsed, cpu := time.Since(start), processCPU(t)-cpu0
	most := 3 + int((max(0, elapsed-2*time.Second)+time.Second-1)/time.Second) // one more per further second, begun
	for i := range n {
		// Checks at [0, 0.15 s] and then [0.85 s, 1.3 s] (jitter, then the
		// 100 ms grid of coalesceStep): 2 or 3 in 2 s (one more for each
		// further second the race detector took).
		if c := srv.count(fmt.Sprintf("/t/%d", i)); c < 2 || c > most {
			t.Fatalf("target %d checked %d times in %v", i, c, elapsed)
		}
	}
	t.Logf("%d targets at 1 s for %v: process CPU %v (%.1f%% of one core, client and server, race detector %v), goroutines above base: max %d (checkers and checks in flight, both sides)",
		n, elapsed.Round(time.Millisecond), cpu.Round(time.Millisecond), 100*cpu.Seconds()/elapsed.Seconds(), raceEnabled, maxG)
	if r := m.running.Load(); r != n {
		t.Errorf("%d checker goroutines for %d targets", r, n)
	}
}

func processCPU(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

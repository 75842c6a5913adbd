package l7

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestDoneCounts(t *testing.T) {
	ups := testUpstreams(1)
	u := ups[0]
	p := testPool(t, PolicyRoundRobin, ups)
	results := []struct {
		res     Result
		latency time.Duration
	}{
		{ResultOK, 10 * time.Millisecond},
		{ResultServerError, 20 * time.Millisecond},
		{ResultConnectError, time.Millisecond},
		{ResultBroken, 30 * time.Millisecond},
		{ResultCanceled, 5 * time.Millisecond},
		{ResultOK, 4 * time.Millisecond},
	}
	var sum time.Duration
	for _, r := range results {
		got, _, err := p.Pick(testRequest(""), nil)
		if err != nil || got != u {
			t.Fatal(got, err)
		}
		if u.InFlight.Load() != 1 {
			t.Fatalf("InFlight %d after Pick", u.InFlight.Load())
		}
		u.Done(p, r.res, r.latency)
		sum += r.latency
	}
	if n := u.InFlight.Load(); n != 0 {
		t.Errorf("InFlight = %d", n)
	}
	if n := u.Requests.Load(); n != 6 {
		t.Errorf("Requests = %d, want 6", n)
	}
	if n := u.Errors.Load(); n != 3 {
		t.Errorf("Errors = %d, want 3 (5xx, connect, broken)", n)
	}
	if n := u.LatencySum.Load(); time.Duration(n) != sum {
		t.Errorf("LatencySum = %v, want %v", time.Duration(n), sum)
	}
}

func TestResultString(t *testing.T) {
	want := map[Result]string{
		ResultOK: "ok", ResultServerError: "server_error", ResultConnectError: "connect_error",
		ResultBroken: "broken", ResultCanceled: "canceled", Result(99): "unknown",
	}
	for r, s := range want {
		if r.String() != s {
			t.Errorf("%d: %q, want %q", int(r), r.String(), s)
		}
	}
}

// TestPassiveEjection: MaxFails consecutive failures eject; a success in
// between resets the count; canceled requests are neutral.
func TestPassiveEjection(t *testing.T) {
	const (
		O = ResultOK
		S = ResultServerError
		C = ResultConnectError
		B = ResultBroken
		X = ResultCanceled
	)
	tests := []struct {
		name     string
		maxFails int
		results  []Result
		ejected  bool
	}{
		{"three connect errors", 3, []Result{C, C, C}, true},
		{"three 5xx", 3, []Result{S, S, S}, true},
		{"mixed failures", 3, []Result{C, S, B}, true},
		{"two are not enough", 3, []Result{C, C}, false},
		{"success resets", 3, []Result{C, C, O, C, C}, false},
		{"success resets then three", 3, []Result{C, C, O, C, C, C}, true},
		{"canceled is neutral", 3, []Result{C, X, C, X, C}, true},
		{"canceled does not reset", 3, []Result{C, C, X, X}, false},
		{"max fails 1", 1, []Result{O, O, B}, true},
		{"disabled", 0, []Result{C, C, C, C, C, C, C, C}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ups := testUpstreams(1, 1)
			u := ups[0]
			p := testPool(t, PolicyRoundRobin, ups)
			p.Passive = PassiveConfig{MaxFails: tt.maxFails, BaseEjection: time.Minute}
			var events []string
			p.OnEject = func(x *Upstream, until time.Time, reason string) {
				if x != u {
					t.Error("OnEject for the wrong upstream")
				}
				if d := time.Until(until); d < 59*time.Second || d > time.Minute {
					t.Errorf("ejected for %v, want 1m", d)
				}
				events = append(events, reason)
			}
			for _, r := range tt.results {
				u.InFlight.Add(1) // as Pick would
				u.Done(p, r, time.Millisecond)
			}
			if got := u.Ejected(time.Now()); got != tt.ejected {
				t.Fatalf("ejected = %v, want %v", got, tt.ejected)
			}
			if u.Usable(time.Now()) == tt.ejected {
				t.Error("Usable disagrees with Ejected")
			}
			if tt.ejected {
				if len(events) != 1 || !strings.Contains(events[0], "consecutive failures") {
					t.Errorf("OnEject events %q", events)
				}
				if until := u.EjectedUntil(); time.Until(until) < 59*time.Second {
					t.Errorf("EjectedUntil %v", until)
				}
				// No requests to it while ejected.
				for range 10 {
					x, _, err := p.Pick(testRequest(""), nil)
					if err != nil || x == u {
						t.Fatalf("Pick = %v, %v while ejected", x, err)
					}
					x.Done(p, ResultOK, 0)
				}
			} else {
				if len(events) != 0 {
					t.Errorf("OnEject events %q", events)
				}
				if !u.EjectedUntil().IsZero() {
					t.Error("EjectedUntil set")
				}
			}
		})
	}
}

// expire makes u's current ejection end now, as if the time had passed.
func expire(u *Upstream) {
	u.ejectedUntil.Store(time.Now().Add(-time.Nanosecond).UnixNano())
}

// failUntilEjected sends MaxFails failures and returns the ejection length.
func failUntilEjected(t *testing.T, p *Pool, u *Upstream) time.Duration {
	t.Helper()
	for range p.Passive.MaxFails {
		u.InFlight.Add(1)
		u.Done(p, ResultConnectError, 0)
	}
	if !u.Ejected(time.Now()) {
		t.Fatal("not ejected")
	}
	return time.Until(u.EjectedUntil()).Round(time.Second)
}

func TestEjectionBackoff(t *testing.T) {
	tests := []struct {
		name      string
		cfg       PassiveConfig
		durations []time.Duration // successive ejections, no success between
	}{
		{"doubles and caps", PassiveConfig{MaxFails: 2, BaseEjection: 10 * time.Second, MaxEjection: 50 * time.Second},
			[]time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 50 * time.Second, 50 * time.Second}},
		{"defaults 30s..5m", PassiveConfig{MaxFails: 1},
			[]time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute}},
		{"max below base", PassiveConfig{MaxFails: 1, BaseEjection: time.Minute, MaxEjection: time.Second},
			[]time.Duration{time.Minute, time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ups := testUpstreams(1, 1)
			u := ups[0]
			p := testPool(t, PolicyRoundRobin, ups)
			p.Passive = tt.cfg
			for i, want := range tt.durations {
				if got := failUntilEjected(t, p, u); got != want {
					t.Errorf("ejection %d lasts %v, want %v", i+1, got, want)
				}
				expire(u)
			}
		})
	}
	if d := (PassiveConfig{BaseEjection: time.Second, MaxEjection: time.Hour}).ejection(1000); d != time.Hour {
		t.Errorf("ejection 1000 = %v, want the cap", d)
	}
}

// TestEjectionExpiry: after the ejection the upstream takes requests again;
// a success then resets the back-off, a success during the ejection (a
// request that was in flight) does not, and failures during it do not count.
func TestEjectionExpiry(t *testing.T) {
	ups := testUpstreams(1, 1)
	u := ups[0]
	p := testPool(t, PolicyRoundRobin, ups)
	p.Passive = PassiveConfig{MaxFails: 2, BaseEjection: 10 * time.Second, MaxEjection: time.Minute}
	var ejections atomic.Int32
	p.OnEject = func(*Upstream, time.Time, string) { ejections.Add(1) }

	if d := failUntilEjected(t, p, u); d != 10*time.Second {
		t.Fatalf("first ejection %v", d)
	}
	// Stragglers: in-flight requests finishing during the ejection.
	for _, r := range []Result{ResultBroken, ResultBroken, ResultBroken, ResultOK} {
		u.InFlight.Add(1)
		u.Done(p, r, 0)
	}
	if n := ejections.Load(); n != 1 {
		t.Fatalf("%d ejections, failures during the ejection counted", n)
	}
	expire(u)
	if !u.Usable(time.Now()) {
		t.Fatal("not usable after the ejection")
	}
	if c := counts(pickSeq(t, p, 4), 2); c[0] != 2 {
		t.Fatalf("after expiry: counts %v, want it back in the rotation", c)
	}
	// pickSeq's successes came after the expiry: back-off reset.
	if d := failUntilEjected(t, p, u); d != 10*time.Second {
		t.Errorf("ejection after a success: %v, want the base 10s", d)
	}
	expire(u)
	// No success since: the next one doubles.
	if d := failUntilEjected(t, p, u); d != 20*time.Second {
		t.Errorf("second ejection in a row: %v, want 20s", d)
	}
	// A success from a request in flight during the ejection: no reset.
	u.InFlight.Add(1)
	u.Done(p, ResultOK, 0)
	expire(u)
	if d := failUntilEjected(t, p, u); d != 40*time.Second {
		t.Errorf("third ejection: %v, want 40s", d)
	}
	// Readmit: an operator's "ready".
	u.Readmit()
	if !u.Usable(time.Now()) {
		t.Fatal("not usable after Readmit")
	}
	if d := failUntilEjected(t, p, u); d != 10*time.Second {
		t.Errorf("after Readmit: %v, want 10s", d)
	}
}

// TestEjectionAndState: ejection and the control loop's state do not
// override each other.
func TestEjectionAndState(t *testing.T) {
	ups := testUpstreams(1, 1)
	u := ups[0]
	p := testPool(t, PolicyRoundRobin, ups)
	p.Passive = PassiveConfig{MaxFails: 1, BaseEjection: time.Minute}
	u.SetState(StateDown)
	failUntilEjected(t, p, u)
	expire(u)
	if u.Usable(time.Now()) {
		t.Fatal("ejection expiry made a down upstream usable")
	}
	u.SetState(StateUp)
	failUntilEjected(t, p, u)
	u.SetState(StateDown)
	u.SetState(StateUp) // the active checker says up again
	if u.Usable(time.Now()) {
		t.Fatal("an active up ended the ejection early")
	}
	if u.State() != StateUp {
		t.Fatal("ejection changed State")
	}
}

// TestPassiveConcurrent: a burst of concurrent failures ejects once; Done
// and Pick race-free under load.
func TestPassiveConcurrent(t *testing.T) {
	ups := testUpstreams(1, 1, 1)
	p := testPool(t, PolicyLeastConnections, ups)
	p.Passive = PassiveConfig{MaxFails: 10, BaseEjection: time.Hour}
	var ejected atomic.Int32
	p.OnEject = func(*Upstream, time.Time, string) { ejected.Add(1) }
	u := ups[1]
	var wg sync.WaitGroup
	for range 200 {
		u.InFlight.Add(1)
		wg.Go(func() { u.Done(p, ResultConnectError, time.Millisecond) })
	}
	wg.Wait()
	if n := ejected.Load(); n != 1 {
		t.Errorf("%d ejections from one burst, want 1", n)
	}
	if u.InFlight.Load() != 0 || u.Requests.Load() != 200 || u.Errors.Load() != 200 {
		t.Errorf("counters: in flight %d, requests %d, errors %d", u.InFlight.Load(), u.Requests.Load(), u.Errors.Load())
	}

	// Mixed load on all three, states flipping, under -race.
	u.Readmit()
	p.Passive = PassiveConfig{MaxFails: 3, BaseEjection: time.Millisecond, MaxEjection: 8 * time.Millisecond}
	stop := make(chan struct{})
	var flipper sync.WaitGroup
	flipper.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ups[i%3].SetState(State(i % 2 * 2)) // up, down
			time.Sleep(50 * time.Microsecond)
		}
	})
	for w := range 32 {
		wg.Go(func() {
			for i := range 500 {
				x, _, err := p.Pick(testRequest(""), nil)
				if err != nil {
					continue
				}
				res := ResultOK
				if (w*7+i)%5 == 0 {
					res = ResultBroken
				}
				_ = x.EjectedUntil()
				x.Done(p, res, time.Microsecond)
			}
		})
	}
	wg.Wait()
	close(stop)
	flipper.Wait()
	for i, x := range ups {
		if n := x.InFlight.Load(); n != 0 {
			t.Errorf("upstream %d InFlight = %d", i, n)
		}
	}
}

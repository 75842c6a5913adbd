package health

import (
	"strings"
	"testing"
)

func TestTracker(t *testing.T) {
	// Results are a string of S (success) and F (failure); want is the state
	// after each result, h or u, and the transitions are where it changes.
	tests := []struct {
		name               string
		initial            State
		healthy, unhealthy int
		results            string
		want               string
	}{
		{name: "stays healthy", healthy: 2, unhealthy: 3, results: "SSSS", want: "hhhh"},
		{name: "exact unhealthy threshold", healthy: 2, unhealthy: 3, results: "FFF", want: "hhu"},
		{name: "one short of the threshold", healthy: 2, unhealthy: 3, results: "FFS", want: "hhh"},
		{name: "flapping never crosses", healthy: 2, unhealthy: 3, results: "SFSFSFSFFSFFSF", want: "hhhhhhhhhhhhhh"},
		{name: "a success resets failures", healthy: 2, unhealthy: 3, results: "FFSFFF", want: "hhhhhu"},
		{name: "down then up", healthy: 2, unhealthy: 3, results: "FFFFSS", want: "hhuuuh"},
		{name: "a failure resets successes", healthy: 2, unhealthy: 3, results: "FFFSFSS", want: "hhuuuuh"},
		{name: "flapping while unhealthy stays down", healthy: 2, unhealthy: 3, results: "FFFSFSFSF", want: "hhuuuuuuu"},
		{name: "initial unhealthy", initial: Unhealthy, healthy: 2, unhealthy: 3, results: "SS", want: "uh"},
		{name: "initial unhealthy, failures", initial: Unhealthy, healthy: 2, unhealthy: 3, results: "FFFFS", want: "uuuuu"},
		{name: "initial unhealthy, flapping", initial: Unhealthy, healthy: 2, unhealthy: 3, results: "SFSFSF", want: "uuuuuu"},
		{name: "thresholds of one", healthy: 1, unhealthy: 1, results: "FSFS", want: "uhuh"},
		{name: "zero thresholds count as one", healthy: 0, unhealthy: 0, results: "FS", want: "uh"},
		{name: "long thresholds", healthy: 3, unhealthy: 5, results: "FFFFSFFFFFSSFSSS", want: "hhhhhhhhhuuuuuuh"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := NewTracker(tt.initial, tt.healthy, tt.unhealthy)
			var got strings.Builder
			prev := tt.initial
			wantS, wantF := 0, 0
			for i, r := range tt.results {
				ok := r == 'S'
				changed := tr.Observe(ok)
				if changed != (tr.State() != prev) {
					t.Errorf("result %d: changed = %v, state %v -> %v", i, changed, prev, tr.State())
				}
				prev = tr.State()
				if ok {
					wantS, wantF = wantS+1, 0
				} else {
					wantS, wantF = 0, wantF+1
				}
				if tr.Successes() != wantS || tr.Failures() != wantF {
					t.Errorf("result %d: counts %d/%d, want %d/%d", i, tr.Successes(), tr.Failures(), wantS, wantF)
				}
				got.WriteByte(tr.State().String()[0])
			}
			if got.String() != tt.want {
				t.Errorf("%s: states %s, want %s", tt.results, got.String(), tt.want)
			}
		})
	}
}

func TestTrackerZeroValue(t *testing.T) {
	var tr Tracker
	if tr.State() != Healthy || tr.HealthyThreshold() != 1 || tr.UnhealthyThreshold() != 1 {
		t.Fatalf("zero Tracker: %v %d %d", tr.State(), tr.HealthyThreshold(), tr.UnhealthyThreshold())
	}
	if !tr.Observe(false) || tr.State() != Unhealthy {
		t.Fatal("zero Tracker did not turn unhealthy after one failure")
	}
}

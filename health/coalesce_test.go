package health

import (
	"math/rand/v2"
	"testing"
	"time"
)

// Check start times are rounded to a grid of Interval/10 (at most 100 ms):
// by at most half a step, onto a multiple of the step.
func TestCoalesce(t *testing.T) {
	for _, tt := range []struct{ interval, step time.Duration }{
		{50 * time.Millisecond, 5 * time.Millisecond},
		{time.Second, 100 * time.Millisecond},
		{5 * time.Second, 100 * time.Millisecond},
		{time.Millisecond, 100 * time.Microsecond},
	} {
		if got := coalesceStep(tt.interval); got != tt.step {
			t.Errorf("coalesceStep(%v) = %v, want %v", tt.interval, got, tt.step)
		}
		for range 1000 {
			at := time.Now().Add(rand.N(10 * time.Second))
			got := coalesce(at, tt.step)
			if d := got.Sub(at); d < -tt.step/2 || d > tt.step/2 {
				t.Fatalf("coalesce(%v, %v) moved it by %v", at, tt.step, d)
			}
			if got.UnixNano()%int64(tt.step) != 0 {
				t.Fatalf("coalesce(%v, %v) = %v, not on the grid", at, tt.step, got)
			}
		}
	}
	at := time.Now()
	if got := coalesce(at, 0); !got.Equal(at) {
		t.Errorf("step 0 moved %v to %v", at, got)
	}
}

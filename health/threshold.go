package health

// Tracker is the threshold state machine of one checker: it turns a sequence
// of check results into a state. It is a plain value with no locking and no
// goroutines; the zero value is healthy with thresholds of 1.
//
//   - While Healthy, UnhealthyThreshold consecutive failures make it
//     Unhealthy.
//   - While Unhealthy, HealthyThreshold consecutive successes make it
//     Healthy.
//   - A success resets the failure count and a failure the success count, so
//     alternating results never cross a threshold above 1.
//
// The counts keep counting past a transition (four failures in a row read 4
// whatever the state), so they always say how long the current run is.
type Tracker struct {
	state              State
	healthyThreshold   int
	unhealthyThreshold int
	successes          int // consecutive, current run
	failures           int // consecutive, current run
}

// NewTracker starts in initial with no results. Thresholds below 1 count as 1.
func NewTracker(initial State, healthyThreshold, unhealthyThreshold int) Tracker {
	return Tracker{
		state:              initial,
		healthyThreshold:   healthyThreshold,
		unhealthyThreshold: unhealthyThreshold,
	}
}

// Observe records one check result and reports whether it changed the state.
func (t *Tracker) Observe(ok bool) (changed bool) {
	if ok {
		t.failures = 0
		t.successes++
		if t.state != Healthy && t.successes >= max(t.healthyThreshold, 1) {
			t.state = Healthy
			return true
		}
		return false
	}
	t.successes = 0
	t.failures++
	if t.state == Healthy && t.failures >= max(t.unhealthyThreshold, 1) {
		t.state = Unhealthy
		return true
	}
	return false
}

// State is the current state.
func (t *Tracker) State() State { return t.state }

// Successes is the number of consecutive successes up to the last result.
func (t *Tracker) Successes() int { return t.successes }

// Failures is the number of consecutive failures up to the last result.
func (t *Tracker) Failures() int { return t.failures }

// HealthyThreshold is the number of consecutive successes that make an
// unhealthy target healthy.
func (t *Tracker) HealthyThreshold() int { return max(t.healthyThreshold, 1) }

// UnhealthyThreshold is the number of consecutive failures that make a
// healthy target unhealthy.
func (t *Tracker) UnhealthyThreshold() int { return max(t.unhealthyThreshold, 1) }

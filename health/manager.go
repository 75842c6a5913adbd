package health

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Manager runs one checker goroutine per distinct Spec and tells subscribers
// about state transitions. Create it with NewManager, give it its targets
// with Set (again on every reload), and Close it. All methods are safe for
// concurrent use.
type Manager struct {
	log     *slog.Logger
	metrics *Metrics
	ctx     context.Context // parent of every checker's context; canceled by Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup // checker and subscriber goroutines
	running atomic.Int64   // checker goroutines alive (tests)

	mu       sync.RWMutex
	closed   bool
	checkers map[Spec]*checker
	subjects map[Subject]struct{} // of all checkers: the metric label values in use

	subsMu     sync.Mutex // may be taken while holding a checker's mu
	subsClosed bool
	subs       map[*subscriber]struct{}
}

// Status is one checker's state, as Snapshot reports it.
type Status struct {
	Spec      Spec // normalized
	State     State
	Since     time.Time // when State began: the last transition, or the checker's start
	Successes int       // consecutive, up to the last check
	Failures  int       // consecutive, up to the last check
	// Reason is the outcome of the last check: "status 200", "connected",
	// "timeout", "refused", "status 503", ...; "" before the first check.
	Reason       string
	LastCheck    time.Time     // start of the last check; zero before the first
	LastDuration time.Duration // of the last check
	Subjects     []Subject
}

// NewManager returns a Manager with no targets. log nil means slog.Default();
// metrics may be nil.
func NewManager(log *slog.Logger, metrics *Metrics) *Manager {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{
		log:      log,
		metrics:  metrics,
		ctx:      ctx,
		cancel:   cancel,
		checkers: make(map[Spec]*checker),
		subjects: make(map[Subject]struct{}),
		subs:     make(map[*subscriber]struct{}),
	}
}

// Set makes targets the complete set of checks, comparing normalized Specs
// with the running checkers':
//
//   - a new Spec starts a checker in the target's Initial state (with several
//     targets of that Spec, Unhealthy only if all of them say so);
//   - a Spec that is no longer wanted stops its checker at once, even in the
//     middle of a check, which then counts nowhere; its Subjects' metric
//     series are deleted unless another checker has them;
//   - a Spec that stays keeps its checker, schedule, state and counts; only
//     its Subjects are replaced (Initial is ignored);
//   - targets with equal Specs share one checker, whose Subjects are the
//     union of theirs.
//
// If any target is invalid Set changes nothing and returns every problem,
// each matching ErrInvalidSpec. After Close it returns ErrClosed.
func (m *Manager) Set(targets []Target) error {
	type want struct {
		initial  State
		subjects []Subject
		prober   prober
	}
	wants := make(map[Spec]*want, len(targets))
	var errs []error
	for i, t := range targets {
		spec, err := t.Spec.Normalize()
		if err == nil && t.Initial > Unhealthy {
			err = fmt.Errorf("%w: initial state %d", ErrInvalidSpec, t.Initial)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("health target %d: %w", i, err))
			continue
		}
		w, ok := wants[spec]
		if !ok {
			w = &want{initial: Unhealthy}
			wants[spec] = w
		}
		if t.Initial == Healthy {
			w.initial = Healthy
		}
		w.subjects = append(w.subjects, t.Subjects...)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	for spec, w := range wants {
		if _, ok := m.checkers[spec]; ok {
			continue
		}
		p, err := newProber(spec)
		if err != nil { // Normalize accepted the spec: should not happen
			errs = append(errs, fmt.Errorf("health check %s: %w", spec, err))
		}
		w.prober = p
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	var added, removed, kept int
	for spec, c := range m.checkers {
		if _, ok := wants[spec]; !ok {
			c.stop()
			delete(m.checkers, spec)
			removed++
		}
	}
	subjects := make(map[Subject]struct{})
	for spec, w := range wants {
		w.subjects = uniqueSubjects(w.subjects)
		for _, s := range w.subjects {
			subjects[s] = struct{}{}
		}
		if c, ok := m.checkers[spec]; ok {
			c.setSubjects(w.subjects)
			kept++
			continue
		}
		m.checkers[spec] = m.start(spec, w.prober, w.initial, w.subjects)
		added++
	}
	// The stopped checkers record nothing more, and the others no longer
	// have these subjects: their series can go.
	for s := range m.subjects {
		if _, ok := subjects[s]; !ok {
			m.metrics.forget(s)
		}
	}
	m.subjects = subjects

	level := slog.LevelDebug
	if added+removed > 0 {
		level = slog.LevelInfo
	}
	m.log.LogAttrs(m.ctx, level, "health checks updated",
		slog.Int("added", added), slog.Int("removed", removed), slog.Int("kept", kept))
	return nil
}

// State is the current state of the checker of spec (normalized first), and
// whether there is one.
func (m *Manager) State(spec Spec) (State, bool) {
	spec, err := spec.Normalize()
	if err != nil {
		return 0, false
	}
	m.mu.RLock()
	c, ok := m.checkers[spec]
	m.mu.RUnlock()
	if !ok {
		return 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tracker.State(), true
}

// Snapshot is the status of every checker, ordered by target address, then
// the rest of the Spec.
func (m *Manager) Snapshot() []Status {
	m.mu.RLock()
	out := make([]Status, 0, len(m.checkers))
	for _, c := range m.checkers {
		out = append(out, c.status())
	}
	m.mu.RUnlock()
	slices.SortFunc(out, func(a, b Status) int { return compareSpecs(a.Spec, b.Spec) })
	return out
}

// Close stops every checker, cancelling the checks in flight, closes every
// subscription's channel and waits for all of the Manager's goroutines to
// exit. It deletes the metric series of the Manager's subjects. Close is
// idempotent; after it Set returns ErrClosed and Subscribe a closed channel.
func (m *Manager) Close() {
	m.mu.Lock()
	if !m.closed {
		m.closed = true
		for spec, c := range m.checkers {
			c.stop()
			delete(m.checkers, spec)
		}
		for s := range m.subjects {
			m.metrics.forget(s)
		}
		clear(m.subjects)
	}
	m.mu.Unlock()
	m.cancel()
	m.closeSubscribers()
	m.wg.Wait()
}

// start runs a new checker (m.mu held).
func (m *Manager) start(spec Spec, p prober, initial State, subjects []Subject) *checker {
	ctx, cancel := context.WithCancel(m.ctx)
	c := &checker{
		m:         m,
		spec:      spec,
		prober:    p,
		cancel:    cancel,
		tracker:   NewTracker(initial, spec.HealthyThreshold, spec.UnhealthyThreshold),
		durations: m.metrics.durations(spec.Kind),
		since:     time.Now(),
	}
	c.setSubjects(subjects)
	m.running.Add(1)
	m.wg.Go(func() {
		defer m.running.Add(-1)
		c.run(ctx)
	})
	return c
}

// checker checks one Spec in its own goroutine (run) and keeps its state.
type checker struct {
	m         *Manager
	spec      Spec
	prober    prober
	cancel    context.CancelFunc
	durations kindDurations // of spec.Kind

	mu        sync.Mutex
	stopped   bool // set by stop: record does nothing more
	tracker   Tracker
	subjects  []Subject
	counters  []subjectCounters // of subjects
	logAttrs  []slog.Attr       // service, backend, check
	since     time.Time
	lastCheck time.Time
	lastDur   time.Duration
	reason    string
}

// run checks every Interval ± Jitter, the first time within Jitter×Interval
// of the start. Delays are measured from the start of the previous check, so
// the cadence does not drift with check durations; a check that overruns the
// next start is followed by the next one at once, never by two at a time.
// With jitter, start times are rounded to the grid of coalesceStep.
func (c *checker) run(ctx context.Context) {
	defer c.prober.close()
	// A check stopped before its deadline (Manager.Set, Close) ends at once.
	defer context.AfterFunc(ctx, c.prober.interrupt)()
	jitter := c.spec.jitterFraction()
	step := time.Duration(0)
	if jitter > 0 {
		step = coalesceStep(c.spec.Interval)
	}
	timer := time.NewTimer(max(0, time.Until(
		coalesce(time.Now().Add(firstDelay(c.spec.Interval, jitter, rand.Float64())), step))))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, c.spec.Timeout)
		desc, err := c.prober.probe(cctx)
		cancel()
		if ctx.Err() != nil {
			return // stopped during the check: not a result
		}
		c.record(start, time.Since(start), desc, err)
		next := nextDelay(c.spec.Interval, jitter, rand.Float64())
		timer.Reset(max(0, time.Until(coalesce(start.Add(next), step))))
	}
}

// maxCoalesceStep bounds the grid that check start times are rounded to.
const maxCoalesceStep = 100 * time.Millisecond

// coalesceStep is the grid of check start times for interval: 1/10 of it, at
// most maxCoalesceStep. Timers of many checkers then expire together, and the
// process wakes once for all of their checks instead of once for each: with
// 1000 targets at 1 s that is 10 bursts of checks a second instead of 1000.
// Each burst has a cost of its own besides its checks' (threads woken and
// put back to sleep, the runtime's sysmon polling at 20 µs until the burst
// is over): a grid of 1/20 (50 ms) cut the CPU of that benchmark by more than
// half, 1/10 by a tenth more. It moves a start by at most half a step (5% of
// Interval, 50 ms), within the default jitter of ±10%.
func coalesceStep(interval time.Duration) time.Duration {
	return min(interval/10, maxCoalesceStep)
}

// coalesce rounds t to the nearest multiple of step (of the wall clock, so
// that the grid is the same for every checker); step 0 leaves it as it is.
func coalesce(t time.Time, step time.Duration) time.Time {
	if step <= 0 {
		return t
	}
	return t.Add(step / 2).Truncate(step)
}

// firstDelay is the delay before a new checker's first check, uniform in
// [0, interval×jitter], given u uniform in [0, 1).
func firstDelay(interval time.Duration, jitter, u float64) time.Duration {
	return time.Duration(float64(interval) * jitter * u)
}

// nextDelay is the delay between two check starts, uniform in
// [interval×(1-jitter), interval×(1+jitter)], given u uniform in [0, 1).
func nextDelay(interval time.Duration, jitter, u float64) time.Duration {
	return time.Duration(float64(interval) * (1 - jitter + 2*jitter*u))
}

// record applies one check's result: state, metrics, log, transition.
func (c *checker) record(start time.Time, d time.Duration, desc string, err error) {
	ok := err == nil
	reason := desc
	if !ok {
		reason = reasonOf(err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return
	}
	from := c.tracker.State()
	changed := c.tracker.Observe(ok)
	c.lastCheck, c.lastDur, c.reason = start, d, reason
	for _, ctr := range c.counters {
		ctr.inc(ok)
	}
	c.durations.observe(ok, d)
	c.logResult(ok, changed, reason, d)
	if changed {
		now := time.Now()
		c.since = now
		// Under c.mu, so that once stop has returned no transition of this
		// checker is published any more.
		c.m.publish(Transition{
			Spec:     c.spec,
			From:     from,
			To:       c.tracker.State(),
			Reason:   reason,
			At:       now,
			Subjects: c.subjects,
		})
	}
}

// logResult writes the one log line of a check result (c.mu held):
//
//	failure while healthy, below the threshold  warn   "health check failed (2/3)"
//	failure that makes it unhealthy             error  "marked UNHEALTHY"
//	success that makes it healthy               info   "marked HEALTHY"
//	anything else                               debug
func (c *checker) logResult(ok, changed bool, reason string, d time.Duration) {
	t := &c.tracker
	var level slog.Level
	var msg, count string
	switch {
	case !ok && changed:
		level, msg = slog.LevelError, "marked UNHEALTHY"
		count = strconv.Itoa(t.Failures()) + "/" + strconv.Itoa(t.UnhealthyThreshold())
	case !ok && t.State() == Healthy:
		count = strconv.Itoa(t.Failures()) + "/" + strconv.Itoa(t.UnhealthyThreshold())
		level, msg = slog.LevelWarn, "health check failed ("+count+")"
	case !ok:
		level, msg = slog.LevelDebug, "health check failed (still unhealthy)"
		count = strconv.Itoa(t.Failures())
	case changed:
		level, msg = slog.LevelInfo, "marked HEALTHY"
		count = strconv.Itoa(t.Successes()) + "/" + strconv.Itoa(t.HealthyThreshold())
	case t.State() == Unhealthy:
		count = strconv.Itoa(t.Successes()) + "/" + strconv.Itoa(t.HealthyThreshold())
		level, msg = slog.LevelDebug, "health check passed ("+count+")"
	default:
		level, msg = slog.LevelDebug, "health check passed"
		count = strconv.Itoa(t.Successes())
	}
	if !c.m.log.Enabled(c.m.ctx, level) {
		return
	}
	key := "successes"
	if !ok {
		key = "failures"
	}
	attrs := append(slices.Clip(c.logAttrs),
		slog.String("reason", reason),
		slog.String(key, count),
		slog.Duration("duration", d.Round(time.Microsecond)))
	c.m.log.LogAttrs(c.m.ctx, level, msg, attrs...)
}

// setSubjects replaces the subjects (sorted, unique).
func (c *checker) setSubjects(subjects []Subject) {
	services := make([]string, 0, len(subjects))
	backends := make([]string, 0, len(subjects))
	counters := make([]subjectCounters, len(subjects))
	for i, s := range subjects {
		services = append(services, s.Service)
		backends = append(backends, s.Backend)
		counters[i] = c.m.metrics.counters(s)
	}
	slices.Sort(services)
	slices.Sort(backends)
	attrs := []slog.Attr{
		slog.String("service", strings.Join(slices.Compact(services), ",")),
		slog.String("backend", strings.Join(slices.Compact(backends), ",")),
		slog.String("check", c.spec.String()),
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	c.subjects = subjects
	c.counters = counters
	c.logAttrs = attrs
}

// stop ends the checker for good: nothing it does from now on counts.
func (c *checker) stop() {
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
	c.cancel()
}

func (c *checker) status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Status{
		Spec:         c.spec,
		State:        c.tracker.State(),
		Since:        c.since,
		Successes:    c.tracker.Successes(),
		Failures:     c.tracker.Failures(),
		Reason:       c.reason,
		LastCheck:    c.lastCheck,
		LastDuration: c.lastDur,
		Subjects:     slices.Clone(c.subjects),
	}
}

// reasonOf is the short reason of a failed check.
func reasonOf(err error) string {
	if ce, ok := errors.AsType[*CheckError](err); ok {
		return ce.Reason
	}
	return shortReason(err)
}

func uniqueSubjects(s []Subject) []Subject {
	s = slices.Clone(s)
	slices.SortFunc(s, func(a, b Subject) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Backend, b.Backend))
	})
	return slices.Clip(slices.Compact(s))
}

func compareSpecs(a, b Spec) int {
	return cmp.Or(
		a.Target.Compare(b.Target),
		strings.Compare(string(a.Kind), string(b.Kind)),
		strings.Compare(a.Path, b.Path),
		strings.Compare(a.Host, b.Host),
		strings.Compare(string(a.ExpectStatus), string(b.ExpectStatus)),
		cmp.Compare(a.ChecksPerConnection, b.ChecksPerConnection),
		cmp.Compare(a.Interval, b.Interval),
		cmp.Compare(a.Timeout, b.Timeout),
		cmp.Compare(a.HealthyThreshold, b.HealthyThreshold),
		cmp.Compare(a.UnhealthyThreshold, b.UnhealthyThreshold),
		cmp.Compare(a.Jitter, b.Jitter),
		a.Via.Compare(b.Via),
		cmp.Compare(a.Mark, b.Mark),
	)
}

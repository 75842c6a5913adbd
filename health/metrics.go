package health

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric label values of "result".
const (
	resultSuccess = "success"
	resultFailure = "failure"
)

// Metrics are the health checker's Prometheus metrics, namespace "xlb":
//
//	xlb_health_checks_total{service,backend,result}       counter, result success|failure
//	xlb_health_check_duration_seconds{kind,result}        histogram
//
// A check counts once for each Subject of its checker. The service and
// backend label values are those of the configured Subjects only, and a
// Subject's series are deleted when no checker has it any more, so the label
// set stays bounded by the configuration. The durations have no per-backend
// label. Whether a backend is up is the daemon's to export, not this
// package's.
//
// A nil *Metrics records nothing.
type Metrics struct {
	checks   *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics creates the metrics and registers them with reg; with a nil reg
// they are not registered (the *Metrics is itself a prometheus.Collector). It
// panics if reg already has them, like prometheus.MustRegister.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "xlb",
			Subsystem: "health",
			Name:      "checks_total",
			Help:      "Active health checks run, per service and backend using the checker, by result.",
		}, []string{"service", "backend", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "xlb",
			Subsystem: "health",
			Name:      "check_duration_seconds",
			Help:      "Duration of active health checks, by kind and result.",
			Buckets:   []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"kind", "result"}),
	}
	if reg != nil {
		reg.MustRegister(m)
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.checks.Describe(ch)
	m.duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.checks.Collect(ch)
	m.duration.Collect(ch)
}

// subjectCounters are one Subject's two check counters, looked up once.
type subjectCounters struct {
	success, failure prometheus.Counter
}

// counters returns (and so creates, at 0) the check counters of s.
func (m *Metrics) counters(s Subject) subjectCounters {
	if m == nil {
		return subjectCounters{}
	}
	return subjectCounters{
		success: m.checks.WithLabelValues(s.Service, s.Backend, resultSuccess),
		failure: m.checks.WithLabelValues(s.Service, s.Backend, resultFailure),
	}
}

func (c subjectCounters) inc(ok bool) {
	switch {
	case c.success == nil:
	case ok:
		c.success.Inc()
	default:
		c.failure.Inc()
	}
}

// kindDurations are one Kind's two duration histograms, looked up once per
// checker rather than once per check (a label hash and a map lookup under a
// lock each time). Their series are never deleted, so they stay valid.
type kindDurations struct {
	success, failure prometheus.Observer
}

// durations returns the duration histograms of kind.
func (m *Metrics) durations(kind Kind) kindDurations {
	if m == nil {
		return kindDurations{}
	}
	return kindDurations{
		success: m.duration.WithLabelValues(string(kind), resultSuccess),
		failure: m.duration.WithLabelValues(string(kind), resultFailure),
	}
}

// observe records the duration of one check.
func (h kindDurations) observe(ok bool, d time.Duration) {
	switch {
	case h.success == nil:
	case ok:
		h.success.Observe(d.Seconds())
	default:
		h.failure.Observe(d.Seconds())
	}
}

// forget deletes the series of a Subject no checker has any more.
func (m *Metrics) forget(s Subject) {
	if m == nil {
		return
	}
	// The two series by name: DeletePartialMatch scans every series, which
	// made closing a manager of n subjects O(n^2).
	for _, result := range []string{resultSuccess, resultFailure} {
		m.checks.DeleteLabelValues(s.Service, s.Backend, result)
	}
}

var _ prometheus.Collector = (*Metrics)(nil)

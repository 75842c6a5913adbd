package l7

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Request-path counters. Everything a request touches is an atomic in a
// structure found without a lock (the service generation it was routed
// with); Prometheus and /lb/metrics read them when asked.

// codeCounters counts answers by status code (100 to 999, as net/http
// allows).
type codeCounters struct {
	c [900]atomic.Uint64
}

func (cc *codeCounters) inc(code int) {
	if code >= 100 && code <= 999 {
		cc.c[code-100].Add(1)
	}
}

// upstreamStats are the counters of one upstream that Upstream itself does
// not keep: answers by code and errors by kind, for Prometheus. They belong
// to the Upstream pointer and live as long as it stays in the service.
type upstreamStats struct {
	label string // the backend label: address:port, as the control loop's metrics
	codes codeCounters
	errs  [numErrKinds]atomic.Uint64
}

func newUpstreamStats(u *Upstream) *upstreamStats {
	return &upstreamStats{label: u.Addr.String()}
}

// serviceStats are one service's counters; they survive updates of the
// service (found by name).
type serviceStats struct {
	requests   atomic.Uint64 // client requests, whatever their outcome
	errors     atomic.Uint64 // gateway errors and backend 5xx answers
	latencySum atomic.Uint64 // nanoseconds
	rate       rateRing
	codes      codeCounters  // by status sent, whichever backend answered
	none       upstreamStats // requests that got no backend (label "")
	hist       prometheus.Observer
}

// rateWindow is the span of requests_per_second: the last complete seconds.
const rateWindow = 10

// rateRing counts requests per second over the last rateWindow seconds,
// lock-free: each slot packs the Unix second it counts (high 32 bits) and
// its count (low 32 bits); the first request of a new second takes the slot
// over with one compare-and-swap.
type rateRing struct {
	slots [rateWindow + 2]atomic.Uint64
}

func (r *rateRing) add(sec int64) {
	s := &r.slots[uint64(sec)%uint64(len(r.slots))]
	tag := uint64(uint32(sec)) << 32
	for {
		old := s.Load()
		next := tag | 1
		if old&^0xffffffff == tag {
			next = old + 1
		}
		if s.CompareAndSwap(old, next) {
			return
		}
	}
}

// rate is the mean requests per second over the rateWindow complete seconds
// before now.
func (r *rateRing) rate(now int64) float64 {
	var n uint64
	for sec := now - rateWindow; sec < now; sec++ {
		v := r.slots[uint64(sec)%uint64(len(r.slots))].Load()
		if v>>32 == uint64(uint32(sec)) {
			n += v & 0xffffffff
		}
	}
	return float64(n) / rateWindow
}

// Prometheus metrics, namespace xlb:
//
//	xlb_l7_requests_total{service,backend,code}         counter
//	xlb_l7_request_duration_seconds{service}             histogram
//	xlb_l7_in_flight{service,backend}                    gauge
//	xlb_l7_upstream_errors_total{service,backend,kind}   counter
//	xlb_l7_access_log_dropped_total                      counter
//
// backend is the backend's address:port (as in xlb_backend_up), "" for
// requests that no backend took (503 no_backend/overloaded). code is the
// status sent to the client, 499 when the client went away first. kind is
// connect, broken, timeout, no_backend or overloaded; a connect error that
// was retried on another backend counts here for the first backend while
// the request counts once, for the backend that answered. The counters are
// read from the request path's atomics at scrape time, so the series of
// removed backends and services disappear with them; success rate is
// 1 - sum(rate(requests_total{code=~"5.."})) / sum(rate(requests_total)).
type promMetrics struct {
	requests *prometheus.Desc
	inFlight *prometheus.Desc
	errors   *prometheus.Desc
	duration *prometheus.HistogramVec
	// refused counts the requests the HTTP/1 server refused itself, by
	// status (400, 408, 414, 417, 431, 501, 505): a bounded set.
	refused *prometheus.CounterVec
	// accessDropped counts the access log entries dropped because its
	// writer fell behind (0 without an access log).
	accessDropped *prometheus.Desc
}

// rejected is h1.Server's OnReject.
func (m *promMetrics) rejected(status int) {
	m.refused.WithLabelValues(strconv.Itoa(status)).Inc()
}

func newPromMetrics() *promMetrics {
	return &promMetrics{
		requests: prometheus.NewDesc("xlb_l7_requests_total",
			"HTTP requests proxied, by service, backend and status code sent to the client.",
			[]string{"service", "backend", "code"}, nil),
		inFlight: prometheus.NewDesc("xlb_l7_in_flight",
			"Requests in flight (WebSocket tunnels included), by service and backend.",
			[]string{"service", "backend"}, nil),
		errors: prometheus.NewDesc("xlb_l7_upstream_errors_total",
			"Gateway errors, by service, backend and kind (connect, broken, timeout, no_backend, overloaded, bad_response).",
			[]string{"service", "backend", "kind"}, nil),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "xlb", Subsystem: "l7", Name: "request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its response, by service.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"service"}),
		accessDropped: prometheus.NewDesc("xlb_l7_access_log_dropped_total",
			"Access log entries dropped because the writer fell behind (a slow disk or pipe); 0 without an access log.",
			nil, nil),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "xlb", Subsystem: "l7", Name: "refused_requests_total",
			Help: "Requests refused by the HTTP/1 server before routing (malformed, too large, too slow), by status code.",
		}, []string{"code"}),
	}
}

// Describe implements prometheus.Collector.
func (s *Server) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.prom.requests
	ch <- s.prom.inFlight
	ch <- s.prom.errors
	s.prom.duration.Describe(ch)
	s.prom.refused.Describe(ch)
	ch <- s.prom.accessDropped
}

// Collect implements prometheus.Collector.
func (s *Server) Collect(ch chan<- prometheus.Metric) {
	m := s.prom
	for _, svc := range s.gen.Load().services {
		name := svc.name
		emit := func(us *upstreamStats, allKinds bool) {
			for i := range us.codes.c {
				if n := us.codes.c[i].Load(); n != 0 {
					ch <- prometheus.MustNewConstMetric(m.requests, prometheus.CounterValue, float64(n),
						name, us.label, strconv.Itoa(i+100))
				}
			}
			for k := errConnect; k < numErrKinds; k++ {
				if n := us.errs[k].Load(); n != 0 || allKinds {
					ch <- prometheus.MustNewConstMetric(m.errors, prometheus.CounterValue, float64(n),
						name, us.label, k.String())
				}
			}
		}
		for _, u := range svc.pool.Upstreams {
			us := svc.upStats[u]
			ch <- prometheus.MustNewConstMetric(m.inFlight, prometheus.GaugeValue, float64(u.InFlight.Load()), name, us.label)
			emit(us, true)
		}
		emit(&svc.stats.none, false)
	}
	m.duration.Collect(ch)
	m.refused.Collect(ch)
	var dropped uint64
	if al := s.opts.AccessLog; al != nil {
		dropped = al.Dropped()
	}
	ch <- prometheus.MustNewConstMetric(m.accessDropped, prometheus.CounterValue, float64(dropped))
}

var _ prometheus.Collector = (*Server)(nil)

// record counts one finished client request on its service and, if one took
// it, its upstream: code is the status sent (or statusClientClosed), kind the
// gateway error if any, failed whether it counts as an error.
func (st *serviceStats) record(us *upstreamStats, code int, kind errKind, failed bool, latency time.Duration, end time.Time) {
	if us == nil {
		us = &st.none
	}
	us.codes.inc(code)
	st.codes.inc(code)
	if kind != errNone {
		us.errs[kind].Add(1)
	}
	st.requests.Add(1)
	if failed {
		st.errors.Add(1)
	}
	st.latencySum.Add(uint64(max(latency, 0)))
	st.rate.add(end.Unix())
	if st.hist != nil {
		st.hist.Observe(latency.Seconds())
	}
}

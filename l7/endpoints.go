package l7

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// The /lb endpoints:
//
//	GET /lb/health   HealthReport, 503 when unhealthy
//	GET /lb/metrics  MetricsReport
//
// both with ?service=NAME for one service (400 if unknown). LBHandler serves
// them for every service (for the daemon's admin listener); an L7 listener
// serves them for its services that have LBEndpoints.

// MetricsReport is the /lb/metrics answer: totals over the services shown,
// their backends and, for more than one service asked, each service alone.
//
// A request fails when it gets a gateway error (502, 503, 504), a 5xx
// answer, or a backend that breaks off its answer; one whose client went
// away first counts as a request (status 499) but not as a failure.
type MetricsReport struct {
	Service            string            `json:"service,omitempty"`
	TotalRequests      uint64            `json:"total_requests"`
	TotalErrors        uint64            `json:"total_errors"` // failed requests (the older name of FailedRequests)
	SuccessfulRequests uint64            `json:"successful_requests"`
	FailedRequests     uint64            `json:"failed_requests"` // total = successful + failed
	SuccessRate        float64           `json:"success_rate"`    // successful / total, 0 to 1; 1 with no requests
	StatusCodes        map[string]uint64 `json:"status_codes"`    // requests by status sent to the client
	RequestsPerSecond  float64           `json:"requests_per_second"`
	AvgLatencyUs       float64           `json:"avg_latency_us"`
	HealthyBackends    int               `json:"healthy_backends"`
	TotalBackends      int               `json:"total_backends"`
	Backends           []BackendMetrics  `json:"backends"`
	Services           []MetricsReport   `json:"services,omitempty"`
}

// BackendMetrics is one backend in a MetricsReport. Its requests count
// every attempt sent to it (a connect failure that was retried elsewhere
// included); FailedRequests (also TotalErrors, the older name) the failed
// ones; ActiveConnections is its in-flight requests (and tunnels).
type BackendMetrics struct {
	Service           string  `json:"service"`
	ID                string  `json:"id"`
	Address           string  `json:"address"`
	State             string  `json:"state"` // up, draining, down, or ejected (passive health)
	Weight            int     `json:"weight"`
	ActiveConnections int64   `json:"active_connections"`
	TotalRequests     uint64  `json:"total_requests"`
	TotalErrors       uint64  `json:"total_errors"`
	FailedRequests    uint64  `json:"failed_requests"`
	AvgLatencyUs      float64 `json:"avg_latency_us"`
	ErrorRate         float64 `json:"error_rate"` // errors / requests, 0 to 1
}

// HealthReport is the /lb/health answer, shaped as the admin API's.
type HealthReport struct {
	Status          string          `json:"status"` // healthy | degraded | unhealthy
	HealthyBackends int             `json:"healthy_backends"`
	TotalBackends   int             `json:"total_backends"`
	Services        []ServiceHealth `json:"services,omitempty"`
}

// ServiceHealth is one service in a HealthReport.
type ServiceHealth struct {
	Name            string `json:"name"`
	Status          string `json:"status"`
	HealthyBackends int    `json:"healthy_backends"`
	TotalBackends   int    `json:"total_backends"`
}

// UnknownServiceError is returned for a service name that is not served.
type UnknownServiceError struct{ Name string }

func (e *UnknownServiceError) Error() string { return fmt.Sprintf("unknown service %q", e.Name) }

// Metrics reports one service, or all of them for "".
func (s *Server) Metrics(service string) (MetricsReport, error) {
	return metricsOf(s.gen.Load().services, service, time.Now())
}

// Health reports one service, or all of them for "". A backend is healthy
// when it is not down and not ejected (a draining one is healthy, just not
// taking new requests). A service is healthy when all its backends are,
// unhealthy when none is; the whole is healthy when every service is,
// unhealthy when no service has a healthy backend, degraded otherwise.
func (s *Server) Health(service string) (HealthReport, error) {
	return healthOf(s.gen.Load().services, service, time.Now())
}

// LBHandler serves /lb/health and /lb/metrics for every service.
func (s *Server) LBHandler() http.Handler { return lbHandler{srv: s} }

// lbHandler serves the /lb endpoints over scope, or over srv's current
// services when scope is nil.
type lbHandler struct {
	srv   *Server
	scope []*service
}

func isLBPath(p string) bool { return p == "/lb/health" || p == "/lb/metrics" }

func (h lbHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "method not allowed"})
		return
	}
	scope := h.scope
	if h.srv != nil {
		scope = h.srv.gen.Load().services
	}
	name, now := r.URL.Query().Get("service"), time.Now()
	var v any
	var err error
	code := http.StatusOK
	switch r.URL.Path {
	case "/lb/health":
		var rep HealthReport
		rep, err = healthOf(scope, name, now)
		if rep.Status == "unhealthy" {
			code = http.StatusServiceUnavailable
		}
		v = rep
	case "/lb/metrics":
		v, err = metricsOf(scope, name, now)
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not found"})
		return
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, code, v)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// pick returns the services of scope that name selects.
func pick(scope []*service, name string) ([]*service, error) {
	if name == "" {
		return scope, nil
	}
	for _, svc := range scope {
		if svc.name == name {
			return []*service{svc}, nil
		}
	}
	return nil, &UnknownServiceError{name}
}

func metricsOf(scope []*service, name string, now time.Time) (MetricsReport, error) {
	svcs, err := pick(scope, name)
	if err != nil {
		return MetricsReport{}, err
	}
	if name != "" {
		return svcs[0].metrics(now), nil
	}
	rep := MetricsReport{Backends: []BackendMetrics{}, StatusCodes: map[string]uint64{}}
	var latency, rps float64
	for _, svc := range svcs {
		m := svc.metrics(now)
		rep.TotalRequests += m.TotalRequests
		rep.TotalErrors += m.TotalErrors
		for code, n := range m.StatusCodes {
			rep.StatusCodes[code] += n
		}
		rps += m.RequestsPerSecond
		latency += float64(svc.stats.latencySum.Load())
		rep.HealthyBackends += m.HealthyBackends
		rep.TotalBackends += m.TotalBackends
		rep.Backends = append(rep.Backends, m.Backends...)
		rep.Services = append(rep.Services, m)
	}
	rep.RequestsPerSecond = round(rps, 1)
	if rep.TotalRequests > 0 {
		rep.AvgLatencyUs = round(latency/float64(rep.TotalRequests)/1e3, 1)
	}
	rep.setSuccess()
	return rep, nil
}

// setSuccess derives the successful and failed counts and the rate from
// TotalRequests and TotalErrors. The two counters are read one after the
// other while requests finish: failed is capped at total, so that total =
// successful + failed always holds.
func (m *MetricsReport) setSuccess() {
	m.FailedRequests = min(m.TotalErrors, m.TotalRequests)
	m.SuccessfulRequests = m.TotalRequests - m.FailedRequests
	m.SuccessRate = 1
	if m.TotalRequests > 0 {
		m.SuccessRate = round(float64(m.SuccessfulRequests)/float64(m.TotalRequests), 4)
	}
}

// metrics is one service's report.
func (svc *service) metrics(now time.Time) MetricsReport {
	st := svc.stats
	m := MetricsReport{
		Service:           svc.name,
		TotalRequests:     st.requests.Load(),
		TotalErrors:       st.errors.Load(),
		RequestsPerSecond: round(st.rate.rate(now.Unix()), 1),
		TotalBackends:     len(svc.pool.Upstreams),
		Backends:          make([]BackendMetrics, 0, len(svc.pool.Upstreams)),
		StatusCodes:       map[string]uint64{},
	}
	if m.TotalRequests > 0 {
		m.AvgLatencyUs = round(float64(st.latencySum.Load())/float64(m.TotalRequests)/1e3, 1)
	}
	m.setSuccess()
	for i := range st.codes.c {
		if n := st.codes.c[i].Load(); n != 0 {
			m.StatusCodes[strconv.Itoa(i+100)] = n
		}
	}
	for _, u := range svc.pool.Upstreams {
		b := BackendMetrics{
			Service: svc.name, ID: u.ID, Address: u.Addr.String(), State: u.State().String(), Weight: u.Weight,
			ActiveConnections: u.InFlight.Load(), TotalRequests: u.Requests.Load(), TotalErrors: u.Errors.Load(),
		}
		if healthy(u, now) {
			m.HealthyBackends++
		} else if u.State() != StateDown {
			b.State = "ejected"
		}
		b.FailedRequests = min(b.TotalErrors, b.TotalRequests)
		if b.TotalRequests > 0 {
			b.AvgLatencyUs = round(float64(u.LatencySum.Load())/float64(b.TotalRequests)/1e3, 1)
			b.ErrorRate = round(float64(b.TotalErrors)/float64(b.TotalRequests), 4)
		}
		m.Backends = append(m.Backends, b)
	}
	return m
}

func healthy(u *Upstream, now time.Time) bool {
	return u.State() != StateDown && !u.Ejected(now)
}

func healthStatus(healthy, total int) string {
	switch {
	case total > 0 && healthy == total:
		return "healthy"
	case healthy == 0:
		return "unhealthy"
	}
	return "degraded"
}

func healthOf(scope []*service, name string, now time.Time) (HealthReport, error) {
	svcs, err := pick(scope, name)
	if err != nil {
		return HealthReport{}, err
	}
	rep := HealthReport{Status: "healthy"}
	anyHealthy := false
	for _, svc := range svcs {
		sh := ServiceHealth{Name: svc.name, TotalBackends: len(svc.pool.Upstreams)}
		for _, u := range svc.pool.Upstreams {
			if healthy(u, now) {
				sh.HealthyBackends++
			}
		}
		sh.Status = healthStatus(sh.HealthyBackends, sh.TotalBackends)
		if sh.Status != "healthy" {
			rep.Status = "degraded"
		}
		if sh.HealthyBackends > 0 {
			anyHealthy = true
		}
		rep.HealthyBackends += sh.HealthyBackends
		rep.TotalBackends += sh.TotalBackends
		rep.Services = append(rep.Services, sh)
	}
	if !anyHealthy && len(svcs) > 0 {
		rep.Status = "unhealthy"
	}
	return rep, nil
}

func round(x float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(x*p) / p
}

var (
	_ http.Handler = lbHandler{}
	_ error        = (*UnknownServiceError)(nil)
)

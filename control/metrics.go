package control

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/loader"
)

// states are the values of xlb_backend_state's state label: the datapath's,
// and "ejected" for an L7 backend that passive health took out.
var states = []string{
	loader.StateUp.String(), loader.StateDraining.String(), loader.StateDown.String(),
	loader.StateUnresolved.String(), stateEjected,
}

// stateEjected is BackendInfo.State of an L7 backend under passive ejection.
const stateEjected = "ejected"

// Metrics are the controller's gauges.
type Metrics struct {
	up    *prometheus.GaugeVec
	state *prometheus.GaugeVec
	known map[[2]string]bool
}

// NewMetrics registers the controller's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "xlb", Name: "backend_up",
			Help: "1 when the backend takes new flows or requests, else 0.",
		}, []string{"service", "backend"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "xlb", Name: "backend_state",
			Help: "1 for the backend's current state (up, draining, down, unresolved, ejected).",
		}, []string{"service", "backend", "state"}),
		known: map[[2]string]bool{},
	}
	if reg != nil {
		reg.MustRegister(m.up, m.state)
	}
	return m
}

// updateMetrics sets the gauges from the current state and forgets removed
// backends, so label sets stay bounded by the configuration.
func (c *Controller) updateMetrics() {
	if c.metrics == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.metrics
	seen := map[[2]string]bool{}
	for _, s := range c.services {
		for _, b := range s.backends {
			seen[c.setGauges(s, b)] = true
		}
	}
	for key := range m.known {
		if !seen[key] {
			m.up.DeleteLabelValues(key[0], key[1])
			for _, st := range states {
				m.state.DeleteLabelValues(key[0], key[1], st)
			}
		}
	}
	m.known = seen
}

// updateL7Metrics sets the gauges of the L7 backends only: passive health
// ejects and readmits them without a reconcile, so the control loop calls
// this on every poll.
func (c *Controller) updateL7Metrics() {
	if c.metrics == nil || c.l7 == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.services {
		if s.cfg.Mode == config.ModeL7 {
			for _, b := range s.backends {
				c.setGauges(s, b)
			}
		}
	}
}

// setGauges sets b's gauges and returns their label key; the caller holds
// c.mu.
func (c *Controller) setGauges(s *service, b *backend) [2]string {
	m := c.metrics
	key := [2]string{s.cfg.Name, b.label(s)}
	bi := c.info(s, b)
	up := 0.0
	if bi.State == loader.StateUp.String() {
		up = 1
	}
	m.up.WithLabelValues(key[0], key[1]).Set(up)
	for _, st := range states {
		v := 0.0
		if bi.State == st {
			v = 1
		}
		m.state.WithLabelValues(key[0], key[1], st).Set(v)
	}
	return key
}

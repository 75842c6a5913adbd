package control

import (
	"github.com/prometheus/client_golang/prometheus"

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
			key := [2]string{s.cfg.Name, b.label(s)}
			seen[key] = true
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

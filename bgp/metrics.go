package bgp

import "github.com/prometheus/client_golang/prometheus"

// Metrics exports a speaker's state at scrape time: one series per
// configured peer, so labels stay bounded by the configuration.
type Metrics struct {
	status     func() Status
	up         *prometheus.Desc
	announced  *prometheus.Desc
	advertised *prometheus.Desc
}

// NewMetrics registers the metrics of the speaker status returns (called
// at each scrape; nil reports nothing) with reg.
func NewMetrics(reg prometheus.Registerer, status func() *Status) *Metrics {
	m := &Metrics{
		status: func() Status {
			if st := status(); st != nil {
				return *st
			}
			return Status{}
		},
		up: prometheus.NewDesc("xlb_bgp_session_up",
			"1 while the BGP session with the peer is established, else 0.", []string{"peer"}, nil),
		announced: prometheus.NewDesc("xlb_bgp_announced_prefixes",
			"How many VIP prefixes this node announces.", nil, nil),
		advertised: prometheus.NewDesc("xlb_bgp_advertised_prefixes",
			"How many prefixes the peer has been sent.", []string{"peer"}, nil),
	}
	if reg != nil {
		reg.MustRegister(m)
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.up
	ch <- m.announced
	ch <- m.advertised
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	st := m.status()
	ch <- prometheus.MustNewConstMetric(m.announced, prometheus.GaugeValue, float64(len(st.Announced)))
	for _, p := range st.Peers {
		up := 0.0
		if p.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(m.up, prometheus.GaugeValue, up, p.Address)
		ch <- prometheus.MustNewConstMetric(m.advertised, prometheus.GaugeValue, float64(p.Advertised), p.Address)
	}
}

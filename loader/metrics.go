package loader

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// prometheusTimer observes the time until the returned func is called.
func prometheusTimer(h prometheus.Histogram) func() {
	start := time.Now()
	return func() { h.Observe(time.Since(start).Seconds()) }
}

// Metrics instruments the reconciler and its sweeps of the connection table.
type Metrics struct {
	rebuilds  prometheus.Counter
	reconcile prometheus.Histogram
	expired   prometheus.Counter
	flows     prometheus.Gauge
	natFreed  prometheus.Counter
	natPorts  *prometheus.GaugeVec
}

// NewMetrics registers the reconciler's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "xlb", Name: "maglev_rebuilds_total",
			Help: "Maglev tables built and swapped into the datapath.",
		}),
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "xlb", Name: "reconcile_duration_seconds",
			Help:    "Time to turn a desired state into map writes.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "xlb", Name: "conntrack_expired_total",
			Help: "Connection table entries deleted after their idle timeout.",
		}),
		flows: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "xlb", Name: "conntrack_entries",
			Help: "Connection table entries left by the last expiry sweep.",
		}),
		natFreed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "xlb", Name: "nat_ports_freed_total",
			Help: "NAT source ports freed after their flow's idle timeout or end.",
		}),
		natPorts: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "xlb", Name: "nat_ports_in_use",
			Help: "NAT source ports held by flows of a service (forwarding = nat), as of the last sweep.",
		}, []string{"service"}),
	}
	if reg != nil {
		reg.MustRegister(m.rebuilds, m.reconcile, m.expired, m.flows, m.natFreed, m.natPorts)
	}
	return m
}

var (
	l4PacketsDesc = prometheus.NewDesc("xlb_l4_packets_total",
		"Packets the XDP datapath forwarded to a backend.", []string{"service", "backend"}, nil)
	l4BytesDesc = prometheus.NewDesc("xlb_l4_bytes_total",
		"Bytes the XDP datapath forwarded to a backend.", []string{"service", "backend"}, nil)
	l4FlowsDesc = prometheus.NewDesc("xlb_l4_new_flows_total",
		"Connections the XDP datapath (and, for the host's own connections, the socket hooks) placed on a backend.", []string{"service", "backend"}, nil)
	servicePacketsDesc = prometheus.NewDesc("xlb_service_packets_total",
		"Packets the XDP datapath attributed to a service (L4 forwarded, L7 passed).", []string{"service"}, nil)
	verdictsDesc = prometheus.NewDesc("xlb_xdp_verdicts_total",
		"XDP program returns by verdict and reason.", []string{"verdict", "reason"}, nil)
	verdictBytesDesc = prometheus.NewDesc("xlb_xdp_verdict_bytes_total",
		"Bytes of XDP program returns by verdict and reason.", []string{"verdict", "reason"}, nil)
)

// Collector exposes the per-CPU BPF counters to Prometheus, read from the maps
// at scrape time (no polling loop). Labels come from the reconciler, so only
// configured services and backends appear.
type Collector struct {
	maps *Maps
	rec  *Reconciler
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector reads maps for the services and backends rec knows.
func NewCollector(maps *Maps, rec *Reconciler) *Collector { return &Collector{maps: maps, rec: rec} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{l4PacketsDesc, l4BytesDesc, l4FlowsDesc, servicePacketsDesc, verdictsDesc, verdictBytesDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	services, backends := c.rec.labels()
	for id, name := range services {
		if cnt, err := c.maps.ServiceCounters(id); err == nil {
			ch <- prometheus.MustNewConstMetric(servicePacketsDesc, prometheus.CounterValue, float64(cnt.Packets), name)
		}
	}
	for id, l := range backends {
		cnt, err := c.maps.BackendCounters(id)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(l4PacketsDesc, prometheus.CounterValue, float64(cnt.Packets), l[0], l[1])
		ch <- prometheus.MustNewConstMetric(l4BytesDesc, prometheus.CounterValue, float64(cnt.Bytes), l[0], l[1])
		ch <- prometheus.MustNewConstMetric(l4FlowsDesc, prometheus.CounterValue, float64(cnt.NewFlows), l[0], l[1])
	}
	rc, err := c.maps.ReasonCounters()
	if err != nil {
		return
	}
	for i, cnt := range rc {
		r := Reasons[i]
		ch <- prometheus.MustNewConstMetric(verdictsDesc, prometheus.CounterValue, float64(cnt.Packets), r.Verdict, r.Name)
		ch <- prometheus.MustNewConstMetric(verdictBytesDesc, prometheus.CounterValue, float64(cnt.Bytes), r.Verdict, r.Name)
	}
}

// labels maps live service ids to names and backend ids to (service, address).
func (r *Reconciler) labels() (map[uint32]string, map[uint32][2]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	services := make(map[uint32]string, len(r.services))
	for _, st := range r.services {
		services[st.id] = cString(st.info.Name[:])
	}
	backends := make(map[uint32][2]string, len(r.backends))
	for ident, b := range r.backends {
		backends[b.id] = [2]string{services[ident.service], ident.addr.String()}
	}
	return services, backends
}

package statuspage

import (
	"context"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Sample is the rates of one sampling interval, read from the daemon's own
// Prometheus metrics: what the status page charts.
type Sample struct {
	Seq uint64 `json:"seq"`
	T   int64  `json:"t"` // end of the interval, Unix milliseconds
	// Services by name.
	Services map[string]ServiceRates `json:"services"`
	// Backends by id (service@address for L4, service@address:port for
	// L7): requests a second (L7) or packets a second (L4).
	Backends map[string]float64 `json:"backends,omitempty"`
	// Verdicts by "verdict/reason": XDP packets a second.
	Verdicts map[string]float64 `json:"verdicts,omitempty"`
}

// ServiceRates are one service's rates over an interval; absent is 0.
type ServiceRates struct {
	Packets  float64 `json:"pps,omitempty"` // packets a second through XDP
	Requests float64 `json:"rps,omitempty"` // L7 requests a second
	Errors   float64 `json:"eps,omitempty"` // L7 5xx answers a second
	// L7 latency over the interval's requests, milliseconds: mean, and
	// the median and 99th percentile estimated from the histogram's
	// buckets (as Prometheus' histogram_quantile).
	Mean float64 `json:"mean_ms,omitempty"`
	P50  float64 `json:"p50_ms,omitempty"`
	P99  float64 `json:"p99_ms,omitempty"`
}

// The metrics the samples are made of.
const (
	metricL7Requests = "xlb_l7_requests_total"
	metricL7Duration = "xlb_l7_request_duration_seconds"
	metricPackets    = "xlb_service_packets_total"
	metricL4Packets  = "xlb_l4_packets_total"
	metricVerdicts   = "xlb_xdp_verdicts_total"
)

// counters is one reading of the sampled metrics, cumulative.
type counters struct {
	at       time.Time
	values   map[string]float64   // "metric\x00key": counter value
	hists    map[string]histogram // service: its latency histogram
	services map[string]bool
}

type histogram struct {
	count  float64
	sum    float64
	bounds []float64 // upper bounds, ascending, without +Inf
	cum    []float64 // cumulative counts per bound
}

// Series samples a Gatherer's counters every interval into a ring of
// rates. Safe for concurrent use.
type Series struct {
	g        prometheus.Gatherer
	interval time.Duration

	mu   sync.Mutex
	ring []Sample
	next uint64 // the next sample's Seq
	prev *counters
}

// NewSeries keeps size samples of interval each.
func NewSeries(g prometheus.Gatherer, interval time.Duration, size int) *Series {
	return &Series{g: g, interval: interval, ring: make([]Sample, size), next: 1}
}

// Interval is the sampling interval.
func (s *Series) Interval() time.Duration { return s.interval }

// Run samples every interval until ctx ends.
func (s *Series) Run(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	s.Sample(time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.Sample(now)
		}
	}
}

// Sample reads the counters now and, from the second call on, records the
// rates since the previous one.
func (s *Series) Sample(now time.Time) {
	mfs, err := s.g.Gather()
	if err != nil && len(mfs) == 0 {
		return
	}
	cur := read(mfs, now)
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.prev
	s.prev = cur
	if prev == nil {
		return
	}
	sm := rates(prev, cur)
	sm.Seq = s.next
	s.next++
	s.ring[sm.Seq%uint64(len(s.ring))] = sm
}

// Since returns the samples kept whose Seq is above seq, oldest first.
func (s *Series) Since(seq uint64) []Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	first := max(s.next-min(s.next-1, uint64(len(s.ring))), seq+1)
	out := []Sample{}
	for q := first; q < s.next; q++ {
		out = append(out, s.ring[q%uint64(len(s.ring))])
	}
	return out
}

// read takes the sampled metrics out of a Gather.
func read(mfs []*dto.MetricFamily, now time.Time) *counters {
	c := &counters{at: now, values: map[string]float64{}, hists: map[string]histogram{}, services: map[string]bool{}}
	add := func(metric, key string, v float64) { c.values[metric+"\x00"+key] += v }
	for _, mf := range mfs {
		name := mf.GetName()
		for _, m := range mf.GetMetric() {
			l := labels(m)
			switch name {
			case metricL7Requests:
				v := m.GetCounter().GetValue()
				c.services[l["service"]] = true
				add(metricL7Requests, l["service"], v)
				if len(l["code"]) == 3 && l["code"][0] == '5' {
					add(metricL7Requests+"5xx", l["service"], v)
				}
				if l["backend"] != "" {
					add("backend", l["service"]+"@"+l["backend"], v)
				}
			case metricL4Packets:
				add("backend", l["service"]+"@"+l["backend"], m.GetCounter().GetValue())
			case metricPackets:
				c.services[l["service"]] = true
				add(metricPackets, l["service"], m.GetCounter().GetValue())
			case metricVerdicts:
				add(metricVerdicts, l["verdict"]+"/"+l["reason"], m.GetCounter().GetValue())
			case metricL7Duration:
				h := m.GetHistogram()
				hs := histogram{count: float64(h.GetSampleCount()), sum: h.GetSampleSum()}
				for _, b := range h.GetBucket() {
					if !math.IsInf(b.GetUpperBound(), 1) {
						hs.bounds = append(hs.bounds, b.GetUpperBound())
						hs.cum = append(hs.cum, float64(b.GetCumulativeCount()))
					}
				}
				c.services[l["service"]] = true
				c.hists[l["service"]] = hs
			}
		}
	}
	return c
}

func labels(m *dto.Metric) map[string]string {
	out := make(map[string]string, len(m.GetLabel()))
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

// rates is the sample between two readings. A counter that went down (its
// service or backend was recreated) counts from zero.
func rates(prev, cur *counters) Sample {
	dt := cur.at.Sub(prev.at).Seconds()
	sm := Sample{T: cur.at.UnixMilli(), Services: map[string]ServiceRates{}, Backends: map[string]float64{}, Verdicts: map[string]float64{}}
	if dt <= 0 {
		return sm
	}
	rate := func(key string) float64 {
		v := cur.values[key]
		if p := prev.values[key]; v >= p {
			v -= p
		}
		return round3(v / dt)
	}
	for svc := range cur.services {
		r := ServiceRates{
			Packets:  rate(metricPackets + "\x00" + svc),
			Requests: rate(metricL7Requests + "\x00" + svc),
			Errors:   rate(metricL7Requests + "5xx\x00" + svc),
		}
		if h, ok := cur.hists[svc]; ok {
			r.Mean, r.P50, r.P99 = latency(prev.hists[svc], h)
		}
		sm.Services[svc] = r
	}
	for key := range cur.values {
		metric, k, _ := cut(key)
		switch metric {
		case "backend":
			sm.Backends[k] = rate(key)
		case metricVerdicts:
			if v := rate(key); v > 0 {
				sm.Verdicts[k] = v
			}
		}
	}
	return sm
}

func cut(key string) (string, string, bool) {
	for i := 0; i < len(key); i++ {
		if key[i] == 0 {
			return key[:i], key[i+1:], true
		}
	}
	return key, "", false
}

// latency is the mean, median and 99th percentile (milliseconds) of the
// observations between two readings of a histogram; zeros without any.
func latency(prev, cur histogram) (mean, p50, p99 float64) {
	if len(prev.cum) != len(cur.cum) || cur.count < prev.count {
		prev = histogram{cum: make([]float64, len(cur.cum))} // new or reset: from zero
	}
	n := cur.count - prev.count
	if n <= 0 {
		return 0, 0, 0
	}
	delta := make([]float64, len(cur.cum))
	for i := range cur.cum {
		delta[i] = cur.cum[i] - prev.cum[i]
	}
	mean = (cur.sum - prev.sum) / n * 1e3
	return round3(mean), round3(quantile(0.5, cur.bounds, delta, n) * 1e3), round3(quantile(0.99, cur.bounds, delta, n) * 1e3)
}

// quantile estimates the q-quantile from cumulative bucket counts (upper
// bounds ascending, the +Inf bucket's count is total) by linear
// interpolation within the bucket, as Prometheus' histogram_quantile; an
// observation past the last bound is taken as that bound.
func quantile(q float64, bounds, cum []float64, total float64) float64 {
	if total <= 0 || len(bounds) == 0 {
		return 0
	}
	rank := q * total
	i := sort.Search(len(cum), func(i int) bool { return cum[i] >= rank })
	if i == len(cum) {
		return bounds[len(bounds)-1]
	}
	lo, below := 0.0, 0.0
	if i > 0 {
		lo, below = bounds[i-1], cum[i-1]
	}
	in := cum[i] - below
	if in <= 0 {
		return bounds[i]
	}
	return lo + (bounds[i]-lo)*(rank-below)/in
}

// round3 keeps 3 significant digits: the page draws pixels, not decimals.
func round3(v float64) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	p := math.Pow10(2 - int(math.Floor(math.Log10(math.Abs(v)))))
	return math.Round(v*p) / p
}

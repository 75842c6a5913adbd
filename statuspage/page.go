// Package statuspage is the admin listener's live status page: GET
// /lb/status is an HTML page (its script, style and icon embedded in the
// binary, nothing loaded from elsewhere) showing what `xlb status` prints
// (health, services, backends with state, health, admin state and Maglev
// share, datapath counters, XDP verdicts) and, as they happen, charts of
// the request and packet rates and the L7 latency over the last minutes
// and the events (health transitions, drains, removals, ejections,
// reloads).
//
// Everything here is read-only and needs no token: GET /lb/status/data is
// the state as JSON, with the samples after ?since=SEQ; GET
// /lb/status/events streams the events (server-sent events, resumable with
// Last-Event-ID). Nothing carries the admin token or the config beyond a
// summary of the services, and no route takes a write. Every answer has a
// Content-Security-Policy that allows only this origin's script, style,
// images and connections (no inline script or style), and
// X-Content-Type-Options: nosniff.
//
// The samples come from the daemon's own Prometheus registry (Series),
// every two seconds, ten minutes of them.
package statuspage

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/loader"
)

// Source is what the page shows; *control.Controller is one.
type Source interface {
	Health(service string) (control.HealthReport, error)
	Backends(service string) ([]control.BackendInfo, error)
	Services() []control.ServiceSummary
	Datapath() (*loader.Snapshot, error)
	Events() *control.Events
}

var _ Source = (*control.Controller)(nil)

// Sampling defaults: a sample every 2 s, 10 minutes of them.
const (
	DefaultInterval = 2 * time.Second
	DefaultSamples  = 300
)

// stateTTL bounds how often the state (which walks the connection table)
// is read for the page's viewers together; a new event reads it anew.
const stateTTL = time.Second

// Options configure New.
type Options struct {
	Version  string        // shown in the page's header
	Interval time.Duration // between samples; 0: DefaultInterval
	Samples  int           // kept; 0: DefaultSamples
}

// Page serves the status page; Run samples for it.
type Page struct {
	src     Source
	series  *Series
	version string
	mux     *http.ServeMux
	done    chan struct{} // closed when Run returns: event streams end
	runOnce sync.Once

	mu      sync.Mutex
	state   *State
	stateAt time.Time
}

//go:embed web
var web embed.FS

// assets are the embedded files by path, with their content types.
var assets = map[string]string{
	"app.js":      "text/javascript; charset=utf-8",
	"style.css":   "text/css; charset=utf-8",
	"favicon.svg": "image/svg+xml",
}

// New builds the page over src, sampling g.
func New(src Source, g prometheus.Gatherer, o Options) *Page {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Samples <= 0 {
		o.Samples = DefaultSamples
	}
	p := &Page{
		src: src, series: NewSeries(g, o.Interval, o.Samples), version: o.Version,
		mux: http.NewServeMux(), done: make(chan struct{}),
	}
	p.mux.HandleFunc("GET /lb/status", p.file("index.html", "text/html; charset=utf-8"))
	for name, ctype := range assets {
		p.mux.HandleFunc("GET /lb/status/"+name, p.file(name, ctype))
	}
	p.mux.HandleFunc("GET /lb/status/data", p.data)
	p.mux.HandleFunc("GET /lb/status/events", p.events)
	return p
}

// Run samples until ctx ends, then ends the event streams.
func (p *Page) Run(ctx context.Context) {
	defer p.runOnce.Do(func() { close(p.done) })
	p.series.Run(ctx)
}

// csp lets the page load its own script, style, icon and data only.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// ServeHTTP serves the page's routes (GET only: anything else is 405, and
// nothing here changes anything).
func (p *Page) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	p.mux.ServeHTTP(w, r)
}

func (p *Page) file(name, ctype string) http.HandlerFunc {
	body, err := web.ReadFile("web/" + name)
	if err != nil {
		panic(err) // the embed pattern takes the whole directory
	}
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ctype)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	}
}

// State is what the page shows besides the samples.
type State struct {
	Time          time.Time                `json:"time"`
	Version       string                   `json:"version,omitempty"`
	Health        *control.HealthReport    `json:"health"`
	Services      []control.ServiceSummary `json:"services"`
	Backends      []control.BackendInfo    `json:"backends"`
	Datapath      *loader.Snapshot         `json:"datapath"` // null without the XDP datapath
	DatapathError string                   `json:"datapath_error,omitempty"`
	LastEvent     uint64                   `json:"last_event"`
}

// Data is GET /lb/status/data: the state and the samples after Since.
type Data struct {
	*State
	IntervalMs int64    `json:"interval_ms"`
	Samples    []Sample `json:"samples"`
}

// current is the state, read anew when older than stateTTL or when an
// event happened since.
func (p *Page) current() *State {
	p.mu.Lock()
	defer p.mu.Unlock()
	last := p.src.Events().Last()
	if p.state != nil && time.Since(p.stateAt) < stateTTL && p.state.LastEvent == last {
		return p.state
	}
	st := &State{Time: time.Now(), Version: p.version, LastEvent: last, Services: p.src.Services()}
	if rep, err := p.src.Health(""); err == nil {
		st.Health = &rep
	}
	st.Backends, _ = p.src.Backends("")
	if st.Backends == nil {
		st.Backends = []control.BackendInfo{}
	}
	if snap, err := p.src.Datapath(); err != nil {
		st.DatapathError = err.Error()
	} else {
		st.Datapath = snap
	}
	p.state, p.stateAt = st, time.Now()
	return st
}

func (p *Page) data(w http.ResponseWriter, r *http.Request) {
	since, _ := strconv.ParseUint(r.URL.Query().Get("since"), 10, 64)
	d := Data{State: p.current(), IntervalMs: p.series.Interval().Milliseconds(), Samples: p.series.Since(since)}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(d)
}

// keepAlive is how often an idle event stream gets a comment line, so that
// proxies and the browser keep it open.
const keepAlive = 15 * time.Second

// events streams the events as server-sent events: "id: SEQ", "event:
// xlb", "data: {json}". It starts after Last-Event-ID (the browser's
// reconnection) or ?after=SEQ, else with every event kept.
func (p *Page) events(w http.ResponseWriter, r *http.Request) {
	after, _ := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64)
	if a := r.URL.Query().Get("after"); a != "" && after == 0 {
		after, _ = strconv.ParseUint(a, 10, 64)
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 1000\n\n")
	if err := rc.Flush(); err != nil {
		return
	}
	ping := time.NewTicker(keepAlive)
	defer ping.Stop()
	for {
		evs, wake := p.src.Events().Since(after)
		for _, ev := range evs {
			b, _ := json.Marshal(ev)
			fmt.Fprintf(w, "id: %d\nevent: xlb\ndata: %s\n\n", ev.Seq, b)
			after = ev.Seq
		}
		if len(evs) > 0 {
			if err := rc.Flush(); err != nil {
				return
			}
		}
		select {
		case <-wake:
		case <-ping.C:
			fmt.Fprint(w, ": ping\n\n")
			if err := rc.Flush(); err != nil {
				return
			}
		case <-r.Context().Done():
			return
		case <-p.done:
			return
		}
	}
}

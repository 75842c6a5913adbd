package l7

import (
	"github.com/xlb-dev/xlb/l7/h1"

	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ServiceConfig is one L7 service as the daemon hands it to the Server.
// Zero durations take the defaults below; zero counts mean unlimited.
type ServiceConfig struct {
	Name   string
	Listen netip.AddrPort // the listener; services may share one
	// Hosts route by Host header (port ignored, any case): "example.com"
	// exactly, "*.example.com" any subdomain of example.com. None: any host.
	Hosts []string
	// PathPrefix routes by path, by whole segments: "/api" takes /api and
	// /api/..., not /apix. "" or "/": every path. The longest match wins
	// among the services of the most specific matching host.
	PathPrefix string

	Policy      string        // NewPolicy's names; "" is round_robin
	Sticky      *StickyConfig // nil: no stickiness
	Passive     PassiveConfig
	MaxInFlight int64  // per backend; excess gets 503
	MaglevSize  uint32 // ip_hash table size; 0: maglev's default

	ConnectTimeout        time.Duration // dial; 0: DefaultConnectTimeout
	ResponseHeaderTimeout time.Duration // request sent to response header; 0: DefaultResponseHeaderTimeout
	RequestTimeout        time.Duration // arrival to end of response; 0: none
	// RetryIdempotent retries, once and on another backend, a request with
	// an idempotent method (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) whose
	// connection failed, when its body is empty or was not read yet.
	RetryIdempotent bool

	// LBEndpoints answers /lb/health and /lb/metrics on this service's
	// listener instead of proxying them.
	LBEndpoints bool
	Headers     HeaderRules

	Backends []BackendConfig
}

// BackendConfig is one backend of a service.
type BackendConfig struct {
	ID     string // stable identity, e.g. "web@10.0.0.1:8080"; unique in the service
	Addr   netip.AddrPort
	Weight int // 0: no new clients (sticky ones stay)
	State  State
}

// Timeout defaults.
const (
	DefaultConnectTimeout        = 5 * time.Second
	DefaultResponseHeaderTimeout = 30 * time.Second
)

// Options configure NewServer.
type Options struct {
	Logger *slog.Logger // nil: slog.Default()
	// Registerer gets the Server's Prometheus metrics (the Server is a
	// prometheus.Collector); nil registers nothing.
	Registerer prometheus.Registerer
	// ListenFunc opens listeners; nil is net.Listen.
	ListenFunc func(network, addr string) (net.Listener, error)
	// OnEject is called when passive health ejects a backend (from a request
	// goroutine: it must not block).
	OnEject func(service string, u *Upstream, until time.Time, reason string)
	// RetireGrace bounds how long a listener that an Update removed keeps
	// serving its open requests; 0: 30 s.
	RetireGrace time.Duration
	// Client connections (package h1's Server; zero: h1's defaults):
	// HeadTimeout bounds a request head from its first byte (408),
	// IdleTimeout a kept connection's silence, ClientTimeout each write to
	// a client and each read of a request body; MaxRequestLine (414) and
	// MaxRequestHead (431) bound request heads.
	HeadTimeout    time.Duration
	IdleTimeout    time.Duration
	ClientTimeout  time.Duration
	MaxRequestLine int
	MaxRequestHead int
	// AccessLog, if set, gets an entry for every request a service
	// handled (the /lb endpoints and requests no service takes are not
	// logged). The caller closes it after Shutdown.
	AccessLog *AccessLog
}

// ErrServerClosed is returned by Update after Shutdown.
var ErrServerClosed = errors.New("l7: server closed")

// Server is the L7 tier: one listener per distinct Listen address, routing
// by host and path to services, each proxying to its pool of backends.
type Server struct {
	log    *slog.Logger
	listen func(network, addr string) (net.Listener, error)
	opts   Options
	prom   *promMetrics

	gen atomic.Pointer[generation] // what Metrics, Collect and SetBackendState see

	mu         sync.Mutex // Update, Shutdown
	closed     bool
	listeners  map[netip.AddrPort]*listener
	retiring   sync.WaitGroup // listeners removed by Update, still draining
	retired    map[*listener]struct{}
	transports map[transportKey]*h1.Transport
}

// generation is one applied configuration: services by name, sorted.
type generation struct {
	services []*service
	byName   map[string]*service
}

// NewServer returns a Server with no services; Update gives it some.
func NewServer(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ListenFunc == nil {
		o.ListenFunc = net.Listen
	}
	if o.RetireGrace <= 0 {
		o.RetireGrace = 30 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = h1.DefaultIdleTimeout
	}
	s := &Server{
		log: o.Logger, listen: o.ListenFunc, opts: o, prom: newPromMetrics(),
		listeners: map[netip.AddrPort]*listener{}, retired: map[*listener]struct{}{},
		transports: map[transportKey]*h1.Transport{},
	}
	s.gen.Store(&generation{byName: map[string]*service{}})
	if o.Registerer != nil {
		o.Registerer.MustRegister(s)
	}
	return s
}

// Update applies services, the whole desired L7 configuration, as a diff
// against the running one. It validates everything and opens new listeners
// first: on any error nothing changes. Then: listeners that stay keep
// running (no connection is cut), new ones start, removed ones stop
// accepting and finish their open requests (Options.RetireGrace); each
// listener's routes and each service's pool are swapped atomically, so a
// request runs entirely on the old or the new configuration. Backends keep
// their Upstream (counters, in-flight requests, round robin position,
// passive health) when their ID, address and weight are unchanged; every
// backend's State is set from the configuration.
func (s *Server) Update(services []ServiceConfig) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrServerClosed
	}
	if err := validate(services); err != nil {
		return err
	}
	old := s.gen.Load()
	gen := &generation{byName: make(map[string]*service, len(services))}
	newTransports := map[transportKey]*h1.Transport{}
	for i := range services {
		c := &services[i]
		svc, err := s.buildService(c, old.byName[c.Name], newTransports)
		if err != nil {
			return fmt.Errorf("service %q: %w", c.Name, err)
		}
		gen.services = append(gen.services, svc)
		gen.byName[c.Name] = svc
	}
	slices.SortFunc(gen.services, func(a, b *service) int { return strings.Compare(a.name, b.name) })

	// Routes per listener, and the listeners to open.
	groups := map[netip.AddrPort][]*service{}
	for _, svc := range gen.services {
		groups[svc.cfg.Listen] = append(groups[svc.cfg.Listen], svc)
	}
	opened := map[netip.AddrPort]*listener{}
	for addr := range groups {
		if s.listeners[addr] != nil {
			continue
		}
		ln, err := s.listen("tcp", addr.String())
		if err != nil {
			for _, l := range opened {
				l.ln.Close()
			}
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		opened[addr] = s.newListener(addr, ln)
	}

	// Commit: nothing below fails.
	for k, t := range newTransports {
		s.transports[k] = t
	}
	for i := range services {
		svc := gen.byName[services[i].Name]
		for _, b := range services[i].Backends {
			svc.ups[b.ID].SetState(b.State)
		}
	}
	s.gen.Store(gen)
	for addr, l := range s.listeners {
		if g, ok := groups[addr]; ok {
			l.routes.Store(newRouteTable(g))
			continue
		}
		delete(s.listeners, addr)
		s.retire(l)
	}
	for addr, l := range opened {
		l.routes.Store(newRouteTable(groups[addr]))
		s.listeners[addr] = l
		go l.serve()
		s.log.Info("l7: listening", "addr", addr.String())
	}
	s.dropUnused(gen)
	s.logChanges(old, gen)
	return nil
}

// buildService returns the service for c: prev itself when only backend
// states changed, else a new one that keeps prev's stats, policy and the
// Upstreams of unchanged backends. New transports go to newT.
func (s *Server) buildService(c *ServiceConfig, prev *service, newT map[transportKey]*h1.Transport) (*service, error) {
	if prev != nil && sameConfig(&prev.cfg, c) {
		return prev, nil
	}
	hp, err := compileHeaders(c.Headers)
	if err != nil {
		return nil, err
	}
	policyName := cmp.Or(c.Policy, PolicyRoundRobin)
	var policy Policy
	if prev != nil && cmp.Or(prev.cfg.Policy, PolicyRoundRobin) == policyName {
		policy = prev.pool.Policy
	} else if policy, err = NewPolicy(policyName); err != nil {
		return nil, err
	}

	svc := &service{
		srv: s, name: c.Name, cfg: cloneConfig(c), hdr: hp,
		ups:     make(map[string]*Upstream, len(c.Backends)),
		upStats: make(map[*Upstream]*upstreamStats, len(c.Backends)),
	}
	// Maglev names for the new set, worked out on scratch Upstreams: a kept
	// Upstream's Name must not change (ip_hash reads it concurrently).
	scratch := make([]*Upstream, len(c.Backends))
	for i, b := range c.Backends {
		scratch[i] = &Upstream{ID: b.ID, Addr: b.Addr, Weight: b.Weight}
	}
	AssignNames(scratch)
	ups := make([]*Upstream, len(c.Backends))
	for i, b := range c.Backends {
		var u *Upstream
		if prev != nil {
			if p := prev.ups[b.ID]; p != nil && p.Addr == b.Addr && p.Weight == b.Weight && p.Name == scratch[i].Name {
				u = p
				svc.upStats[u] = prev.upStats[p]
			}
		}
		if u == nil {
			u = scratch[i]
			u.SetState(b.State)
			svc.upStats[u] = newUpstreamStats(u)
		}
		ups[i] = u
		svc.ups[b.ID] = u
	}
	var sticky *StickyConfig
	if c.Sticky != nil {
		sc := *c.Sticky
		sticky = &sc
	}
	pool := &Pool{
		Service: c.Name, Upstreams: ups, Policy: policy, Sticky: sticky,
		MaxInFlight: c.MaxInFlight, Passive: c.Passive, MaglevSize: c.MaglevSize,
		OnEject: s.onEject(c.Name),
	}
	svc.pool = pool
	svc.ipHash = policyName == PolicyIPHash

	if prev != nil {
		svc.stats = prev.stats
	} else {
		svc.stats = &serviceStats{}
		svc.stats.hist = s.prom.duration.WithLabelValues(c.Name)
	}

	key := transportKey{
		connect: cmp.Or(c.ConnectTimeout, DefaultConnectTimeout),
		header:  cmp.Or(c.ResponseHeaderTimeout, DefaultResponseHeaderTimeout),
	}
	svc.transport = s.transports[key]
	if svc.transport == nil {
		if svc.transport = newT[key]; svc.transport == nil {
			svc.transport = newProxyTransport(key)
			newT[key] = svc.transport
		}
	}
	svc.tkey = key
	return svc, nil
}

func (s *Server) onEject(service string) func(u *Upstream, until time.Time, reason string) {
	return func(u *Upstream, until time.Time, reason string) {
		s.log.Warn("l7: backend ejected by passive health", "service", service, "backend", u.ID,
			"until", until.Format(time.RFC3339), "reason", reason)
		if s.opts.OnEject != nil {
			s.opts.OnEject(service, u, until, reason)
		}
	}
}

// sameConfig reports whether a and b differ at most in backend states.
func sameConfig(a, b *ServiceConfig) bool {
	if len(a.Backends) != len(b.Backends) {
		return false
	}
	for i := range a.Backends {
		x, y := a.Backends[i], b.Backends[i]
		if x.ID != y.ID || x.Addr != y.Addr || x.Weight != y.Weight {
			return false
		}
	}
	ac, bc := *a, *b
	ac.Backends, bc.Backends = nil, nil
	return reflect.DeepEqual(ac, bc)
}

// cloneConfig copies c deeply enough that the caller may reuse its slices.
func cloneConfig(c *ServiceConfig) ServiceConfig {
	cc := *c
	cc.Hosts = slices.Clone(c.Hosts)
	cc.Backends = slices.Clone(c.Backends)
	if c.Sticky != nil {
		st := *c.Sticky
		cc.Sticky = &st
	}
	h := &cc.Headers
	h.RequestAdd, h.RequestSet = cloneMap(h.RequestAdd), cloneMap(h.RequestSet)
	h.ResponseAdd, h.ResponseSet = cloneMap(h.ResponseAdd), cloneMap(h.ResponseSet)
	h.RequestRemove, h.ResponseRemove = slices.Clone(h.RequestRemove), slices.Clone(h.ResponseRemove)
	h.TrustedProxies = slices.Clone(h.TrustedProxies)
	return cc
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// validate checks what a service's own build does not: names, addresses,
// backends, durations and route conflicts.
func validate(services []ServiceConfig) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	names := map[string]bool{}
	type routeKey struct {
		listen netip.AddrPort
		host   string
		prefix string
	}
	routes := map[routeKey]string{}
	for i := range services {
		c := &services[i]
		switch {
		case c.Name == "":
			bad("service %d: no name", i)
		case names[c.Name]:
			bad("service %q: defined twice", c.Name)
		}
		names[c.Name] = true
		if !c.Listen.IsValid() || c.Listen.Port() == 0 {
			bad("service %q: listen address %v needs an address and a port", c.Name, c.Listen)
		}
		if c.PathPrefix != "" && !strings.HasPrefix(c.PathPrefix, "/") {
			bad("service %q: path prefix %q must start with /", c.Name, c.PathPrefix)
		}
		for _, d := range []struct {
			name string
			v    time.Duration
		}{{"connect timeout", c.ConnectTimeout}, {"response header timeout", c.ResponseHeaderTimeout}, {"request timeout", c.RequestTimeout}} {
			if d.v < 0 {
				bad("service %q: %s %s is negative", c.Name, d.name, d.v)
			}
		}
		if c.MaxInFlight < 0 {
			bad("service %q: max in flight %d is negative", c.Name, c.MaxInFlight)
		}
		if c.Sticky != nil && c.Sticky.Cookie != "" && !h1.ValidToken(c.Sticky.Cookie) {
			bad("service %q: sticky cookie name %q is not a token", c.Name, c.Sticky.Cookie)
		}
		if c.Sticky != nil && c.Sticky.TTL != 0 && c.Sticky.TTL < MinStickyTTL {
			bad("service %q: sticky TTL %s is below %s", c.Name, c.Sticky.TTL, MinStickyTTL)
		}
		if c.Passive.MaxFails < 0 {
			bad("service %q: passive max fails %d is negative", c.Name, c.Passive.MaxFails)
		}
		ids := map[string]bool{}
		for _, b := range c.Backends {
			switch {
			case b.ID == "":
				bad("service %q: backend %v has no id", c.Name, b.Addr)
			case ids[b.ID]:
				bad("service %q: backend id %q twice", c.Name, b.ID)
			}
			ids[b.ID] = true
			if !b.Addr.IsValid() || b.Addr.Port() == 0 {
				bad("service %q: backend %q: address %v needs an address and a port", c.Name, b.ID, b.Addr)
			}
			if b.Weight < 0 {
				bad("service %q: backend %q: weight %d is negative", c.Name, b.ID, b.Weight)
			}
			if b.State < StateUp || b.State > StateDown {
				bad("service %q: backend %q: unknown state %d", c.Name, b.ID, b.State)
			}
		}
		hosts := c.Hosts
		if len(hosts) == 0 {
			hosts = []string{""}
		}
		prefix := normPrefix(c.PathPrefix)
		for _, h := range hosts {
			hn := strings.ToLower(h)
			if h != "" && !validHostPattern(hn) {
				bad("service %q: host %q is neither a host name nor *.suffix", c.Name, h)
				continue
			}
			k := routeKey{c.Listen, hn, prefix}
			if other, dup := routes[k]; dup && other != c.Name {
				bad("service %q: host %q and path prefix %q on %s are already routed to %q", c.Name, h, cmp.Or(prefix, "/"), c.Listen, other)
			}
			routes[k] = c.Name
		}
		if c.Policy != "" {
			if _, err := NewPolicy(c.Policy); err != nil {
				bad("service %q: %v", c.Name, err)
			}
		}
		if _, err := compileHeaders(c.Headers); err != nil {
			bad("service %q: %v", c.Name, err)
		}
	}
	return errors.Join(errs...)
}

func validHostPattern(h string) bool {
	h = strings.TrimPrefix(h, "*.")
	if h == "" || strings.ContainsAny(h, "*/[] \t") {
		return false
	}
	if strings.Contains(h, ":") { // no port; IPv6 literals without brackets
		if a, err := netip.ParseAddr(h); err != nil || !a.Is6() {
			return false
		}
	}
	return printableASCII(h)
}

// SetBackendState sets one backend's state without a full Update (health
// and admin transitions). It reports whether the backend exists.
func (s *Server) SetBackendState(service, id string, st State) bool {
	svc := s.gen.Load().byName[service]
	if svc == nil {
		return false
	}
	u := svc.ups[id]
	if u == nil {
		return false
	}
	u.SetState(st)
	return true
}

// Upstream returns a service's backend, for the control loop (Readmit,
// counters); nil if there is none.
func (s *Server) Upstream(service, id string) *Upstream {
	if svc := s.gen.Load().byName[service]; svc != nil {
		return svc.ups[id]
	}
	return nil
}

// Shutdown stops accepting connections on every listener, lets open
// requests (and WebSocket tunnels) finish until ctx ends, then closes what
// is left. It returns ctx's error if it had to cut anything.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	var ls []*listener
	for _, l := range s.listeners {
		ls = append(ls, l)
	}
	for l := range s.retired {
		ls = append(ls, l)
	}
	clear(s.listeners)
	s.mu.Unlock()

	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() { errc <- l.shutdown(ctx) }()
	}
	var errs []error
	for range ls {
		if err := <-errc; err != nil {
			errs = append(errs, err)
		}
	}
	s.retiring.Wait()
	s.mu.Lock()
	for _, t := range s.transports {
		t.CloseIdleConnections()
	}
	s.mu.Unlock()
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// retire stops a listener that an Update removed; the caller holds s.mu.
func (s *Server) retire(l *listener) {
	s.retired[l] = struct{}{}
	s.retiring.Add(1)
	s.log.Info("l7: listener removed, draining", "addr", l.addr.String(), "grace", s.opts.RetireGrace)
	go func() {
		defer s.retiring.Done()
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.RetireGrace)
		defer cancel()
		if err := l.shutdown(ctx); err != nil {
			s.log.Warn("l7: listener drain cut short", "addr", l.addr.String(), "err", err)
		}
		s.mu.Lock()
		delete(s.retired, l)
		s.mu.Unlock()
	}()
}

// dropUnused closes the idle connections of transports no service uses any
// more and forgets the histograms of removed services; s.mu is held.
func (s *Server) dropUnused(gen *generation) {
	used := map[transportKey]bool{}
	for _, svc := range gen.services {
		used[svc.tkey] = true
	}
	for k, t := range s.transports {
		if !used[k] {
			t.CloseIdleConnections()
			delete(s.transports, k)
		}
	}
}

func (s *Server) logChanges(old, gen *generation) {
	for _, svc := range gen.services {
		switch p := old.byName[svc.name]; {
		case p == nil:
			s.log.Info("l7: service added", "service", svc.name, "listen", svc.cfg.Listen.String(), "backends", len(svc.cfg.Backends))
		case p != svc:
			s.log.Info("l7: service updated", "service", svc.name, "listen", svc.cfg.Listen.String(), "backends", len(svc.cfg.Backends))
		}
	}
	for _, p := range old.services {
		if gen.byName[p.name] == nil {
			s.prom.duration.DeleteLabelValues(p.name)
			s.log.Info("l7: service removed", "service", p.name)
		}
	}
}

// listener is one listening socket and its http.Server.
type listener struct {
	srv     *Server
	addr    netip.AddrPort
	ln      net.Listener
	baseCtx context.Context // requests' contexts derive from it
	h1      *h1.Server      // serves HTTP/1.x connections
	handoff *handoff        // and gives HTTP/2 ones to hs
	hs      *http.Server
	routes  atomic.Pointer[routeTable]
	served  chan struct{} // closed when Serve has returned

	tunnelMu sync.Mutex
	tunnels  map[net.Conn]struct{} // hijacked (WebSocket) connections
	tunnelWG sync.WaitGroup

	stopOnce sync.Once
	drained  chan struct{} // closed when shutdown is complete
}

type listenerKey struct{}

func (s *Server) newListener(addr netip.AddrPort, ln net.Listener) *listener {
	l := &listener{srv: s, addr: addr, ln: ln, served: make(chan struct{}), drained: make(chan struct{}),
		tunnels: map[net.Conn]struct{}{}, handoff: newHandoff(ln.Addr())}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	base := context.WithValue(context.Background(), listenerKey{}, l)
	l.baseCtx = base
	l.hs = &http.Server{
		Handler:     l,
		Protocols:   &protos,
		IdleTimeout: s.opts.IdleTimeout,
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext: func(net.Listener) context.Context { return base },
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context { return withOwner(ctx) },
	}
	o := &s.opts
	l.h1 = &h1.Server{
		Handler:        l,
		HeadTimeout:    o.HeadTimeout,
		IdleTimeout:    o.IdleTimeout,
		ClientTimeout:  o.ClientTimeout,
		MaxRequestLine: o.MaxRequestLine,
		MaxRequestHead: o.MaxRequestHead,
		BaseContext:    base,
		ConnContext:    withScratch,
		HandOff:        l.handoff.give,
		OnReject:       s.prom.rejected,
		Logger:         s.log,
	}
	configureHTTP2(l.hs, s.log) // h2.go
	return l
}

// serve accepts connections and serves them (h1.go) until the listening
// socket closes, then waits for the http.Server's Serve to return.
func (l *listener) serve() {
	defer close(l.served)
	hsDone := make(chan struct{})
	go func() {
		defer close(hsDone)
		l.hs.Serve(l.handoff)
	}()
	defer func() { <-hsDone }()
	var backoff time.Duration
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.srv.log.Warn("l7: accept failed, retrying", "addr", l.addr.String(), "err", err, "in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go l.h1.ServeConn(nc)
	}
}

// ServeHTTP routes a request to its service (or the /lb endpoints).
func (l *listener) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 2 {
		c, ok := admitHTTP2(w, r) // h2.go: validation and stream limits
		if !ok {
			return
		}
		defer c.release(r)
	}
	rt := l.routes.Load()
	svc := rt.match(r.Host, r.URL.Path)
	if isLBPath(r.URL.Path) && (svc != nil && svc.cfg.LBEndpoints || svc == nil && len(rt.lb) > 0) {
		rt.lbHandler.ServeHTTP(w, r)
		return
	}
	if svc == nil {
		notFoundResponse.write(w, w.Header())
		return
	}
	svc.ServeHTTP(w, r)
}

// trackTunnel registers a hijacked connection so Shutdown can wait for it
// and, at its deadline, close it. The returned func unregisters it.
func (l *listener) trackTunnel(c net.Conn) (untrack func()) {
	l.tunnelMu.Lock()
	l.tunnels[c] = struct{}{}
	l.tunnelWG.Add(1)
	l.tunnelMu.Unlock()
	return func() {
		l.tunnelMu.Lock()
		if _, ok := l.tunnels[c]; ok {
			delete(l.tunnels, c)
			l.tunnelWG.Done()
		}
		l.tunnelMu.Unlock()
	}
}

// shutdown stops accepting, waits for open requests and tunnels until ctx
// ends, then closes everything. Concurrent calls (a retiring listener that
// the Server's Shutdown also stops) share one drain; each returns when it is
// over or when its own ctx ends, which forces it.
func (l *listener) shutdown(ctx context.Context) error {
	l.stopOnce.Do(func() {
		go func() {
			l.ln.Close()
			l.h1.Shutdown(false)
			l.hs.Shutdown(context.Background()) // ends early if forced
			l.h1.Wait()
			l.tunnelWG.Wait()
			<-l.served
			close(l.drained)
		}()
	})
	select {
	case <-l.drained:
		return nil
	case <-ctx.Done():
		l.force()
		<-l.drained
		return ctx.Err()
	}
}

// force closes the listener's connections, tunnels included.
func (l *listener) force() {
	l.h1.Shutdown(true)
	l.hs.Close()
	l.tunnelMu.Lock()
	for c := range l.tunnels {
		c.Close()
		delete(l.tunnels, c)
		l.tunnelWG.Done()
	}
	l.tunnelMu.Unlock()
}

// routeTable is a listener's routing: entries in priority order, the first
// whose host and path match wins.
type routeTable struct {
	entries   []routeEntry
	lb        []*service // services with LBEndpoints, for /lb/*
	lbHandler http.Handler
}

type routeEntry struct {
	exact  string // lower-case host, or
	suffix string // ".example.com" for *.example.com, or neither: any host
	prefix string // normalised: "" for every path, else "/a/b" without trailing slash
	svc    *service
}

func (e *routeEntry) rank() int {
	switch {
	case e.exact != "":
		return 1 << 20
	case e.suffix != "":
		return 1<<19 + len(e.suffix)
	}
	return 0
}

func newRouteTable(svcs []*service) *routeTable {
	rt := &routeTable{}
	for _, svc := range svcs {
		prefix := normPrefix(svc.cfg.PathPrefix)
		if len(svc.cfg.Hosts) == 0 {
			rt.entries = append(rt.entries, routeEntry{prefix: prefix, svc: svc})
		}
		for _, h := range svc.cfg.Hosts {
			h = strings.ToLower(h)
			if suf, ok := strings.CutPrefix(h, "*"); ok {
				rt.entries = append(rt.entries, routeEntry{suffix: suf, prefix: prefix, svc: svc})
			} else {
				rt.entries = append(rt.entries, routeEntry{exact: h, prefix: prefix, svc: svc})
			}
		}
		if svc.cfg.LBEndpoints {
			rt.lb = append(rt.lb, svc)
		}
	}
	slices.SortStableFunc(rt.entries, func(a, b routeEntry) int {
		if c := cmp.Compare(b.rank(), a.rank()); c != 0 {
			return c
		}
		return cmp.Compare(len(b.prefix), len(a.prefix))
	})
	rt.lbHandler = lbHandler{scope: rt.lb}
	return rt
}

// normPrefix: "" and "/" match everything; otherwise no trailing slash.
func normPrefix(p string) string {
	return strings.TrimRight(p, "/")
}

// match returns the service for host (a Host header) and path, or nil.
func (rt *routeTable) match(host, path string) *service {
	if rt == nil {
		return nil
	}
	host = hostOnly(host)
	for i := range rt.entries {
		e := &rt.entries[i]
		switch {
		case e.exact != "":
			if !strings.EqualFold(host, e.exact) {
				continue
			}
		case e.suffix != "":
			if len(host) <= len(e.suffix) || !strings.EqualFold(host[len(host)-len(e.suffix):], e.suffix) {
				continue
			}
		}
		if e.prefix == "" || strings.HasPrefix(path, e.prefix) && (len(path) == len(e.prefix) || path[len(e.prefix)] == '/') {
			return e.svc
		}
	}
	return nil
}

// hostOnly strips the port, the IPv6 brackets and a trailing dot of a Host.
func hostOnly(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		if strings.Count(h, ":") == 1 || strings.HasPrefix(h, "[") {
			h = h[:i]
		}
	}
	h = strings.TrimPrefix(h, "[")
	h = strings.TrimSuffix(h, "]")
	return strings.TrimSuffix(h, ".")
}

var _ http.Handler = (*listener)(nil)

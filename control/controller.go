package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/xlb-dev/xlb/bgp"
	"github.com/xlb-dev/xlb/checkroute"
	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/health"
	"github.com/xlb-dev/xlb/l7"
	"github.com/xlb-dev/xlb/loader"
)

var (
	// ErrUnknownService: no service by that name.
	ErrUnknownService = errors.New("unknown service")
	// ErrUnknownBackend: no backend by that id.
	ErrUnknownBackend = errors.New("unknown backend")
	// ErrBadRequest: the request names something invalid.
	ErrBadRequest = errors.New("bad request")
	// ErrExists: the backend is already in the service.
	ErrExists = errors.New("backend already exists")
	// ErrTooManyBackends: the L4 backends need more datapath ids than the
	// loaded backends table holds (datapath.max_backends).
	ErrTooManyBackends = errors.New("too many l4 backends for datapath.max_backends")
)

// AdminState is what the admin API asked of a backend.
type AdminState string

const (
	AdminReady    AdminState = "ready"
	AdminDraining AdminState = "draining"
	AdminRemoving AdminState = "removing"
)

// flowsPoll is how often backends being removed are checked for open flows.
const flowsPoll = time.Second

// flowSweep is how often the connection table is swept of expired flows
// (Reconciler.ExpireFlows): the datapath ignores them already, the sweep
// frees their room. One sweep reads the whole table.
var flowSweep = 10 * time.Second // a var for tests

type backend struct {
	id         string // service@address (L4) or service@address:port (L7)
	address    netip.Addr
	port       uint16 // L7 only
	weight     uint32
	mac        net.HardwareAddr
	fromConfig bool
	admin      AdminState
	deadline   time.Time // removal: give up waiting for flows
	check      *health.Spec
	initial    health.State
}

type service struct {
	cfg      config.Service
	backends []*backend
}

// CheckRoutes routes the checks of check_via_vip backends through their
// VIP (a *checkroute.Router).
type CheckRoutes interface {
	Mark(p checkroute.Path) (uint32, error)
	Install(paths []checkroute.Path) error
	Retry() error
	Prune(keep []checkroute.Path) error
}

// Controller owns the desired state. All methods are safe for concurrent use.
type Controller struct {
	rec     *loader.Reconciler // nil without an XDP datapath
	maps    *loader.Maps
	l7      L7 // nil without L7 tier
	hm      *health.Manager
	routes  CheckRoutes // nil without an XDP datapath
	log     *slog.Logger
	metrics *Metrics
	events  *Events

	// healthMu orders syncHealth's calls: routes in, checks set, routes out.
	healthMu sync.Mutex

	mu       sync.Mutex
	cfg      *config.Config
	services []*service
	kick     chan struct{}

	// openFlows and expireFlows walk the connection table (Maps.OpenFlows,
	// Reconciler.ExpireFlows); tests replace them.
	openFlows   func() (map[uint32]int, error)
	expireFlows func() (loader.FlowSweep, error)

	transitions  <-chan health.Transition
	routeChanges <-chan struct{}
	unsubscribe  func()
	unresolved   bool   // the last apply left backends unresolved: retry
	routesErr    string // the check routes' last problems: retry

	// BGP (bgp.go): the announcer, nil without [bgp]; bgpMu orders the
	// announcements. node and l7Up are under mu.
	bgpMu        sync.Mutex
	bgp          Announcer
	newAnnouncer func(bgp.Config) (Announcer, error)
	node         NodeState
	l7Up         bool // the L7 tier took the last update: its listeners are up
}

// Options configure New.
type Options struct {
	Reconciler *loader.Reconciler // nil: L4 datapath off
	Maps       *loader.Maps
	L7         L7 // nil: no L7 tier
	Health     *health.Manager
	// CheckRoutes routes checks through VIPs (check_via_vip); nil: such
	// backends are not checked (there is no L4 datapath to check for).
	CheckRoutes CheckRoutes
	// RouteChanges signals route changes (loader.WatchRoutes): at the next
	// poll every L4 backend is resolved again, since its egress interface
	// or next hop may have moved. nil: backends are resolved once.
	RouteChanges <-chan struct{}
	Logger       *slog.Logger
	Metrics      *Metrics
	// Events records what happens (health transitions, admin changes,
	// reloads) for the status page; nil: the controller keeps its own.
	Events *Events
	// NewAnnouncer starts the announcer of a [bgp] table; nil: a GoBGP
	// speaker (bgp.New).
	NewAnnouncer func(bgp.Config) (Announcer, error)
}

// New builds a controller for cfg; Run applies it.
func New(cfg *config.Config, o Options) *Controller {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Controller{
		rec: o.Reconciler, maps: o.Maps, l7: o.L7, hm: o.Health, routes: o.CheckRoutes, log: o.Logger, metrics: o.Metrics,
		kick: make(chan struct{}, 1), routeChanges: o.RouteChanges, newAnnouncer: o.NewAnnouncer, node: NodeReady,
		events: o.Events,
	}
	if c.events == nil {
		c.events = NewEvents(0)
	}
	if c.newAnnouncer == nil {
		c.newAnnouncer = c.newSpeaker
	}
	if o.Maps != nil {
		c.openFlows = o.Maps.OpenFlows
	}
	if o.Reconciler != nil {
		c.expireFlows = o.Reconciler.ExpireFlows
	}
	c.cfg = cfg
	c.services = buildServices(cfg, nil)
	c.assignMarks(c.services)
	return c
}

func backendID(s config.Service, addr netip.Addr, port uint16) string {
	if s.Mode == config.ModeL7 {
		return s.Name + "@" + netip.AddrPortFrom(addr, port).String()
	}
	return s.Name + "@" + addr.String()
}

func newBackend(s config.Service, b config.Backend, fromConfig bool) *backend {
	port := b.Port
	if port == 0 {
		port = s.Port
	}
	nb := &backend{
		id: backendID(s, b.Address, port), address: b.Address, port: port,
		weight: b.Weight, mac: b.MAC, fromConfig: fromConfig, admin: AdminReady,
		initial: health.Healthy,
	}
	hc := s.BackendCheck(b)
	if hc.Enabled {
		checkPort := hc.Port
		if checkPort == 0 {
			checkPort = port
		}
		spec := health.Spec{
			Kind:               health.Kind(hc.Type),
			Target:             netip.AddrPortFrom(b.Address, checkPort),
			Path:               hc.Path,
			Interval:           hc.Interval,
			Timeout:            hc.Timeout,
			HealthyThreshold:   hc.HealthyThreshold,
			UnhealthyThreshold: hc.UnhealthyThreshold,
		}
		if hc.CheckViaVIP && s.Mode == config.ModeL4 {
			// As the datapath sends packets: to the VIP, through the
			// backend. assignMarks gives it the mark of that route.
			spec.Target, spec.Via = netip.AddrPortFrom(s.VIP, checkPort), b.Address
		}
		if st, err := health.ParseStatusSet(hc.ExpectStatus); err == nil {
			spec.ExpectStatus = st
		}
		nb.check = &spec
		if hc.InitialState == "down" {
			nb.initial = health.Unhealthy
		}
	}
	return nb
}

// buildServices makes the service list of cfg, carrying over admin state and
// admin-added backends from prev where the service and backend still exist.
func buildServices(cfg *config.Config, prev []*service) []*service {
	old := map[string]*service{}
	for _, s := range prev {
		old[s.cfg.Name] = s
	}
	var out []*service
	for _, sc := range cfg.Services {
		s := &service{cfg: sc}
		o := old[sc.Name]
		prevB := map[string]*backend{}
		if o != nil && o.cfg.Mode == sc.Mode {
			for _, b := range o.backends {
				prevB[b.id] = b
			}
		}
		seen := map[string]bool{}
		for _, bc := range sc.Backends {
			nb := newBackend(sc, bc, true)
			if pb, ok := prevB[nb.id]; ok {
				nb.admin, nb.deadline = pb.admin, pb.deadline
			}
			seen[nb.id] = true
			s.backends = append(s.backends, nb)
		}
		if o != nil && o.cfg.Mode == sc.Mode && o.cfg.VIP == sc.VIP && o.cfg.Port == sc.Port {
			for _, b := range o.backends {
				if !b.fromConfig && !seen[b.id] {
					// Checked as the service's other backends now are.
					nb := newBackend(sc, config.Backend{Address: b.address, Port: b.port, Weight: b.weight, MAC: b.mac}, false)
					nb.admin, nb.deadline = b.admin, b.deadline
					s.backends = append(s.backends, nb)
				}
			}
		}
		out = append(out, s)
	}
	return out
}

// assignMarks gives every check through a VIP in services the mark of its
// route. The caller holds c.mu, or is New.
func (c *Controller) assignMarks(services []*service) {
	for _, s := range services {
		for _, b := range s.backends {
			c.assignMark(b)
		}
	}
}

// assignMark gives b's check, if it goes through a VIP and has no mark yet,
// the mark of its route: the same one for the same VIP and backend, so that
// a reload keeps the checker. Without check routes b is not checked.
func (c *Controller) assignMark(b *backend) {
	if b.check == nil || !b.check.Via.IsValid() || b.check.Mark != 0 {
		return
	}
	if c.routes == nil {
		c.log.Warn("check_via_vip needs the L4 datapath: backend not checked", "backend", b.id)
		b.check = nil
		return
	}
	mark, err := c.routes.Mark(viaPath(b.check))
	if err != nil {
		c.log.Error("check_via_vip: backend not checked", "backend", b.id, "err", err)
		b.check = nil
		return
	}
	b.check.Mark = mark
}

// viaPath is the route of a check through a VIP.
func viaPath(spec *health.Spec) checkroute.Path {
	return checkroute.Path{VIP: spec.Target.Addr(), Backend: spec.Via}
}

// Start subscribes to health transitions, starts the checks and applies the
// desired state once; Run then keeps it applied.
func (c *Controller) Start(ctx context.Context) error {
	if c.hm != nil && c.transitions == nil {
		c.transitions, c.unsubscribe = c.hm.Subscribe(64)
	}
	c.syncHealth()
	if c.maps != nil {
		if err := c.maps.SetFlowTimeouts(flowTimeouts(c.cfg.Datapath)); err != nil {
			return err
		}
	}
	if err := c.setNATPorts(c.cfg); err != nil {
		return err
	}
	if err := c.startBGP(c.cfg); err != nil {
		return err
	}
	if err := c.reconcile(ctx); err != nil {
		return err
	}
	c.events.Add(EventStart, "", "", "started with %d services", len(c.cfg.Services))
	return nil
}

// Events is the controller's record of what happened, for the status page.
func (c *Controller) Events() *Events { return c.events }

// flowTimeouts are the datapath's idle timeouts of [datapath].
func flowTimeouts(d config.Datapath) loader.FlowTimeouts {
	return loader.FlowTimeouts{
		TCPSyn: d.TCPSynTimeout, TCPEstablished: d.TCPEstablishedTimeout,
		TCPClosing: d.TCPClosingTimeout, UDP: d.UDPTimeout,
	}
}

// sweepFlows deletes the connection table's expired flows.
func (c *Controller) sweepFlows() {
	if c.expireFlows == nil {
		return
	}
	s, err := c.expireFlows()
	if err != nil {
		c.log.Warn("sweeping the connection table", "err", err)
		return
	}
	if s.Expired > 0 {
		c.log.Debug("expired flows deleted", "expired", s.Expired, "live", s.Live)
	}
}

// sweepLoop sweeps the connection table every flowSweep until ctx ends.
func (c *Controller) sweepLoop(ctx context.Context) {
	sweep := time.NewTicker(flowSweep)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			c.sweepFlows()
		}
	}
}

// Run keeps the desired state applied until ctx ends: on health transitions,
// admin changes and reloads, while removals wait for their flows to end, and
// while backends are unresolved.
func (c *Controller) Run(ctx context.Context) error {
	if c.unsubscribe != nil {
		defer c.unsubscribe()
	}
	// The sweep reads the whole connection table (seconds for a large one):
	// on its own, it delays no reconcile. It ends with Run.
	var sweeper sync.WaitGroup
	defer sweeper.Wait()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	sweeper.Go(func() { c.sweepLoop(sctx) })
	poll := time.NewTicker(flowsPoll)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case tr := <-c.transitions:
			// One reconcile covers every transition already queued; each
			// is logged as applied.
			batch := []health.Transition{tr}
			for more := true; more; {
				select {
				case next := <-c.transitions:
					batch = append(batch, next)
				default:
					more = false
				}
			}
			for _, tr := range batch {
				c.events.healthEvent(tr)
			}
			start := time.Now()
			if err := c.reconcile(ctx); err != nil {
				c.log.Error("reconcile after health transition", "err", err)
				continue
			}
			took := time.Since(start).Round(time.Microsecond).String()
			for _, tr := range batch {
				c.log.Info("health transition applied", "backend", tr.Spec.Target.String(),
					"state", tr.To.String(), "after", time.Since(tr.At).Round(time.Microsecond).String(),
					"reconcile", took)
			}
		case <-c.kick:
			if err := c.reconcile(ctx); err != nil {
				c.log.Error("reconcile", "err", err)
			}
		case <-poll.C:
			c.updateL7Metrics() // passive health's ejections: within a poll
			c.mu.Lock()
			retry := c.unresolved
			c.mu.Unlock()
			// At most one re-resolution a poll, however many routes change.
			if c.takeRouteChange() {
				retry = true
			}
			removed := c.finishRemovals()
			if removed {
				c.syncHealth()
			} else {
				c.retryRoutes()
			}
			if removed || retry {
				if err := c.reconcile(ctx); err != nil {
					c.log.Error("reconcile", "err", err)
				}
			}
		}
	}
}

// takeRouteChange reports whether routes changed since the last poll, and
// if so has the next reconcile resolve every backend again.
func (c *Controller) takeRouteChange() bool {
	select {
	case <-c.routeChanges:
		if c.rec == nil {
			return false
		}
		c.rec.Reresolve()
		return true
	default:
		return false
	}
}

func (c *Controller) requestReconcile() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// syncHealth gives the health manager the checks the current backends need,
// with the routes of the checks through a VIP in place before they start and
// removed once they have stopped.
func (c *Controller) syncHealth() {
	if c.hm == nil {
		return
	}
	c.healthMu.Lock()
	defer c.healthMu.Unlock()
	c.mu.Lock()
	var targets []health.Target
	var paths []checkroute.Path
	for _, s := range c.services {
		for _, b := range s.backends {
			if b.check == nil {
				continue
			}
			targets = append(targets, health.Target{
				Spec: *b.check, Initial: b.initial,
				Subjects: []health.Subject{{Service: s.cfg.Name, Backend: b.label(s)}},
			})
			if b.check.Via.IsValid() {
				paths = append(paths, viaPath(b.check))
			}
		}
	}
	c.mu.Unlock()
	if c.routes != nil {
		c.noteRoutes(c.routes.Install(paths))
	}
	c.hm.Set(targets)
	if c.routes != nil {
		if err := c.routes.Prune(paths); err != nil {
			c.log.Warn("removing check routes", "err", err)
		}
	}
}

// retryRoutes installs again the check routes that failed.
func (c *Controller) retryRoutes() {
	c.mu.Lock()
	failing := c.routesErr != ""
	c.mu.Unlock()
	if failing && c.routes != nil {
		c.healthMu.Lock()
		defer c.healthMu.Unlock()
		c.noteRoutes(c.routes.Retry())
	}
}

// noteRoutes logs the check routes' problems when they change (one line
// each, at error level: such a check fails) and remembers them for
// retryRoutes.
func (c *Controller) noteRoutes(err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	c.mu.Lock()
	prev := c.routesErr
	c.routesErr = msg
	c.mu.Unlock()
	switch {
	case msg == prev:
	case err == nil:
		c.log.Info("check routes through the VIP in place")
	default:
		for _, e := range unjoin(err) {
			c.log.Error("check_via_vip: checks of this path fail until it is fixed", "err", e)
		}
	}
}

// unjoin is the errors of an errors.Join, or err alone.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func (b *backend) addrPort() netip.AddrPort { return netip.AddrPortFrom(b.address, b.port) }

func netipAddrPort(s config.Service) netip.AddrPort { return netip.AddrPortFrom(s.VIP, s.Port) }

// label is the backend's metric and log label: its address (and port for L7).
func (b *backend) label(s *service) string {
	if s.cfg.Mode == config.ModeL7 {
		return netip.AddrPortFrom(b.address, b.port).String()
	}
	return b.address.String()
}

// healthState reports the checker's verdict; unchecked backends are healthy.
func (c *Controller) healthState(b *backend) (health.State, bool) {
	if b.check == nil || c.hm == nil {
		return health.Healthy, false
	}
	st, ok := c.hm.State(*b.check)
	if !ok {
		return b.initial, true
	}
	return st, true
}

func (c *Controller) effective(b *backend) loader.State {
	if st, _ := c.healthState(b); st != health.Healthy {
		return loader.StateDown
	}
	if b.admin != AdminReady {
		return loader.StateDraining
	}
	return loader.StateUp
}

// desired is the datapath state: the caller holds c.mu.
func (c *Controller) desired() loader.Desired {
	d := loader.Desired{RingSize: c.cfg.Daemon.MaglevTableSize}
	for _, s := range c.services {
		spec := loader.ServiceSpec{
			Name: s.cfg.Name, VIP: s.cfg.VIP, Port: s.cfg.Port, Proto: s.cfg.Protocol.Number(), Kind: loader.KindL4,
		}
		if s.cfg.Mode == config.ModeL7 {
			spec.Kind = loader.KindL7
			if !s.cfg.VIP.IsUnspecified() {
				d.Services = append(d.Services, spec)
			}
			continue
		}
		if s.cfg.Hash == config.HashFlow {
			spec.Hash = loader.HashFlow
		}
		switch s.cfg.Forwarding {
		case config.ForwardIPIP:
			spec.Forwarding, spec.IPIPSource = loader.ForwardIPIP, s.cfg.IPIPSourcePrefix
		case config.ForwardNAT:
			spec.Forwarding, spec.NATSource = loader.ForwardNAT, s.cfg.NATSource
		}
		for _, b := range s.backends {
			spec.Backends = append(spec.Backends, loader.BackendSpec{
				Address: b.address, Weight: b.weight, State: c.effective(b), MAC: b.mac, Port: b.port,
			})
		}
		d.Services = append(d.Services, spec)
	}
	return d
}

func (c *Controller) reconcile(ctx context.Context) error {
	c.mu.Lock()
	d := c.desired()
	var l7cfg []l7.ServiceConfig
	if c.l7 != nil {
		l7cfg = c.l7Configs()
	}
	c.mu.Unlock()
	if c.l7 != nil {
		err := c.l7.Update(l7cfg)
		c.mu.Lock()
		c.l7Up = err == nil
		c.mu.Unlock()
		if err != nil {
			c.announce()
			return fmt.Errorf("L7 tier: %w", err)
		}
	}
	if c.rec != nil {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		ch, err := c.rec.Apply(actx, d)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.unresolved = len(ch.Unresolved) > 0
		c.mu.Unlock()
		if !ch.Empty() {
			c.log.Info("datapath reconciled",
				"services_added", ch.ServicesAdded, "services_removed", ch.ServicesRemoved,
				"backends_added", ch.BackendsAdded, "backends_updated", ch.BackendsUpdated,
				"backends_removed", ch.BackendsRemoved, "rings_swapped", ch.RingsSwapped)
		}
	}
	c.updateMetrics()
	c.announce()
	return nil
}

// Reload swaps in a new, already validated config as a difference. The L7
// tier takes it first: when it cannot (a listen address already in use),
// nothing changes and the error says why. Committing a config the L7 tier
// refused would make every later reconcile fail, freezing the L7 backends'
// health and admin states.
func (c *Controller) Reload(cfg *config.Config) error {
	c.mu.Lock()
	if c.cfg.Daemon != cfg.Daemon {
		c.log.Warn("reload: [daemon] changes need a restart; applying the rest")
		cfg.Daemon = c.cfg.Daemon
	}
	// Table sizes are fixed when the datapath loads; timeouts are a map.
	old, next := c.cfg.Datapath, cfg.Datapath
	if old.ConntrackSize != next.ConntrackSize || old.MaxBackends != next.MaxBackends {
		c.log.Warn("reload: [datapath] table sizes need a restart; applying the rest")
		cfg.Datapath.ConntrackSize, cfg.Datapath.MaxBackends = old.ConntrackSize, old.MaxBackends
	}
	// Every wanted L4 backend, admin-added ones included, holds an id of the
	// table loaded at start: accepting more would make every reconcile fail.
	services := buildServices(cfg, c.services)
	if n, limit := l4Backends(services), c.maxBackends(); n > limit {
		c.mu.Unlock()
		return fmt.Errorf("%w: the l4 services would have %d backends (admin-added ones included), the loaded table holds %d (datapath.max_backends; a larger one needs a restart)",
			ErrTooManyBackends, n, limit)
	}
	// Checked whenever nat is in use: the host's range may have moved.
	if usesNAT(cfg) || old.NATPorts != next.NATPorts {
		if err := c.setNATPorts(cfg); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	retimed := c.maps != nil && flowTimeouts(old) != flowTimeouts(next)
	if retimed {
		if err := c.maps.SetFlowTimeouts(flowTimeouts(next)); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	prevServices, prevCfg := c.services, c.cfg
	c.services = services
	c.assignMarks(c.services)
	c.cfg = cfg
	if c.l7 != nil {
		if err := c.l7.Update(c.l7Configs()); err != nil {
			c.services, c.cfg = prevServices, prevCfg
			if err := c.setNATPorts(prevCfg); err != nil {
				c.log.Error("reload refused, but the new nat_port_range stays", "err", err)
			}
			if retimed {
				if rerr := c.maps.SetFlowTimeouts(flowTimeouts(old)); rerr != nil {
					c.log.Error("reload refused, but the new flow timeouts stay", "err", rerr)
				}
			}
			c.mu.Unlock()
			return fmt.Errorf("L7 tier: %w", err)
		}
	}
	c.mu.Unlock()
	if retimed {
		c.log.Info("reload: flow idle timeouts changed", "tcp_syn", next.TCPSynTimeout.String(),
			"tcp_established", next.TCPEstablishedTimeout.String(), "tcp_closing", next.TCPClosingTimeout.String(),
			"udp", next.UDPTimeout.String())
	}
	c.reloadBGP(cfg.BGP)
	c.syncHealth()
	c.requestReconcile()
	c.log.Info("config reloaded", "services", len(cfg.Services))
	c.events.Add(EventReload, "", "", "config reloaded: %d services", len(cfg.Services))
	return nil
}

// Config returns the running config.
func (c *Controller) Config() *config.Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg
}

func (c *Controller) find(id string) (*service, *backend, int) {
	for _, s := range c.services {
		for i, b := range s.backends {
			if b.id == id {
				return s, b, i
			}
		}
	}
	return nil, nil, -1
}

// AddRequest adds a backend to a service.
type AddRequest struct {
	Service string `json:"service"`
	Address string `json:"address"`
	Port    uint16 `json:"port,omitempty"`
	Weight  *int   `json:"weight,omitempty"`
	MAC     string `json:"mac,omitempty"`
}

// AddBackend adds a backend (ready; health-checked like the service's others).
func (c *Controller) AddBackend(req AddRequest) (BackendInfo, error) {
	c.mu.Lock()
	var s *service
	for _, x := range c.services {
		if x.cfg.Name == req.Service {
			s = x
		}
	}
	if s == nil {
		c.mu.Unlock()
		return BackendInfo{}, fmt.Errorf("%w %q", ErrUnknownService, req.Service)
	}
	addr, err := netip.ParseAddr(strings.TrimSpace(req.Address))
	if err != nil {
		c.mu.Unlock()
		return BackendInfo{}, fmt.Errorf("%w: address %q is not an IP address", ErrBadRequest, req.Address)
	}
	addr = addr.Unmap()
	if addr.Is4() != s.cfg.VIP.Unmap().Is4() && !s.cfg.VIP.IsUnspecified() {
		c.mu.Unlock()
		return BackendInfo{}, fmt.Errorf("%w: address %s and the service's vip %s differ in family", ErrBadRequest, addr, s.cfg.VIP)
	}
	bc := config.Backend{Address: addr, Weight: 1, Port: req.Port}
	if req.Weight != nil {
		if *req.Weight < 0 || *req.Weight > config.MaxWeight {
			c.mu.Unlock()
			return BackendInfo{}, fmt.Errorf("%w: weight %d out of 0..%d", ErrBadRequest, *req.Weight, config.MaxWeight)
		}
		bc.Weight = uint32(*req.Weight)
	}
	if req.MAC != "" {
		if s.cfg.Mode != config.ModeL4 || s.cfg.Forwarding != config.ForwardDSR {
			c.mu.Unlock()
			return BackendInfo{}, fmt.Errorf("%w: mac applies to l4 services with dsr forwarding only (ipip and nat take the next hop from the kernel)", ErrBadRequest)
		}
		mac, err := net.ParseMAC(req.MAC)
		if err != nil || len(mac) != 6 {
			c.mu.Unlock()
			return BackendInfo{}, fmt.Errorf("%w: mac %q is not an Ethernet address", ErrBadRequest, req.MAC)
		}
		bc.MAC = mac
	}
	if req.Port != 0 && s.cfg.Mode == config.ModeL4 && s.cfg.Forwarding != config.ForwardNAT {
		c.mu.Unlock()
		return BackendInfo{}, fmt.Errorf("%w: port applies to l7 and nat services only (%s keeps the service port)", ErrBadRequest, s.cfg.Forwarding)
	}
	nb := newBackend(s.cfg, bc, false)
	if _, b, _ := c.find(nb.id); b != nil {
		c.mu.Unlock()
		return BackendInfo{}, fmt.Errorf("%w: %s", ErrExists, nb.id)
	}
	// Only L4 backends take datapath ids; L7 ones are not capped.
	if limit := c.maxBackends(); s.cfg.Mode == config.ModeL4 && l4Backends(c.services) >= limit {
		c.mu.Unlock()
		return BackendInfo{}, fmt.Errorf("%w: %w ([datapath] max_backends = %d)", ErrBadRequest, ErrTooManyBackends, limit)
	}
	s.backends = append(s.backends, nb)
	c.assignMark(nb)
	info := c.info(s, nb)
	c.mu.Unlock()
	c.log.Info("backend added through the admin API", "service", s.cfg.Name, "backend", nb.id)
	c.events.Add(EventAdmin, s.cfg.Name, nb.id, "added through the admin API")
	c.syncHealth()
	c.requestReconcile()
	return info, nil
}

// l4Backends counts the backends of every L4 service: each takes a datapath
// id (a backend being removed keeps its id, and its place here, until its
// flows end).
func l4Backends(services []*service) int {
	n := 0
	for _, s := range services {
		if s.cfg.Mode == config.ModeL4 {
			n += len(s.backends)
		}
	}
	return n
}

// maxBackends is how many L4 backends the datapath holds: the size of the
// backends table loaded at start, which a reload cannot change. The caller
// holds c.mu.
func (c *Controller) maxBackends() int {
	if c.maps != nil && c.maps.Backends != nil {
		return int(c.maps.Backends.MaxEntries())
	}
	return int(c.cfg.Datapath.MaxBackends)
}

// SetAdminState drains (AdminDraining) or readies (AdminReady) a backend.
func (c *Controller) SetAdminState(id string, st AdminState) (BackendInfo, error) {
	c.mu.Lock()
	s, b, _ := c.find(id)
	if b == nil {
		c.mu.Unlock()
		return BackendInfo{}, fmt.Errorf("%w %q", ErrUnknownBackend, id)
	}
	from := b.admin
	b.admin = st
	b.deadline = time.Time{}
	if st == AdminReady && s.cfg.Mode == config.ModeL7 && c.l7 != nil {
		// Ready also ends a passive-health ejection: the operator vouches.
		if u := c.l7.Upstream(s.cfg.Name, b.id); u != nil {
			u.Readmit()
		}
	}
	info := c.info(s, b)
	c.mu.Unlock()
	if from != st {
		c.log.Info("backend admin state changed", "backend", id, "from", string(from), "to", string(st))
		c.events.Add(EventAdmin, s.cfg.Name, id, "admin %s → %s", from, st)
	}
	c.requestReconcile()
	return info, nil
}

// Remove drains a backend and removes it once its flows have ended (L4: no
// open connection table entry) or after the drain timeout.
func (c *Controller) Remove(id string) (BackendInfo, error) {
	c.mu.Lock()
	s, b, _ := c.find(id)
	if b == nil {
		c.mu.Unlock()
		return BackendInfo{}, fmt.Errorf("%w %q", ErrUnknownBackend, id)
	}
	b.admin = AdminRemoving
	b.deadline = time.Now().Add(c.cfg.Admin.DrainTimeout)
	info := c.info(s, b)
	c.mu.Unlock()
	c.log.Info("backend removal started: draining", "backend", id, "drain_timeout", c.cfg.Admin.DrainTimeout.String())
	c.events.Add(EventAdmin, s.cfg.Name, id, "removal started: draining (at most %s)", c.cfg.Admin.DrainTimeout)
	c.requestReconcile()
	return info, nil
}

// finishRemovals drops backends whose drain is over; reports whether any was.
// The connection table is walked without c.mu (a large one takes seconds),
// so the admin API and health changes go on meanwhile; a backend whose state
// changed during the walk is looked at again at the next poll.
func (c *Controller) finishRemovals() bool {
	c.mu.Lock()
	removing := false
	for _, s := range c.services {
		for _, b := range s.backends {
			removing = removing || b.admin == AdminRemoving
		}
	}
	if !removing {
		c.mu.Unlock()
		return false
	}
	q := c.flowQuery()
	c.mu.Unlock()
	flows := c.countFlows(q)

	c.mu.Lock()
	defer c.mu.Unlock()
	removed := false
	for _, s := range c.services {
		kept := s.backends[:0]
		for _, b := range s.backends {
			n := flows[b.id]
			if b.admin != AdminRemoving || q.backends[b.id] != b ||
				n > 0 && time.Now().Before(b.deadline) {
				kept = append(kept, b)
				continue
			}
			reason := "flows ended"
			if n > 0 {
				reason = fmt.Sprintf("drain timeout with %d open flows", n)
			}
			c.log.Info("backend removed", "backend", b.id, "reason", reason)
			c.events.Add(EventAdmin, s.cfg.Name, b.id, "removed: %s", reason)
			removed = true
		}
		s.backends = kept
	}
	return removed
}

// flowQuery is what counting open flows needs of the backends, copied under
// c.mu: L7 requests in flight (counters read at once), and the datapath ids
// of the L4 backends.
type flowQuery struct {
	l7       map[string]int      // backend id: requests in flight
	l4       map[string]uint32   // backend id: datapath id
	backends map[string]*backend // the backends queried, by id
}

// flowQuery: the caller holds c.mu.
func (c *Controller) flowQuery() flowQuery {
	q := flowQuery{l7: map[string]int{}, l4: map[string]uint32{}, backends: map[string]*backend{}}
	for _, s := range c.services {
		for _, b := range s.backends {
			q.backends[b.id] = b
		}
		if s.cfg.Mode == config.ModeL7 {
			for _, b := range s.backends {
				q.l7[b.id] = c.inFlight(s, b)
			}
			continue
		}
		if c.rec == nil {
			continue
		}
		sid, ok := c.rec.ServiceID(s.cfg.VIP, s.cfg.Port, s.cfg.Protocol.Number())
		if !ok {
			continue
		}
		for _, b := range s.backends {
			if id, ok := c.rec.BackendID(sid, b.address); ok {
				q.l4[b.id] = id
			}
		}
	}
	return q
}

// countFlows counts what a removal waits for, per backend id: open L4 flows
// (one walk of the connection table: call it without c.mu) and L7 requests
// in flight.
func (c *Controller) countFlows(q flowQuery) map[string]int {
	out := make(map[string]int, len(q.l7)+len(q.l4))
	for id, n := range q.l7 {
		out[id] = n
	}
	if len(q.l4) == 0 || c.openFlows == nil {
		return out
	}
	byDatapath, err := c.openFlows()
	if err != nil {
		c.log.Warn("reading the connection table", "err", err)
		return out
	}
	for id, dp := range q.l4 {
		out[id] = byDatapath[dp]
	}
	return out
}

package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
)

// opTimeout bounds each call into GoBGP.
const opTimeout = 10 * time.Second

// Options configure New.
type Options struct {
	Logger *slog.Logger
}

// Speaker is a BGP speaker announcing a set of host prefixes to its peers.
// Its methods are safe for concurrent use.
type Speaker struct {
	log *slog.Logger

	mu        sync.Mutex
	srv       *server.BgpServer
	cfg       Config
	attrs     attrs
	peers     map[netip.Addr]peerKey
	announced map[netip.Prefix]bool
	stopWatch context.CancelFunc
	closed    bool
	sessions  *sessions
}

// New starts a speaker with cfg's peers and nothing announced.
func New(cfg Config, o Options) (*Speaker, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Speaker{log: o.Logger, announced: map[netip.Prefix]bool{}, sessions: newSessions(o.Logger)}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := s.start(ctx, cfg); err != nil {
		s.stop()
		return nil, err
	}
	s.log.Info("bgp speaker started", "asn", cfg.LocalASN, "router_id", cfg.RouterID.String(),
		"peers", len(cfg.Peers), "listen_port", cfg.ListenPort)
	return s, nil
}

// acceptLocal is the policy that keeps the speaker an originator: only its
// own paths enter the RIB and leave it.
const acceptLocal = "xlb-local-only"

// start runs a new GoBGP server for cfg and announces s.announced; the
// caller holds s.mu or owns s.
func (s *Speaker) start(ctx context.Context, cfg Config) error {
	s.srv = server.NewBgpServer(server.LoggerOption(slogger{s.log.With("component", "gobgp")}))
	go s.srv.Serve()
	err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: cfg.LocalASN, RouterId: cfg.RouterID.String(), ListenPort: cfg.ListenPort,
	}})
	if err != nil {
		return fmt.Errorf("bgp: start: %w", err)
	}
	if err := s.localOnly(ctx); err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(context.Background())
	s.stopWatch = cancel
	if err := s.srv.WatchEvent(wctx, &api.WatchEventRequest{Peer: &api.WatchEventRequest_Peer{}}, s.sessions.event); err != nil {
		return fmt.Errorf("bgp: watch sessions: %w", err)
	}
	s.cfg, s.attrs, s.peers = cfg, cfg.attrs(), map[netip.Addr]peerKey{}
	for addr, k := range cfg.peerKeys() {
		if err := s.addPeer(ctx, k); err != nil {
			return err
		}
		s.peers[addr] = k
	}
	for p := range s.announced {
		if err := s.addPath(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

func (s *Speaker) localOnly(ctx context.Context) error {
	err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: &api.Policy{
		Name: acceptLocal,
		Statements: []*api.Statement{{
			Name:       acceptLocal + "-accept",
			Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
			Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT},
		}},
	}})
	if err != nil {
		return fmt.Errorf("bgp: policy: %w", err)
	}
	for _, dir := range []api.PolicyDirection{api.PolicyDirection_IMPORT, api.PolicyDirection_EXPORT} {
		err := s.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
			Name: "global", Direction: dir, Policies: []*api.Policy{{Name: acceptLocal}},
			DefaultAction: api.RouteAction_REJECT,
		}})
		if err != nil {
			return fmt.Errorf("bgp: policy assignment: %w", err)
		}
	}
	return nil
}

// stop ends the GoBGP server: every session gets a Cease.
func (s *Speaker) stop() {
	if s.stopWatch != nil {
		s.stopWatch()
		s.stopWatch = nil
	}
	if s.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		s.srv.StopBgp(ctx, &api.StopBgpRequest{})
		s.srv = nil
	}
}

func (s *Speaker) addPeer(ctx context.Context, k peerKey) error {
	fam := familyV4
	if k.addr.Is6() {
		fam = familyV6
	}
	hold := uint64(k.hold / time.Second)
	err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: k.addr.String(), PeerAsn: k.asn, AuthPassword: k.password},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime: hold, KeepaliveInterval: hold / 3,
			ConnectRetry:           uint64(connectRetry / time.Second),
			IdleHoldTimeAfterReset: uint64(idleHoldAfterReset / time.Second),
		}},
		Transport: &api.Transport{RemotePort: uint32(k.port)},
		AfiSafis:  []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: fam, Enabled: true}}},
	}})
	if err != nil {
		return fmt.Errorf("bgp: add peer %v: %w", k.addr, err)
	}
	s.sessions.configured(k.addr, k.asn)
	return nil
}

func (s *Speaker) deletePeer(ctx context.Context, addr netip.Addr) error {
	err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()})
	if err != nil {
		return fmt.Errorf("bgp: delete peer %v: %w", addr, err)
	}
	s.sessions.removed(addr)
	return nil
}

// Reconfigure applies cfg as a difference (see the package doc): sessions of
// unchanged peers stay up. On an error the speaker runs what it could apply.
func (s *Speaker) Reconfigure(cfg Config) error {
	if err := cfg.check(); err != nil {
		return err
	}
	return s.locked(func(ctx context.Context) error { return s.reconfigure(ctx, cfg) })
}

// reconfigure is Reconfigure under s.mu.
func (s *Speaker) reconfigure(ctx context.Context, cfg Config) error {
	if cfg.global() != s.cfg.global() {
		s.log.Warn("bgp: local ASN, router id or listen port changed: restarting the speaker (every session restarts)")
		s.stop()
		return s.start(ctx, cfg)
	}
	var errs []error
	want := cfg.peerKeys()
	for addr, k := range s.peers {
		if nk, ok := want[addr]; ok && nk == k {
			continue
		}
		if err := s.deletePeer(ctx, addr); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(s.peers, addr)
		if _, ok := want[addr]; ok {
			s.log.Info("bgp: peer changed, its session restarts", "peer", addr.String())
		} else {
			s.log.Info("bgp: peer removed", "peer", addr.String())
		}
	}
	for addr, k := range want {
		if _, ok := s.peers[addr]; ok {
			continue
		}
		if err := s.addPeer(ctx, k); err != nil {
			errs = append(errs, err)
			continue
		}
		s.peers[addr] = k
	}
	at := cfg.attrs()
	changed := at != s.attrs
	s.cfg, s.attrs = cfg, at
	if changed {
		s.log.Info("bgp: next hop or communities changed: announcing again", "prefixes", len(s.announced))
		for p := range s.announced {
			if err := s.addPath(ctx, p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Announce makes prefixes (each /32 or /128) the announced set: new ones
// are announced, those no longer in it withdrawn. A bad prefix changes
// nothing.
func (s *Speaker) Announce(prefixes []netip.Prefix) error {
	want := make(map[netip.Prefix]bool, len(prefixes))
	for _, p := range prefixes {
		hp, err := hostPrefix(p)
		if err != nil {
			return err
		}
		want[hp] = true
	}
	return s.locked(func(ctx context.Context) error { return s.announce(ctx, want) })
}

// announce is Announce under s.mu.
func (s *Speaker) announce(ctx context.Context, want map[netip.Prefix]bool) error {
	var errs []error
	for p := range s.announced {
		if want[p] {
			continue
		}
		if err := s.deletePath(ctx, p); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(s.announced, p)
		s.log.Info("bgp: prefix withdrawn", "prefix", p.String())
	}
	for p := range want {
		if s.announced[p] {
			continue
		}
		if err := s.addPath(ctx, p); err != nil {
			errs = append(errs, err)
			continue
		}
		s.announced[p] = true
		s.log.Info("bgp: prefix announced", "prefix", p.String())
	}
	return errors.Join(errs...)
}

// locked runs fn under s.mu, with a bounded context, unless s is closed.
func (s *Speaker) locked(fn func(ctx context.Context) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return fn(ctx)
}

// Announced is the announced set, sorted.
func (s *Speaker) Announced() []netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.announcedLocked()
}

func (s *Speaker) announcedLocked() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(s.announced))
	for p := range s.announced {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// Close ends every session (a Cease notification each: routers withdraw
// the routes at once). Withdraw first (Announce(nil)) and wait for a
// graceful exit.
func (s *Speaker) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.stop()
	s.log.Info("bgp speaker stopped")
	return nil
}

package bgp

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// Session states, as Status reports them (RFC 4271's FSM states).
const (
	StateIdle        = "idle"
	StateConnect     = "connect"
	StateActive      = "active"
	StateOpenSent    = "opensent"
	StateOpenConfirm = "openconfirm"
	StateEstablished = "established"
)

// PeerStatus is one peer's session.
type PeerStatus struct {
	Address string `json:"address"`
	ASN     uint32 `json:"asn"`
	State   string `json:"state"`
	Up      bool   `json:"up"`
	// Since is when the session came up (Up) or went down.
	Since        *time.Time `json:"since,omitempty"`
	LocalAddress string     `json:"local_address,omitempty"`
	// Advertised is how many prefixes the peer has been sent.
	Advertised uint64 `json:"advertised"`
}

// Status is the speaker's state: its peers' sessions and what it announces.
type Status struct {
	LocalASN  uint32         `json:"local_asn"`
	RouterID  string         `json:"router_id"`
	Peers     []PeerStatus   `json:"peers"`
	Announced []netip.Prefix `json:"announced"`
}

// Status reports every configured peer, in address order, and the
// announced prefixes.
func (s *Speaker) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{LocalASN: s.cfg.LocalASN, RouterID: s.cfg.RouterID.String(), Announced: s.announcedLocked(), Peers: []PeerStatus{}}
	byAddr := map[netip.Addr]PeerStatus{}
	for addr, k := range s.peers {
		byAddr[addr] = PeerStatus{Address: addr.String(), ASN: k.asn, State: StateIdle}
	}
	if s.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		s.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
			addr, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
			if err != nil {
				return
			}
			ps, ok := byAddr[addr.Unmap()]
			if !ok {
				return
			}
			ps.State = sessionState(p.GetState().GetSessionState())
			ps.Up = ps.State == StateEstablished
			ps.LocalAddress = p.GetTransport().GetLocalAddress()
			ts := p.GetTimers().GetState()
			if at := ts.GetUptime(); ps.Up && at != nil {
				t := at.AsTime()
				ps.Since = &t
			} else if at := ts.GetDowntime(); !ps.Up && at != nil && at.AsTime().Unix() > 0 {
				t := at.AsTime()
				ps.Since = &t
			}
			for _, af := range p.GetAfiSafis() {
				ps.Advertised += af.GetState().GetAdvertised()
			}
			byAddr[addr.Unmap()] = ps
		})
	}
	for _, ps := range byAddr {
		st.Peers = append(st.Peers, ps)
	}
	slices.SortFunc(st.Peers, func(a, b PeerStatus) int {
		return netip.MustParseAddr(a.Address).Compare(netip.MustParseAddr(b.Address))
	})
	return st
}

func sessionState(s api.PeerState_SessionState) string {
	if s == api.PeerState_UNKNOWN {
		return StateIdle
	}
	return strings.ToLower(s.String())
}

// sessions logs each session's changes into and out of established, as
// GoBGP's peer events report them.
type sessions struct {
	log  *slog.Logger
	mu   sync.Mutex
	asn  map[netip.Addr]uint32
	last map[netip.Addr]string
}

func newSessions(log *slog.Logger) *sessions {
	return &sessions{log: log, asn: map[netip.Addr]uint32{}, last: map[netip.Addr]string{}}
}

func (ss *sessions) configured(addr netip.Addr, asn uint32) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.asn[addr] = asn
}

func (ss *sessions) removed(addr netip.Addr) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.asn, addr)
	delete(ss.last, addr)
}

func (ss *sessions) event(r *api.WatchEventResponse) {
	pe := r.GetPeer()
	if pe == nil || pe.GetType() != api.WatchEventResponse_PeerEvent_STATE {
		return
	}
	p := pe.GetPeer()
	addr, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
	if err != nil {
		return
	}
	addr = addr.Unmap()
	state := sessionState(p.GetState().GetSessionState())
	ss.mu.Lock()
	prev, known := ss.last[addr]
	ss.last[addr] = state
	asn := ss.asn[addr]
	ss.mu.Unlock()
	switch {
	case state == StateEstablished && prev != StateEstablished:
		ss.log.Info("bgp session up", "peer", addr.String(), "asn", asn, "local_address", p.GetTransport().GetLocalAddress())
	case state != StateEstablished && prev == StateEstablished:
		ss.log.Warn("bgp session down", "peer", addr.String(), "asn", asn, "state", state)
	case !known || prev != state:
		ss.log.Debug("bgp session state", "peer", addr.String(), "state", state)
	}
}

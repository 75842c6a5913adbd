package control

import (
	"net/netip"
	"slices"
	"time"

	"github.com/xlb-dev/xlb/bgp"
	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/loader"
)

// Announcer announces the VIPs to routers; *bgp.Speaker implements it.
type Announcer interface {
	Announce(prefixes []netip.Prefix) error
	Reconfigure(cfg bgp.Config) error
	Status() bgp.Status
	Close() error
}

var _ Announcer = (*bgp.Speaker)(nil)

// NodeState is what the admin API asked of the whole node.
type NodeState string

const (
	// NodeReady: every VIP with a usable backend is announced.
	NodeReady NodeState = "ready"
	// NodeDraining: every VIP is withdrawn, so routers send new flows to
	// the other nodes; packets that still arrive are forwarded as before.
	NodeDraining NodeState = "draining"
)

// NodeInfo is the node's state as the admin API shows it.
type NodeInfo struct {
	State NodeState `json:"state"`
	// BGP is the speaker's sessions and announced prefixes; nil without
	// a [bgp] table.
	BGP *bgp.Status `json:"bgp,omitempty"`
	// Withheld are the VIPs not announced although BGP runs: no usable
	// backend (or the node drains).
	Withheld []netip.Prefix `json:"withheld,omitempty"`
}

// speakerConfig is the bgp.Config of a [bgp] table.
func speakerConfig(b *config.BGP) bgp.Config {
	sc := bgp.Config{
		LocalASN: b.LocalASN, RouterID: b.RouterID, ListenPort: b.ListenPort, HoldTime: b.HoldTime,
		NextHop4: b.NextHop4, NextHop6: b.NextHop6, Communities: slices.Clone(b.Communities),
	}
	for _, p := range b.Peers {
		sc.Peers = append(sc.Peers, bgp.Peer{Address: p.Address, ASN: p.ASN, Port: p.Port, Password: p.Password, HoldTime: p.HoldTime})
	}
	return sc
}

// newSpeaker starts a GoBGP speaker (Options.NewAnnouncer's default).
func (c *Controller) newSpeaker(cfg bgp.Config) (Announcer, error) {
	return bgp.New(cfg, bgp.Options{Logger: c.log})
}

// startBGP starts the announcer of cfg's [bgp] table, if any.
func (c *Controller) startBGP(cfg *config.Config) error {
	if cfg.BGP == nil || c.bgp != nil {
		return nil
	}
	a, err := c.newAnnouncer(speakerConfig(cfg.BGP))
	if err != nil {
		return err
	}
	c.bgpMu.Lock()
	c.bgp = a
	c.bgpMu.Unlock()
	return nil
}

// reloadBGP applies a new [bgp] table: started, reconfigured (unchanged
// sessions stay up) or, when the table is gone, withdrawn and stopped.
func (c *Controller) reloadBGP(next *config.BGP) {
	c.bgpMu.Lock()
	a := c.bgp
	c.bgpMu.Unlock()
	switch {
	case next == nil && a != nil:
		c.log.Info("reload: [bgp] removed: withdrawing every VIP and stopping the speaker")
		if err := a.Announce(nil); err != nil {
			c.log.Error("bgp: withdrawing", "err", err)
		}
		a.Close()
		c.bgpMu.Lock()
		c.bgp = nil
		c.bgpMu.Unlock()
	case next != nil && a == nil:
		c.log.Info("reload: [bgp] added: starting the speaker")
		na, err := c.newAnnouncer(speakerConfig(next))
		if err != nil {
			c.log.Error("bgp: the speaker did not start; reload again to retry", "err", err)
			return
		}
		c.bgpMu.Lock()
		c.bgp = na
		c.bgpMu.Unlock()
	case next != nil:
		if err := a.Reconfigure(speakerConfig(next)); err != nil {
			c.log.Error("bgp: reconfiguring", "err", err)
		}
	}
}

// usableL4: the datapath forwards new or established flows to b (up or
// draining, resolved); the caller holds c.mu.
func (c *Controller) usableL4(s *service, b *backend) bool {
	if c.rec == nil {
		return false // no datapath: L4 services are not served
	}
	if st := c.effective(b); st != loader.StateUp && st != loader.StateDraining {
		return false
	}
	if sid, ok := c.rec.ServiceID(s.cfg.VIP, s.cfg.Port, s.cfg.Protocol.Number()); ok {
		if _, st, ok := c.rec.BackendState(sid, b.address); ok && st == loader.StateUnresolved {
			return false
		}
	}
	return true
}

// announcements are the VIPs to announce and those withheld: a VIP is
// announced while one of its services can serve (an L4 service with a
// usable backend, an L7 service whose listener is up) and the node is not
// drained. The caller holds c.mu.
func (c *Controller) announcements() (announce, withheld []netip.Prefix) {
	serving := map[netip.Prefix]bool{}
	for _, s := range c.services {
		if !s.cfg.VIP.IsValid() || s.cfg.VIP.IsUnspecified() {
			continue
		}
		p := netip.PrefixFrom(s.cfg.VIP, s.cfg.VIP.BitLen())
		ok := false
		if s.cfg.Mode == config.ModeL7 {
			ok = c.l7Up
		} else {
			for _, b := range s.backends {
				ok = ok || c.usableL4(s, b)
			}
		}
		serving[p] = serving[p] || ok
	}
	for p, ok := range serving {
		if ok && c.node == NodeReady {
			announce = append(announce, p)
		} else {
			withheld = append(withheld, p)
		}
	}
	byAddr := func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) }
	slices.SortFunc(announce, byAddr)
	slices.SortFunc(withheld, byAddr)
	return announce, withheld
}

// announce hands the current announcements to the speaker.
func (c *Controller) announce() {
	c.bgpMu.Lock()
	defer c.bgpMu.Unlock()
	if c.bgp == nil {
		return
	}
	c.mu.Lock()
	want, _ := c.announcements()
	c.mu.Unlock()
	if err := c.bgp.Announce(want); err != nil {
		c.log.Error("bgp: announcing", "err", err)
	}
}

// Node reports the node's state, BGP sessions and announcements.
func (c *Controller) Node() NodeInfo {
	c.mu.Lock()
	info := NodeInfo{State: c.node}
	_, info.Withheld = c.announcements()
	c.mu.Unlock()
	c.bgpMu.Lock()
	a := c.bgp
	c.bgpMu.Unlock()
	if a != nil {
		st := a.Status()
		info.BGP = &st
	} else {
		info.Withheld = nil
	}
	return info
}

// BGPStatus is the speaker's status, nil without [bgp] (for metrics).
func (c *Controller) BGPStatus() *bgp.Status {
	c.bgpMu.Lock()
	a := c.bgp
	c.bgpMu.Unlock()
	if a == nil {
		return nil
	}
	st := a.Status()
	return &st
}

// SetNodeState drains the node (every VIP withdrawn, forwarding goes on)
// or readies it (the VIPs with a usable backend announced again), before
// it returns.
func (c *Controller) SetNodeState(st NodeState) (NodeInfo, error) {
	if st != NodeReady && st != NodeDraining {
		return NodeInfo{}, ErrBadRequest
	}
	c.mu.Lock()
	from := c.node
	c.node = st
	c.mu.Unlock()
	if from != st {
		c.log.Info("node state changed", "from", string(from), "to", string(st))
		c.events.Add(EventAdmin, "", "", "node %s → %s", from, st)
	}
	c.announce()
	return c.Node(), nil
}

// StopBGP withdraws every VIP, waits grace so that routers move the
// traffic to the other nodes while this one still forwards, and closes the
// sessions. Call it once Run has returned, before the datapath goes.
func (c *Controller) StopBGP(grace time.Duration) {
	c.bgpMu.Lock()
	a := c.bgp
	c.bgp = nil
	c.bgpMu.Unlock()
	if a == nil {
		return
	}
	if err := a.Announce(nil); err != nil {
		c.log.Error("bgp: withdrawing", "err", err)
	}
	c.log.Info("bgp: every VIP withdrawn; forwarding while routers move the traffic", "shutdown_grace", grace.String())
	time.Sleep(grace)
	a.Close()
}

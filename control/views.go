package control

import (
	"fmt"
	"time"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/health"
	"github.com/xlb-dev/xlb/l7"
	"github.com/xlb-dev/xlb/loader"
)

// BackendInfo is a backend as the admin API shows it.
type BackendInfo struct {
	ID      string `json:"id"`
	Service string `json:"service"`
	Address string `json:"address"`
	Port    uint16 `json:"port,omitempty"`
	Weight  uint32 `json:"weight"`
	// State is what the datapath does with it: up, draining, down, unresolved.
	State string `json:"state"`
	// Health is the checker's verdict: healthy, unhealthy, or unchecked.
	Health string `json:"health"`
	// Check is the health check as the logs name it ("http
	// 198.18.0.12:80/health"; through the VIP, "http 198.19.0.10:80/health
	// via 198.18.0.12"), and CheckVia which way it goes: "address" (the
	// backend's own) or "vip" (check_via_vip). Both empty when unchecked.
	Check    string `json:"check,omitempty"`
	CheckVia string `json:"check_via,omitempty"`
	// Admin is what the admin API asked: ready, draining, removing.
	Admin      string `json:"admin"`
	FromConfig bool   `json:"from_config"`
	// EjectedUntil: passive health took an L7 backend out until then.
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
	// L4: open connection table flows and datapath counters. L7: requests
	// in flight (open_flows) and requests served (packets).
	OpenFlows int    `json:"open_flows"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
	NewFlows  uint64 `json:"new_flows"`
}

// info describes b; the caller holds c.mu.
func (c *Controller) info(s *service, b *backend) BackendInfo {
	return c.infoWith(s, b, nil)
}

func (c *Controller) infoWith(s *service, b *backend, flows map[string]int) BackendInfo {
	bi := BackendInfo{
		ID: b.id, Service: s.cfg.Name, Address: b.address.String(), Weight: b.weight,
		Admin: string(b.admin), FromConfig: b.fromConfig, State: c.effective(b).String(),
		Health: "unchecked",
	}
	if s.cfg.Mode == config.ModeL7 {
		bi.Port = b.port
	}
	if st, checked := c.healthState(b); checked {
		bi.Health = st.String()
		bi.Check, bi.CheckVia = b.check.String(), "address"
		if b.check.Via.IsValid() {
			bi.CheckVia = "vip"
		}
	}
	if s.cfg.Mode == config.ModeL4 && c.rec != nil {
		if sid, ok := c.rec.ServiceID(s.cfg.VIP, s.cfg.Port, s.cfg.Protocol.Number()); ok {
			if id, st, ok := c.rec.BackendState(sid, b.address); ok {
				if st == loader.StateUnresolved {
					bi.State = st.String()
				}
				if cnt, err := c.maps.BackendCounters(id); err == nil {
					bi.Packets, bi.Bytes, bi.NewFlows = cnt.Packets, cnt.Bytes, cnt.NewFlows
				}
			}
		}
	}
	bi.OpenFlows = flows[b.id]
	if s.cfg.Mode == config.ModeL7 && c.l7 != nil {
		if u := c.l7.Upstream(s.cfg.Name, b.id); u != nil {
			bi.Packets = u.Requests.Load() // requests, for L7
			if until := u.EjectedUntil(); time.Now().Before(until) {
				bi.State = stateEjected
				bi.EjectedUntil = &until
			}
		}
	}
	return bi
}

// Backends lists every backend of every service (or of one).
func (c *Controller) Backends(serviceName string) ([]BackendInfo, error) {
	// The connection table is walked without c.mu: see finishRemovals.
	c.mu.Lock()
	q := c.flowQuery()
	c.mu.Unlock()
	flows := c.countFlows(q)
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []BackendInfo
	found := serviceName == ""
	for _, s := range c.services {
		if serviceName != "" && s.cfg.Name != serviceName {
			continue
		}
		found = true
		for _, b := range s.backends {
			out = append(out, c.infoWith(s, b, flows))
		}
	}
	if !found {
		return nil, fmt.Errorf("%w %q", ErrUnknownService, serviceName)
	}
	return out, nil
}

// HealthReport is the /lb/health answer; the L7 listeners answer the same shape.
type HealthReport = l7.HealthReport

// ServiceHealth is one service's part of the report.
type ServiceHealth = l7.ServiceHealth

func status(healthy, total int) string {
	switch {
	case total > 0 && healthy == total:
		return "healthy"
	case healthy == 0:
		return "unhealthy"
	}
	return "degraded"
}

// Health reports the whole balancer, or one service when name is set. A
// backend counts as healthy when it passes its checks and the datapath can
// reach it (drained ones still count: they are healthy, just not taking new
// flows). Overall status: healthy when every service is, unhealthy when no
// service has a healthy backend, degraded otherwise.
func (c *Controller) Health(name string) (HealthReport, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var rep HealthReport
	worst, best := "healthy", "unhealthy"
	for _, s := range c.services {
		if name != "" && s.cfg.Name != name {
			continue
		}
		sh := ServiceHealth{Name: s.cfg.Name, TotalBackends: len(s.backends)}
		for _, b := range s.backends {
			if c.reachable(s, b) {
				sh.HealthyBackends++
			}
		}
		sh.Status = status(sh.HealthyBackends, sh.TotalBackends)
		rep.Services = append(rep.Services, sh)
		rep.HealthyBackends += sh.HealthyBackends
		rep.TotalBackends += sh.TotalBackends
		if sh.Status != "healthy" {
			worst = "degraded"
		}
		if sh.Status != "unhealthy" {
			best = "healthy"
		}
	}
	if name != "" && len(rep.Services) == 0 {
		return rep, fmt.Errorf("%w %q", ErrUnknownService, name)
	}
	rep.Status = worst
	if best == "unhealthy" && len(rep.Services) > 0 {
		rep.Status = "unhealthy"
	}
	if name != "" {
		rep.Status = rep.Services[0].Status
	}
	return rep, nil
}

// reachable: passes checks, is not unresolved and, for L7, not ejected by
// passive health (as the listeners' /lb/health counts it); the caller
// holds c.mu.
func (c *Controller) reachable(s *service, b *backend) bool {
	if st, _ := c.healthState(b); st != health.Healthy {
		return false
	}
	if s.cfg.Mode == config.ModeL7 && c.l7 != nil {
		if u := c.l7.Upstream(s.cfg.Name, b.id); u != nil && u.Ejected(time.Now()) {
			return false
		}
	}
	if s.cfg.Mode == config.ModeL4 && c.rec != nil {
		if sid, ok := c.rec.ServiceID(s.cfg.VIP, s.cfg.Port, s.cfg.Protocol.Number()); ok {
			if _, st, ok := c.rec.BackendState(sid, b.address); ok && st == loader.StateUnresolved {
				return false
			}
		}
	}
	return true
}

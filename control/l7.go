package control

import (
	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/l7"
	"github.com/xlb-dev/xlb/loader"
)

// L7 is the HTTP tier the controller keeps in step; *l7.Server implements it.
type L7 interface {
	Update(services []l7.ServiceConfig) error
	Upstream(service, id string) *l7.Upstream
}

var _ L7 = (*l7.Server)(nil)

func l7State(s loader.State) l7.State {
	switch s {
	case loader.StateUp:
		return l7.StateUp
	case loader.StateDraining:
		return l7.StateDraining
	}
	return l7.StateDown
}

// l7Configs is the L7 tier's desired state; the caller holds c.mu.
func (c *Controller) l7Configs() []l7.ServiceConfig {
	var out []l7.ServiceConfig
	for _, s := range c.services {
		if s.cfg.Mode != config.ModeL7 {
			continue
		}
		sc := s.cfg
		h := sc.Headers
		cfg := l7.ServiceConfig{
			Name:                  sc.Name,
			Listen:                netipAddrPort(sc),
			Hosts:                 sc.Hosts,
			PathPrefix:            sc.PathPrefix,
			Policy:                string(sc.Algorithm),
			MaxInFlight:           int64(sc.MaxInFlight),
			MaglevSize:            c.cfg.Daemon.MaglevTableSize,
			ConnectTimeout:        sc.ConnectTimeout,
			ResponseHeaderTimeout: sc.ResponseHeaderTimeout,
			RequestTimeout:        sc.RequestTimeout,
			RetryIdempotent:       sc.RetryIdempotent,
			LBEndpoints:           sc.LBEndpoints,
			Passive: l7.PassiveConfig{
				MaxFails: sc.PassiveHealth.MaxFails, BaseEjection: sc.PassiveHealth.Ejection,
				MaxEjection: sc.PassiveHealth.MaxEjection,
			},
			Headers: l7.HeaderRules{
				RequestAdd: h.RequestAdd, RequestSet: h.RequestSet, RequestRemove: h.RequestRemove,
				ResponseAdd: h.ResponseAdd, ResponseSet: h.ResponseSet, ResponseRemove: h.ResponseRemove,
				Forwarded: h.Forwarded, XTimestamp: h.XTimestamp, TrustedProxies: h.TrustedProxies,
				ProxyHeader: h.ProxyHeader, ProxyHeaderValue: h.ProxyHeaderValue,
				ResponseTimeHeader: h.ResponseTimeHeader,
			},
		}
		if sc.Sticky != nil {
			cfg.Sticky = &l7.StickyConfig{Cookie: sc.Sticky.Cookie, TTL: sc.Sticky.TTL}
		}
		for _, b := range s.backends {
			cfg.Backends = append(cfg.Backends, l7.BackendConfig{
				ID: b.id, Addr: b.addrPort(), Weight: int(b.weight), State: l7State(c.effective(b)),
			})
		}
		out = append(out, cfg)
	}
	return out
}

// inFlight is an L7 backend's open requests (what its removal waits for).
func (c *Controller) inFlight(s *service, b *backend) int {
	if c.l7 == nil {
		return 0
	}
	if u := c.l7.Upstream(s.cfg.Name, b.id); u != nil {
		return int(u.InFlight.Load())
	}
	return 0
}

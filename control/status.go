package control

import (
	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/loader"
)

// ServiceSummary is a service as the status page lists it: what it is,
// not how it is tuned (the config's other keys stay behind the admin
// token, GET /lb/admin/config).
type ServiceSummary struct {
	Name     string `json:"name"`
	VIP      string `json:"vip"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	Mode     string `json:"mode"`
	// Policy is how a backend is picked: hash and forwarding (L4), the
	// algorithm (L7).
	Policy string `json:"policy"`
}

// Services summarizes the running config's services, in its order.
func (c *Controller) Services() []ServiceSummary {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]ServiceSummary, 0, len(c.services))
	for _, s := range c.services {
		sc := s.cfg
		sum := ServiceSummary{
			Name: sc.Name, VIP: sc.VIP.String(), Port: sc.Port, Protocol: string(sc.Protocol), Mode: string(sc.Mode),
			Policy: string(sc.Algorithm),
		}
		if sc.Mode == config.ModeL4 {
			sum.Policy = string(sc.Hash) + ", " + string(sc.Forwarding)
		}
		out = append(out, sum)
	}
	return out
}

// Datapath reads the XDP datapath's maps as `xlb status` does (services,
// backends with their Maglev share, counters, verdicts); nil without a
// datapath. It walks the connection table (open flows).
func (c *Controller) Datapath() (*loader.Snapshot, error) {
	if c.maps == nil {
		return nil, nil
	}
	return c.maps.TakeSnapshot()
}

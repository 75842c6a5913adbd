package control

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/loader"
)

// A service's forwarding and ipip_source_prefix reach the datapath's
// desired state; dsr stays the default.
func TestDesiredForwarding(t *testing.T) {
	cfg, err := config.Parse([]byte(`
[health_check]
enabled = false

[[service]]
name = "dsr"
vip = "198.19.0.10"
port = 80
  [[service.backend]]
  address = "198.18.0.11"

[[service]]
name = "ipip"
vip = "198.19.0.10"
port = 81
forwarding = "ipip"
  [[service.backend]]
  address = "198.18.9.11"

[[service]]
name = "ipip6"
vip = "2001:db8:19::10"
port = 81
forwarding = "ipip"
ipip_source_prefix = "2001:db8:99::/64"
  [[service.backend]]
  address = "2001:db8:9::11"
`), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	c := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	c.mu.Lock()
	d := c.desired()
	c.mu.Unlock()
	want := map[string]struct {
		fwd    loader.Forwarding
		prefix netip.Prefix
	}{
		"dsr":   {loader.ForwardDSR, netip.Prefix{}},
		"ipip":  {loader.ForwardIPIP, netip.Prefix{}},
		"ipip6": {loader.ForwardIPIP, netip.MustParsePrefix("2001:db8:99::/64")},
	}
	if len(d.Services) != len(want) {
		t.Fatalf("%d services, want %d", len(d.Services), len(want))
	}
	for _, s := range d.Services {
		w := want[s.Name]
		if s.Forwarding != w.fwd || s.IPIPSource != w.prefix {
			t.Errorf("%s: forwarding %s source %v, want %s %v", s.Name, s.Forwarding, s.IPIPSource, w.fwd, w.prefix)
		}
	}
}

package config

import (
	"net/netip"
	"testing"
)

// forwarding = "ipip" parses, with and without ipip_source_prefix, in both
// families; a prefix keeps its length.
func TestIPIPForwarding(t *testing.T) {
	for _, tc := range []struct {
		name, vip, backend, prefix string
	}{
		{"ipv4", "198.19.0.10", "198.18.9.11", ""},
		{"ipv4 prefix", "198.19.0.10", "198.18.9.11", "198.18.99.0/24"},
		{"ipv4 one source", "198.19.0.10", "198.18.9.11", "198.18.99.7/32"},
		{"ipv6 prefix", "2001:db8:19::10", "2001:db8:9::11", "2001:db8:99::/64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "[[service]]\nname = \"t\"\nvip = \"" + tc.vip + "\"\nport = 80\nforwarding = \"ipip\"\n"
			if tc.prefix != "" {
				src += "ipip_source_prefix = \"" + tc.prefix + "\"\n"
			}
			src += "  [[service.backend]]\n  address = \"" + tc.backend + "\"\n"
			cfg, err := Parse([]byte(src), "ipip.toml")
			if err != nil {
				t.Fatal(err)
			}
			s := cfg.Services[0]
			var want netip.Prefix
			if tc.prefix != "" {
				want = netip.MustParsePrefix(tc.prefix)
			}
			if s.Forwarding != ForwardIPIP || s.IPIPSourcePrefix != want {
				t.Fatalf("forwarding %q prefix %v, want ipip %v", s.Forwarding, s.IPIPSourcePrefix, want)
			}
		})
	}
}

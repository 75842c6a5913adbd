package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// [datapath] keys: parsed in both duration forms, defaulted when left out.
func TestDatapathKeys(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want Datapath
	}{
		{"absent", "", DefaultDatapath()},
		{"empty table", "[datapath]\n", DefaultDatapath()},
		{"every key", `[datapath]
conntrack_size = 1048576
max_backends = 64
tcp_syn_timeout = "5s"
tcp_established_timeout = "1h"
tcp_closing_timeout = "45s"
udp_timeout_secs = 2.5
nat_port_range = "10000 - 19999"
`, Datapath{ConntrackSize: 1 << 20, MaxBackends: 64, TCPSynTimeout: 5 * time.Second,
			TCPEstablishedTimeout: time.Hour, TCPClosingTimeout: 45 * time.Second, UDPTimeout: 2500 * time.Millisecond,
			NATPorts: PortRange{10000, 19999}}},
		{"bounds", `[datapath]
conntrack_size = 1024
max_backends = 1048576
tcp_syn_timeout = "1s"
udp_timeout = "168h"
nat_port_range = "65535-65535"
`, Datapath{ConntrackSize: 1024, MaxBackends: 1 << 20, TCPSynTimeout: time.Second,
			TCPEstablishedTimeout: DefaultTCPEstablishedTimeout, TCPClosingTimeout: DefaultTCPClosingTimeout, UDPTimeout: 168 * time.Hour,
			NATPorts: PortRange{65535, 65535}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.src), "x.toml")
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Datapath != tc.want {
				t.Errorf("datapath = %+v, want %+v", cfg.Datapath, tc.want)
			}
		})
	}
}

// Bad [datapath] values are refused naming the field and its line; the
// golden files in testdata/bad hold the whole messages.
func TestDatapathErrors(t *testing.T) {
	l4 := "[[service]]\nname = \"dns\"\nvip = \"198.19.0.10\"\nport = 53\nprotocol = \"udp\"\n" +
		"  [[service.backend]]\n  address = \"198.18.0.11\"\n  [[service.backend]]\n  address = \"198.18.0.12\"\n"
	cases := []struct {
		name, src, want string
	}{
		{"table too small", "[datapath]\nconntrack_size = 1023\n", "x.toml:2: datapath.conntrack_size: must be 1024..67108864, got 1023"},
		{"table too large", "[datapath]\n\nconntrack_size = 67108865\n", "x.toml:3: datapath.conntrack_size: must be 1024..67108864, got 67108865"},
		{"no backends", "[datapath]\nmax_backends = 0\n", "x.toml:2: datapath.max_backends: must be 1..1048576, got 0"},
		{"not an integer", "[datapath]\nmax_backends = \"many\"\n", "x.toml:2: datapath.max_backends: must be an integer, got string \"many\""},
		{"fewer ids than backends", "[datapath]\nmax_backends = 1\n" + l4, "x.toml:2: datapath.max_backends: the l4 services have 2 backends, more than max_backends = 1"},
		{"timeout below a second", "[datapath]\ntcp_syn_timeout = \"500ms\"\n", "x.toml:2: datapath.tcp_syn_timeout: must be at least 1s, got \"500ms\""},
		{"timeout beyond a week", "[datapath]\nudp_timeout_secs = 604801\n", "x.toml:2: datapath.udp_timeout_secs: must be at most 604800 seconds, got 604801"},
		{"timeout without unit", "[datapath]\ntcp_closing_timeout = 120\n", "x.toml:2: datapath.tcp_closing_timeout: must be a duration string like \"1500ms\" or \"5s\", got integer 120 (or write tcp_closing_timeout_secs = 120)"},
		{"port range zero", "[datapath]\nnat_port_range = \"0-100\"\n", "x.toml:2: datapath.nat_port_range: must have 1 <= FIRST <= LAST, got \"0-100\""},
		{"port range past 65535", "[datapath]\nnat_port_range = \"1024-65536\"\n", "x.toml:2: datapath.nat_port_range: must be \"FIRST-LAST\" with ports 1..65535, got \"1024-65536\""},
		{"port range not a range", "[datapath]\nnat_port_range = 1024\n", "x.toml:2: datapath.nat_port_range: must be a string, got integer 1024"},
		{"typo", "[datapath]\nudp_timout = \"1m\"\n", "x.toml:2: datapath.udp_timout: unknown key (did you mean \"udp_timeout\"?)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.src), "x.toml")
			if err == nil || err.Error() != tc.want {
				t.Errorf("got %v\nwant %s", err, tc.want)
			}
		})
	}
}

// A Config built in code gets the defaults and the same checks.
func TestDatapathInCode(t *testing.T) {
	cfg := &Config{Services: []Service{{
		Name: "web", VIP: netip.MustParseAddr("198.19.0.10"), Port: 80, Line: 4,
		Backends: []Backend{{Address: netip.MustParseAddr("198.18.0.11"), Weight: 1}},
	}}}
	cfg.ApplyDefaults()
	if cfg.Datapath != DefaultDatapath() {
		t.Fatalf("defaults %+v", cfg.Datapath)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Datapath.ConntrackSize, cfg.Datapath.UDPTimeout = 5, 10*24*time.Hour
	err := cfg.Validate()
	for _, want := range []string{
		"datapath.conntrack_size: must be 1024..67108864, got 5",
		"datapath.udp_timeout: must be at most 168h, got 240h",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want %q", err, want)
		}
	}
}

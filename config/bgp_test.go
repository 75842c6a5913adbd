package config

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/bgp"
)

const bgpService = `
[[service]]
name = "web"
vip = "198.19.0.10"
port = 80
  [[service.backend]]
  address = "198.18.0.11"
`

// parseBGP parses table (a [bgp] with its peers) and one service.
func parseBGP(t *testing.T, table string) *Config {
	t.Helper()
	cfg, err := Parse([]byte(table+bgpService), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestBGPAbsentIsOff(t *testing.T) {
	cfg, err := Parse([]byte(bgpService), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BGP != nil {
		t.Errorf("no [bgp] table: BGP = %+v, want nil", cfg.BGP)
	}
}

func TestBGPDefaults(t *testing.T) {
	cfg := parseBGP(t, `
[bgp]
local_asn = 4200000001
router_id = "198.18.0.2"

[[bgp.peer]]
address = "198.18.0.1"
asn = 65000
`)
	want := BGP{LocalASN: 4200000001, RouterID: netip.MustParseAddr("198.18.0.2"), ListenPort: bgp.NoListen,
		HoldTime: bgp.DefaultHoldTime, ShutdownGrace: DefaultBGPShutdownGrace, Line: 2,
		Peers: []BGPPeer{{Address: netip.MustParseAddr("198.18.0.1"), ASN: 65000, Port: bgp.DefaultPort, Line: 6}}}
	if b := cfg.BGP; b == nil || b.LocalASN != want.LocalASN || b.RouterID != want.RouterID || b.ListenPort != want.ListenPort ||
		b.HoldTime != want.HoldTime || b.ShutdownGrace != want.ShutdownGrace || b.NextHop4.IsValid() || b.NextHop6.IsValid() ||
		len(b.Communities) != 0 || !slices.Equal(b.Peers, want.Peers) {
		t.Errorf("BGP = %+v\nwant %+v", cfg.BGP, want)
	}
}

func TestBGPEveryKey(t *testing.T) {
	cfg := parseBGP(t, `
[bgp]
local_asn = 65001
router_id = "198.18.0.2"
listen_port = 1179
hold_time = "9s"
next_hop = ["198.18.0.2", "2001:db8:18::2"]
communities = ["64512:100", "65535:65281"]
shutdown_grace_secs = 2

[[bgp.peer]]
address = "198.18.0.1"
asn = 65000
password = "s3cret"
port = 1790
hold_time_secs = 3

[[bgp.peer]]
address = "2001:db8:18::1"
asn = 65000
`)
	b := cfg.BGP
	if b.ListenPort != 1179 || b.HoldTime != 9*time.Second || b.NextHop4 != netip.MustParseAddr("198.18.0.2") ||
		b.NextHop6 != netip.MustParseAddr("2001:db8:18::2") || b.ShutdownGrace != 2*time.Second ||
		!slices.Equal(b.Communities, []bgp.Community{64512<<16 | 100, 65535<<16 | 65281}) {
		t.Errorf("BGP = %+v", b)
	}
	p := b.Peers[0]
	if p.Password != "s3cret" || p.Port != 1790 || p.HoldTime != 3*time.Second || b.Peers[1].HoldTime != 0 {
		t.Errorf("peers = %+v", b.Peers)
	}
	// The admin API shows the running config: never the password.
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(js), "s3cret") {
		t.Errorf("the config's JSON carries the peer password: %s", js)
	}
	// next_hop as one address.
	one := parseBGP(t, `
[bgp]
local_asn = 65001
router_id = "198.18.0.2"
next_hop = "2001:db8:18::2"
[[bgp.peer]]
address = "2001:db8:18::1"
asn = 65000
`)
	if one.BGP.NextHop4.IsValid() || one.BGP.NextHop6 != netip.MustParseAddr("2001:db8:18::2") {
		t.Errorf("next_hop = %q: %v %v", "2001:db8:18::2", one.BGP.NextHop4, one.BGP.NextHop6)
	}
}

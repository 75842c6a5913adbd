package bgp

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The tests peer a Speaker with GoBGP servers playing routers, over
// loopback addresses (127.0.0.0/8 needs no setup on Linux; ::1 for IPv6).

const (
	routerASN  = 65000
	speakerASN = 65001
)

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

// freePort is a TCP port free on addr when asked.
func freePort(t *testing.T, addr string) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// router is a GoBGP server listening on addr:port, passive towards the
// speaker at peer.
type router struct {
	srv  *server.BgpServer
	addr netip.Addr
	port uint16
}

func newRouter(t *testing.T, addr, peer string, peerHold uint64) *router {
	t.Helper()
	return newRouterOn(t, addr, freePort(t, addr), peer, peerHold)
}

// newRouterOn is newRouter listening on port.
func newRouterOn(t *testing.T, addr string, port uint16, peer string, peerHold uint64) *router {
	t.Helper()
	r := &router{srv: server.NewBgpServer(server.LoggerOption(slogger{testLogger(t)})), addr: netip.MustParseAddr(addr), port: port}
	go r.srv.Serve()
	ctx := context.Background()
	if err := r.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: routerASN, RouterId: "198.18.255.1", ListenPort: int32(r.port), ListenAddresses: []string{addr},
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.srv.StopBgp(context.Background(), &api.StopBgpRequest{}) })
	fam := familyV4
	if r.addr.Is6() {
		fam = familyV6
	}
	if err := r.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: peer, PeerAsn: speakerASN},
		Transport: &api.Transport{PassiveMode: true},
		Timers:    &api.Timers{Config: &api.TimersConfig{HoldTime: peerHold, KeepaliveInterval: peerHold / 3}},
		AfiSafis:  []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: fam, Enabled: true}}},
	}}); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *router) peer() Peer { return Peer{Address: r.addr, ASN: routerASN, Port: r.port} }

// route is a path as the router received it.
type route struct {
	nextHop     string
	communities []uint32
}

// routes is what the router has received, by prefix.
func (r *router) routes(t *testing.T) map[string]route {
	t.Helper()
	out := map[string]route{}
	for _, fam := range []*api.Family{familyV4, familyV6} {
		err := r.srv.ListPath(context.Background(), &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: fam}, func(d *api.Destination) {
			for _, p := range d.Paths {
				var rt route
				for _, a := range p.Pattrs {
					m, err := a.UnmarshalNew()
					if err != nil {
						t.Error(err)
						continue
					}
					switch m := m.(type) {
					case *api.NextHopAttribute:
						rt.nextHop = m.NextHop
					case *api.MpReachNLRIAttribute:
						rt.nextHop = strings.Join(m.NextHops, ",")
					case *api.CommunitiesAttribute:
						rt.communities = m.Communities
					}
				}
				out[d.Prefix] = rt
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// waitFor polls cond for up to 30 s (a loaded host delays connects).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func peerStatus(s *Speaker, addr netip.Addr) PeerStatus {
	for _, p := range s.Status().Peers {
		if p.Address == addr.String() {
			return p
		}
	}
	return PeerStatus{}
}

func waitUp(t *testing.T, s *Speaker, r *router) PeerStatus {
	t.Helper()
	waitFor(t, "session with "+r.addr.String(), func() bool { return peerStatus(s, r.addr).Up })
	return peerStatus(s, r.addr)
}

func newSpeaker(t *testing.T, cfg Config) *Speaker {
	t.Helper()
	s, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func baseConfig(peers ...Peer) Config {
	return Config{LocalASN: speakerASN, RouterID: netip.MustParseAddr("198.18.255.2"), ListenPort: NoListen, HoldTime: 9 * time.Second, Peers: peers}
}

var (
	vip4 = netip.MustParsePrefix("198.19.0.10/32")
	vip6 = netip.MustParsePrefix("2001:db8:19::10/128")
)

func TestAnnounceAndWithdraw(t *testing.T) {
	r4 := newRouter(t, "127.0.0.2", "127.0.0.1", 9)
	r6 := newRouter(t, "::1", "::1", 9)
	cfg := baseConfig(r4.peer(), r6.peer())
	cfg.Communities = []Community{64512<<16 | 100, 65000<<16 | 7}
	s := newSpeaker(t, cfg)
	up := waitUp(t, s, r4)
	waitUp(t, s, r6)
	if up.LocalAddress != "127.0.0.1" || up.ASN != routerASN || up.State != StateEstablished || up.Since == nil {
		t.Errorf("peer status %+v", up)
	}
	if err := s.Announce([]netip.Prefix{vip4, vip6}); err != nil {
		t.Fatal(err)
	}
	// Each family to its own peers, next hop the session's local address.
	waitFor(t, "routes", func() bool { return len(r4.routes(t)) == 1 && len(r6.routes(t)) == 1 })
	if got := r4.routes(t)[vip4.String()]; got.nextHop != "127.0.0.1" || !slices.Equal(got.communities, []uint32{64512<<16 | 100, 65000<<16 | 7}) {
		t.Errorf("IPv4 route %+v", got)
	}
	if got := r6.routes(t)[vip6.String()]; got.nextHop != "::1" {
		t.Errorf("IPv6 route %+v", got)
	}
	if got := s.Announced(); !slices.Equal(got, []netip.Prefix{vip4, vip6}) {
		t.Errorf("Announced() = %v", got)
	}
	waitFor(t, "advertised count", func() bool { return peerStatus(s, r4.addr).Advertised == 1 })

	if err := s.Announce([]netip.Prefix{vip6}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "IPv4 withdrawal", func() bool { return len(r4.routes(t)) == 0 })
	if len(r6.routes(t)) != 1 {
		t.Errorf("IPv6 route withdrawn with the IPv4 one: %v", r6.routes(t))
	}
	if err := s.Announce(nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "IPv6 withdrawal", func() bool { return len(r6.routes(t)) == 0 })
	if st := s.Status(); len(st.Announced) != 0 || st.LocalASN != speakerASN {
		t.Errorf("status after withdrawing all: %+v", st)
	}
}

func TestAnnounceRefusesNonHostPrefixes(t *testing.T) {
	s := newSpeaker(t, baseConfig())
	if err := s.Announce([]netip.Prefix{vip4}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []netip.Prefix{netip.MustParsePrefix("198.19.0.0/24"), netip.MustParsePrefix("2001:db8::/64"), {}} {
		if err := s.Announce([]netip.Prefix{p}); !errors.Is(err, ErrPrefix) {
			t.Errorf("Announce(%v) = %v, want ErrPrefix", p, err)
		}
	}
	if got := s.Announced(); !slices.Equal(got, []netip.Prefix{vip4}) {
		t.Errorf("a refused set changed the announced one: %v", got)
	}
	s.Close()
	if err := s.Announce(nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Announce after Close = %v, want ErrClosed", err)
	}
}

// sessionSince is when the session with r came up: a session that flapped
// has a later one.
func sessionSince(t *testing.T, s *Speaker, r *router) time.Time {
	t.Helper()
	p := waitUp(t, s, r)
	return *p.Since
}

func TestReconfigureKeepsUnchangedSessions(t *testing.T) {
	r1 := newRouter(t, "127.0.0.2", "127.0.0.1", 9)
	r2 := newRouter(t, "127.0.0.3", "127.0.0.1", 9)
	cfg := baseConfig(r1.peer(), r2.peer())
	s := newSpeaker(t, cfg)
	since1, since2 := sessionSince(t, s, r1), sessionSince(t, s, r2)
	if err := s.Announce([]netip.Prefix{vip4}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "routes", func() bool { return len(r1.routes(t)) == 1 && len(r2.routes(t)) == 1 })
	time.Sleep(1100 * time.Millisecond) // Since has a resolution of a second

	// New attributes: announced again on the same sessions.
	cfg.Communities = []Community{64512<<16 | 200}
	cfg.NextHop4 = netip.MustParseAddr("198.18.0.2")
	if err := s.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*router{r1, r2} {
		waitFor(t, "new attributes", func() bool {
			got := r.routes(t)[vip4.String()]
			return got.nextHop == "198.18.0.2" && slices.Equal(got.communities, []uint32{64512<<16 | 200})
		})
	}
	if a, b := sessionSince(t, s, r1), sessionSince(t, s, r2); !a.Equal(since1) || !b.Equal(since2) {
		t.Errorf("new attributes restarted sessions: up since %v, %v; were %v, %v", a, b, since1, since2)
	}

	// One peer changed: its session alone restarts.
	cfg.Peers[1].HoldTime = 6 * time.Second
	if err := s.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "r2's new session", func() bool {
		p := peerStatus(s, r2.addr)
		return p.Up && p.Since.After(since2)
	})
	if a := sessionSince(t, s, r1); !a.Equal(since1) {
		t.Errorf("changing r2 restarted r1's session: up since %v, was %v", a, since1)
	}
	waitFor(t, "r2's route again", func() bool { return len(r2.routes(t)) == 1 })

	// The same config again changes nothing; a removed peer goes.
	if err := s.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Peers = cfg.Peers[:1]
	if err := s.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); len(st.Peers) != 1 || st.Peers[0].Address != "127.0.0.2" {
		t.Errorf("peers after removing r2: %+v", st.Peers)
	}
	waitFor(t, "r2 losing the route", func() bool { return len(r2.routes(t)) == 0 })
	if a := sessionSince(t, s, r1); !a.Equal(since1) {
		t.Errorf("removing r2 restarted r1's session: up since %v, was %v", a, since1)
	}
}

// A new router id restarts the speaker, which connects again and announces
// what it announced. (The router starts after the restart: GoBGP's
// StartBgp sets package variables that a running router reads, a data race
// between two servers in one process, never in xlb's.)
func TestReconfigureRestartsOnNewRouterID(t *testing.T) {
	port := freePort(t, "127.0.0.2")
	cfg := baseConfig(Peer{Address: netip.MustParseAddr("127.0.0.2"), ASN: routerASN, Port: port})
	s := newSpeaker(t, cfg)
	if err := s.Announce([]netip.Prefix{vip4}); err != nil {
		t.Fatal(err)
	}
	cfg.RouterID = netip.MustParseAddr("198.18.255.3")
	if err := s.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.RouterID != "198.18.255.3" || !slices.Equal(st.Announced, []netip.Prefix{vip4}) || len(st.Peers) != 1 {
		t.Errorf("status after the restart: %+v", st)
	}
	r := newRouterOn(t, "127.0.0.2", port, "127.0.0.1", 9)
	waitUp(t, s, r)
	waitFor(t, "the route after the restart", func() bool { return len(r.routes(t)) == 1 })
}

// TestOriginatesOnly: routes a router sends are neither taken nor passed to
// other peers.
func TestOriginatesOnly(t *testing.T) {
	r1 := newRouter(t, "127.0.0.2", "127.0.0.1", 9)
	r2 := newRouter(t, "127.0.0.3", "127.0.0.1", 9)
	s := newSpeaker(t, baseConfig(r1.peer(), r2.peer()))
	waitUp(t, s, r1)
	waitUp(t, s, r2)
	foreign := netip.MustParsePrefix("198.18.200.0/24")
	p := path(foreign, attrs{nh4: netip.MustParseAddr("127.0.0.2")}, nil)
	if _, err := r1.srv.AddPath(context.Background(), &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: p}); err != nil {
		t.Fatal(err)
	}
	if err := s.Announce([]netip.Prefix{vip4}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "r2's route", func() bool { return len(r2.routes(t)) == 1 })
	time.Sleep(500 * time.Millisecond)
	if got := r2.routes(t); len(got) != 1 {
		t.Errorf("r2 got a route learnt from r1: %v", got)
	}
	var inRIB []string
	s.srv.ListPath(context.Background(), &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyV4}, func(d *api.Destination) {
		inRIB = append(inRIB, d.Prefix)
	})
	if !slices.Equal(inRIB, []string{vip4.String()}) {
		t.Errorf("speaker's RIB: %v, want only %v", inRIB, vip4)
	}
}

func TestConfigCheck(t *testing.T) {
	good := baseConfig(Peer{Address: netip.MustParseAddr("198.18.0.1"), ASN: 65000})
	if err := good.check(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Config){
		"asn 0":          func(c *Config) { c.LocalASN = 0 },
		"router id v6":   func(c *Config) { c.RouterID = netip.MustParseAddr("2001:db8::1") },
		"listen port 0":  func(c *Config) { c.ListenPort = 0 },
		"hold 2s":        func(c *Config) { c.HoldTime = 2 * time.Second },
		"hold 3.5s":      func(c *Config) { c.HoldTime = 3500 * time.Millisecond },
		"next hop4 v6":   func(c *Config) { c.NextHop4 = netip.MustParseAddr("2001:db8::1") },
		"next hop6 v4":   func(c *Config) { c.NextHop6 = netip.MustParseAddr("198.18.0.1") },
		"peer twice":     func(c *Config) { c.Peers = append(c.Peers, c.Peers[0]) },
		"peer asn 0":     func(c *Config) { c.Peers[0].ASN = 0 },
		"peer hold 1s":   func(c *Config) { c.Peers[0].HoldTime = time.Second },
		"peer no addres": func(c *Config) { c.Peers[0].Address = netip.Addr{} },
	} {
		c := good
		c.Peers = slices.Clone(good.Peers)
		mod(&c)
		if err := c.check(); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: check() = %v, want ErrConfig", name, err)
		}
		if _, err := New(c, Options{}); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: New = %v, want ErrConfig", name, err)
		}
	}
}

func TestParseCommunity(t *testing.T) {
	for in, want := range map[string]Community{"0:0": 0, "64512:100": 64512<<16 | 100, "65535:65535": 0xffffffff} {
		c, err := ParseCommunity(in)
		if err != nil || c != want || c.String() != in {
			t.Errorf("ParseCommunity(%q) = %v (%s), %v; want %v", in, uint32(c), c, err, uint32(want))
		}
	}
	for _, in := range []string{"", "1", "1:", ":1", "65536:1", "1:65536", "-1:2", "a:b", "1:2:3", " 1:2"} {
		if _, err := ParseCommunity(in); err == nil {
			t.Errorf("ParseCommunity(%q) accepted", in)
		}
	}
}

func TestMetrics(t *testing.T) {
	r := newRouter(t, "127.0.0.2", "127.0.0.1", 9)
	s := newSpeaker(t, baseConfig(r.peer(), Peer{Address: netip.MustParseAddr("127.0.0.9"), ASN: routerASN, Port: freePort(t, "127.0.0.9")}))
	reg := prometheus.NewRegistry()
	NewMetrics(reg, func() *Status { st := s.Status(); return &st })
	waitUp(t, s, r)
	if err := s.Announce([]netip.Prefix{vip4}); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP xlb_bgp_announced_prefixes How many VIP prefixes this node announces.
# TYPE xlb_bgp_announced_prefixes gauge
xlb_bgp_announced_prefixes 1
# HELP xlb_bgp_session_up 1 while the BGP session with the peer is established, else 0.
# TYPE xlb_bgp_session_up gauge
xlb_bgp_session_up{peer="127.0.0.2"} 1
xlb_bgp_session_up{peer="127.0.0.9"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "xlb_bgp_announced_prefixes", "xlb_bgp_session_up"); err != nil {
		t.Error(err)
	}
	// Without a speaker (BGP off): nothing but the announced count, 0.
	reg2 := prometheus.NewRegistry()
	NewMetrics(reg2, func() *Status { return nil })
	if n, err := testutil.GatherAndCount(reg2); err != nil || n != 1 {
		t.Errorf("metrics without a speaker: %d series, %v", n, err)
	}
}

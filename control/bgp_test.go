package control

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/bgp"
	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/health"
	"github.com/xlb-dev/xlb/l7"
)

// fakeAnnouncer records what the controller asks of the speaker.
type fakeAnnouncer struct {
	mu        sync.Mutex
	cfg       bgp.Config
	announced []netip.Prefix
	calls     int // Announce calls
	reconfigs int
	closed    bool
}

func (f *fakeAnnouncer) Announce(p []netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.announced = slices.Clone(p)
	f.calls++
	return nil
}

func (f *fakeAnnouncer) Reconfigure(cfg bgp.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cfg = cfg
	f.reconfigs++
	return nil
}

func (f *fakeAnnouncer) Status() bgp.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return bgp.Status{LocalASN: f.cfg.LocalASN, Announced: slices.Clone(f.announced)}
}

func (f *fakeAnnouncer) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *fakeAnnouncer) get() []netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.announced)
}

// fakes hands out fake announcers and keeps them.
type fakes struct {
	mu   sync.Mutex
	made []*fakeAnnouncer
}

func (fs *fakes) start(cfg bgp.Config) (Announcer, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f := &fakeAnnouncer{cfg: cfg}
	fs.made = append(fs.made, f)
	return f, nil
}

func (fs *fakes) last() *fakeAnnouncer {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if len(fs.made) == 0 {
		return nil
	}
	return fs.made[len(fs.made)-1]
}

const bgpTable = `
[bgp]
local_asn = 65001
router_id = "198.18.0.2"
hold_time = "9s"
[[bgp.peer]]
address = "198.18.0.1"
asn = 65000
`

// soon polls cond for up to 15 s (a loaded host delays checks).
func soon(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func prefixes(ss ...string) []netip.Prefix {
	out := []netip.Prefix{}
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func startBGPController(t *testing.T, cfg *config.Config, o Options) (*Controller, *fakes) {
	t.Helper()
	fs := &fakes{}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if o.Health == nil {
		hm := health.NewManager(log, nil)
		t.Cleanup(hm.Close)
		o.Health = hm
	}
	o.Logger, o.NewAnnouncer = log, fs.start
	c := New(cfg, o)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	go c.Run(ctx)
	return c, fs
}

// An L7 VIP is announced while its listener is up; a node drain withdraws
// every VIP and ready announces them again; StopBGP withdraws and closes.
func TestAnnounceL7AndNodeDrain(t *testing.T) {
	a := newFlipServer(t)
	cfg := l7Config(t, bgpTable, a)
	proxy := l7.NewServer(l7.Options{Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(func() { proxy.Shutdown(context.Background()) })
	c, fs := startBGPController(t, cfg, Options{L7: proxy})
	f := fs.last()
	if f == nil || f.cfg.LocalASN != 65001 || len(f.cfg.Peers) != 1 || f.cfg.Peers[0].Port != bgp.DefaultPort {
		t.Fatalf("speaker started with %+v", f)
	}
	soon(t, "the L7 VIP announced", func() bool { return slices.Equal(f.get(), prefixes("127.0.0.1/32")) })

	// A failing backend does not withdraw an L7 VIP: its listener answers
	// (503) and the other nodes' would too.
	a.ok.Store(false)
	soon(t, "backend down", func() bool { return stateOf(t, c, id(a)).State == "down" })
	if got := f.get(); !slices.Equal(got, prefixes("127.0.0.1/32")) {
		t.Errorf("L7 VIP withdrawn with its listener up: %v", got)
	}

	info, err := c.SetNodeState(NodeDraining)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.get(); len(got) != 0 || info.State != NodeDraining || !slices.Equal(info.Withheld, prefixes("127.0.0.1/32")) {
		t.Errorf("after node drain: announced %v, info %+v", got, info)
	}
	// Reconciles while drained keep everything withdrawn.
	a.ok.Store(true)
	soon(t, "backend up", func() bool { return stateOf(t, c, id(a)).State == "up" })
	if got := f.get(); len(got) != 0 {
		t.Errorf("a reconcile announced %v on a drained node", got)
	}
	if _, err := c.SetNodeState("bogus"); err == nil {
		t.Error("SetNodeState(bogus) accepted")
	}
	if info, _ := c.SetNodeState(NodeReady); !slices.Equal(f.get(), prefixes("127.0.0.1/32")) || info.State != NodeReady || len(info.Withheld) != 0 {
		t.Errorf("after node ready: announced %v, info %+v", f.get(), info)
	}
	if n := c.Node(); n.BGP == nil || !slices.Equal(n.BGP.Announced, prefixes("127.0.0.1/32")) {
		t.Errorf("Node() = %+v", n)
	}

	c.StopBGP(10 * time.Millisecond)
	if !f.closed || len(f.get()) != 0 {
		t.Errorf("StopBGP: closed %v, announced %v", f.closed, f.get())
	}
	if c.BGPStatus() != nil {
		t.Error("BGPStatus after StopBGP")
	}
}

// A reload reconfigures the speaker, stops it when [bgp] goes (withdrawing
// first) and starts one when it comes back.
func TestReloadBGP(t *testing.T) {
	a := newFlipServer(t)
	proxy := l7.NewServer(l7.Options{Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(func() { proxy.Shutdown(context.Background()) })
	c, fs := startBGPController(t, l7Config(t, bgpTable, a), Options{L7: proxy})
	first := fs.last()
	soon(t, "announced", func() bool { return len(first.get()) == 1 })

	next := l7Config(t, bgpTable+"hold_time = \"6s\"\n", a)
	if err := c.Reload(next); err != nil {
		t.Fatal(err)
	}
	if first.reconfigs != 1 || first.cfg.Peers[0].HoldTime != 6*time.Second || fs.last() != first {
		t.Errorf("reload with a changed peer: reconfigs %d, cfg %+v", first.reconfigs, first.cfg)
	}
	if err := c.Reload(l7Config(t, "", a)); err != nil {
		t.Fatal(err)
	}
	if !first.closed || len(first.get()) != 0 || c.Node().BGP != nil {
		t.Errorf("[bgp] removed: closed %v, announced %v", first.closed, first.get())
	}
	if err := c.Reload(l7Config(t, bgpTable, a)); err != nil {
		t.Fatal(err)
	}
	second := fs.last()
	if second == first {
		t.Fatal("[bgp] back: no new speaker")
	}
	soon(t, "announced by the new speaker", func() bool { return len(second.get()) == 1 })
}

// An L4 VIP is announced while a backend is usable (up or draining) and
// withdrawn once the last one fails, within the reconcile that applies the
// health transition.
func TestAnnounceFollowsL4Health(t *testing.T) {
	srv := newFlipServer(t)
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
[health_check]
interval = "40ms"
timeout = "30ms"
unhealthy_threshold = 2
healthy_threshold = 2
type = "http"
%s
[[service]]
name = "web"
vip = "198.19.0.10"
port = 80
  [[service.backend]]
  address = "127.0.0.1"
  health_check_port = %d
[[service]]
name = "other"
vip = "198.19.0.11"
port = 80
  [service.health_check]
  enabled = false
  [[service.backend]]
  address = "198.18.0.11"
[[service]]
name = "web-tls"
vip = "198.19.0.10"
port = 443
  [[service.backend]]
  address = "127.0.0.1"
  health_check_port = %d
`, bgpTable, srv.addr.Port(), srv.addr.Port())), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	_, l4 := newL4Controller(t, cfg) // needs root
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hm := health.NewManager(log, nil)
	t.Cleanup(hm.Close)
	c, fs := startBGPController(t, cfg, Options{Reconciler: l4.rec, Maps: l4.maps, Health: hm})
	f := fs.last()
	// other's backend is unchecked: up, announced.
	soon(t, "both VIPs announced", func() bool {
		return slices.Equal(f.get(), prefixes("198.19.0.10/32", "198.19.0.11/32"))
	})
	if _, err := c.SetAdminState("web@127.0.0.1", AdminDraining); err != nil {
		t.Fatal(err)
	}
	if got := f.get(); !slices.Equal(got, prefixes("198.19.0.10/32", "198.19.0.11/32")) {
		t.Errorf("a draining backend still serves its flows: announced %v", got)
	}
	srv.ok.Store(false)
	soon(t, "198.19.0.10 withdrawn", func() bool { return slices.Equal(f.get(), prefixes("198.19.0.11/32")) })
	if n := c.Node(); !slices.Equal(n.Withheld, prefixes("198.19.0.10/32")) {
		t.Errorf("withheld %v", n.Withheld)
	}
	srv.ok.Store(true)
	soon(t, "198.19.0.10 back", func() bool { return len(f.get()) == 2 })
}

package loader

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/bpf"
	"github.com/xlb-dev/xlb/internal/testenv"
	"github.com/xlb-dev/xlb/maglev"
)

const (
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
	loIfIndex   = 1 // BPF_PROG_TEST_RUN's packets arrive on the test netns's lo
	protoTCP    = 6
	protoUDP    = 17
)

var (
	vip4 = netip.MustParseAddr("198.19.0.10")
	vip6 = netip.MustParseAddr("2001:db8:19::10")
	be4  = []netip.Addr{
		netip.MustParseAddr("198.18.0.11"),
		netip.MustParseAddr("198.18.0.12"),
		netip.MustParseAddr("198.18.0.13"),
	}
	be6 = []netip.Addr{
		netip.MustParseAddr("2001:db8:18::11"),
		netip.MustParseAddr("2001:db8:18::12"),
		netip.MustParseAddr("2001:db8:18::13"),
	}
	client4 = netip.MustParseAddr("198.18.0.100")
	client6 = netip.MustParseAddr("2001:db8:18::100")
)

// requireRoot fails in CI (which runs as root, so a skip would hide a broken
// test) and skips elsewhere.
func requireRoot(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t, "needs root")
}

// backendMAC is the fixtures' MAC for a backend address: 02:be:00:00:xx:yy
// with the address's last two bytes.
func backendMAC(a netip.Addr) net.HardwareAddr {
	s := a.AsSlice()
	return net.HardwareAddr{0x02, 0xbe, 0, 0, s[len(s)-2], s[len(s)-1]}
}

// staticResolver puts every backend on one interface with a derived MAC; the
// netlink resolver is exercised by the end-to-end tests.
type staticResolver struct {
	ifindex int
	missing map[netip.Addr]bool
}

func (r staticResolver) Resolve(_ context.Context, a netip.Addr, mac net.HardwareAddr) (Neighbour, error) {
	if r.missing[a] {
		return Neighbour{}, fmt.Errorf("%s: %w", a, ErrUnresolved)
	}
	if mac == nil {
		mac = backendMAC(a)
	}
	return Neighbour{IfIndex: r.ifindex, MAC: mac, SrcMAC: lbMAC}, nil
}

// build is one build of the steering program the fixtures run: XDP, or its
// TC build (xdp_mode "tc").
type build struct {
	name string
	mode XDPMode // Options.Mode: "" for XDP
}

var (
	xdpBuild = build{"xdp", ""}
	tcBuild  = build{"tc", XDPTC}
)

// forBuilds runs fn as a subtest per build: the same packets, the same
// expected frames, and the verdicts mapped as fixture.is says.
func forBuilds(t *testing.T, fn func(t *testing.T, b build)) {
	for _, b := range []build{xdpBuild, tcBuild} {
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

// TC's verdicts as BPF_PROG_TEST_RUN returns them (tcNext: decap_test.go).
const (
	tcShot     = 2 // TC_ACT_SHOT
	tcRedirect = 7 // TC_ACT_REDIRECT: XDP's TX and REDIRECT both
	tcOther    = 0x100
)

type fixture struct {
	t   testing.TB
	tc  bool // the TC build: runSized maps its verdicts (see is)
	dp  *Datapath
	rec *Reconciler
	// in, when set, runs map writes and packets in a network namespace
	// (see testNet): its lo is where BPF_PROG_TEST_RUN's packets arrive.
	in func(func())
}

func (f *fixture) do(fn func()) {
	if f.in == nil {
		fn()
		return
	}
	f.in(fn)
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newFixture(t testing.TB, d Desired) *fixture {
	t.Helper()
	return newFixtureWith(t, d, nil)
}

// newFixtureFor is newFixture for build b.
func newFixtureFor(t testing.TB, b build, d Desired) *fixture {
	t.Helper()
	f := openFixtureFor(t, b, nil, staticResolver{ifindex: loIfIndex}, nil)
	f.apply(d)
	return f
}

// newFixtureWith loads the collection spec returns (nil: the production one).
func newFixtureWith(t testing.TB, d Desired, spec func() (*ebpf.CollectionSpec, error)) *fixture {
	t.Helper()
	f := openFixture(t, spec, staticResolver{ifindex: loIfIndex}, nil)
	f.apply(d)
	return f
}

// openFixture loads the datapath (spec nil: the production one) with a
// reconciler that resolves backends with res; in, when set, is where the
// fixture writes maps and runs packets (testNet.do).
func openFixture(t testing.TB, spec func() (*ebpf.CollectionSpec, error), res Resolver, in func(func())) *fixture {
	t.Helper()
	return openFixtureFor(t, xdpBuild, spec, res, in)
}

// openFixtureFor is openFixture for build b.
func openFixtureFor(t testing.TB, b build, spec func() (*ebpf.CollectionSpec, error), res Resolver, in func(func())) *fixture {
	t.Helper()
	requireRoot(t)
	dp, err := Open(Options{Logger: quietLogger(), Mode: b.mode, spec: spec})
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { dp.Close(false) })
	rec, err := NewReconciler(&dp.Maps, res, loIfIndex, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, tc: b.mode == XDPTC, dp: dp, rec: rec, in: in}
}

// openPinned is openFixture with its maps pinned in dir, for restarts: the
// caller closes the datapath (Close(true) keeps the pins for the next one).
func openPinned(t testing.TB, dir string, res Resolver, in func(func())) *fixture {
	t.Helper()
	dp, err := Open(Options{PinDir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := NewReconciler(&dp.Maps, res, loIfIndex, quietLogger())
	if err != nil {
		dp.Close(false)
		t.Fatal(err)
	}
	return &fixture{t: t, dp: dp, rec: rec, in: in}
}

// restart commits f's datapath, closes it keeping the pins, and opens the
// next one, which must adopt them; the caller closes it.
func (f *fixture) restart(open func() *fixture) *fixture {
	f.t.Helper()
	if err := f.dp.Commit(); err != nil {
		f.t.Fatal(err)
	}
	if err := f.dp.Close(true); err != nil {
		f.t.Fatal(err)
	}
	g := open()
	if !g.dp.Adopted {
		g.dp.Close(false)
		f.t.Fatal("pinned maps not adopted")
	}
	return g
}

func (f *fixture) apply(d Desired) Change {
	f.t.Helper()
	var ch Change
	var err error
	f.do(func() { ch, err = f.rec.Apply(context.Background(), d) })
	if err != nil {
		f.t.Fatalf("apply: %v", err)
	}
	return ch
}

// run runs the XDP program once on data and returns as many bytes as it
// was given (the programs that change a frame's length are read with runSized).
func (f *fixture) run(data []byte) (uint32, []byte) {
	f.t.Helper()
	ret, out := f.runSized(data)
	return ret, append(out, make([]byte, max(0, len(data)-len(out)))...)[:len(data)]
}

// runSized runs the XDP program once on data and returns the frame it left.
func (f *fixture) runSized(data []byte) (uint32, []byte) {
	f.t.Helper()
	return f.runCtx(data, nil)
}

// runCtx is runSized with a context (xdpMD, skbMD; nil: none), the TC
// build's verdicts mapped (see is).
func (f *fixture) runCtx(data []byte, ctx any) (uint32, []byte) {
	f.t.Helper()
	opts := &ebpf.RunOptions{Data: data, DataOut: make([]byte, len(data)+256), Repeat: 1, Context: ctx}
	var ret uint32
	var err error
	f.do(func() { ret, err = f.dp.Program.Run(opts) })
	if err != nil {
		f.t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	if f.tc {
		switch ret {
		case tcNext:
			ret = xdpPass
		case tcShot:
			ret = xdpDrop
		case tcRedirect: // see is
		default:
			ret |= tcOther // no XDP verdict's look-alike
		}
	}
	return ret, opts.DataOut
}

// is says whether ret (from run*) is the verdict want names in XDP's
// terms. The TC build's pass (TC_ACT_UNSPEC, tcx: next program) and drop
// (TC_ACT_SHOT) come back as XDP's; its TX and REDIRECT are both a
// redirect (bpf_redirect to the receiving interface or another): the
// reason counters tell them apart.
func (f *fixture) is(ret, want uint32) bool {
	if f.tc && ret == tcRedirect {
		return want == xdpTX || want == xdpRedirect
	}
	return ret == want
}

func (f *fixture) serviceID(vip netip.Addr, port uint16, proto uint8) uint32 {
	f.t.Helper()
	id, ok := f.rec.ServiceID(vip, port, proto)
	if !ok {
		f.t.Fatalf("no service %s:%d/%d", vip, port, proto)
	}
	return id
}

// predict says which backend the Go side expects for a new flow, from the
// ring in the map and the Go hash.
func (f *fixture) predict(svc ServiceSpec, src netip.Addr, sport uint16) netip.Addr {
	f.t.Helper()
	id := f.serviceID(svc.VIP, svc.Port, svc.Proto)
	ring, err := f.dp.Ring(id)
	if err != nil || ring == nil {
		f.t.Fatalf("ring of %s: %v", svc.Name, err)
	}
	h := maglev.SourceHash(src)
	if svc.Hash == HashFlow {
		h = maglev.FlowHash(src, svc.VIP, sport, svc.Port, svc.Proto)
	}
	var be bpf.XlbBackend
	if err := f.dp.Backends.Lookup(ring[h%uint32(len(ring))], &be); err != nil {
		f.t.Fatal(err)
	}
	return BackendAddr(be)
}

// backendOf returns which fixture backend an XDP_TX'd frame was sent to, by
// its destination MAC.
func backendOf(t testing.TB, out []byte, candidates []netip.Addr) netip.Addr {
	t.Helper()
	for _, a := range candidates {
		if bytes.Equal(out[0:6], backendMAC(a)) {
			return a
		}
	}
	t.Fatalf("frame sent to unknown MAC %s", net.HardwareAddr(out[0:6]))
	return netip.Addr{}
}

func webService(vip netip.Addr, port uint16, proto uint8, hash HashMode, bes []netip.Addr) ServiceSpec {
	s := ServiceSpec{Name: fmt.Sprintf("svc-%s-%d-%d", vip, port, proto), VIP: vip, Port: port, Proto: proto, Kind: KindL4, Hash: hash}
	for _, a := range bes {
		s.Backends = append(s.Backends, BackendSpec{Address: a, Weight: 1, State: StateUp})
	}
	return s
}

func (f *fixture) reasons() []Counters {
	f.t.Helper()
	rc, err := f.dp.ReasonCounters()
	if err != nil {
		f.t.Fatal(err)
	}
	return rc
}

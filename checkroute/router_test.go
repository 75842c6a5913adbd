package checkroute

import (
	"errors"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/internal/testenv"
)

// The test namespace: veth xv0 (198.18.0.2/24, 2001:db8:18::2/64) with its
// peer xv1 (198.18.9.2/24), both inside it.
var (
	vip4 = netip.MustParseAddr("198.19.0.10")
	vip6 = netip.MustParseAddr("2001:db8:19::10")
	be4  = netip.MustParseAddr("198.18.0.12")
	be6  = netip.MustParseAddr("2001:db8:18::12")
)

// testNS is a private network namespace, gone when the test ends (its last
// reference, the handle's file descriptor, is closed), whatever the test left
// in it.
type testNS struct {
	h        *netlink.Handle
	ns       netns.NsHandle
	xv0, xv1 int // link indexes
	sysctl   map[string]string
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	testenv.RequireRoot(t, "check routes need root (CAP_NET_ADMIN) and a network namespace")
	ns := enterNewNS(t)
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	tn := &testNS{h: h, ns: ns, sysctl: map[string]string{}}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "xv0"}, PeerName: "xv1"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("veth: %v", err)
	}
	for _, l := range []struct {
		name  string
		idx   *int
		addrs []string
	}{
		{"xv0", &tn.xv0, []string{"198.18.0.2/24", "2001:db8:18::2/64"}},
		{"xv1", &tn.xv1, []string{"198.18.9.2/24"}},
		{"lo", new(int), nil},
	} {
		link, err := h.LinkByName(l.name)
		if err != nil {
			t.Fatal(err)
		}
		*l.idx = link.Attrs().Index
		for _, a := range l.addrs {
			tn.addAddr(t, link, a)
		}
		if err := h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	return tn
}

// enterNewNS makes a namespace on a locked thread and goes back to the
// thread's own before unlocking it.
func enterNewNS(t *testing.T) netns.NsHandle {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("new namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		// The thread is in the wrong namespace: let it die with the test.
		runtime.LockOSThread()
		t.Fatalf("back to the original namespace: %v", err)
	}
	return ns
}

func (tn *testNS) addAddr(t *testing.T, link netlink.Link, cidr string) {
	t.Helper()
	pfx := netip.MustParsePrefix(cidr)
	a := &netlink.Addr{IPNet: &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), pfx.Addr().BitLen())}}
	if pfx.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := tn.h.AddrAdd(link, a); err != nil {
		t.Fatalf("address %s: %v", cidr, err)
	}
}

func (tn *testNS) open(t *testing.T) *Router {
	t.Helper()
	return tn.openAs(t, "")
}

// openAs opens the Router of the daemon named instance.
func (tn *testNS) openAs(t *testing.T, instance string) *Router {
	t.Helper()
	r, err := Open(Options{Handle: tn.h, NetNS: tn.ns, Instance: instance, Sysctl: tn.readSysctl})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// kill drops r as a killed daemon would: its rules and routes stay, its
// range is free.
func kill(r *Router) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.release()
}

// ownTable reports whether table t is one of xlb's, whoever's range.
func ownTable(t int) bool {
	_, ok := rangeOf(t)
	return ok
}

func (tn *testNS) readSysctl(name string) (string, error) {
	if v, ok := tn.sysctl[name]; ok {
		return v, nil
	}
	return "0", nil
}

// owned lists the rules and routes of Protocol in xlb's tables, as
// "rule 4 mark table" and "route table dst gw type".
func (tn *testNS) owned(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := tn.h.RuleList(fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			if r.Protocol == uint8(Protocol) || ownTable(r.Table) {
				out = append(out, "rule "+strconv.Itoa(r.Family)+" prio "+strconv.Itoa(r.Priority)+
					" mark "+strconv.FormatUint(uint64(r.Mark), 16)+" table "+strconv.FormatUint(uint64(uint32(r.Table)), 16))
			}
		}
	}
	routes, err := tn.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Protocol == Protocol || ownTable(r.Table) {
			out = append(out, "route table "+strconv.FormatUint(uint64(uint32(r.Table)), 16)+" "+r.Dst.String()+
				" gw "+r.Gw.String()+" type "+strconv.Itoa(r.Type)+" link "+strconv.Itoa(r.LinkIndex))
		}
	}
	slices.Sort(out)
	return out
}

// through is where a packet to vip with mark goes: its gateway and link, or
// the lookup's error.
func (tn *testNS) through(vip netip.Addr, mark uint32) (net.IP, int, error) {
	rts, err := tn.h.RouteGetWithOptions(vip.AsSlice(), &netlink.RouteGetOptions{Mark: mark})
	if err != nil {
		return nil, 0, err
	}
	return rts[0].Gw, rts[0].LinkIndex, nil
}

func TestInstallPruneClose(t *testing.T) {
	tn := newTestNS(t)
	r := tn.open(t)
	p4 := Path{vip4, be4}
	p6 := Path{vip6, be6}
	p4b := Path{netip.MustParseAddr("198.19.0.11"), be4}
	first := Base + uint32(preferredRange(""))<<rangeBits
	if m, err := r.Mark(p4); err != nil || m != first+1 {
		t.Fatalf("Mark = %#x, %v, want %#x", m, err, first+1)
	}
	if err := r.Install([]Path{p4, p6, p4b}); err != nil {
		t.Fatalf("Install: %v", err)
	}
	for _, p := range []Path{p4, p6, p4b} {
		mark, _ := r.Mark(p)
		gw, link, err := tn.through(p.VIP, mark)
		if err != nil || !gw.Equal(p.Backend.AsSlice()) || link != tn.xv0 {
			t.Errorf("%s: marked lookup goes to %v on link %d (%v), want %s on xv0 (%d)", p, gw, link, err, p.Backend, tn.xv0)
		}
		// Another destination with the mark hits the unreachable default,
		// never the main table (which has a route to it).
		if _, _, err := tn.through(otherAddr(p.VIP), mark); err == nil {
			t.Errorf("%s: a marked packet to another address is routed", p)
		}
	}
	if _, _, err := tn.through(vip4, 0); err == nil {
		t.Errorf("an unmarked packet to the VIP is routed: the rules match too much")
	}
	if got := tn.owned(t); len(got) != 9 { // 3 rules, 3 VIP routes, 3 unreachable defaults
		t.Errorf("after Install: %d rules and routes, want 9:\n%v", len(got), got)
	}
	// Install again (a reload): the same, no duplicate.
	if err := r.Install([]Path{p4, p6, p4b}); err != nil {
		t.Fatalf("Install again: %v", err)
	}
	if got := tn.owned(t); len(got) != 9 {
		t.Errorf("after a second Install: %d rules and routes, want 9:\n%v", len(got), got)
	}

	if err := r.Prune([]Path{p6}); err != nil {
		t.Fatalf("Prune: %v", err)
	}
	if got := tn.owned(t); len(got) != 3 {
		t.Errorf("after Prune to one path: %d rules and routes, want 3:\n%v", len(got), got)
	}
	if m, _ := r.Mark(p6); m != first+2 {
		t.Errorf("the kept path changed its mark to %#x", m)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := tn.owned(t); len(got) != 0 {
		t.Errorf("after Close: %v", got)
	}
}

// A daemon killed before its Close leaves its rules and routes; the next
// Open removes them, and nothing that is not xlb's.
func TestOpenRemovesLeftovers(t *testing.T) {
	tn := newTestNS(t)
	crashed := tn.open(t)
	if err := crashed.Install([]Path{{vip4, be4}, {vip6, be6}}); err != nil {
		t.Fatal(err)
	}
	kill(crashed)
	foreign := netlink.NewRule()
	foreign.Priority, foreign.Table, foreign.Mark = Priority, int(Base+1), 0x1234
	if err := tn.h.RuleAdd(foreign); err != nil {
		t.Fatal(err)
	}
	if got := tn.owned(t); len(got) != 7 {
		t.Fatalf("before: %v", got)
	}
	r := tn.open(t)
	defer r.Close()
	got := tn.owned(t)
	if len(got) != 1 || got[0] != "rule 2 prio 32000 mark 1234 table 786c0001" {
		t.Errorf("after Open: %v, want only the foreign rule", got)
	}
}

func TestInstallProblems(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, tn *testNS)
		path    Path
		want    error
		fix     func(t *testing.T, tn *testNS) // then Retry succeeds
		routeTo bool                           // marked packets still reach the backend
	}{
		{
			name: "backend behind a gateway",
			path: Path{vip4, netip.MustParseAddr("198.18.7.12")},
			setup: func(t *testing.T, tn *testNS) {
				tn.route(t, "198.18.7.0/24", "198.18.0.1", tn.xv0)
			},
			want: ErrNotOnLink,
			fix: func(t *testing.T, tn *testNS) {
				tn.h.RouteDel(&netlink.Route{Dst: ipnet("198.18.7.0/24")})
				link, _ := tn.h.LinkByIndex(tn.xv0)
				tn.addAddr(t, link, "198.18.7.2/24")
			},
		},
		{
			name: "no route to the backend",
			path: Path{vip6, netip.MustParseAddr("2001:db8:7::12")},
			want: ErrNotOnLink,
		},
		{
			name: "vip local on this host",
			path: Path{vip4, be4},
			setup: func(t *testing.T, tn *testNS) {
				lo, _ := tn.h.LinkByName("lo")
				tn.addAddr(t, lo, vip4.String()+"/32")
			},
			want:    ErrNotThroughBackend,
			routeTo: false,
			fix: func(t *testing.T, tn *testNS) {
				lo, _ := tn.h.LinkByName("lo")
				tn.h.AddrDel(lo, &netlink.Addr{IPNet: ipnet(vip4.String() + "/32")})
			},
		},
		{
			name: "strict rp_filter, no route to the vip",
			path: Path{vip4, be4},
			setup: func(t *testing.T, tn *testNS) {
				tn.sysctl["net/ipv4/conf/all/rp_filter"] = "1\n"
			},
			want:    ErrRPFilter,
			routeTo: true,
			fix: func(t *testing.T, tn *testNS) {
				tn.route(t, "0.0.0.0/0", "198.18.0.1", tn.xv0)
			},
		},
		{
			name: "strict rp_filter on the interface, vip routed through another",
			path: Path{vip4, be4},
			setup: func(t *testing.T, tn *testNS) {
				tn.sysctl["net/ipv4/conf/xv0/rp_filter"] = "1"
				tn.route(t, "0.0.0.0/0", "198.18.9.1", tn.xv1)
			},
			want:    ErrRPFilter,
			routeTo: true,
			fix: func(t *testing.T, tn *testNS) {
				tn.sysctl["net/ipv4/conf/xv0/rp_filter"] = "2" // loose: any route will do
			},
		},
		{
			name: "loose rp_filter, no route to the vip",
			path: Path{vip4, be4},
			setup: func(t *testing.T, tn *testNS) {
				tn.sysctl["net/ipv4/conf/all/rp_filter"] = "2"
			},
			want:    ErrRPFilter,
			routeTo: true,
			fix: func(t *testing.T, tn *testNS) {
				tn.sysctl["net/ipv4/conf/all/rp_filter"] = "0"
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := newTestNS(t)
			if tt.setup != nil {
				tt.setup(t, tn)
			}
			r := tn.open(t)
			defer func() {
				if err := r.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
				if got := tn.owned(t); len(got) != 0 {
					t.Errorf("after Close: %v", got)
				}
			}()
			err := r.Install([]Path{tt.path})
			if !errors.Is(err, tt.want) {
				t.Fatalf("Install = %v, want %v", err, tt.want)
			}
			t.Logf("%v", err)
			mark, _ := r.Mark(tt.path)
			gw, _, lerr := tn.through(tt.path.VIP, mark)
			if reached := lerr == nil && gw.Equal(tt.path.Backend.AsSlice()); reached != tt.routeTo {
				t.Errorf("marked lookup: gw %v, %v; want through the backend: %v", gw, lerr, tt.routeTo)
			}
			if tt.fix == nil {
				return
			}
			tt.fix(t, tn)
			if err := r.Retry(); err != nil {
				t.Fatalf("Retry after the fix: %v", err)
			}
			if gw, _, err := tn.through(tt.path.VIP, mark); err != nil || !gw.Equal(tt.path.Backend.AsSlice()) {
				t.Errorf("after Retry the marked lookup goes to %v (%v)", gw, err)
			}
			if err := r.Retry(); err != nil {
				t.Errorf("Retry with nothing failed: %v", err)
			}
		})
	}
}

func (tn *testNS) route(t *testing.T, dst, gw string, link int) {
	t.Helper()
	if err := tn.h.RouteAdd(&netlink.Route{Dst: ipnet(dst), Gw: net.ParseIP(gw), LinkIndex: link}); err != nil {
		t.Fatalf("route %s via %s: %v", dst, gw, err)
	}
}

func ipnet(cidr string) *net.IPNet {
	pfx := netip.MustParsePrefix(cidr)
	return &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), pfx.Addr().BitLen())}
}

// otherAddr is an address next to a, on the same connected network as the
// backends.
func otherAddr(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.MustParseAddr("198.18.0.99")
	}
	return netip.MustParseAddr("2001:db8:18::99")
}

// Slots are handed out in order and a freed one as late as possible, so that
// a check still running with an old mark never goes through a new path.
func TestSlots(t *testing.T) {
	r := &Router{marks: map[Path]uint32{}, owners: map[uint32]Path{}}
	path := func(i int) Path {
		return Path{vip4, netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})}
	}
	for i := range 3 {
		if m, err := r.Mark(path(i)); err != nil || m != Base+uint32(i)+1 {
			t.Fatalf("Mark(%d) = %#x, %v", i, m, err)
		}
	}
	if m, _ := r.Mark(path(1)); m != Base+2 {
		t.Errorf("Mark of a known path = %#x, want %#x", m, Base+2)
	}
	delete(r.owners, r.marks[path(1)]) // freed, as Prune does
	delete(r.marks, path(1))
	if m, _ := r.Mark(path(3)); m != Base+4 {
		t.Errorf("next mark = %#x, want %#x (not the freed one yet)", m, Base+4)
	}
	for i := 4; i < MaxSlots; i++ {
		if _, err := r.Mark(path(i)); err != nil {
			t.Fatalf("Mark(%d): %v", i, err)
		}
	}
	// Only slot 2 is free now: it comes back after the last slot.
	if m, _ := r.Mark(path(1)); m != Base+2 {
		t.Errorf("after wrapping, mark %#x, want the freed %#x", m, Base+2)
	}
	if _, err := r.Mark(Path{vip6, be6}); !errors.Is(err, ErrFull) {
		t.Errorf("Mark with every slot used = %v, want ErrFull", err)
	}
}

// Two daemons in one network namespace (two pin directories): each sweeps
// only its own range, at Open and at Close, and a restarted one finds its
// range and its leftovers again.
func TestDaemonsShareNamespace(t *testing.T) {
	tn := newTestNS(t)
	pa := Path{vip4, be4}
	pb := Path{vip6, be6}
	a := tn.openAs(t, "/sys/fs/bpf/a")
	if err := a.Install([]Path{pa}); err != nil {
		t.Fatal(err)
	}
	markA, _ := a.Mark(pa)
	routedA := func(when string) {
		t.Helper()
		if gw, _, err := tn.through(pa.VIP, markA); err != nil || !gw.Equal(pa.Backend.AsSlice()) {
			t.Errorf("%s: the first daemon's path goes to %v (%v)", when, gw, err)
		}
	}
	b := tn.openAs(t, "/sys/fs/bpf/b")
	routedA("after the second daemon's Open")
	if err := b.Install([]Path{pb}); err != nil {
		t.Fatal(err)
	}
	if markB, _ := b.Mark(pb); markB == markA {
		t.Errorf("both daemons use mark %#x", markA)
	}
	rangeB := b.rng
	kill(b)
	b2 := tn.openAs(t, "/sys/fs/bpf/b")
	if b2.rng != rangeB {
		t.Errorf("restarted in range %d, not its own %d", b2.rng, rangeB)
	}
	routedA("after the second daemon's restart")
	if got := tn.owned(t); len(got) != 3 {
		t.Errorf("after the second daemon's restart: %v, want only the first daemon's 3", got)
	}
	if err := b2.Install([]Path{pb}); err != nil {
		t.Fatal(err)
	}
	if err := b2.Close(); err != nil {
		t.Fatal(err)
	}
	routedA("after the second daemon's Close")
	if got := tn.owned(t); len(got) != 3 {
		t.Errorf("after the second daemon's Close: %v, want the first daemon's 3", got)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got := tn.owned(t); len(got) != 0 {
		t.Errorf("after both Close: %v", got)
	}
}

// A killed daemon's range is swept by whichever daemon starts next, even
// one that does not take it (its own range is elsewhere).
func TestOpenSweepsFreeRanges(t *testing.T) {
	tn := newTestNS(t)
	crashed := tn.openAs(t, "/sys/fs/bpf/a")
	if err := crashed.Install([]Path{{vip4, be4}}); err != nil {
		t.Fatal(err)
	}
	live := tn.openAs(t, "/sys/fs/bpf/a") // the next range: the first is held
	defer live.Close()
	if err := live.Install([]Path{{vip6, be6}}); err != nil {
		t.Fatal(err)
	}
	kill(crashed)
	// Takes the range crashed held; live's, still held, stays as it is.
	other := tn.openAs(t, "/sys/fs/bpf/a")
	defer other.Close()
	if got := tn.owned(t); len(got) != 3 || !strings.Contains(strings.Join(got, " "), "2001:db8:19::10") {
		t.Errorf("after Open: %v, want the live daemon's 3 (IPv6)", got)
	}
}

// With every range held by live daemons, Open sweeps nothing and Mark fails.
func TestAllRangesHeld(t *testing.T) {
	tn := newTestNS(t)
	live := tn.open(t)
	defer live.Close()
	if err := live.Install([]Path{{vip4, be4}}); err != nil {
		t.Fatal(err)
	}
	for g := range Ranges {
		fd, ok, err := claim(tn.ns, g)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			defer unix.Close(fd)
		}
	}
	r := tn.open(t)
	defer r.Close()
	if _, err := r.Mark(Path{vip6, be6}); !errors.Is(err, ErrNoRange) {
		t.Errorf("Mark = %v, want ErrNoRange", err)
	}
	if got := tn.owned(t); len(got) != 3 {
		t.Errorf("after Open: %v, want the live daemon's 3", got)
	}
}

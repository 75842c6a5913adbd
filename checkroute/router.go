package checkroute

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Numbers of xlb's rules, routes, marks and tables (see the package doc).
const (
	// Priority of the rules: before the main table's (32766).
	Priority = 32000
	// Base + n is the mark and the table of slot n (Base+1..Base+0xffff,
	// split into Ranges).
	Base uint32 = 0x786c0000
	// MaxSlots bounds the paths one Router routes at once (its range).
	MaxSlots = 1<<rangeBits - 1
	// Protocol tags the rules and routes (rtm_protocol, FRA_PROTOCOL);
	// unassigned in iproute2's rt_protos.
	Protocol netlink.RouteProtocol = 177
)

var (
	// ErrFull: every slot is in use.
	ErrFull = errors.New("no free check route slot")
	// ErrNoRange: every range is another live daemon's.
	ErrNoRange = errors.New("every check route range is held by another xlb daemon in this network namespace")
	// ErrNotOnLink: the backend is not on a directly connected network.
	ErrNotOnLink = errors.New("backend is not on a directly connected network")
	// ErrNotThroughBackend: a lookup with the path's mark does not go to
	// the backend (the VIP is a local address of this host).
	ErrNotThroughBackend = errors.New("marked packets to the vip do not go through the backend")
	// ErrRPFilter: the reverse-path filter drops the answers from the VIP.
	ErrRPFilter = errors.New("rp_filter drops the answers from the vip")
)

// Path is one route of checks: to VIP, through Backend.
type Path struct {
	VIP, Backend netip.Addr
}

// String is "VIP via BACKEND".
func (p Path) String() string { return p.VIP.String() + " via " + p.Backend.String() }

// Options configure Open.
type Options struct {
	Logger *slog.Logger
	// Handle is where rules and routes go (its network namespace); nil: a
	// new handle in the calling thread's namespace, closed by Close.
	Handle *netlink.Handle
	// NetNS is Handle's network namespace, where the range is claimed; 0
	// (unset) or netns.None(): the calling thread's.
	NetNS netns.NsHandle
	// Instance names the daemon, stable across its restarts (its pin
	// directory): it picks the range tried first.
	Instance string
	// Sysctl reads a value under /proc/sys ("net/ipv4/conf/all/rp_filter");
	// nil: the file.
	Sysctl func(name string) (string, error)
}

// Router keeps the rules and routes of a set of paths. Its methods are safe
// for concurrent use.
type Router struct {
	h         *netlink.Handle
	ownHandle bool
	log       *slog.Logger
	sysctl    func(string) (string, error)

	mu     sync.Mutex
	rng    int             // the range claimed; -1: none
	claim  int             // fd of the socket claiming rng; -1: none
	marks  map[Path]uint32 // the slot (as its mark) of every path known
	owners map[uint32]Path // the other way round
	next   uint32          // slot after the last one handed out
	ruled  map[Path]bool   // the path's rule is in
	failed []Path          // of the last Install, for Retry
}

// Open returns a Router with no paths in a range of its own, after removing
// the rules and routes of every range no live daemon holds (its own, from a
// run killed before its Close, included). With every range held it still
// opens, and Mark and Install fail with ErrNoRange.
func Open(o Options) (*Router, error) {
	r := &Router{
		h: o.Handle, log: o.Logger, sysctl: o.Sysctl, rng: -1, claim: -1,
		marks: map[Path]uint32{}, owners: map[uint32]Path{}, ruled: map[Path]bool{},
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.sysctl == nil {
		r.sysctl = readSysctl
	}
	if r.h == nil {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("check routes: netlink: %w", err)
		}
		r.h, r.ownHandle = h, true
	}
	ns := o.NetNS
	if ns == 0 {
		ns = netns.None()
	}
	n, err := r.claimAndSweep(ns, preferredRange(o.Instance))
	if err != nil {
		r.release()
		r.closeHandle()
		return nil, fmt.Errorf("check routes: %w", err)
	}
	if r.rng < 0 {
		r.log.Warn("check_via_vip unavailable: " + ErrNoRange.Error())
	}
	if n > 0 {
		r.log.Info("removed check routes left by an earlier run", "rules_and_routes", n)
	}
	return r, nil
}

// claimAndSweep claims the first free range from pref on, and sweeps it
// and every other free range: nobody live owns what is in them.
func (r *Router) claimAndSweep(ns netns.NsHandle, pref int) (int, error) {
	free := map[int]bool{}
	var held []int // fds of the other free ranges, held while sweeping
	defer func() {
		for _, fd := range held {
			unix.Close(fd)
		}
	}()
	for i := range Ranges {
		g := (pref + i) % Ranges
		fd, ok, err := claim(ns, g)
		if err != nil {
			return 0, err
		}
		if !ok {
			continue
		}
		free[g] = true
		if r.rng < 0 {
			r.rng, r.claim = g, fd
		} else {
			held = append(held, fd)
		}
	}
	n, err := r.sweep(free)
	if err != nil {
		return n, fmt.Errorf("removing leftovers: %w", err)
	}
	return n, nil
}

// Mark is the firewall mark of p's checks, handing p a slot if it has none.
// It changes nothing in the kernel: Install does.
func (r *Router) Mark(p Path) (uint32, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.slot(p)
}

// Install puts in (or refreshes) the rule and routes of every path, handing
// out slots as Mark does. It returns the problems of the paths that are not
// routed through their backend, each wrapped with the path; those are
// retried by Retry.
func (r *Router) Install(paths []Path) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.installAll(paths)
}

// Retry installs again the paths that failed in the last Install or Retry
// (nil when none did).
func (r *Router) Retry() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.failed) == 0 {
		return nil
	}
	return r.installAll(r.failed)
}

// Prune removes the rules and routes of every path not in keep and frees
// their slots. Call it once the checks of those paths have stopped: a slot
// is handed out again.
func (r *Router) Prune(keep []Path) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	want := make(map[Path]bool, len(keep))
	for _, p := range keep {
		want[p] = true
	}
	var errs []error
	for p := range r.marks {
		if !want[p] {
			errs = append(errs, r.remove(p))
		}
	}
	return errors.Join(errs...)
}

// Close removes every rule and route of the Router and any of an earlier
// run.
func (r *Router) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for p := range r.marks {
		errs = append(errs, r.remove(p))
	}
	if r.rng >= 0 {
		_, err := r.sweep(map[int]bool{r.rng: true})
		errs = append(errs, err)
	}
	r.release()
	r.closeHandle()
	return errors.Join(errs...)
}

// release gives up the range, once nothing of it is left in the kernel.
func (r *Router) release() {
	if r.claim >= 0 {
		unix.Close(r.claim)
	}
	r.rng, r.claim = -1, -1
}

func (r *Router) closeHandle() {
	if r.ownHandle {
		r.h.Close()
		r.ownHandle = false
	}
}

// slot returns p's mark, handing out the next free slot after the last one
// handed out: a freed slot is used again as late as possible (r.mu held).
func (r *Router) slot(p Path) (uint32, error) {
	if m, ok := r.marks[p]; ok {
		return m, nil
	}
	if r.rng < 0 {
		return 0, ErrNoRange
	}
	first := Base + uint32(r.rng)<<rangeBits
	for i := range uint32(MaxSlots) {
		m := first + (r.next+i)%MaxSlots + 1
		if _, used := r.owners[m]; !used {
			r.marks[p], r.owners[m] = m, p
			r.next = m - first
			return m, nil
		}
	}
	return 0, fmt.Errorf("%w (%d paths)", ErrFull, MaxSlots)
}

// installAll installs paths and records the failed ones (r.mu held).
func (r *Router) installAll(paths []Path) error {
	var errs []error
	r.failed = nil
	for _, p := range paths {
		if err := r.install(p); err != nil {
			r.failed = append(r.failed, p)
			errs = append(errs, fmt.Errorf("check route %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// install puts in p's routes, then its rule, and checks where a marked
// lookup goes (r.mu held).
func (r *Router) install(p Path) error {
	if !p.VIP.IsValid() || !p.Backend.IsValid() || p.VIP.Is4() != p.Backend.Is4() {
		return fmt.Errorf("invalid path (want a vip and a backend of one family)")
	}
	mark, err := r.slot(p)
	if err != nil {
		return err
	}
	// The unreachable default first: marked packets never fall through to
	// the main table, even before the VIP route is in or once it is gone.
	if err := r.h.RouteReplace(r.route(p, mark, prefix(p.VIP, 0), unix.RTN_UNREACHABLE)); err != nil {
		return fmt.Errorf("unreachable default in table %d: %w", mark, err)
	}
	link, lerr := r.egress(p.Backend)
	vipRoute := r.route(p, mark, prefix(p.VIP, p.VIP.BitLen()), unix.RTN_UNICAST)
	if lerr == nil {
		vipRoute.Gw, vipRoute.LinkIndex, vipRoute.Flags = p.Backend.AsSlice(), link, int(netlink.FLAG_ONLINK)
		if err := r.h.RouteReplace(vipRoute); err != nil {
			return fmt.Errorf("route in table %d: %w", mark, err)
		}
	} else if err := r.h.RouteDel(vipRoute); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stale route in table %d: %w", mark, err)
	}
	if !r.ruled[p] {
		if err := r.h.RuleAdd(r.rule(p, mark)); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("rule for mark %#x: %w", mark, err)
		}
		r.ruled[p] = true
	}
	if lerr != nil {
		return lerr
	}
	if err := r.verify(p, mark); err != nil {
		return err
	}
	if p.VIP.Is4() {
		return r.checkRPFilter(p, link)
	}
	return nil
}

// remove takes p's rule and routes out and frees its slot (r.mu held).
func (r *Router) remove(p Path) error {
	mark := r.marks[p]
	var errs []error
	if r.ruled[p] {
		if err := r.h.RuleDel(r.rule(p, mark)); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("check route %s: rule: %w", p, err))
		}
	}
	for _, rt := range []*netlink.Route{
		r.route(p, mark, prefix(p.VIP, p.VIP.BitLen()), unix.RTN_UNICAST),
		r.route(p, mark, prefix(p.VIP, 0), unix.RTN_UNREACHABLE),
	} {
		if err := r.h.RouteDel(rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("check route %s: route %s: %w", p, rt.Dst, err))
		}
	}
	delete(r.marks, p)
	delete(r.owners, mark)
	delete(r.ruled, p)
	return errors.Join(errs...)
}

func (r *Router) route(p Path, table uint32, dst *net.IPNet, typ int) *netlink.Route {
	return &netlink.Route{
		Family: family(p.VIP), Table: int(table), Dst: dst, Type: typ, Protocol: Protocol,
	}
}

func (r *Router) rule(p Path, mark uint32) *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family, rule.Priority, rule.Table, rule.Mark, rule.Protocol = family(p.VIP), Priority, int(mark), mark, uint8(Protocol)
	return rule
}

// egress is the interface the datapath reaches backend on: an unmarked
// route lookup that must not go through a gateway.
func (r *Router) egress(backend netip.Addr) (int, error) {
	rts, err := r.h.RouteGet(backend.AsSlice())
	if err != nil || len(rts) == 0 {
		return 0, fmt.Errorf("%w: no route to %s: %v", ErrNotOnLink, backend, err)
	}
	rt := rts[0]
	switch {
	case rt.Type == unix.RTN_LOCAL:
		return 0, fmt.Errorf("%w: %s is a local address", ErrNotOnLink, backend)
	case rt.Gw != nil && !rt.Gw.Equal(backend.AsSlice()):
		return 0, fmt.Errorf("%w: %s is reached via gateway %s", ErrNotOnLink, backend, rt.Gw)
	}
	return rt.LinkIndex, nil
}

// verify asks the kernel where a packet to the VIP carrying mark goes.
func (r *Router) verify(p Path, mark uint32) error {
	rts, err := r.h.RouteGetWithOptions(p.VIP.AsSlice(), &netlink.RouteGetOptions{Mark: mark})
	if err != nil || len(rts) == 0 {
		return fmt.Errorf("%w: lookup of %s with mark %#x: %v", ErrNotThroughBackend, p.VIP, mark, err)
	}
	switch rt := rts[0]; {
	case rt.Type == unix.RTN_LOCAL:
		return fmt.Errorf("%w: %s is a local address of this host (the local table comes before every rule), "+
			"so checks through it would never leave the host", ErrNotThroughBackend, p.VIP)
	case !rt.Gw.Equal(p.Backend.AsSlice()):
		return fmt.Errorf("%w: a lookup with mark %#x goes to gateway %v, table %d", ErrNotThroughBackend, mark, rt.Gw, rt.Table)
	}
	return nil
}

// checkRPFilter reports when the IPv4 reverse-path filter would drop the
// answers, which come from the VIP and are looked up without the mark.
func (r *Router) checkRPFilter(p Path, link int) error {
	name := strconv.Itoa(link)
	if l, err := r.h.LinkByIndex(link); err == nil {
		name = l.Attrs().Name
	}
	mode := max(r.rpFilter("all"), r.rpFilter(name))
	if mode == 0 {
		return nil
	}
	rts, err := r.h.RouteGet(p.VIP.AsSlice())
	switch {
	case err != nil || len(rts) == 0 || rts[0].Type != unix.RTN_UNICAST:
		return fmt.Errorf("%w: rp_filter is %d on %s and this host has no route to %s: "+
			"add one through %s, or set net.ipv4.conf.{all,%s}.rp_filter=0", ErrRPFilter, mode, name, p.VIP, name, name)
	case mode == 1 && rts[0].LinkIndex != link:
		return fmt.Errorf("%w: strict rp_filter on %s and this host routes %s through another interface: "+
			"route it through %s, or set net.ipv4.conf.{all,%s}.rp_filter to 2 or 0", ErrRPFilter, name, p.VIP, name, name)
	}
	return nil
}

// rpFilter is net.ipv4.conf.IFACE.rp_filter, 0 if unreadable.
func (r *Router) rpFilter(iface string) int {
	v, err := r.sysctl("net/ipv4/conf/" + iface + "/rp_filter")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(v))
	return n
}

// sweep removes every rule and route of xlb's in the given ranges, and
// returns how many.
func (r *Router) sweep(ranges map[int]bool) (int, error) {
	swept := func(table int) bool {
		g, ok := rangeOf(table)
		return ok && ranges[g]
	}
	n := 0
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := r.h.RuleListFiltered(fam, &netlink.Rule{Priority: Priority}, netlink.RT_FILTER_PRIORITY)
		if err != nil {
			errs = append(errs, fmt.Errorf("list rules: %w", err))
			continue
		}
		for _, rule := range rules {
			if rule.Protocol != uint8(Protocol) || !swept(rule.Table) {
				continue
			}
			if err := r.h.RuleDel(&rule); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete rule %v: %w", rule, err))
				continue
			}
			n++
		}
	}
	routes, err := r.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: Protocol},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return n, errors.Join(append(errs, fmt.Errorf("list routes: %w", err))...)
	}
	for _, rt := range routes {
		if !swept(rt.Table) {
			continue
		}
		if err := r.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %v: %w", rt, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// prefix is a's network of the given length.
func prefix(a netip.Addr, bits int) *net.IPNet {
	pfx := netip.PrefixFrom(a, bits).Masked()
	return &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}
}

func readSysctl(name string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + name)
	return string(b), err
}

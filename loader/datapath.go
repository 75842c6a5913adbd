package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/bpf"
	"github.com/xlb-dev/xlb/config"
)

// XDPMode says how the program is attached: config's enum.
type XDPMode = config.XDPMode

const (
	XDPAuto    = config.XDPAuto    // native, falling back to generic
	XDPNative  = config.XDPNative  // driver mode only
	XDPGeneric = config.XDPGeneric // SKB mode
	XDPTC      = config.XDPTC      // the TC build at tcx ingress
)

// linkPinName and tcLinkPinName are the pinned bpf_link (XDP, or tcx in
// mode tc) that keeps the program attached while no daemon runs (with
// --keep-datapath) and that a restarted daemon adopts. A start in the other
// mode replaces it at Commit.
const (
	linkPinName   = "xdp_link"
	tcLinkPinName = "tc_link"
)

// Options configure Open.
type Options struct {
	// Interface receives the VIP traffic; empty loads the maps and programs
	// without attaching (tests, benchmarks).
	Interface string
	Mode      XDPMode
	// PinDir is the bpffs directory; empty disables pinning.
	PinDir string
	// KeepOnExit says the caller means to Close(true): Open refuses a PinDir
	// whose bpffs would go with this process (ErrPinsDieWithProcess).
	KeepOnExit bool
	// ConntrackSize and MaxBackends size the connection table and the
	// backend tables (0: the sizes in xlb.h). A pinned map of another size
	// is replaced, and with the backends map the flows that name its ids.
	ConntrackSize uint32
	MaxBackends   uint32
	Logger        *slog.Logger
	// SteerLocal attaches the socket hooks (bpf/sock.c, see sockSteer):
	// connections this host makes to L4 VIPs go to their backends. Cgroup
	// is the cgroup v2 directory they attach to, "" the hierarchy's root
	// (every process); tests use a child, so the host is never steered.
	SteerLocal bool
	Cgroup     string

	// spec loads the collection; nil means bpf.LoadXlb, or bpf.LoadXlbTc in
	// mode tc. The XDP benchmark swaps in its new-flow build.
	spec func() (*ebpf.CollectionSpec, error)
}

// Datapath is a loaded (and usually attached and pinned) datapath: the XDP
// program, or in mode tc its TC build.
//
// Open takes what is pinned in PinDir without changing it: the pinned maps
// and XDP link go on serving with the program that runs them, maps this
// start creates stay unpinned, and the reconciler's maps are copied. Commit,
// once the daemon has started, puts this program into the pinned link and
// pins what this start created. A datapath closed before Commit (a failed
// start) puts the copied maps back and leaves every pin and the attached
// program as Open found them.
type Datapath struct {
	Maps
	Program *ebpf.Program // xlb_xdp, or xlb_tc in mode tc
	Noop    *ebpf.Program // xlb_noop, the XDP_PASS program (nil in mode tc)
	IfIndex int
	Mode    XDPMode // the mode actually attached (or loaded: tc)
	Adopted bool    // maps were adopted from existing pins

	link        link.Link
	linkAdopted bool        // link came from its pin: another run's
	staleLinks  []link.Link // pinned for another interface or mode: replaced at Commit
	fresh       map[string]bool
	saved       *checkpoint // adopted maps as found, until Commit
	committed   bool
	pinDir      string
	createdDir  bool     // Open made pinDir
	lock        *os.File // flock on pinDir, held until Close
	log         *slog.Logger
	sock        *sockSteer // the socket hooks (Options.SteerLocal)
}

// Open loads the datapath, adopting pinned maps and link when present, and
// attaches it to opts.Interface (see Datapath for what it leaves unchanged
// until Commit).
func Open(opts Options) (*Datapath, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	var iface netlink.Link
	if opts.Interface != "" {
		l, err := netlink.LinkByName(opts.Interface)
		if err != nil {
			return nil, fmt.Errorf("interface %q: %w", opts.Interface, ErrNoInterface)
		}
		iface = l
	}

	loadSpec := opts.spec
	switch {
	case loadSpec != nil:
	case opts.Mode == XDPTC:
		loadSpec = bpf.LoadXlbTc
	default:
		loadSpec = bpf.LoadXlb
	}
	spec, err := loadSpec()
	if err != nil {
		return nil, fmt.Errorf("load embedded BPF object: %w", err)
	}
	if opts.ConntrackSize > 0 {
		// A NAT flow holds one entry in each.
		for _, name := range []string{bpf.XlbMapConntrack, bpf.XlbMapNatFlows, bpf.XlbMapNatBindings} {
			spec.Maps[name].MaxEntries = opts.ConntrackSize
		}
	}
	if opts.MaxBackends > 0 {
		spec.Maps[bpf.XlbMapBackends].MaxEntries = opts.MaxBackends
		spec.Maps[bpf.XlbMapBackendStats].MaxEntries = opts.MaxBackends
	}
	d := &Datapath{pinDir: opts.PinDir, log: log, Mode: opts.Mode}
	if opts.PinDir == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	} else if err := d.preparePins(spec, opts.KeepOnExit); err != nil {
		d.Close(false)
		return nil, err
	}

	collOpts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}}
	if err := d.load(spec, collOpts); err != nil {
		d.Close(false)
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%w: %s", ErrVerifier, verifierTail(ve, 8))
		}
		return nil, fmt.Errorf("load BPF collection: %w", err)
	}
	if d.Adopted {
		if d.saved, err = d.takeCheckpoint(d.fresh); err != nil {
			d.Close(false)
			return nil, err
		}
	}
	if d.sock, err = openSock(d, opts); err != nil {
		d.Close(false)
		return nil, err
	}
	if iface == nil {
		return d, nil
	}
	if err := d.attach(iface, opts.Mode); err != nil {
		d.Close(false)
		return nil, err
	}
	return d, nil
}

// load loads the maps and the program of d.Mode's build: the same maps
// either way.
func (d *Datapath) load(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) error {
	if d.Mode == XDPTC {
		var objs struct {
			bpf.XlbMaps
			Program *ebpf.Program `ebpf:"xlb_tc"`
		}
		if err := spec.LoadAndAssign(&objs, opts); err != nil {
			return err
		}
		d.Maps, d.Program = Maps{XlbMaps: objs.XlbMaps}, objs.Program
		return nil
	}
	var objs bpf.XlbObjects
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		return err
	}
	d.Maps = Maps{XlbMaps: objs.XlbMaps}
	d.Program, d.Noop = objs.XlbXdp, objs.XlbNoop
	return nil
}

// preparePins mounts bpffs if needed, locks the pin directory and marks in
// spec the maps this start creates (none pinned, or pinned by an older,
// incompatible build): those load unpinned until Commit.
func (d *Datapath) preparePins(spec *ebpf.CollectionSpec, keep bool) error {
	mounted, err := ensureBPFFS(d.pinDir, d.log)
	if err != nil {
		return err
	}
	lock, created, err := claimPinDir(d.pinDir)
	d.lock, d.createdDir = lock, created
	if err != nil {
		return err
	}
	if err := d.checkOutlives(keep, mounted); err != nil {
		return err
	}
	if err := restoreMovedPins(d.pinDir, d.log); err != nil {
		return err
	}
	d.fresh, d.Adopted, err = splitPins(spec, d.pinDir, d.log)
	return err
}

// checkOutlives refuses keep when the pins would go with this process, and
// says so when they will anyway; mounted says Open mounted the bpffs.
func (d *Datapath) checkOutlives(keep, mounted bool) error {
	outlives, ok, err := bpffsOutlivesProcess(d.pinDir, mounted)
	switch {
	case !ok:
		d.log.Debug("cannot tell whether the bpffs outlives xlb; assuming it does", "dir", d.pinDir, "err", err)
	case outlives:
	case keep:
		return fmt.Errorf("%s: %w", d.pinDir, ErrPinsDieWithProcess)
	default:
		d.log.Warn("the bpffs holding bpffs_dir is private to this process's mount namespace: pins end with xlb, and no restart can adopt them",
			"dir", d.pinDir)
	}
	return nil
}

// Commit makes this start's datapath the pinned one, once the daemon has
// started: the maps this start created are pinned, replacing incompatible
// pins, then the program takes over: the adopted link gets it (atomically),
// or the new link is pinned in place of stale ones (another interface's, or
// the other mode's: XDP and TC swap here). From then on Close(false) removes
// the pins.
//
// A Commit that fails undoes what it did (each replaced pin was moved aside,
// and goes back), leaving pins and program as Open found them, so that
// Close(false) still leaves the datapath as found; it can be called again.
// Not atomic: the flow timeouts' seen floor, raised first, stays raised
// (it only keeps flows longer); an undo that fails in turn, or a process
// killed between the first pin and the end, leaves some maps pinned anew
// beside the old program (the next start puts back a pin moved aside whose
// place is empty, see restoreMovedPins); and tools reading a pin while it
// is replaced may find no pin there.
func (d *Datapath) Commit() error {
	if d.committed {
		return nil
	}
	// Before this start's program takes over: the start counts as a packet
	// of every flow it adopted.
	if err := d.Maps.raiseSeenFloor(); err != nil {
		return err
	}
	if d.pinDir != "" {
		if err := d.commitPins(); err != nil {
			return err
		}
	}
	d.committed = true
	d.saved.close()
	d.saved = nil
	return nil
}

// Committed reports whether Commit succeeded.
func (d *Datapath) Committed() bool { return d.committed }

// commitPins pins the fresh maps (in name order), then switches the
// program; a failure rolls back the pins replaced before it.
func (d *Datapath) commitPins() error {
	var s pinSwap
	fields := d.mapFields()
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		if !d.fresh[name] {
			continue
		}
		if err := s.replace(*fields[name], filepath.Join(d.pinDir, name)); err != nil {
			return errors.Join(fmt.Errorf("pin map %s: %w", name, err), s.rollback())
		}
	}
	// The socket hooks' pins and programs before the XDP program: they are
	// undone with the rest if it fails.
	if err := d.sock.commit(&s); err != nil {
		return errors.Join(err, s.rollback())
	}
	if err := d.commitLink(&s); err != nil {
		return errors.Join(err, d.sock.revert(), s.rollback())
	}
	d.sock.finish()
	// Switched: what is left to do cannot undo it.
	if err := s.finish(); err != nil {
		d.log.Warn("old pins left beside the new ones", "dir", d.pinDir, "err", err)
	}
	for _, l := range d.staleLinks {
		// Unpinned by finish: it detaches from its interface as the last
		// fd (ours) goes.
		l.Close()
	}
	d.staleLinks = nil
	return nil
}

// commitLink gives the adopted link this program, or pins this start's link
// in place of a stale one (through s), and unpins the other mode's.
func (d *Datapath) commitLink(s *pinSwap) error {
	switch {
	case d.link == nil:
		return nil
	case d.linkAdopted:
		if err := d.link.Update(d.Program); err != nil {
			return fmt.Errorf("update pinned link: %w", err)
		}
	default:
		if err := s.replace(d.link, filepath.Join(d.pinDir, d.linkPin())); err != nil {
			return fmt.Errorf("pin link: %w", err)
		}
	}
	// The other mode's link goes (moved aside: back on a rollback).
	other := linkPinName
	if d.linkPin() == linkPinName {
		other = tcLinkPinName
	}
	if err := s.remove(filepath.Join(d.pinDir, other)); err != nil {
		return fmt.Errorf("unpin the other mode's link: %w", err)
	}
	return nil
}

// linkPin is the pin name of this mode's link.
func (d *Datapath) linkPin() string {
	if d.Mode == XDPTC {
		return tcLinkPinName
	}
	return linkPinName
}

// attach adopts a pinned link for iface (its program keeps running until
// Commit) or attaches a new, unpinned one.
func (d *Datapath) attach(iface netlink.Link, mode XDPMode) error {
	ifindex := iface.Attrs().Index
	d.IfIndex = ifindex
	if d.pinDir != "" {
		for _, name := range []string{linkPinName, tcLinkPinName} {
			pin := filepath.Join(d.pinDir, name)
			l, err := link.LoadPinnedLink(pin, nil)
			if err != nil {
				continue
			}
			if name == d.linkPin() && linkOn(l, ifindex) {
				d.link, d.linkAdopted = l, true
				d.adopted(iface, mode, pin)
				return nil
			}
			// Pinned for another interface or mode (or unreadable):
			// Commit replaces it.
			d.staleLinks = append(d.staleLinks, l)
		}
	}
	if mode == XDPTC {
		return d.attachTC(iface)
	}

	var l link.Link
	var err error
	switch mode {
	case XDPGeneric:
		l, err = attachXDP(d.Program, ifindex, link.XDPGenericMode)
		d.Mode = XDPGeneric
	case XDPNative:
		l, err = attachXDP(d.Program, ifindex, link.XDPDriverMode)
		d.Mode = XDPNative
	default:
		l, err = attachXDP(d.Program, ifindex, link.XDPDriverMode)
		d.Mode = XDPNative
		if err != nil {
			d.log.Warn("native XDP unavailable, falling back to generic mode",
				"interface", iface.Attrs().Name, "reason", err.Error())
			l, err = attachXDP(d.Program, ifindex, link.XDPGenericMode)
			d.Mode = XDPGeneric
		}
	}
	if err != nil {
		return fmt.Errorf("attach XDP (%s) to %s: %w", d.Mode, iface.Attrs().Name, err)
	}
	if d.Mode == XDPNative && iface.Type() == "veth" {
		d.log.Warn("native XDP on veth: XDP_TX needs an XDP program on the peer veth and checksum offload off on the sender (see README)",
			"interface", iface.Attrs().Name)
	}
	d.link = l
	d.log.Info("XDP attached", "interface", iface.Attrs().Name, "mode", string(d.Mode))
	return nil
}

// linkOn reports whether l attaches a program to ifindex: an XDP link, or a
// tcx link at its ingress.
func linkOn(l link.Link, ifindex int) bool {
	info, err := l.Info()
	switch {
	case err != nil:
		return false
	case info.XDP() != nil:
		return int(info.XDP().Ifindex) == ifindex
	case info.TCX() != nil:
		return int(info.TCX().Ifindex) == ifindex && ebpf.AttachType(info.TCX().AttachType) == ebpf.AttachTCXIngress
	}
	return false
}

// adopted logs the adoption of the link pinned at pin (and sets d.Mode).
func (d *Datapath) adopted(iface netlink.Link, mode XDPMode, pin string) {
	if mode == XDPTC {
		d.log.Info("adopted pinned TC link", "interface", iface.Attrs().Name, "mode", string(d.Mode), "pin", pin)
		return
	}
	d.Mode = attachedMode(iface)
	if mode != XDPAuto && mode != d.Mode {
		d.log.Warn("adopted XDP link keeps its attach mode; restart without --keep-datapath to change it",
			"attached", string(d.Mode), "configured", string(mode))
	}
	d.log.Info("adopted pinned XDP link", "interface", iface.Attrs().Name, "mode", string(d.Mode), "pin", pin)
}

// attachTC puts the TC build at the tcx ingress of iface, first (as XDP
// would run before any TC program).
func (d *Datapath) attachTC(iface netlink.Link) error {
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: iface.Attrs().Index,
		Program:   d.Program,
		Attach:    ebpf.AttachTCXIngress,
		Anchor:    link.Head(),
	})
	if errors.Is(err, ebpf.ErrNotSupported) {
		err = ErrNoTCX
	}
	if err != nil {
		return fmt.Errorf("attach TC (tcx ingress) to %s: %w", iface.Attrs().Name, err)
	}
	d.link = l
	d.log.Info("TC attached", "interface", iface.Attrs().Name, "mode", string(d.Mode))
	return nil
}

// attachedMode is how the kernel says XDP is attached to iface.
func attachedMode(iface netlink.Link) XDPMode {
	if l, err := netlink.LinkByIndex(iface.Attrs().Index); err == nil && l.Attrs().Xdp != nil &&
		l.Attrs().Xdp.AttachMode == nl.XDP_ATTACHED_DRV {
		return XDPNative
	}
	return XDPGeneric
}

func attachXDP(prog *ebpf.Program, ifindex int, flags link.XDPAttachFlags) (link.Link, error) {
	return link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: flags})
}

// Close releases the datapath. After Commit, keep leaves the program attached
// and the maps pinned (for a restart that adopts them); otherwise it detaches
// and unpins. Before Commit, whatever keep says, it puts the adopted maps'
// contents back, leaves adopted pins and link alone, and removes only what
// this start created (its link, its maps, the directory if it made it).
func (d *Datapath) Close(keep bool) error {
	var errs []error
	if d.saved != nil {
		errs = append(errs, d.saved.restore())
		d.saved.close()
		d.saved = nil
	}
	drop := d.committed && !keep
	if d.link != nil {
		if drop {
			errs = append(errs, d.link.Unpin())
		}
		// An unpinned link (this start's, before Commit) detaches here.
		errs = append(errs, d.link.Close())
		d.link = nil
	}
	for _, l := range d.staleLinks {
		errs = append(errs, l.Close())
	}
	d.staleLinks = nil
	if drop {
		for _, ptr := range d.mapFields() {
			if *ptr != nil {
				errs = append(errs, (*ptr).Unpin())
			}
		}
	}
	errs = append(errs, d.sock.close(drop))
	d.sock = nil
	if d.lock != nil && (drop || (!d.committed && d.createdDir)) {
		// Only removes the directory if nothing else lives there, and only
		// under its lock: without it the directory is another daemon's.
		if err := os.Remove(d.pinDir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
			errs = append(errs, err)
		}
	}
	errs = append(errs, d.Maps.Close())
	for _, p := range []*ebpf.Program{d.Program, d.Noop} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	if d.lock != nil {
		errs = append(errs, d.lock.Close()) // releases the flock
		d.lock = nil
	}
	return errors.Join(errs...)
}

// splitPins sorts the pinned maps: compatible ones are adopted (adopted says
// whether there is any); the rest, missing or of a layout an upgrade changed,
// are fresh: spec loads them unpinned, and Commit pins them, replacing an
// incompatible pin only then, so a failed start leaves it to whatever uses it.
func splitPins(spec *ebpf.CollectionSpec, dir string, log *slog.Logger) (fresh map[string]bool, adopted bool, err error) {
	fresh = map[string]bool{}
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			fresh[name] = true
			ms.Pinning = ebpf.PinNone
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("open pinned map %s: %w", path, err)
		}
		cerr := ms.Compatible(m)
		if cerr == nil && name == bpf.XlbMapRings {
			cerr = ringsTemplateCompatible(m)
		}
		m.Close()
		if cerr == nil {
			adopted = true
			continue
		}
		log.Warn("pinned map incompatible with this program: a new one replaces it once xlb has started (its state is lost)",
			"map", name, "reason", cerr.Error())
		fresh[name] = true
		ms.Pinning = ebpf.PinNone
	}
	// Flows name backend and service ids, which fresh maps hand out anew:
	// an adopted flow would reach whichever backend gets its id.
	if (fresh[bpf.XlbMapBackends] || fresh[bpf.XlbMapServices]) && !fresh[bpf.XlbMapConntrack] {
		log.Warn("backend or service ids start afresh: a new connection table replaces the pinned one too (flows are placed anew)")
		for _, name := range []string{bpf.XlbMapConntrack, bpf.XlbMapNatFlows, bpf.XlbMapNatBindings} {
			fresh[name] = true
			spec.Maps[name].Pinning = ebpf.PinNone
		}
	}
	return fresh, adopted, nil
}

// ringsTemplateCompatible checks what Compatible cannot see: the pinned outer
// map's inner-map template must accept the rings this loader builds (an older
// build's template differs in flags). It probes with an empty ring in the
// last slot, which only a full service table uses.
func ringsTemplateCompatible(rings *ebpf.Map) error {
	probe, err := newRing(make([]uint32, 1))
	if err != nil {
		return err
	}
	defer probe.Close()
	slot := MaxServices - 1
	var id ebpf.MapID
	if err := rings.Lookup(slot, &id); err == nil {
		return nil // in use: nothing to probe without disturbing it
	}
	if err := rings.Update(slot, probe, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("inner map template: %v: %w", err, ebpf.ErrMapIncompatible)
	}
	return rings.Delete(slot)
}

func verifierTail(ve *ebpf.VerifierError, n int) string {
	lines := ve.Log
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// InterfaceMAC returns an interface's hardware address.
func InterfaceMAC(ifindex int) (net.HardwareAddr, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil, err
	}
	return l.Attrs().HardwareAddr, nil
}

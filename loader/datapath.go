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
)

// XDPMode says how the program is attached.
type XDPMode string

const (
	XDPAuto    XDPMode = "auto"    // native, falling back to generic
	XDPNative  XDPMode = "native"  // driver mode only
	XDPGeneric XDPMode = "generic" // SKB mode
)

// linkPinName is the pinned bpf_link that keeps the program attached while no
// daemon runs (with --keep-datapath) and that a restarted daemon adopts.
const linkPinName = "xdp_link"

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

	// spec loads the collection; nil means bpf.LoadXlb. The XDP benchmark
	// swaps in its new-flow build.
	spec func() (*ebpf.CollectionSpec, error)
}

// Datapath is a loaded (and usually attached and pinned) XDP datapath.
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
	Program *ebpf.Program // xlb_xdp
	Noop    *ebpf.Program // xlb_noop, the XDP_PASS program
	IfIndex int
	Mode    XDPMode // the mode actually attached
	Adopted bool    // maps were adopted from existing pins

	link        link.Link
	linkAdopted bool      // link came from its pin: another run's
	staleLink   link.Link // pinned for another interface: replaced at Commit
	fresh       map[string]bool
	saved       *checkpoint // adopted maps as found, until Commit
	committed   bool
	pinDir      string
	createdDir  bool     // Open made pinDir
	lock        *os.File // flock on pinDir, held until Close
	log         *slog.Logger
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
	if loadSpec == nil {
		loadSpec = bpf.LoadXlb
	}
	spec, err := loadSpec()
	if err != nil {
		return nil, fmt.Errorf("load embedded XDP object: %w", err)
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
	d := &Datapath{pinDir: opts.PinDir, log: log}
	if opts.PinDir == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	} else if err := d.preparePins(spec, opts.KeepOnExit); err != nil {
		d.Close(false)
		return nil, err
	}

	var objs bpf.XlbObjects
	collOpts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}}
	if err := spec.LoadAndAssign(&objs, collOpts); err != nil {
		d.Close(false)
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%w: %s", ErrVerifier, verifierTail(ve, 8))
		}
		return nil, fmt.Errorf("load XDP collection: %w", err)
	}
	d.Maps = Maps{XlbMaps: objs.XlbMaps}
	d.Program, d.Noop = objs.XlbXdp, objs.XlbNoop
	if d.Adopted {
		if d.saved, err = d.takeCheckpoint(d.fresh); err != nil {
			d.Close(false)
			return nil, err
		}
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
// or the new link is pinned in place of a stale one. From then on
// Close(false) removes the pins.
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
	if err := d.commitLink(&s); err != nil {
		return errors.Join(err, s.rollback())
	}
	// Switched: what is left to do cannot undo it.
	if err := s.finish(); err != nil {
		d.log.Warn("old pins left beside the new ones", "dir", d.pinDir, "err", err)
	}
	if d.staleLink != nil {
		// Unpinned by finish: it detaches from its interface as the last
		// fd (ours) goes.
		d.staleLink.Close()
		d.staleLink = nil
	}
	return nil
}

// commitLink gives the adopted link this program, or pins this start's link
// in place of a stale one (through s).
func (d *Datapath) commitLink(s *pinSwap) error {
	switch {
	case d.link == nil:
		return nil
	case d.linkAdopted:
		if err := d.link.Update(d.Program); err != nil {
			return fmt.Errorf("update pinned XDP link: %w", err)
		}
		return nil
	}
	if err := s.replace(d.link, filepath.Join(d.pinDir, linkPinName)); err != nil {
		return fmt.Errorf("pin XDP link: %w", err)
	}
	return nil
}

// attach adopts a pinned link for iface (its program keeps running until
// Commit) or attaches a new, unpinned one.
func (d *Datapath) attach(iface netlink.Link, mode XDPMode) error {
	ifindex := iface.Attrs().Index
	d.IfIndex = ifindex
	if d.pinDir != "" {
		pin := filepath.Join(d.pinDir, linkPinName)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			info, ierr := l.Info()
			if ierr == nil && info.XDP() != nil && int(info.XDP().Ifindex) == ifindex {
				d.link, d.linkAdopted = l, true
				d.Mode = attachedMode(iface)
				if mode != XDPAuto && mode != d.Mode {
					d.log.Warn("adopted XDP link keeps its attach mode; restart without --keep-datapath to change it",
						"attached", string(d.Mode), "configured", string(mode))
				}
				d.log.Info("adopted pinned XDP link", "interface", iface.Attrs().Name, "mode", string(d.Mode), "pin", pin)
				return nil
			}
			// Pinned for another interface (or unreadable): Commit replaces it.
			d.staleLink = l
		}
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
	if d.staleLink != nil {
		errs = append(errs, d.staleLink.Close())
		d.staleLink = nil
	}
	if drop {
		for _, ptr := range d.mapFields() {
			if *ptr != nil {
				errs = append(errs, (*ptr).Unpin())
			}
		}
	}
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

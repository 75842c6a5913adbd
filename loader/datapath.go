package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
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
	// ConntrackSize overrides the connection table's capacity (0: default).
	ConntrackSize uint32
	Logger        *slog.Logger

	// spec loads the collection; nil means bpf.LoadXlb. The XDP benchmark
	// swaps in its new-flow build.
	spec func() (*ebpf.CollectionSpec, error)
}

// Datapath is a loaded (and usually attached and pinned) XDP datapath.
type Datapath struct {
	Maps
	Program  *ebpf.Program // xlb_xdp
	Noop     *ebpf.Program // xlb_noop, the XDP_PASS program
	IfIndex  int
	Mode     XDPMode // the mode actually attached
	Adopted  bool    // maps were adopted from existing pins
	link     link.Link
	pinDir   string
	log      *slog.Logger
	otherFDs []*ebpf.Map
}

// Open loads the datapath, adopting pinned maps and link when present, and
// attaches it to opts.Interface.
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
		spec.Maps[bpf.XlbMapConntrack].MaxEntries = opts.ConntrackSize
	}
	adopted := false
	if opts.PinDir == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	} else {
		if err := ensureBPFFS(opts.PinDir, log); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory: %w", err)
		}
		adopted, err = dropIncompatiblePins(spec, opts.PinDir, log)
		if err != nil {
			return nil, err
		}
	}

	var objs bpf.XlbObjects
	collOpts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}}
	if err := spec.LoadAndAssign(&objs, collOpts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%w: %s", ErrVerifier, verifierTail(ve, 8))
		}
		return nil, fmt.Errorf("load XDP collection: %w", err)
	}
	d := &Datapath{
		Maps:    Maps{objs.XlbMaps},
		Program: objs.XlbXdp,
		Noop:    objs.XlbNoop,
		Adopted: adopted,
		pinDir:  opts.PinDir,
		log:     log,
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

// attach adopts a pinned link (swapping in the new program atomically) or
// attaches a new one.
func (d *Datapath) attach(iface netlink.Link, mode XDPMode) error {
	ifindex := iface.Attrs().Index
	d.IfIndex = ifindex
	pin := ""
	if d.pinDir != "" {
		pin = filepath.Join(d.pinDir, linkPinName)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			info, ierr := l.Info()
			if ierr == nil && info.XDP() != nil && int(info.XDP().Ifindex) == ifindex {
				if err := l.Update(d.Program); err != nil {
					l.Close()
					return fmt.Errorf("update pinned XDP link: %w", err)
				}
				d.link = l
				d.Mode = attachedMode(iface)
				if mode != XDPAuto && mode != d.Mode {
					d.log.Warn("adopted XDP link keeps its attach mode; restart without --keep-datapath to change it",
						"attached", string(d.Mode), "configured", string(mode))
				}
				d.log.Info("adopted pinned XDP link", "interface", iface.Attrs().Name, "mode", string(d.Mode), "pin", pin)
				return nil
			}
			// Pinned for another interface (or unreadable): replace it.
			l.Unpin()
			l.Close()
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
	if pin != "" {
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("pin XDP link: %w", err)
		}
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

// Close releases the datapath. keep leaves the program attached and the maps
// pinned (for a restart that adopts them); otherwise it detaches and unpins.
func (d *Datapath) Close(keep bool) error {
	var errs []error
	if d.link != nil {
		if !keep {
			errs = append(errs, d.link.Unpin())
		}
		errs = append(errs, d.link.Close())
		d.link = nil
	}
	if !keep && d.pinDir != "" {
		for _, ptr := range d.mapFields() {
			if *ptr != nil {
				if err := (*ptr).Unpin(); err != nil {
					errs = append(errs, err)
				}
			}
		}
		// Only removes the directory if nothing else lives there.
		if err := os.Remove(d.pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	errs = append(errs, d.Maps.Close())
	for _, p := range []*ebpf.Program{d.Program, d.Noop} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	return errors.Join(errs...)
}

// bpffsRoot is the conventional bpffs mount point. Like bpftool and Cilium,
// xlb mounts it when it is missing (fresh hosts often lack it); any other pin
// directory must already be on a bpffs.
const bpffsRoot = "/sys/fs/bpf"

// ensureBPFFS makes sure dir is (or will be created) on a mounted bpffs.
func ensureBPFFS(dir string, log *slog.Logger) error {
	p := filepath.Clean(dir)
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil {
			if st.Type == unix.BPF_FS_MAGIC {
				return nil
			}
			if p == bpffsRoot {
				if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
					return fmt.Errorf("%s: %w: mount bpffs on %s: %v", dir, ErrNoBPFFS, bpffsRoot, err)
				}
				log.Info("mounted bpffs", "path", bpffsRoot)
				return nil
			}
			return fmt.Errorf("%s: %w (mount one: mount -t bpf bpf %s)", dir, ErrNoBPFFS, p)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("%s: %w", dir, ErrNoBPFFS)
		}
		p = parent
	}
}

// dropIncompatiblePins removes pins whose layout no longer matches the program
// (an upgrade changed a map), so loading creates them afresh. It reports
// whether any compatible pinned map was found to adopt.
func dropIncompatiblePins(spec *ebpf.CollectionSpec, dir string, log *slog.Logger) (bool, error) {
	adopted := false
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("open pinned map %s: %w", path, err)
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
		log.Warn("pinned map incompatible with this program, recreating it (its state is lost)",
			"map", name, "reason", cerr.Error())
		if err := os.Remove(path); err != nil {
			return false, fmt.Errorf("remove incompatible pin: %w", err)
		}
	}
	return adopted, nil
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

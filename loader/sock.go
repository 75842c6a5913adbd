package loader

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/bpf"
)

// ErrNoCgroup2: no cgroup v2 hierarchy is mounted (and none could be) for
// the socket hooks to attach to.
var ErrNoCgroup2 = errors.New("no cgroup v2 (cgroup2) filesystem mounted")

// cgroupRoot is where xlb mounts cgroup2 when nothing has, but only on an
// empty directory (a private /sys, as `ip netns exec` gives): a cgroup v1
// host has its controllers there.
const cgroupRoot = "/sys/fs/cgroup"

// sockHooks are the socket programs (bpf/sock.c), each with its attach
// type and the name its link is pinned under in the pin directory.
var sockHooks = []struct {
	pin    string
	attach ebpf.AttachType
	prog   func(*bpf.XlbSockPrograms) *ebpf.Program
}{
	{"sock_connect4", ebpf.AttachCGroupInet4Connect, func(p *bpf.XlbSockPrograms) *ebpf.Program { return p.XlbConnect4 }},
	{"sock_connect6", ebpf.AttachCGroupInet6Connect, func(p *bpf.XlbSockPrograms) *ebpf.Program { return p.XlbConnect6 }},
	{"sock_sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(p *bpf.XlbSockPrograms) *ebpf.Program { return p.XlbSendmsg4 }},
	{"sock_sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(p *bpf.XlbSockPrograms) *ebpf.Program { return p.XlbSendmsg6 }},
	{"sock_recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(p *bpf.XlbSockPrograms) *ebpf.Program { return p.XlbRecvmsg4 }},
	{"sock_recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(p *bpf.XlbSockPrograms) *ebpf.Program { return p.XlbRecvmsg6 }},
	{"sock_getpeername4", ebpf.AttachCgroupInet4GetPeername, func(p *bpf.XlbSockPrograms) *ebpf.Program { return p.XlbGetpeername4 }},
	{"sock_getpeername6", ebpf.AttachCgroupInet6GetPeername, func(p *bpf.XlbSockPrograms) *ebpf.Program { return p.XlbGetpeername6 }},
}

// sockMaps are the socket hooks' own maps, pinned by name beside the
// datapath's; the rest of their collection is the datapath's maps.
var sockMaps = []string{bpf.XlbSockMapSockPeers, bpf.XlbSockMapSockFlows}

// sockSteer is the socket hooks of a Datapath (Options.SteerLocal): loaded
// on the datapath's own maps and attached to a cgroup, following the
// datapath's lifecycle. Open adopts the links pinned for the same cgroup
// (their programs keep running until Commit) or attaches new, unpinned
// ones; Commit puts this start's programs into the adopted links, or pins
// the new ones in place of links pinned for another cgroup, and pins the
// maps this start created. Without SteerLocal, Commit removes what an
// earlier run pinned, so the host's connections are left alone from then on.
type sockSteer struct {
	enabled bool
	objs    bpf.XlbSockObjects
	pinDir  string
	links   map[string]link.Link // by pin name
	adopted map[string]bool      // links from their pins: another run's
	// old holds the programs the adopted links ran when found, for a
	// Commit that must undo their update.
	old     map[string]*ebpf.Program
	updated []string             // adopted links this Commit updated
	stale   map[string]link.Link // pinned for another cgroup: replaced at Commit
	fresh   map[string]bool      // maps this start created
	log     *slog.Logger
}

// openSock loads and attaches the socket hooks on d's maps, or with
// steering off only notes that Commit must remove an earlier run's.
func openSock(d *Datapath, opts Options) (*sockSteer, error) {
	s := &sockSteer{enabled: opts.SteerLocal, pinDir: opts.PinDir, log: d.log,
		links: map[string]link.Link{}, adopted: map[string]bool{}, old: map[string]*ebpf.Program{},
		stale: map[string]link.Link{}}
	if !s.enabled {
		return s, nil
	}
	cgroup := opts.Cgroup
	if cgroup == "" {
		var err error
		if cgroup, err = cgroup2Root(d.log); err != nil {
			return s, err
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(cgroup, &st); err != nil {
		return s, fmt.Errorf("cgroup %s: %w", cgroup, err)
	}
	if err := s.load(&d.Maps); err != nil {
		return s, err
	}
	for _, h := range sockHooks {
		if err := s.attach(cgroup, st.Ino, h.pin, h.attach, h.prog(&s.objs.XlbSockPrograms)); err != nil {
			return s, err
		}
	}
	d.log.Info("socket hooks attached: the host's own connections to L4 VIPs go to their backends",
		"cgroup", cgroup, "adopted", len(s.adopted) > 0)
	return s, nil
}

// load loads the socket programs on the datapath's maps (the same maps, so
// that they share state) and, when pinning, their own maps by name.
func (s *sockSteer) load(maps *Maps) error {
	spec, err := bpf.LoadXlbSock()
	if err != nil {
		return fmt.Errorf("load embedded socket hooks: %w", err)
	}
	cookie, err := netnsCookie()
	if err != nil {
		return err
	}
	if err := spec.Variables[bpf.XlbSockVarNetnsCookie].Set(cookie); err != nil {
		return fmt.Errorf("socket hooks: set network namespace: %w", err)
	}
	replace := map[string]*ebpf.Map{}
	for name, ptr := range maps.mapFields() {
		ms, ok := spec.Maps[name]
		if !ok || *ptr == nil {
			continue
		}
		replace[name] = *ptr
		ms.MaxEntries = (*ptr).MaxEntries() // resized from [datapath]
		ms.Pinning = ebpf.PinNone
	}
	if s.pinDir == "" {
		for _, name := range sockMaps {
			spec.Maps[name].Pinning = ebpf.PinNone
		}
	} else if s.fresh, _, err = splitPins(spec, s.pinDir, s.log); err != nil {
		return err
	}
	err = spec.LoadAndAssign(&s.objs, &ebpf.CollectionOptions{
		Maps:            ebpf.MapOptions{PinPath: s.pinDir},
		MapReplacements: replace,
	})
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("%w: socket hooks: %s", ErrVerifier, verifierTail(ve, 8))
	}
	if err != nil {
		return fmt.Errorf("load socket hooks: %w", err)
	}
	return nil
}

// attach adopts the link pinned as pin when it holds the same hook of the
// same cgroup (its program runs on until Commit), or attaches prog anew.
func (s *sockSteer) attach(cgroup string, cgroupID uint64, pin string, attach ebpf.AttachType, prog *ebpf.Program) error {
	if s.pinDir != "" {
		if l, err := link.LoadPinnedLink(filepath.Join(s.pinDir, pin), nil); err == nil {
			info, ierr := l.Info()
			if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgroupID &&
				ebpf.AttachType(info.Cgroup().AttachType) == attach {
				old, err := ebpf.NewProgramFromID(info.Program)
				if err != nil {
					l.Close()
					return fmt.Errorf("program of the pinned %s link: %w", pin, err)
				}
				s.links[pin], s.adopted[pin], s.old[pin] = l, true, old
				return nil
			}
			s.stale[pin] = l
		}
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: attach, Program: prog})
	if err != nil {
		return fmt.Errorf("attach %s to cgroup %s: %w", pin, cgroup, err)
	}
	s.links[pin] = l
	return nil
}

// commit makes this start's hooks the pinned ones (see sockSteer) through
// sw, so that the datapath's Commit undoes it with its own pins (and revert
// the programs) if it fails: the maps this start created are pinned, then
// its new links in place of stale ones, then the adopted links get this
// start's programs. With steering off it moves an earlier run's pins aside
// (gone with sw.finish: its links detach, its maps go with its programs).
func (s *sockSteer) commit(sw *pinSwap) error {
	if s == nil || s.pinDir == "" {
		return nil
	}
	if !s.enabled {
		for _, name := range s.pinNames() {
			if err := sw.remove(filepath.Join(s.pinDir, name)); err != nil {
				return fmt.Errorf("remove pinned %s: %w", name, err)
			}
		}
		return nil
	}
	for _, name := range sockMaps {
		if s.fresh[name] {
			if err := sw.replace(s.sockMap(name), filepath.Join(s.pinDir, name)); err != nil {
				return fmt.Errorf("pin map %s: %w", name, err)
			}
		}
	}
	for _, h := range sockHooks {
		if !s.adopted[h.pin] {
			// A stale link's pin is moved aside; it detaches once
			// finish removes it and finish here closes our descriptor.
			if err := sw.replace(s.links[h.pin], filepath.Join(s.pinDir, h.pin)); err != nil {
				return fmt.Errorf("pin %s link: %w", h.pin, err)
			}
		}
	}
	for _, h := range sockHooks {
		if !s.adopted[h.pin] {
			continue
		}
		if err := s.links[h.pin].Update(h.prog(&s.objs.XlbSockPrograms)); err != nil {
			return errors.Join(fmt.Errorf("update pinned %s link: %w", h.pin, err), s.revert())
		}
		s.updated = append(s.updated, h.pin)
	}
	return nil
}

// revert gives the adopted links commit updated their old programs back.
func (s *sockSteer) revert() error {
	if s == nil {
		return nil
	}
	var errs []error
	for _, pin := range s.updated {
		errs = append(errs, s.links[pin].Update(s.old[pin]))
	}
	s.updated = nil
	return errors.Join(errs...)
}

// finish drops what a successful commit no longer needs: the stale links
// (their pins moved aside, they detach as our descriptors go) and the old
// programs.
func (s *sockSteer) finish() {
	if s == nil {
		return
	}
	for pin, l := range s.stale {
		l.Close()
		delete(s.stale, pin)
	}
	for pin, p := range s.old {
		p.Close()
		delete(s.old, pin)
	}
	s.updated = nil
}

// pinNames are the names the hooks pin under: their links and maps.
func (s *sockSteer) pinNames() []string {
	var out []string
	for _, h := range sockHooks {
		out = append(out, h.pin)
	}
	return append(out, sockMaps...)
}

func (s *sockSteer) sockMap(name string) *ebpf.Map {
	switch name {
	case bpf.XlbSockMapSockPeers:
		return s.objs.SockPeers
	case bpf.XlbSockMapSockFlows:
		return s.objs.SockFlows
	}
	return nil
}

// close releases the hooks: drop (a committed datapath closed without
// keep) unpins links and maps, so the links detach; otherwise pinned links
// stay attached and only this start's unpinned ones detach.
func (s *sockSteer) close(drop bool) error {
	if s == nil {
		return nil
	}
	var errs []error
	for pin, l := range s.links {
		if drop {
			errs = append(errs, l.Unpin())
		}
		errs = append(errs, l.Close())
		delete(s.links, pin)
	}
	for pin, l := range s.stale {
		errs = append(errs, l.Close())
		delete(s.stale, pin)
	}
	for pin, p := range s.old {
		errs = append(errs, p.Close())
		delete(s.old, pin)
	}
	if drop && s.enabled {
		for _, name := range sockMaps {
			if m := s.sockMap(name); m != nil {
				errs = append(errs, m.Unpin())
			}
		}
	}
	errs = append(errs, s.objs.Close())
	return errors.Join(errs...)
}

// netnsCookie is the calling thread's network namespace cookie, which the
// hooks compare with bpf_get_netns_cookie: only sockets of this namespace,
// whose routes reach the backends, are steered.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("network namespace cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("network namespace cookie (SO_NETNS_COOKIE, Linux 5.14+): %w", err)
	}
	return c, nil
}

// cgroup2Root finds the root of the cgroup v2 hierarchy in this process's
// mounts (/sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a
// hybrid one). With none mounted it mounts one on an empty /sys/fs/cgroup,
// as `ip netns exec`'s private /sys has, and goes with that namespace.
func cgroup2Root(log *slog.Logger) (string, error) {
	dir, err := findCgroup2("/proc/self/mountinfo")
	if err != nil || dir != "" {
		return dir, err
	}
	entries, err := os.ReadDir(cgroupRoot)
	if err != nil || len(entries) > 0 {
		return "", fmt.Errorf("%w: mount one (mount -t cgroup2 none %s) or set [daemon] steer_local = false", ErrNoCgroup2, cgroupRoot)
	}
	if err := unix.Mount("cgroup2", cgroupRoot, "cgroup2", 0, ""); err != nil {
		return "", fmt.Errorf("%w: mount cgroup2 on %s: %v (or set [daemon] steer_local = false)", ErrNoCgroup2, cgroupRoot, err)
	}
	log.Info("mounted cgroup2", "path", cgroupRoot)
	return cgroupRoot, nil
}

// findCgroup2 returns the mount point of the cgroup2 hierarchy's root
// ("/", in this cgroup namespace) listed in mountinfo, or "".
func findCgroup2(mountinfo string) (string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw":
		// root and mount point are the 4th and 5th fields, the type the
		// first after "-".
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[3] != "/" {
			continue
		}
		for i := 5; i+1 < len(fields); i++ {
			if fields[i] == "-" {
				if fields[i+1] == "cgroup2" {
					return unescapeMount(fields[4]), nil
				}
				break
			}
		}
	}
	return "", sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

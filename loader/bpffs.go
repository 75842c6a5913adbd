package loader

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// bpffsRoot is the conventional bpffs mount point. Like bpftool and Cilium,
// xlb mounts it when it is missing (fresh hosts often lack it); any other pin
// directory must already be on a bpffs.
const bpffsRoot = "/sys/fs/bpf"

// ensureBPFFS makes sure dir is (or will be created) on a mounted bpffs;
// mounted says it mounted one (on bpffsRoot).
func ensureBPFFS(dir string, log *slog.Logger) (mounted bool, err error) {
	p := filepath.Clean(dir)
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil {
			if st.Type == unix.BPF_FS_MAGIC {
				return false, nil
			}
			if p == bpffsRoot {
				if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
					return false, fmt.Errorf("%s: %w: mount bpffs on %s: %v", dir, ErrNoBPFFS, bpffsRoot, err)
				}
				log.Info("mounted bpffs", "path", bpffsRoot)
				return true, nil
			}
			return false, fmt.Errorf("%s: %w (mount one: mount -t bpf bpf %s)", dir, ErrNoBPFFS, p)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return false, fmt.Errorf("%s: %w", dir, ErrNoBPFFS)
		}
		p = parent
	}
}

// What the kernel says of this process's and PID 1's mount namespaces.
const (
	procSelf      = "/proc/self"
	selfMountNS   = "/proc/self/ns/mnt"
	initMountNS   = "/proc/1/ns/mnt"
	initMountInfo = "/proc/1/mountinfo"
)

// errInitIsSelf: this process is /proc's PID 1, so PID 1's mounts say
// nothing of what outlives it.
var errInitIsSelf = errors.New("xlb is PID 1 (of /proc's PID namespace): whether the bpffs is also mounted outside its mount namespace cannot be seen")

// bpffsOutlivesProcess reports whether the bpffs holding dir stays mounted
// when this process exits; mountedHere says this process mounted it
// (ensureBPFFS). ok is false, with an error, when it cannot tell. See
// outlivesFacts.decide.
func bpffsOutlivesProcess(dir string, mountedHere bool) (outlives, ok bool, err error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return false, false, fmt.Errorf("stat %s: %w", dir, err)
	}
	self, _ := os.Readlink(procSelf) // this process's PID as /proc counts
	f := outlivesFacts{
		dev:           fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)),
		selfIsInit:    self == "1",
		mountedHere:   mountedHere,
		initMountInfo: initMountInfo,
	}
	f.sameNS, f.nsErr = sameFile(selfMountNS, initMountNS)
	return f.decide()
}

// outlivesFacts is what tells whether a bpffs outlives this process: it
// does when a mount namespace that outlives the process has it mounted.
type outlivesFacts struct {
	dev           string // the bpffs's device, "MAJOR:MINOR": one per instance
	selfIsInit    bool   // this process is /proc's PID 1
	mountedHere   bool   // this process mounted the bpffs
	sameNS        bool   // this process and PID 1 share a mount namespace
	nsErr         error  // sameNS is unknown (/proc/1/ns/mnt unreadable)
	initMountInfo string // PID 1's mountinfo
}

// decide: PID 1 outlives this process, and so does its mount namespace.
// Sharing it, the bpffs stays (the host, or `nsenter --net`); in another
// one (`ip netns exec`'s private mount namespace with a fresh /sys) the
// bpffs stays only if PID 1's namespace has the same instance mounted. When
// this process is PID 1 itself (a container's), its mount namespace most
// likely ends with it: a bpffs it mounted goes, and one mounted before it
// started (by the container's runtime, from the host's?) cannot be judged
// from inside.
func (f outlivesFacts) decide() (outlives, ok bool, err error) {
	switch {
	case f.selfIsInit && f.mountedHere:
		return false, true, nil
	case f.selfIsInit:
		return false, false, errInitIsSelf
	case f.nsErr == nil && f.sameNS:
		return true, true, nil
	}
	found, err := hasBPFMount(f.initMountInfo, f.dev)
	if err != nil {
		return false, false, err
	}
	return found, true, nil
}

// sameFile reports whether paths a and b are one file (for namespaces: one
// namespace).
func sameFile(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(fa, fb), nil
}

// hasBPFMount reports whether the mountinfo file lists a bpffs of device dev.
func hasBPFMount(mountinfo, dev string) (bool, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "36 35 0:27 / /sys/fs/bpf rw,relatime shared:8 - bpf bpf rw": the
		// device is the third field, the type the first after "-".
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[2] != dev {
			continue
		}
		if i := slices.Index(fields, "-"); i >= 0 && i+1 < len(fields) && fields[i+1] == "bpf" {
			return true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("read %s: %w", mountinfo, err)
	}
	return false, nil
}

// claimPinDir creates dir if needed and takes an exclusive flock on the
// directory itself, so that a second daemon never adopts (and, failing,
// removes) a running one's pins. The lock sits on the directory's inode:
// bpffs holds no regular files to lock, a lock on a file elsewhere (/run)
// would tie daemons in other mount namespaces that use distinct bpffs
// instances under the same path, and a flock ends with its process, so a
// killed daemon leaves nothing stale behind. created says whether this call
// made the directory and holds its lock: a start that made it but lost the
// lock to another (which found it made) must not remove it.
func claimPinDir(dir string) (lock *os.File, created bool, err error) {
	// A holder that stops removes the directory; a lock taken on the removed
	// one would guard nothing, so such a race starts over.
	for range 3 {
		created, err = mkdirOwned(dir)
		if err != nil {
			return nil, false, err
		}
		lock, err = lockDir(dir)
		if err != nil {
			return nil, false, err
		}
		if lock != nil {
			return lock, created, nil
		}
	}
	return nil, false, fmt.Errorf("lock pin directory %s: it keeps being removed", dir)
}

// mkdirOwned is os.MkdirAll, telling whether dir itself was created.
func mkdirOwned(dir string) (bool, error) {
	if _, err := os.Stat(dir); err == nil {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("create pin directory: %w", err)
	}
	return true, nil
}

// lockDir locks dir; nil, nil means dir was removed under the lock.
func lockDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open pin directory: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("stat pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, inUseError(dir, st)
		}
		return nil, fmt.Errorf("lock pin directory %s: %w", dir, err)
	}
	var now unix.Stat_t
	if err := unix.Stat(dir, &now); err != nil || now.Dev != st.Dev || now.Ino != st.Ino {
		f.Close()
		return nil, nil
	}
	return f, nil
}

func inUseError(dir string, st unix.Stat_t) error {
	holder := "its PID unknown"
	if pid := flockHolder(st.Dev, st.Ino); pid > 0 {
		holder = "pid " + strconv.Itoa(pid)
	}
	return fmt.Errorf("%s: %w (%s): stop it first, or give this one another bpffs_dir", dir, ErrPinDirInUse, holder)
}

// flockHolder is the PID holding a flock on the inode, from /proc/locks
// (0 if not listed, or not visible in this PID namespace).
func flockHolder(dev, ino uint64) int {
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		return 0
	}
	// "1: FLOCK  ADVISORY  WRITE 1234 00:27:78744 0 EOF", device in hex; a
	// blocked waiter's line has "->" after the number and is skipped.
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(dev), unix.Minor(dev), ino)
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) >= 6 && f[1] == "FLOCK" && f[5] == want {
			if pid, err := strconv.Atoi(f[4]); err == nil {
				return pid
			}
		}
	}
	return 0
}

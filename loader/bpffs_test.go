package loader

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// pid1Env makes the test binary the child of TestKeepOnExitRefusedAsPID1.
const pid1Env = "XLB_TEST_PID1_CHILD"

// xlb as PID 1 of a container of its own (PID and mount namespaces, a fresh
// /proc and /sys, no bpffs): /proc/1 is xlb itself, and the bpffs it mounts
// goes with it, so KeepOnExit is refused.
func TestKeepOnExitRefusedAsPID1(t *testing.T) {
	requireRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestPID1Child$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), pid1Env+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "refused: ") {
		t.Errorf("Open with KeepOnExit as PID 1 on its own bpffs was not refused:\n%s", out)
	}
}

// TestPID1Child is the child's side: it does nothing in an ordinary run.
func TestPID1Child(t *testing.T) {
	if os.Getenv(pid1Env) == "" {
		return
	}
	if os.Getpid() != 1 {
		t.Fatalf("pid %d, want 1", os.Getpid())
	}
	// Nothing done here may reach the host's mounts; the namespace goes
	// with this process.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Fatalf("make mounts private: %v", err)
	}
	// As `ip netns exec` does for /sys: the old tree (with its bpffs) goes.
	for _, m := range []struct{ src, target, fstype string }{{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}} {
		if err := unix.Unmount(m.target, unix.MNT_DETACH); err != nil {
			t.Fatalf("unmount %s: %v", m.target, err)
		}
		if err := unix.Mount(m.src, m.target, m.fstype, 0, ""); err != nil {
			t.Fatalf("mount %s: %v", m.target, err)
		}
	}
	dp, err := Open(Options{PinDir: bpffsRoot + "/xlb-test-pid1", KeepOnExit: true, Logger: quietLogger()})
	if err == nil {
		dp.Close(false)
		t.Log("accepted")
		return
	}
	if !errors.Is(err, ErrPinsDieWithProcess) {
		t.Fatal(err)
	}
	t.Logf("refused: %v", err)
}

// Whether a bpffs outlives the process, from what the kernel says; the
// mountinfo files are PID 1's.
func TestOutlivesDecision(t *testing.T) {
	errNS := fs.ErrPermission // /proc/1/ns/mnt unreadable (as under some sandboxes)
	tests := []struct {
		name         string
		facts        outlivesFacts
		outlives, ok bool
		err          error
	}{
		{"host: PID 1's mount namespace",
			outlivesFacts{dev: "0:41", sameNS: true, initMountInfo: "host"}, true, true, nil},
		{"nsenter --net: PID 1's mount namespace, bpffs mounted by xlb",
			outlivesFacts{dev: "0:41", sameNS: true, mountedHere: true, initMountInfo: "host-no-bpffs"}, true, true, nil},
		{"ip netns exec: private mount namespace, its own bpffs",
			outlivesFacts{dev: "0:99", mountedHere: true, initMountInfo: "host"}, false, true, nil},
		{"ip netns exec on a host without bpffs",
			outlivesFacts{dev: "0:99", mountedHere: true, initMountInfo: "host-no-bpffs"}, false, true, nil},
		{"private mount namespace, the host's bpffs",
			outlivesFacts{dev: "0:41", initMountInfo: "host"}, true, true, nil},
		{"private mount namespace, a host bpffs elsewhere",
			outlivesFacts{dev: "0:52", initMountInfo: "host-bpffs-elsewhere"}, true, true, nil},
		{"private mount namespace, a tmpfs named bpf is no bpffs",
			outlivesFacts{dev: "0:53", initMountInfo: "host-bpffs-elsewhere"}, false, true, nil},
		{"namespaces unknown: PID 1's mounts have it",
			outlivesFacts{dev: "0:41", nsErr: errNS, initMountInfo: "host"}, true, true, nil},
		{"namespaces unknown: PID 1's mounts lack it",
			outlivesFacts{dev: "0:99", nsErr: errNS, initMountInfo: "host"}, false, true, nil},
		{"PID 1 of a container, its own bpffs",
			outlivesFacts{dev: "0:99", selfIsInit: true, sameNS: true, mountedHere: true, initMountInfo: "host"}, false, true, nil},
		{"PID 1 of a container, a bpffs mounted before it started",
			outlivesFacts{dev: "0:41", selfIsInit: true, sameNS: true, initMountInfo: "host"}, false, false, errInitIsSelf},
		{"PID 1's mounts unreadable",
			outlivesFacts{dev: "0:41", initMountInfo: "missing"}, false, false, fs.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.facts
			f.initMountInfo = filepath.Join("testdata", "mountinfo", f.initMountInfo)
			outlives, ok, err := f.decide()
			if outlives != tt.outlives || ok != tt.ok || !errors.Is(err, tt.err) {
				t.Errorf("decide() = %v, %v, %v; want %v, %v, %v", outlives, ok, err, tt.outlives, tt.ok, tt.err)
			}
		})
	}
}

package loader

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testNet is a network namespace of a test's own, gone when the test ends.
// BPF_PROG_TEST_RUN delivers an XDP program's packets on the caller's lo and
// its FIB and MTU helpers read the caller's routes and interfaces, so
// running them in testNet.do makes them see only what the test set up.
type testNet struct {
	t  testing.TB
	ns netns.NsHandle
	h  *netlink.Handle // configures the namespace from any thread
}

func newTestNet(t testing.TB) *testNet {
	t.Helper()
	requireRoot(t)
	n := &testNet{t: t}
	n.onThread(func(orig netns.NsHandle) {
		var err error
		if n.ns, err = netns.New(); err != nil {
			t.Fatalf("new network namespace: %v", err)
		}
	})
	h, err := netlink.NewHandleAt(n.ns)
	if err != nil {
		n.ns.Close()
		t.Fatal(err)
	}
	n.h = h
	t.Cleanup(func() {
		h.Close()
		n.ns.Close() // the last reference: the namespace and its links go
	})
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("lo up: %v", err)
	}
	return n
}

// onThread runs fn on a locked thread and puts the thread back in its
// original namespace after; a thread that cannot go back is not unlocked,
// so the runtime retires it rather than reuse it elsewhere.
func (n *testNet) onThread(fn func(orig netns.NsHandle)) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		n.t.Fatalf("current network namespace: %v", err)
	}
	defer orig.Close()
	defer func() {
		if err := netns.Set(orig); err != nil {
			n.t.Errorf("back to the original network namespace: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	fn(orig)
}

// do runs fn inside the namespace.
func (n *testNet) do(fn func()) {
	n.onThread(func(netns.NsHandle) {
		if err := netns.Set(n.ns); err != nil {
			n.t.Fatalf("enter test network namespace: %v", err)
		}
		fn()
	})
}

// sysctl writes a net sysctl (e.g. "net/ipv4/conf/lo/forwarding") of the
// namespace: /proc/sys/net belongs to the writing thread's namespace.
func (n *testNet) sysctl(key, value string) {
	n.t.Helper()
	var err error
	n.do(func() { err = os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644) })
	if err != nil {
		n.t.Fatalf("sysctl %s=%s: %v", key, value, err)
	}
}

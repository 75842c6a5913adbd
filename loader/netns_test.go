package loader

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
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

// veth adds the pair name and peer, both up, name with mac and mtu (nil, 0:
// the kernel's) and addrs (no duplicate address detection); it returns
// name's ifindex.
func (n *testNet) veth(name, peer string, mac net.HardwareAddr, mtu int, addrs ...string) int {
	n.t.Helper()
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: mac, MTU: mtu}, PeerName: peer}
	if err := n.h.LinkAdd(link); err != nil {
		n.t.Fatalf("add veth %s: %v", name, err)
	}
	index := 0
	for _, ifname := range []string{name, peer} {
		l, err := n.h.LinkByName(ifname)
		if err == nil {
			err = n.h.LinkSetUp(l)
		}
		if err != nil {
			n.t.Fatalf("%s up: %v", ifname, err)
		}
		if ifname == name {
			index = l.Attrs().Index
		}
	}
	for _, a := range addrs {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			n.t.Fatal(err)
		}
		addr.Flags, addr.LinkIndex = unix.IFA_F_NODAD, index
		if err := n.h.AddrAdd(link, addr); err != nil {
			n.t.Fatalf("address %s: %v", a, err)
		}
	}
	return index
}

// neigh adds a permanent neighbour entry on link.
func (n *testNet) neigh(link int, ip netip.Addr, mac net.HardwareAddr) {
	n.t.Helper()
	nb := &netlink.Neigh{LinkIndex: link, IP: ip.AsSlice(), HardwareAddr: mac, State: netlink.NUD_PERMANENT, Family: family(ip)}
	if err := n.h.NeighAdd(nb); err != nil {
		n.t.Fatalf("neighbour %s: %v", ip, err)
	}
}

package loader

import (
	"testing"

	"github.com/vishvananda/netlink"
)

// newDummyLink creates a veth pair (this kernel has no dummy driver) and
// returns the index of its first end; both go when the test ends.
func newDummyLink(t testing.TB, name string) int {
	t.Helper()
	if old, err := netlink.LinkByName(name); err == nil {
		netlink.LinkDel(old)
	}
	l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	if err := netlink.LinkAdd(l); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	t.Cleanup(func() { netlink.LinkDel(l) })
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	got, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return got.Attrs().Index
}

package loader

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AddVIP puts vip on the loopback interface so a local listener (the L7
// proxy) can bind it and the host accepts traffic for it. It returns a func
// that removes the address again, or a no-op when the address was already
// there (someone else owns it).
func AddVIP(vip netip.Addr) (remove func() error, err error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("add VIP %s: loopback: %w", vip, err)
	}
	vip = vip.Unmap()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(vip.BitLen(), vip.BitLen())}}
	if vip.Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(lo, addr); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return func() error { return nil }, nil
		}
		return nil, fmt.Errorf("add VIP %s to lo: %w", vip, err)
	}
	return func() error { return netlink.AddrDel(lo, addr) }, nil
}

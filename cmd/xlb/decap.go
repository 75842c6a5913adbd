package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/xlb-dev/xlb/loader"
)

const decapUsage = `usage: xlb decap --interface IFACE --vip ADDR [--vip ADDR ...]
On a backend of forwarding = "ipip" services: strip the outer IPv4 or IPv6
header of the IP-in-IP and IPv6-in-IPv6 packets for the VIPs that arrive on
IFACE (a TC ingress program, attached with tcx) so the kernel delivers the
inner packets as if they had come bare; no tunnel module is needed. Runs
until SIGINT or SIGTERM, then detaches. The VIPs must be on lo
(ip addr add 198.19.0.10/32 dev lo), as for dsr.`

// vipFlags collects repeated --vip ADDR.
type vipFlags []netip.Addr

func (v *vipFlags) String() string { return fmt.Sprint([]netip.Addr(*v)) }

func (v *vipFlags) Set(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return fmt.Errorf("want an IPv4 or IPv6 address, got %q", s)
	}
	a = a.Unmap()
	if a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("want a unicast address, got %s", a)
	}
	*v = append(*v, a)
	return nil
}

func decapCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("decap", flag.ContinueOnError)
	iface := fs.String("interface", "", "interface the tunneled packets arrive on (required)")
	var vips vipFlags
	fs.Var(&vips, "vip", "a VIP whose tunneled packets to decapsulate (repeatable, at least one)")
	pos, err := parseArgs(fs, args, decapUsage, out)
	if err != nil {
		return err
	}
	if err := noArgs(fs, pos); err != nil {
		return err
	}
	if *iface == "" || len(vips) == 0 {
		return usageError("decap: --interface and at least one --vip are required (see xlb decap --help)")
	}
	if len(vips) > loader.MaxDecapVIPs {
		return usageError("decap: at most %d VIPs, got %d", loader.MaxDecapVIPs, len(vips))
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	l, err := netlink.LinkByName(*iface)
	if err != nil {
		return fmt.Errorf("decap: interface %q: %w", *iface, loader.ErrNoInterface)
	}
	if missing := vipsNotOnLo(vips); len(missing) > 0 {
		log.Warn("VIPs not on lo: the kernel drops their decapsulated packets until they are (ip addr add VIP dev lo)",
			"vips", strings.Join(missing, ","))
	}

	d, err := loader.LoadDecap(vips)
	if err != nil {
		return fmt.Errorf("decap: %w", err)
	}
	defer d.Close()
	if err := d.Attach(l.Attrs().Index); err != nil {
		return fmt.Errorf("decap: %s: %w", *iface, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Info("xlb decap running", "interface", *iface, "vips", vips.String())
	<-ctx.Done()

	attrs := []any{"interface", *iface}
	if c, err := d.Counters(); err == nil {
		for i, name := range loader.DecapOutcomes {
			attrs = append(attrs, name, c[i].Packets)
		}
	}
	if err := d.Close(); err != nil {
		return fmt.Errorf("decap: detach: %w", err)
	}
	log.Info("xlb decap stopped", attrs...)
	return nil
}

// vipsNotOnLo lists the VIPs the loopback interface lacks (none when it
// cannot tell).
func vipsNotOnLo(vips []netip.Addr) []string {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil
	}
	addrs, err := netlink.AddrList(lo, netlink.FAMILY_ALL)
	if err != nil {
		return nil
	}
	have := map[netip.Addr]bool{}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			have[ip.Unmap()] = true
		}
	}
	var missing []string
	for _, v := range vips {
		if !have[v] {
			missing = append(missing, v.String())
		}
	}
	return missing
}

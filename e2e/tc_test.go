package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const (
	// tcDSRPort and tcNATPort are the echo services of TestTC: dsr to the
	// VIP the backends hold on lo, nat to the backends' own addresses.
	tcDSRPort = 9000
	tcNATPort = 9001
	// tcTransfer is how many bytes cross each way per service and family.
	tcTransfer = 1 << 20
)

// TestTC is xdp_mode = "tc" end to end: the real xlb attaches the TC build
// of its steering program at the tcx ingress of the LB's eth0 (no XDP) and
// a client reaches two backends through the VIPs, by dsr and by nat, IPv4
// and IPv6, 1 MiB each way byte for byte. The client's stack keeps TSO and
// checksum offload on, so the TC program sees GSO packets whose checksums
// are left to finish (CHECKSUM_PARTIAL), which NAT must keep right. Then
// --keep-datapath: the program stays attached and forwards with no daemon,
// a restart adopts its pinned link, and a clean stop detaches it.
func TestTC(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	tp := NewTopology(t, "xtc"+randomPrefix()[3:], WithBackends(2), WithClients(2))
	pinDir := tp.PinDir(t)
	// bpf_fib_lookup answers only where the kernel would forward: IPv4
	// takes the FIB's next hops, IPv6 the fallbacks (resolved, or where the
	// client's packets came from).
	tp.mustExec(t, "lb", "sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=1")
	for _, h := range tp.BackendHosts() {
		for _, port := range []int{tcDSRPort, tcNATPort} {
			echo := listenInNetns(t, tp.Namespace(h), fmt.Sprintf("[::]:%d", port))
			go serveEcho(echo, nil)
		}
	}
	config := writeTCConfig(t, tp, pinDir)
	xlb := tp.StartXLB(t, config, pinDir, "tc")
	tp.requireTC(t)

	for _, f := range []struct{ name, vip string }{{"ipv4", VIP4}, {"ipv6", VIP6}} {
		vip := netip.MustParseAddr(f.vip)
		t.Run(f.name+"/dsr", func(t *testing.T) {
			rx0, tx0 := tp.linkBytes(t, "lb")
			tp.echoTransfer(t, "cl", netip.AddrPortFrom(vip, tcDSRPort).String(), tcTransfer)
			rx1, tx1 := tp.linkBytes(t, "lb")
			t.Logf("LB eth0: rx %d, tx %d bytes", rx1-rx0, tx1-tx0)
			// The client's half in and out again; the echo goes straight back.
			if rx, tx := rx1-rx0, tx1-tx0; rx < tcTransfer || rx > tcTransfer*3/2 || tx < tcTransfer || tx > tcTransfer*3/2 {
				t.Errorf("the LB moved rx %d, tx %d bytes during a %d-byte dsr echo: want the client's half once each way", rx, tx, tcTransfer)
			}
		})
		t.Run(f.name+"/nat", func(t *testing.T) {
			rx0, tx0 := tp.linkBytes(t, "lb")
			tp.echoTransfer(t, "cl", netip.AddrPortFrom(vip, tcNATPort).String(), tcTransfer)
			rx1, tx1 := tp.linkBytes(t, "lb")
			t.Logf("LB eth0: rx %d, tx %d bytes", rx1-rx0, tx1-tx0)
			// Both halves cross the LB, in and out.
			if rx, tx := rx1-rx0, tx1-tx0; rx < 2*tcTransfer || rx > 3*tcTransfer || tx < 2*tcTransfer || tx > 3*tcTransfer {
				t.Errorf("the LB moved rx %d, tx %d bytes during a %d-byte nat echo: want both halves each way", rx, tx, tcTransfer)
			}
		})
	}

	t.Run("status", func(t *testing.T) {
		snap := tp.Status(t, pinDir)
		v := verdictPackets(snap)
		t.Logf("verdicts (packets): %v", v)
		if v["tx/forwarded"] == 0 || v["tx/nat_reply"] == 0 {
			t.Errorf("verdicts %v: want tx/forwarded and tx/nat_reply", v)
		}
		for k, n := range v {
			if strings.HasPrefix(k, "drop/") && n != 0 {
				t.Errorf("verdict %s counted %d packets", k, n)
			}
		}
		for _, s := range snap.Services {
			if s.Packets == 0 {
				t.Errorf("service %s (%s) forwarded nothing", s.Name, s.Forwarding)
			}
		}
	})

	t.Run("keep datapath", func(t *testing.T) {
		if err := tp.Stop(xlb); err != nil {
			t.Fatalf("xlb after SIGTERM: %v", err)
		}
		kept := tp.StartXLB(t, config, pinDir, "tc", "--keep-datapath")
		if err := tp.Stop(kept); err != nil {
			t.Fatalf("xlb --keep-datapath after SIGTERM: %v, want exit 0", err)
		}
		if _, log := tp.Output(kept); logLine(log, "datapath kept: TC program stays attached, maps stay pinned") == "" {
			t.Errorf("xlb --keep-datapath log:\n%s", log)
		}
		tp.requireTC(t)
		entries, _ := os.ReadDir(pinDir)
		var pins []string
		for _, e := range entries {
			pins = append(pins, e.Name())
		}
		if !slices.Contains(pins, "tc_link") || slices.Contains(pins, "xdp_link") {
			t.Errorf("pins after xlb --keep-datapath stopped: %v, want tc_link and no xdp_link", pins)
		}
		// No daemon: the pinned program and maps forward on.
		tp.echoTransfer(t, "cl", netip.AddrPortFrom(netip.MustParseAddr(VIP4), tcDSRPort).String(), tcTransfer)
		tp.echoTransfer(t, "cl", netip.AddrPortFrom(netip.MustParseAddr(VIP4), tcNATPort).String(), tcTransfer)

		next := tp.StartXLB(t, config, pinDir, "tc")
		if _, log := tp.Output(next); logLine(log, "adopted pinned TC link") == "" {
			t.Errorf("restarted xlb did not adopt the pinned TC link:\n%s", log)
		}
		tp.requireTC(t)
		tp.echoTransfer(t, "cl", netip.AddrPortFrom(netip.MustParseAddr(VIP6), tcNATPort).String(), tcTransfer)
		tp.requireCleanStop(t, next, pinDir)
	})
}

// requireTC checks that xlb's TC program, and no XDP program, steers on the
// LB's eth0.
func (tp *Topology) requireTC(t *testing.T) {
	t.Helper()
	if tcx := tp.tcxIngress(t, "lb"); tcx != "xlb_tc" {
		t.Errorf("tcx ingress of the LB's eth0: %q, want xlb_tc", tcx)
	}
	if link := tp.LinkXDP(t, "lb", "eth0"); xdpFlag(link) != "" {
		t.Errorf("XDP on the LB's eth0 in mode tc:\n%s", link)
	}
}

// writeTCConfig: per family, an echo service by dsr (the VIP on the
// backends' lo) and one by nat (the backends' own addresses, answers back
// through xlb), both to every backend, with TCP checks.
func writeTCConfig(t *testing.T, tp *Topology, pinDir string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[daemon]\ninterface = \"eth0\"\nxdp_mode = \"tc\"\nbpffs_dir = %q\n", pinDir)
	fmt.Fprintf(&b, "\n[health_check]\ntype = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n")
	for _, f := range []struct {
		name, vip string
		addr      func(int) string
	}{{"4", VIP4, tp.BackendAddr4}, {"6", VIP6, tp.BackendAddr6}} {
		for _, s := range []struct {
			fwd  string
			port int
		}{{"dsr", tcDSRPort}, {"nat", tcNATPort}} {
			fmt.Fprintf(&b, "\n[[service]]\nname = \"%s%s\"\nvip = %q\nport = %d\nforwarding = %q\n", s.fwd, f.name, f.vip, s.port, s.fwd)
			for i := 1; i <= tp.Backends; i++ {
				fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n", f.addr(i))
			}
		}
	}
	path := filepath.Join(t.TempDir(), "xlb.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

const (
	// ipipEchoPort is where the routed backend echoes every byte it gets.
	ipipEchoPort = 9000
	// ipipTransfer is how many bytes cross each way per family.
	ipipTransfer = 4 << 20
	// ipipTransferTimeout bounds one transfer (tens of milliseconds normally).
	ipipTransferTimeout = 60 * time.Second
	// ipipPrefix4 is the IPv4 service's ipip_source_prefix; the IPv6 one
	// uses the LB's own address.
	ipipPrefix4 = "198.18.99.0/24"
)

// TestIPIP is tunnel DSR end to end: client -> xlb (generic XDP,
// forwarding = "ipip") -> a router -> a backend on another subnet that runs
// `xlb decap` and holds the VIP on lo, for IPv4 and IPv6. Connections
// through the VIP reach the backend, its answers go straight back through
// the router, and a few MB cross each way byte for byte: the client's
// full-size segments are too big once encapsulated, so the transfer also
// proves the LB's "fragmentation needed" / "packet too big" reach the client
// and lower its path MTU. IPv4 takes its next hop from the kernel's FIB
// (forwarding on) and per-flow outer sources from a prefix; IPv6 takes the
// next hop xlb resolved (forwarding off) and the LB's address.
func TestIPIP(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	tp := NewTopology(t, "xip"+randomPrefix()[3:], WithBackends(1), WithClients(2), WithRouted(1))
	pinDir := tp.PinDir(t)
	t.Cleanup(func() {
		if t.Failed() {
			tp.logIPIPDiagnostics(t)
		}
	})
	// Generic XDP sees what the client's stack hands its veth: with TSO or
	// GSO, 64 KiB segments too big for any MTU once encapsulated.
	tp.mustExec(t, "cl", "ethtool", "-K", "eth0", "tso", "off", "gso", "off")
	// bpf_fib_lookup answers only where the kernel would forward.
	tp.mustExec(t, "lb", "sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=1")

	own4, own6 := tp.RoutedAddr4(1), tp.RoutedAddr6(1)
	decap := tp.Start(t, "r1", Binary(t, "xlb"), "decap", "--interface", "eth0", "--vip", VIP4, "--vip", VIP6)
	tp.WaitStderr(t, decap, `msg="xlb decap running"`, 10*time.Second)
	if tcx := tp.tcxIngress(t, "r1"); !strings.Contains(tcx, "xlb_decap") {
		t.Fatalf("no xlb_decap at eth0's tcx ingress on the backend:\n%s", tcx)
	}
	var listen []string
	for _, a := range []string{VIP4, VIP6, own4, own6} {
		listen = append(listen, netip.AddrPortFrom(netip.MustParseAddr(a), 80).String())
	}
	tp.StartReady(t, "r1", "ready ", 5*time.Second, Binary(t, "xlbtest"), "serve", "--name", "r1", "--listen", strings.Join(listen, ","))
	echo := listenInNetns(t, tp.Namespace("r1"), fmt.Sprintf("[::]:%d", ipipEchoPort))
	go serveEcho(echo, nil)

	config := writeIPIPConfig(t, pinDir, own4, own6)
	xlb := tp.StartXLB(t, config, pinDir, "generic")

	for _, f := range []struct {
		name, vip, sources, prefix string
	}{
		{"ipv4", VIP4, ClientAddr4 + ",198.18.0.101", ipipPrefix4},
		{"ipv6", VIP6, ClientAddr6 + ",2001:db8:18::101", ""},
	} {
		t.Run(f.name, func(t *testing.T) {
			url := "http://" + netip.AddrPortFrom(netip.MustParseAddr(f.vip), 80).String() + "/"
			sum := tp.Load(t, "cl", "--target", url, "--sources", f.sources, "--conns", "20",
				"--parallel", "4", "--timeout", "3s", "--duration-max", "20s")
			if sum.OK != 20 || sum.ByBackend["r1"] != 20 {
				t.Fatalf("%s: ok=%d by backend %v errors %v, want 20 answers from r1", url, sum.OK, sum.ByBackend, sum.Errors)
			}
			tp.checkTransfer(t, pinDir, f.vip)
			tp.checkPathMTU(t, f.vip)
		})
	}

	t.Run("status", func(t *testing.T) {
		snap := tp.Status(t, pinDir)
		for _, s := range snap.Services {
			if s.Forwarding != "ipip" {
				t.Errorf("service %s: forwarding %q in xlb status, want ipip", s.Name, s.Forwarding)
			}
		}
		verdicts := verdictPackets(snap)
		tooBig := verdicts["tx/icmp_too_big"]
		if tooBig < 2 {
			t.Errorf("tx/icmp_too_big counted %d packets, want one per family at least", tooBig)
		}
		for _, r := range []string{"too_big", "no_route", "encap_failed", "no_tx_port"} {
			if n := verdicts["drop/"+r]; n != 0 {
				t.Errorf("drop/%s counted %d packets", r, n)
			}
		}
	})

	t.Run("decap stops and detaches", func(t *testing.T) {
		if err := tp.Stop(decap); err != nil {
			t.Fatalf("xlb decap after SIGTERM: %v, want exit 0", err)
		}
		_, stderr := tp.Output(decap)
		line := logLine(stderr, "xlb decap stopped")
		m := regexp.MustCompile(` decapsulated=(\d+)`).FindStringSubmatch(line)
		if m == nil || m[1] == "0" {
			t.Errorf("xlb decap did not report what it decapsulated: %q", line)
		}
		if n, _ := strconv.Atoi(m[1]); n < 2*ipipTransfer/1500 {
			t.Errorf("decapsulated %s packets, fewer than the transfers took", m[1])
		}
		if tcx := tp.tcxIngress(t, "r1"); strings.Contains(tcx, "xlb_decap") {
			t.Errorf("xlb_decap still attached after xlb decap exited:\n%s", tcx)
		}
	})
	tp.requireCleanStop(t, xlb, pinDir)
}

// writeIPIPConfig: web (port 80, HTTP checks) and echo (ipipEchoPort, TCP
// checks) services per family, all forwarding = "ipip" to the routed backend.
func writeIPIPConfig(t *testing.T, pinDir, own4, own6 string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[daemon]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\nbpffs_dir = %q\n", pinDir)
	fmt.Fprintf(&b, "\n[health_check]\ninterval = \"1s\"\ntimeout = \"500ms\"\n")
	for _, s := range []struct {
		name, vip, backend, prefix string
		port                       int
	}{
		{"web4", VIP4, own4, ipipPrefix4, 80},
		{"web6", VIP6, own6, "", 80},
		{"echo4", VIP4, own4, ipipPrefix4, ipipEchoPort},
		{"echo6", VIP6, own6, "", ipipEchoPort},
	} {
		fmt.Fprintf(&b, "\n[[service]]\nname = %q\nvip = %q\nport = %d\nforwarding = \"ipip\"\n", s.name, s.vip, s.port)
		if s.prefix != "" {
			fmt.Fprintf(&b, "ipip_source_prefix = %q\n", s.prefix)
		}
		if s.port == ipipEchoPort {
			b.WriteString("  [service.health_check]\n  type = \"tcp\"\n")
		}
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n", s.backend)
	}
	path := filepath.Join(t.TempDir(), "xlb.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkTransfer sends ipipTransfer random bytes to the echo service at vip
// from the client and checks that the same bytes come back, and that only
// the client's half crossed the LB (the backend answers directly).
func (tp *Topology) checkTransfer(t *testing.T, pinDir, vip string) {
	t.Helper()
	rx0, _ := tp.linkBytes(t, "lb")
	tp.echoTransfer(t, "cl", netip.AddrPortFrom(netip.MustParseAddr(vip), ipipEchoPort).String(), ipipTransfer)
	rx1, _ := tp.linkBytes(t, "lb")
	// The client's bytes cross the LB once (plus headers); its echo must not.
	if d := rx1 - rx0; d < ipipTransfer || d > ipipTransfer*3/2 {
		t.Errorf("the LB received %d bytes during a %d-byte echo: want the client's half only", d, ipipTransfer)
	}
}

// echoTransfer connects from host's namespace to the echo server at target,
// sends n random bytes while reading, and checks that the same bytes come
// back. It returns the connection's local and remote addresses.
func (tp *Topology) echoTransfer(t *testing.T, host, target string, n int) (local, remote netip.AddrPort) {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	ctx, cancel := context.WithTimeout(context.Background(), ipipTransferTimeout)
	defer cancel()
	c, err := dialInNetns(ctx, tp.Namespace(host), "tcp", target)
	if err != nil {
		t.Fatalf("connect to the echo service %s: %v", target, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ipipTransferTimeout))
	start := time.Now()
	var wg sync.WaitGroup
	var werr error
	wg.Go(func() {
		_, werr = c.Write(data)
		if werr == nil {
			werr = c.(*net.TCPConn).CloseWrite()
		}
	})
	got, rerr := io.ReadAll(c)
	wg.Wait()
	if werr != nil || rerr != nil {
		t.Fatalf("transfer: write %v, read %v (%d of %d bytes back after %v)", werr, rerr, len(got), len(data), time.Since(start))
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo differs: %d bytes back, sha256 %x, sent %d bytes, sha256 %x",
			len(got), sha256.Sum256(got), len(data), sha256.Sum256(data))
	}
	t.Logf("%d bytes each way in %v", len(data), time.Since(start))
	return c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
}

// checkPathMTU checks the client learnt a path MTU to vip lowered by the
// outer header, from the LB's ICMP answers.
func (tp *Topology) checkPathMTU(t *testing.T, vip string) {
	t.Helper()
	want := map[bool]string{true: "mtu 1480", false: "mtu 1460"}[netip.MustParseAddr(vip).Is4()]
	out, err := tp.Exec("cl", "ip", "route", "get", vip)
	if err != nil || !strings.Contains(string(out), want) {
		t.Errorf("client's route to %s: %v\n%s\nwant %q (learnt from the LB's ICMP)", vip, err, out, want)
	}
}

// serveEcho sends back every byte of every connection, until l closes.
// accepted, if not nil, is told of every connection first.
func serveEcho(l net.Listener, accepted func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		if accepted != nil {
			accepted(c)
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(ipipTransferTimeout))
			io.Copy(c, c)
		}()
	}
}

// listenInNetns opens a TCP listener in network namespace ns (closed when
// t ends): its socket stays in ns, whichever thread accepts.
func listenInNetns(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	return openInNetns(t, ns, addr, func() (net.Listener, error) { return net.Listen("tcp", addr) })
}

// openInNetns returns what open makes in network namespace ns (a socket
// stays there), closed when t ends; what names it in a failure.
func openInNetns[T io.Closer](t *testing.T, ns, what string, open func() (T, error)) T {
	t.Helper()
	var v T
	err := inNetns(ns, func() error {
		var err error
		v, err = open()
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", what, ns, err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

func (tp *Topology) mustExec(t *testing.T, host string, args ...string) {
	t.Helper()
	if _, err := tp.Exec(host, args...); err != nil {
		t.Fatal(err)
	}
}

// tcxIngress names the programs at the tcx ingress of host's eth0 (bpftool
// here predates tcx).
func (tp *Topology) tcxIngress(t *testing.T, host string) string {
	t.Helper()
	var names []string
	err := inNetns(tp.Namespace(host), func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				return err
			}
			info, err := prog.Info()
			prog.Close()
			if err != nil {
				return err
			}
			names = append(names, info.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("tcx ingress of %s's eth0: %v", host, err)
	}
	return strings.Join(names, ",")
}

func (tp *Topology) logIPIPDiagnostics(t *testing.T) {
	for _, c := range []struct {
		host string
		args []string
	}{
		{"lb", []string{"ip", "-s", "link", "show", "dev", "eth0"}},
		{"rt", []string{"ip", "-s", "link"}},
		{"r1", []string{"ip", "-s", "link", "show", "dev", "eth0"}},
		{"r1", []string{"nstat", "-az", "TcpInSegs", "TcpOutSegs", "IpInReceives", "IpInUnknownProtos", "TcpInCsumErrors"}},
		{"cl", []string{"ip", "route", "get", VIP4}},
		{"cl", []string{"ip", "-6", "route", "get", VIP6}},
		{"cl", []string{"nstat", "-az", "IcmpInDestUnreachs", "Icmp6InPktTooBigs", "TcpRetransSegs"}},
	} {
		out, err := tp.Exec(c.host, c.args...)
		t.Logf("%s$ %s (%v)\n%s", c.host, strings.Join(c.args, " "), err, out)
	}
}

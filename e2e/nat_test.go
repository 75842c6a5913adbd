package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/loader"
)

// Ports of the NAT tests: each service port is translated to another port
// on the backend.
const (
	natEchoPort    = 9000 // TCP echo service
	natEchoBackend = 9100 // where the backend echoes
	natUDPPort     = 5300 // UDP echo service
	natUDPBackend  = 5400
	natDeadPort    = 5301 // UDP service to a backend port nobody listens on
	natDeadBackend = 5401
	// natCheckPort is where the backends answer the HTTP health checks, so
	// that the echo servers see only translated connections.
	natCheckPort = 8080
	// natTransfer is how many bytes cross each way per family.
	natTransfer = 10 << 20
	// natSource4 is the IPv4 UDP service's nat_source: a second address of
	// the LB. The other services leave from the LB's address toward the
	// backend (LBAddr4, LBAddr6).
	natSource4 = "198.18.0.4"
)

// TestNAT is full NAT end to end: client -> xlb (generic XDP, forwarding =
// "nat") -> a router -> an unmodified backend on another subnet (no VIP, no
// sysctls, its default route via the router), IPv4 and IPv6, every backend
// port other than the service port. 10 MiB cross each way through the VIP
// byte for byte, the backend sees the LB's address and a port of the NAT
// range, the client sees only the VIP; the same from a client behind the
// router (the answers' next hop is the router); UDP datagrams are translated both
// ways (from the LB's address, or from a nat_source); and the backend's ICMP
// port unreachable, sent to the LB, reaches the client as its own: its
// connected UDP socket gets ECONNREFUSED. IPv4 takes the next hops from the
// kernel's FIB (forwarding on), IPv6 those xlb resolved (forwarding off).
func TestNAT(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	// r2, a plain host beside the backend, is a client behind the router.
	tp, pinDir := newNATTopology(t, "xnt", 2)
	if out, err := tp.Exec("r1", "ip", "addr", "show", "dev", "lo"); err != nil || strings.Contains(string(out), VIP4) || strings.Contains(string(out), VIP6) {
		t.Fatalf("the backend's lo (%v):\n%s\nwant no VIP on it", err, out)
	}
	echo := tp.startNATBackend(t)
	tp.mustExec(t, "lb", "sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=1")
	tp.mustExec(t, "lb", "ip", "addr", "add", natSource4+"/24", "dev", "eth0")
	tp.mustExec(t, "r2", "ethtool", "-K", "eth0", "tx", "off")
	tp.mustExec(t, "rt", "ip", "route", "add", VIP4+"/32", "via", LBAddr4)
	tp.mustExec(t, "rt", "ip", "-6", "route", "add", VIP6+"/128", "via", LBAddr6)

	own4, own6 := tp.RoutedAddr4(1), tp.RoutedAddr6(1)
	udp := listenPacketInNetns(t, tp.Namespace("r1"), fmt.Sprintf("[::]:%d", natUDPBackend))
	go serveUDPEcho(udp)

	xlb := tp.StartXLB(t, writeNATConfig(t, pinDir, "", natServices(own4, own6)), pinDir, "generic")

	for _, f := range []struct {
		name, vip, client, routed, lb, udpSource string
	}{
		{"ipv4", VIP4, ClientAddr4, tp.RoutedAddr4(2), LBAddr4, natSource4},
		{"ipv6", VIP6, ClientAddr6, tp.RoutedAddr6(2), LBAddr6, LBAddr6},
	} {
		t.Run(f.name, func(t *testing.T) {
			vip := netip.MustParseAddr(f.vip)
			t.Run("tcp transfer", func(t *testing.T) {
				rx0, tx0 := tp.linkBytes(t, "lb")
				n0 := echo.count()
				local, remote := tp.echoTransfer(t, "cl", netip.AddrPortFrom(vip, natEchoPort).String(), natTransfer)
				rx1, tx1 := tp.linkBytes(t, "lb")
				if remote != netip.AddrPortFrom(vip, natEchoPort) || local.Addr().String() != f.client {
					t.Errorf("the client's connection: %v -> %v, want from %s to the VIP %s:%d", local, remote, f.client, f.vip, natEchoPort)
				}
				seen := echo.since(n0)
				if len(seen) != 1 {
					t.Fatalf("the backend accepted %d connections during the transfer (%v), want 1", len(seen), seen)
				}
				requireNATPeer(t, "the backend's echo connection", seen[0].remote, f.lb)
				if want := netip.AddrPortFrom(netip.MustParseAddr(map[bool]string{true: own4, false: own6}[vip.Is4()]), natEchoBackend); seen[0].local != want {
					t.Errorf("the backend's echo connection reached %v, want %v", seen[0].local, want)
				}
				// Both halves cross the LB: the client's bytes and the echo.
				if d := rx1 - rx0; d < 2*natTransfer || d > 3*natTransfer {
					t.Errorf("the LB received %d bytes during a %d-byte echo: want both halves", d, natTransfer)
				}
				if d := tx1 - tx0; d < 2*natTransfer || d > 3*natTransfer {
					t.Errorf("the LB sent %d bytes during a %d-byte echo: want both halves", d, natTransfer)
				}
			})
			t.Run("tcp from behind the router", func(t *testing.T) {
				// The answers go back through the router, not to a neighbour.
				n0 := echo.count()
				local, remote := tp.echoTransfer(t, "r2", netip.AddrPortFrom(vip, natEchoPort).String(), natTransfer/10)
				if remote != netip.AddrPortFrom(vip, natEchoPort) || local.Addr().String() != f.routed {
					t.Errorf("r2's connection: %v -> %v, want from %s to the VIP %s:%d", local, remote, f.routed, f.vip, natEchoPort)
				}
				if seen := echo.since(n0); len(seen) != 1 {
					t.Errorf("the backend accepted %d connections during the transfer (%v), want 1", len(seen), seen)
				} else {
					requireNATPeer(t, "the backend's echo connection", seen[0].remote, f.lb)
				}
			})
			t.Run("udp", func(t *testing.T) {
				c := dialUDP(t, tp.Namespace("cl"), netip.AddrPortFrom(vip, natUDPPort))
				payload := "ping " + f.name
				reply, err := udpExchange(c, payload)
				if err != nil {
					t.Fatalf("no answer through the VIP: %v", err)
				}
				// The connected socket takes datagrams from VIP:port only.
				peer, got, ok := strings.Cut(reply, "|")
				if !ok || got != payload {
					t.Fatalf("answer %q, want the echo of %q", reply, payload)
				}
				ap, err := netip.ParseAddrPort(peer)
				if err != nil {
					t.Fatalf("answer %q: %v", reply, err)
				}
				requireNATPeer(t, "the UDP echo's client", netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), f.udpSource)
			})
			t.Run("icmp unreachable", func(t *testing.T) {
				c := dialUDP(t, tp.Namespace("cl"), netip.AddrPortFrom(vip, natDeadPort))
				_, err := udpExchange(c, "anyone there?")
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Errorf("datagram to a backend port nobody listens on: %v, want ECONNREFUSED (the backend's port unreachable, translated)", err)
				}
				counter := map[bool]string{true: "IcmpOutDestUnreachs", false: "Icmp6OutDestUnreachs"}[vip.Is4()]
				if n := tp.nstat(t, "r1", counter); n == 0 {
					t.Errorf("the backend sent no ICMP destination unreachable (%s 0)", counter)
				}
			})
		})
	}

	t.Run("status", func(t *testing.T) {
		snap := tp.Status(t, pinDir)
		for _, s := range snap.Services {
			if s.Forwarding != "nat" {
				t.Errorf("service %s: forwarding %q in xlb status, want nat", s.Name, s.Forwarding)
			}
			wantPort := map[uint16]uint16{natEchoPort: natEchoBackend, natUDPPort: natUDPBackend, natDeadPort: natDeadBackend}[s.Port]
			for _, b := range s.Backends {
				wantSrc := map[bool]string{true: LBAddr4, false: LBAddr6}[b.Address.Is4()]
				if s.Name == "udp4" {
					wantSrc = natSource4
				}
				if b.Port != wantPort || b.Source.String() != wantSrc {
					t.Errorf("service %s backend %s: port %d source %s, want port %d source %s", s.Name, b.Address, b.Port, b.Source, wantPort, wantSrc)
				}
			}
		}
		verdicts := verdictPackets(snap)
		if verdicts["tx/nat_reply"] < 2*natTransfer/1500 {
			t.Errorf("tx/nat_reply counted %d packets, fewer than the echoes took", verdicts["tx/nat_reply"])
		}
		for _, r := range []string{"nat_ports_exhausted", "no_route", "no_tx_port", "too_big", "encap_failed", "no_backend"} {
			if n := verdicts["drop/"+r]; n != 0 {
				t.Errorf("drop/%s counted %d packets", r, n)
			}
		}
		text := tp.statusText(t, pinDir)
		if !strings.Contains(text, "nat ports in use") || !strings.Contains(text, fmt.Sprintf("%s:%d from %s", own4, natEchoBackend, LBAddr4)) {
			t.Errorf("xlb status does not show the NAT ports and translations:\n%s", text)
		}
	})
	tp.requireCleanStop(t, xlb, pinDir)
}

// Settings of TestNATPortExhaustion.
const (
	// natTinyPorts is its nat_port_range: 4 ports per backend and source.
	natTinyFirst, natTinyLast = 20000, 20003
	// natClosing is its tcp_closing_timeout: closed flows free their ports
	// this long after their last packet, at the next sweep.
	natClosing = time.Second
	// natSweep is how often the daemon sweeps expired flows (control.flowSweep).
	natSweep = 10 * time.Second
)

// TestNATPortExhaustion gives NAT four source ports (nat_port_range
// "20000-20003"): per family, four connections to the one backend work, a
// fifth gets no port (its SYNs are dropped and counted as
// drop/nat_ports_exhausted in xlb status and /metrics) while the four go on
// working, xlb status and xlb_nat_ports_in_use say 4 ports are in use; once
// the four have closed, the closing timeout and a sweep free their ports and
// four new connections get them again.
func TestNATPortExhaustion(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	tp, pinDir := newNATTopology(t, "xnx", 1)
	echo := tp.startNATBackend(t)
	extra := fmt.Sprintf("\n[datapath]\nnat_port_range = \"%d-%d\"\ntcp_closing_timeout = %q\n"+
		"\n[admin]\nlisten = %q\ntoken_env = %q\n", natTinyFirst, natTinyLast, natClosing.String(), adminAddr, noTokenEnv)
	services := natServices(tp.RoutedAddr4(1), tp.RoutedAddr6(1))[:2] // echo4, echo6
	xlb := tp.StartXLB(t, writeNATConfig(t, pinDir, extra, services), pinDir, "generic")
	admin := newAdminClient(tp.Namespace("lb"))
	const perFamily = natTinyLast - natTinyFirst + 1
	exhausted := map[string]string{"verdict": "drop", "reason": "nat_ports_exhausted"}

	type family struct {
		service, lb string
		target      netip.AddrPort
		conns       []net.Conn
	}
	families := []*family{
		{service: "echo4", lb: LBAddr4, target: netip.AddrPortFrom(netip.MustParseAddr(VIP4), natEchoPort)},
		{service: "echo6", lb: LBAddr6, target: netip.AddrPortFrom(netip.MustParseAddr(VIP6), natEchoPort)},
	}
	// open makes perFamily connections per family and checks that the
	// backend saw them come from the LB's ports in the tiny range.
	open := func(t *testing.T) {
		t.Helper()
		n0 := echo.count()
		for _, f := range families {
			f.conns = nil
			for i := range perFamily {
				c, err := dialInNetnsTimeout(tp.Namespace("cl"), f.target, 3*time.Second)
				if err != nil {
					t.Fatalf("%s: connection %d of %d: %v", f.service, i+1, perFamily, err)
				}
				t.Cleanup(func() { c.Close() })
				f.conns = append(f.conns, c)
			}
		}
		// Dialing returns before the server has accepted.
		waitFor(t, "the backend accepting every connection", 3*time.Second, 10*time.Millisecond, func() bool {
			return echo.count() >= n0+len(families)*perFamily
		})
		ports := map[string]map[uint16]bool{}
		for _, c := range echo.since(n0) {
			a := c.remote.Addr().String()
			if ports[a] == nil {
				ports[a] = map[uint16]bool{}
			}
			ports[a][c.remote.Port()] = true
			if c.remote.Port() < natTinyFirst || c.remote.Port() > natTinyLast {
				t.Errorf("the backend got a connection from %v: want a port in %d-%d", c.remote, natTinyFirst, natTinyLast)
			}
		}
		for _, f := range families {
			if len(ports[f.lb]) != perFamily {
				t.Errorf("%s: the backend saw ports %v from %s, want %d distinct ones", f.service, ports[f.lb], f.lb, perFamily)
			}
		}
	}
	// talk checks that every open connection still echoes.
	talk := func(t *testing.T, what string) {
		t.Helper()
		for _, f := range families {
			for i, c := range f.conns {
				msg := fmt.Sprintf("%s %s %d\n", what, f.service, i)
				c.SetDeadline(time.Now().Add(3 * time.Second))
				buf := make([]byte, len(msg))
				_, err := c.Write([]byte(msg))
				if err == nil {
					_, err = io.ReadFull(c, buf)
				}
				if err != nil || string(buf) != msg {
					t.Errorf("%s: connection %d, %s: echo %q, %v", f.service, i+1, what, buf, err)
				}
			}
		}
	}
	portsInUse := func(snap *loader.Snapshot, name string) int {
		if s := service(snap, name); s != nil {
			return s.NATPorts
		}
		return -1
	}

	t.Run("the fifth connection gets no port", func(t *testing.T) {
		open(t)
		talk(t, "first")
		snap0 := tp.Status(t, pinDir)
		m0 := admin.scrape(t)
		for _, f := range families {
			start := time.Now()
			c, err := dialInNetnsTimeout(tp.Namespace("cl"), f.target, 2*time.Second)
			if err == nil {
				c.Close()
				t.Errorf("%s: connection %d succeeded with %d NAT ports", f.service, perFamily+1, perFamily)
			} else {
				t.Logf("%s: connection %d: %v after %v", f.service, perFamily+1, err, time.Since(start).Round(time.Millisecond))
			}
		}
		snap1 := tp.Status(t, pinDir)
		m1 := admin.scrape(t)
		// One SYN per family at least (the client sends it again within 2 s).
		if d := verdictPackets(snap1)["drop/nat_ports_exhausted"] - verdictPackets(snap0)["drop/nat_ports_exhausted"]; d < 2 {
			t.Errorf("xlb status: drop/nat_ports_exhausted grew by %d, want a SYN per family at least", d)
		}
		if d := delta(m0, m1, "xlb_xdp_verdicts_total", exhausted); d < 2 {
			t.Errorf("/metrics: xlb_xdp_verdicts_total%v grew by %v, want 2 at least", exhausted, d)
		}
		for _, f := range families {
			if n := portsInUse(snap1, f.service); n != perFamily {
				t.Errorf("xlb status: service %s has %d NAT ports in use, want %d", f.service, n, perFamily)
			}
		}
		if text := tp.statusText(t, pinDir); !strings.Contains(text, fmt.Sprintf("nat ports in use %d", perFamily)) {
			t.Errorf("xlb status does not say %d NAT ports are in use:\n%s", perFamily, text)
		}
		talk(t, "after the fifth")
		// The gauge follows the sweeps.
		waitFor(t, fmt.Sprintf("xlb_nat_ports_in_use %d for both services", perFamily), natSweep+5*time.Second, 250*time.Millisecond, func() bool {
			m := admin.scrape(t)
			for _, f := range families {
				if v, _ := m.value("xlb_nat_ports_in_use", map[string]string{"service": f.service}); v != perFamily {
					return false
				}
			}
			return true
		})
		talk(t, "after a sweep")
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("ports are freed and reused", func(t *testing.T) {
		m0 := admin.scrape(t)
		closed := time.Now()
		for _, f := range families {
			for _, c := range f.conns {
				c.Close() // the client closes first: no TIME_WAIT on the backend's side
			}
		}
		at := waitFor(t, "no NAT port in use", natClosing+natSweep+8*time.Second, 250*time.Millisecond, func() bool {
			snap := tp.Status(t, pinDir)
			return portsInUse(snap, "echo4") == 0 && portsInUse(snap, "echo6") == 0
		})
		t.Logf("closed -> every NAT port free: %v (closing timeout %v, sweep every %v)", at.Sub(closed).Round(time.Millisecond), natClosing, natSweep)
		m1 := admin.scrape(t)
		if d := delta(m0, m1, "xlb_nat_ports_freed_total", nil); d < 2*perFamily {
			t.Errorf("xlb_nat_ports_freed_total grew by %v, want %d", d, 2*perFamily)
		}
		for _, f := range families {
			if v, ok := m1.value("xlb_nat_ports_in_use", map[string]string{"service": f.service}); v != 0 {
				t.Errorf("xlb_nat_ports_in_use{service=%q} = %v (present %v) after the sweep, want 0", f.service, v, ok)
			}
		}
		open(t)
		talk(t, "reused")
		for _, f := range families {
			for _, c := range f.conns {
				c.Close()
			}
		}
	})
	tp.requireCleanStop(t, xlb, pinDir)
}

// dialInNetnsTimeout is a TCP connection from namespace ns to target, bounded
// by timeout.
func dialInNetnsTimeout(ns string, target netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return dialInNetns(ctx, ns, "tcp", target.String())
}

// TestNATPortRangeOverlap: with a nat service, xlb refuses to start when
// [datapath] nat_port_range shares a port with its network namespace's
// ip_local_port_range (a host connection and a NAT flow could share a
// 4-tuple): exit 1 naming datapath.nat_port_range and both ranges, nothing
// left attached or pinned. A range next to the ephemeral ports starts.
func TestNATPortRangeOverlap(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	ns := vethNS(t, "xno")
	const ephemeral = "20000-29999"
	if out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 29999").CombinedOutput(); err != nil {
		t.Fatalf("set ip_local_port_range: %v: %s", err, out)
	}
	pinDir := filepath.Join(pinRoot, "xlb-e2e-"+ns)
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	xdpOnEth0 := func() string {
		out, err := exec.Command("ip", "-n", ns, "-d", "link", "show", "eth0").CombinedOutput()
		if err != nil {
			t.Fatalf("ip link: %v: %s", err, out)
		}
		return xdpFlag(string(out))
	}
	for _, tt := range []struct {
		ports   string
		refused bool
	}{
		{"29000-30999", true}, // over the last ephemeral port
		{"10000-20000", true}, // up to the first one
		{"1024-65535", true},  // all of them
		{"30000-39999", false},
	} {
		t.Run(tt.ports, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "xlb.toml")
			text := fmt.Sprintf("[daemon]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\nbpffs_dir = %q\n"+
				"\n[datapath]\nnat_port_range = %q\n\n[admin]\nlisten = \"\"\n"+
				"\n[[service]]\nname = \"web\"\nvip = %q\nport = 80\nforwarding = \"nat\"\n"+
				"  [[service.backend]]\n  address = \"198.18.1.11\"\n  port = 8080\n", pinDir, tt.ports, VIP4)
			if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			run := []string{"nsenter", "--net=/run/netns/" + ns, Binary(t, "xlb"), "run", "-c", cfg}
			if !tt.refused {
				xlb := startBackground(t, run...)
				waitFor(t, "xlb running", 20*time.Second, 20*time.Millisecond, func() bool { return strings.Contains(xlb.stderr.String(), "xlb running") })
				if xlb.stop(); xlb.err != nil {
					t.Errorf("xlb after SIGTERM: %v\n%s", xlb.err, xlb.stderr.String())
				}
				return
			}
			code, _, stderr := runCode(t, run...)
			if code != 1 {
				t.Errorf("exit code %d, want 1\n%s", code, stderr)
			}
			if i := strings.Index(stderr, "datapath.nat_port_range"); i >= 0 {
				line := stderr[strings.LastIndexByte(stderr[:i], '\n')+1:]
				t.Logf("%s", strings.TrimSpace(line[:strings.IndexByte(line+"\n", '\n')]))
			}
			for _, w := range []string{"datapath.nat_port_range", tt.ports, ephemeral, "net.ipv4.ip_local_port_range"} {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if f := xdpOnEth0(); f != "" {
				t.Errorf("XDP (%s) left on eth0 by the refused start", f)
			}
			if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the refused start left %s (%v)", pinDir, err)
			}
		})
	}
}

// newNATTopology builds a topology named prefix and random letters with
// routed plain hosts r1..rN behind the router (r1 the backend), a client
// address per family and the LB's pin directory; a failure logs the NAT
// diagnostics.
func newNATTopology(t *testing.T, prefix string, routed int) (*Topology, string) {
	t.Helper()
	tp := NewTopology(t, prefix+randomPrefix()[len(prefix):], WithBackends(1), WithClients(2), WithRouted(routed), WithPlainRouted())
	pinDir := tp.PinDir(t)
	t.Cleanup(func() {
		if t.Failed() {
			tp.logNATDiagnostics(t, pinDir)
		}
	})
	return tp, pinDir
}

// startNATBackend readies the routed backend r1 and the client for nat
// services (natPrepare) and starts r1's servers: HTTP checks answered on
// natCheckPort, an echo server on natEchoBackend.
func (tp *Topology) startNATBackend(t *testing.T) *natEcho {
	t.Helper()
	tp.natPrepare(t, "r1")
	tp.StartReady(t, "r1", "ready ", 5*time.Second, Binary(t, "xlbtest"), "serve", "--name", "r1", "--listen",
		hostPort(tp.RoutedAddr4(1), natCheckPort)+","+hostPort(tp.RoutedAddr6(1), natCheckPort))
	return newNATEcho(t, tp.Namespace("r1"), natEchoBackend)
}

// natPrepare turns transmit checksum offload off on the client and on
// backends of nat services: the datapath rewrites addresses and ports and
// updates full checksums, not the partial ones veth passes (LAB.md).
func (tp *Topology) natPrepare(t *testing.T, backends ...string) {
	t.Helper()
	for _, h := range append([]string{"cl"}, backends...) {
		tp.mustExec(t, h, "ethtool", "-K", "eth0", "tx", "off")
	}
}

// natService is one [[service]] of a NAT test config, forwarding = "nat"
// to one backend.
type natService struct {
	name, vip, proto, backend, source string
	port, bport                       int
}

// natServices: per family a TCP echo service, a UDP echo service and a UDP
// service to a port nobody listens on, each translated to another port of
// the routed backend.
func natServices(own4, own6 string) []natService {
	return []natService{
		{"echo4", VIP4, "tcp", own4, "", natEchoPort, natEchoBackend},
		{"echo6", VIP6, "tcp", own6, "", natEchoPort, natEchoBackend},
		{"udp4", VIP4, "udp", own4, natSource4, natUDPPort, natUDPBackend},
		{"udp6", VIP6, "udp", own6, "", natUDPPort, natUDPBackend},
		{"dead4", VIP4, "udp", own4, "", natDeadPort, natDeadBackend},
		{"dead6", VIP6, "udp", own6, "", natDeadPort, natDeadBackend},
	}
}

// writeNATConfig writes a config of services, with HTTP checks on
// natCheckPort and extra (TOML tables) added.
func writeNATConfig(t *testing.T, pinDir, extra string, services []natService) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[daemon]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\nbpffs_dir = %q\n", pinDir)
	fmt.Fprintf(&b, "\n[health_check]\npath = \"/health\"\nport = %d\ninterval = \"1s\"\ntimeout = \"500ms\"\n", natCheckPort)
	b.WriteString(extra)
	for _, s := range services {
		fmt.Fprintf(&b, "\n[[service]]\nname = %q\nvip = %q\nport = %d\nprotocol = %q\nforwarding = \"nat\"\n", s.name, s.vip, s.port, s.proto)
		if s.source != "" {
			fmt.Fprintf(&b, "nat_source = %q\n", s.source)
		}
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n  port = %d\n", s.backend, s.bport)
	}
	path := filepath.Join(t.TempDir(), "xlb.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// requireNATPeer checks that what a backend sees as its client is the LB
// (source) and a port of the default NAT range.
func requireNATPeer(t *testing.T, what string, peer netip.AddrPort, source string) {
	t.Helper()
	r := config.DefaultNATPorts
	if peer.Addr().String() != source || peer.Port() < r.First || peer.Port() > r.Last {
		t.Errorf("%s is %v, want %s with a port in %s (the NAT range)", what, peer, source, r)
	}
}

// hostPort is addr:port, IPv6 in brackets.
func hostPort(addr string, port int) string {
	return netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(port)).String()
}

// natEcho is an echo server (serveEcho) in a backend's namespace that
// remembers every connection's addresses, as the backend saw them.
type natEcho struct {
	mu    sync.Mutex
	conns []echoConn
}

type echoConn struct{ remote, local netip.AddrPort }

func newNATEcho(t *testing.T, ns string, port int) *natEcho {
	t.Helper()
	e := &natEcho{}
	l := listenInNetns(t, ns, fmt.Sprintf("[::]:%d", port))
	go serveEcho(l, func(c net.Conn) {
		unmap := func(a net.Addr) netip.AddrPort {
			ap := a.(*net.TCPAddr).AddrPort()
			return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		e.conns = append(e.conns, echoConn{unmap(c.RemoteAddr()), unmap(c.LocalAddr())})
	})
	return e
}

// count is how many connections the server accepted so far.
func (e *natEcho) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.conns)
}

// since is the connections accepted after the first n.
func (e *natEcho) since(n int) []echoConn {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]echoConn(nil), e.conns[n:]...)
}

// listenPacketInNetns opens a UDP socket on addr in network namespace ns
// (closed when t ends).
func listenPacketInNetns(t *testing.T, ns, addr string) net.PacketConn {
	t.Helper()
	return openInNetns(t, ns, "udp "+addr, func() (net.PacketConn, error) { return net.ListenPacket("udp", addr) })
}

// serveUDPEcho answers every datagram with "PEER|DATAGRAM", PEER being the
// sender's address and port as the server sees them, until pc closes.
func serveUDPEcho(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, peer, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(append([]byte(peer.String()+"|"), buf[:n]...), peer)
	}
}

// dialUDP is a connected UDP socket from namespace ns to target (closed when
// t ends).
func dialUDP(t *testing.T, ns string, target netip.AddrPort) net.Conn {
	t.Helper()
	c, err := dialInNetns(context.Background(), ns, "udp", target.String())
	if err != nil {
		t.Fatalf("udp socket to %v: %v", target, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// udpExchange sends payload on c and returns the first answer; it sends up
// to three times, a second apart, while nothing comes back. An error the
// socket reports (ECONNREFUSED from an ICMP error) ends it at once.
func udpExchange(c net.Conn, payload string) (string, error) {
	buf := make([]byte, 2048)
	var err error
	for range 3 {
		if _, err = c.Write([]byte(payload)); err != nil {
			return "", err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		var n int
		n, err = c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return "", err
		}
	}
	return "", err
}

// nstat is the value of one of the kernel's SNMP counters in host's
// namespace.
func (tp *Topology) nstat(t *testing.T, host, counter string) uint64 {
	t.Helper()
	out, err := tp.Exec(host, "nstat", "-az", counter)
	if err != nil {
		t.Fatalf("nstat %s in %s: %v", counter, host, err)
	}
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == counter {
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatalf("nstat: %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("nstat printed no %s:\n%s", counter, out)
	return 0
}

// statusText is `xlb status --bpffs pinDir` (text) in the LB's namespace.
func (tp *Topology) statusText(t *testing.T, pinDir string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ExecTimeout)
	defer cancel()
	out, err := output(exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+tp.Namespace("lb"),
		Binary(t, "xlb"), "status", "--bpffs", pinDir))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// logNATDiagnostics logs the interfaces, counters and pins that explain a
// failed NAT test.
func (tp *Topology) logNATDiagnostics(t *testing.T, pinDir string) {
	tp.logIPIPDiagnostics(t)
	for _, c := range [][]string{
		{"r1", "nstat", "-az", "IcmpOutDestUnreachs", "Icmp6OutDestUnreachs", "UdpInDatagrams", "UdpNoPorts", "Udp6NoPorts"},
		{"cl", "nstat", "-az", "Icmp6InDestUnreachs", "UdpInErrors", "TcpInCsumErrors"},
	} {
		out, err := tp.Exec(c[0], c[1:]...)
		t.Logf("%s$ %s (%v)\n%s", c[0], strings.Join(c[1:], " "), err, out)
	}
	if _, err := os.Stat(pinDir); err == nil {
		if snap, err := tp.statusSnapshot(t, pinDir); err == nil {
			t.Logf("xlb status: %+v", *snap)
		}
	}
}

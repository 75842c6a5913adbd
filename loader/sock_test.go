package loader

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/bpf"
	"github.com/xlb-dev/xlb/checkroute"
)

// The socket hooks cannot run under BPF_PROG_TEST_RUN, so these tests run
// them for real: attached to a child cgroup of their own (never the root,
// so the host is not steered), with a client process (this test binary
// again, as TestSockHelper) in that cgroup and in a network namespace whose
// backends live in a second one:
//
//	lb netns: xs0 198.18.0.1/24 2001:db8:18::1/64, the VIPs routed via .11 / ::11
//	be netns: xs1 198.18.0.11-13/24 2001:db8:18::11-13/64, the VIPs on lo
//
// Every listener in be answers with its own address and port, so a client
// sees where its connection went: a backend, or the VIP itself when the
// hooks left the connection alone.

const sockHelperEnv = "XLB_SOCK_HELPER"

// sockReq is what the client helper does: Op "tcp" (connect, getpeername,
// send a line, read the answer), "udp-connect" (the same over UDP) or "udp"
// (sendto, recvfrom) to Addr.
type sockReq struct {
	Op     string
	Addr   string
	Mark   uint32 // SO_MARK before connecting
	Mapped bool   // an AF_INET6 socket to the IPv4-mapped address
	Hold   bool   // tcp, udp: then one more answer per line on stdin, until EOF
}

// sockResult is one line of the helper's output.
type sockResult struct {
	Identity string // what the server answered: its address and port
	Peer     string // getpeername
	From     string // recvfrom's source
	Cookie   uint64 // SO_COOKIE
	Err      string
	Errno    int
	Elapsed  time.Duration
}

// TestSockHelper is the socket hook tests' client when run as their child;
// otherwise it does nothing.
func TestSockHelper(t *testing.T) {
	spec := os.Getenv(sockHelperEnv)
	if spec == "" {
		return
	}
	var req sockReq
	if err := json.Unmarshal([]byte(spec), &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	sockClient(req, os.Stdin, os.Stdout)
	os.Exit(0)
}

func sockClient(req sockReq, in io.Reader, out io.Writer) {
	enc := json.NewEncoder(out)
	ap := netip.MustParseAddrPort(req.Addr)
	family, typ := unix.AF_INET, unix.SOCK_STREAM
	if ap.Addr().Is6() || req.Mapped {
		family = unix.AF_INET6
	}
	if req.Op != "tcp" {
		typ = unix.SOCK_DGRAM
	}
	var r sockResult
	start := time.Now()
	fail := func(err error) {
		r.Err, r.Elapsed = err.Error(), time.Since(start)
		var errno unix.Errno
		if errors.As(err, &errno) {
			r.Errno = int(errno)
		}
		enc.Encode(r)
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fail(err)
		return
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 3}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if req.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(req.Mark)); err != nil {
			fail(err)
			return
		}
	}
	r.Cookie, _ = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	sa := toSockaddr(ap, family)
	if req.Op != "udp" {
		if err := unix.Connect(fd, sa); err != nil {
			fail(err)
			return
		}
		p, err := unix.Getpeername(fd)
		if err != nil {
			fail(err)
			return
		}
		r.Peer = sockaddrString(p)
	}
	sc := bufio.NewScanner(in)
	for {
		if err := exchange(fd, req.Op, sa, &r); err != nil {
			fail(err)
			return
		}
		r.Elapsed = time.Since(start)
		enc.Encode(r)
		if !req.Hold || !sc.Scan() {
			return
		}
		r, start = sockResult{Cookie: r.Cookie}, time.Now()
	}
}

// exchange sends a line and reads the answer: write and read on a
// connected socket, sendto and recvfrom on an unconnected one.
func exchange(fd int, op string, sa unix.Sockaddr, r *sockResult) error {
	msg := []byte("hi\n")
	if op == "udp" {
		if err := unix.Sendto(fd, msg, 0, sa); err != nil {
			return err
		}
	} else if _, err := unix.Write(fd, msg); err != nil {
		return err
	}
	buf := make([]byte, 512)
	var n int
	var err error
	switch op {
	case "tcp":
		// A stream: the answer is one line.
		for n = 0; err == nil && (n == 0 || buf[n-1] != '\n'); {
			var m int
			m, err = unix.Read(fd, buf[n:])
			if m == 0 && err == nil {
				err = io.ErrUnexpectedEOF
			}
			n += m
		}
	case "udp":
		var from unix.Sockaddr
		if n, from, err = unix.Recvfrom(fd, buf, 0); err == nil {
			r.From = sockaddrString(from)
		}
	default:
		n, err = unix.Read(fd, buf)
	}
	if err != nil {
		return err
	}
	r.Identity = strings.TrimSpace(string(buf[:n]))
	return nil
}

func toSockaddr(ap netip.AddrPort, family int) unix.Sockaddr {
	if family == unix.AF_INET {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

func sockaddrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return fmt.Sprintf("%T", sa)
}

// sockEnv is the two namespaces, the cgroup and the backends' listeners.
type sockEnv struct {
	t      *testing.T
	lb, be *testNet
	cgroup string
	cgfd   *os.File
}

var (
	sockLB4 = netip.MustParseAddr("198.18.0.1")
	sockLB6 = netip.MustParseAddr("2001:db8:18::1")
)

func newSockEnv(t *testing.T) *sockEnv {
	t.Helper()
	requireRoot(t)
	e := &sockEnv{t: t, lb: newTestNet(t), be: newTestNet(t)}
	e.cgroup, e.cgfd = testCgroup(t)

	xs0 := e.lb.veth("xs0", "xs1", nil, 0, "198.18.0.1/24", "2001:db8:18::1/64")
	peer, err := e.lb.h.LinkByName("xs1")
	if err == nil {
		err = e.lb.h.LinkSetNsFd(peer, int(e.be.ns))
	}
	if err != nil {
		t.Fatalf("veth peer to the backends' namespace: %v", err)
	}
	up := func(name string, addrs ...string) {
		l, err := e.be.h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if err := e.be.h.AddrAdd(l, &netlink.Addr{IPNet: mustIPNet(a), Flags: unix.IFA_F_NODAD}); err != nil {
				t.Fatalf("%s on %s: %v", a, name, err)
			}
		}
		if err := e.be.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	up("xs1", "198.18.0.11/24", "198.18.0.12/24", "198.18.0.13/24",
		"2001:db8:18::11/64", "2001:db8:18::12/64", "2001:db8:18::13/64")
	up("lo", vip4.String()+"/32", vip6.String()+"/128")
	for _, r := range []struct{ dst, gw string }{{vip4.String() + "/32", "198.18.0.11"}, {vip6.String() + "/128", "2001:db8:18::11"}} {
		if err := e.lb.h.RouteAdd(&netlink.Route{Dst: mustIPNet(r.dst), Gw: net.ParseIP(r.gw), LinkIndex: xs0}); err != nil {
			t.Fatalf("route %s: %v", r.dst, err)
		}
	}
	return e
}

func mustIPNet(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

// testCgroup makes a child of the cgroup v2 root, removed at the end (its
// processes, all the test's, gone by then).
func testCgroup(t *testing.T) (string, *os.File) {
	t.Helper()
	root, err := findCgroup2("/proc/self/mountinfo")
	if err != nil || root == "" {
		t.Fatalf("no cgroup2 mounted (%v)", err)
	}
	dir, err := os.MkdirTemp(root, "xlb-test-")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dir)
	if err != nil {
		os.Remove(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		// A process just reaped may take a moment to leave the cgroup.
		for i := 0; ; i++ {
			err := os.Remove(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if i == 50 {
				t.Errorf("remove cgroup %s: %v", dir, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return dir, f
}

// serve starts the backends' listeners: TCP on every tcp port and UDP on
// every udp port of each address, answering every line with the
// listener's address.
func (e *sockEnv) serve(addrs []netip.Addr, tcp, udp []uint16) {
	e.t.Helper()
	var closers []io.Closer
	listen := func(network string, ap netip.AddrPort) {
		var c io.Closer
		var err error
		if network == "tcp" {
			var ln net.Listener
			if ln, err = net.Listen(network, ap.String()); err == nil {
				c = ln
				go serveTCP(ln)
			}
		} else {
			var pc net.PacketConn
			if pc, err = net.ListenPacket(network, ap.String()); err == nil {
				c = pc
				go serveUDP(pc)
			}
		}
		if err != nil {
			e.t.Fatalf("listen: %v", err)
		}
		closers = append(closers, c)
	}
	e.be.do(func() {
		for _, a := range addrs {
			for _, p := range tcp {
				listen("tcp", netip.AddrPortFrom(a, p))
			}
			for _, p := range udp {
				listen("udp", netip.AddrPortFrom(a, p))
			}
		}
	})
	e.t.Cleanup(func() {
		for _, c := range closers {
			c.Close()
		}
	})
}

func serveTCP(ln net.Listener) {
	id := []byte(ln.Addr().String() + "\n")
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				c.Write(id)
			}
		}()
	}
}

func serveUDP(pc net.PacketConn) {
	id := []byte(pc.LocalAddr().String() + "\n")
	buf := make([]byte, 512)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(id, from)
	}
}

// sockClientProc is a running helper.
type sockClientProc struct {
	t     *testing.T
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines *bufio.Scanner
	once  sync.Once
}

// start runs the helper for req in netns n, in the test cgroup when
// inCgroup.
func (e *sockEnv) start(n *testNet, inCgroup bool, req sockReq) *sockClientProc {
	e.t.Helper()
	spec, _ := json.Marshal(req)
	cmd := exec.Command(os.Args[0], "-test.run=^TestSockHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), sockHelperEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	if inCgroup {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(e.cgfd.Fd())}
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	// Forked from the namespace's thread, the helper starts in it.
	n.do(func() { err = cmd.Start() })
	if err != nil {
		e.t.Fatalf("start client: %v", err)
	}
	p := &sockClientProc{t: e.t, cmd: cmd, in: in, lines: bufio.NewScanner(out)}
	e.t.Cleanup(p.stop)
	return p
}

// next is the helper's next result.
func (p *sockClientProc) next() sockResult {
	p.t.Helper()
	for p.lines.Scan() {
		var r sockResult
		if json.Unmarshal(p.lines.Bytes(), &r) == nil {
			return r
		}
	}
	p.t.Fatalf("client ended without a result: %v", p.lines.Err())
	return sockResult{}
}

// ping asks a holding helper for one more answer on its connection.
func (p *sockClientProc) ping() sockResult {
	p.t.Helper()
	if _, err := io.WriteString(p.in, "ping\n"); err != nil {
		p.t.Fatal(err)
	}
	return p.next()
}

func (p *sockClientProc) stop() {
	p.once.Do(func() {
		p.in.Close()
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	})
}

// run is start, the first result, stop.
func (e *sockEnv) run(req sockReq) sockResult {
	e.t.Helper()
	p := e.start(e.lb, true, req)
	defer p.stop()
	return p.next()
}

// cookieAddr is the address whose bytes flow_hash hashes in place of a
// source for a socket: its cookie, little-endian (see bpf/sock.c).
func cookieAddr(cookie uint64, v6 bool) netip.Addr {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:], cookie)
	if !v6 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// hostSource is the source ip_hash hashes for every local connection.
func hostSource(v6 bool) netip.Addr {
	if v6 {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// expect is where the ring sends a local socket with cookie to svc.
func (f *fixture) expectLocal(svc ServiceSpec, cookie uint64) netip.Addr {
	f.t.Helper()
	v6 := svc.VIP.Is6()
	if svc.Hash == HashFlow {
		return f.predict(svc, cookieAddr(cookie, v6), 0)
	}
	return f.predict(svc, hostSource(v6), 0)
}

// openSockFixture loads the datapath with the hooks on e's cgroup, in
// e's lb namespace (the one steered).
func (e *sockEnv) open(opts Options) *fixture {
	e.t.Helper()
	opts.Logger, opts.SteerLocal, opts.Cgroup = quietLogger(), true, e.cgroup
	var dp *Datapath
	var err error
	e.lb.do(func() { dp, err = Open(opts) })
	if err != nil {
		e.t.Fatalf("open: %v", err)
	}
	e.t.Cleanup(func() { dp.Close(false) })
	rec, err := NewReconciler(&dp.Maps, routedResolver{out: loIfIndex}, loIfIndex, quietLogger())
	if err != nil {
		e.t.Fatal(err)
	}
	return &fixture{t: e.t, dp: dp, rec: rec}
}

func addrPort(a netip.Addr, p uint16) string { return netip.AddrPortFrom(a, p).String() }

// sockServices: per family, TCP ip_hash on 80, TCP flow_hash on 81, nat on
// 82 to the backends' 9090, no backend up on 83, L7 on 84, UDP on 53
// (IPv4 ip_hash, IPv6 flow_hash) and without backends on 54.
func sockServices() []ServiceSpec {
	var out []ServiceSpec
	for _, fam := range []struct {
		vip     netip.Addr
		bes     []netip.Addr
		udpHash HashMode
	}{{vip4, be4, HashIP}, {vip6, be6, HashFlow}} {
		nat := webService(fam.vip, 82, protoTCP, HashIP, fam.bes)
		nat.Forwarding, nat.NATSource = ForwardNAT, sockLB4
		if fam.vip.Is6() {
			nat.NATSource = sockLB6
		}
		for i := range nat.Backends {
			nat.Backends[i].Port = 9090
		}
		down := webService(fam.vip, 83, protoTCP, HashIP, fam.bes)
		udpDown := webService(fam.vip, 54, protoUDP, HashIP, fam.bes)
		for i := range down.Backends {
			down.Backends[i].State = StateDown
			udpDown.Backends[i].State = StateDown
		}
		l7 := ServiceSpec{Name: fmt.Sprintf("l7-%s", fam.vip), VIP: fam.vip, Port: 84, Proto: protoTCP, Kind: KindL7}
		out = append(out,
			webService(fam.vip, 80, protoTCP, HashIP, fam.bes),
			webService(fam.vip, 81, protoTCP, HashFlow, fam.bes),
			nat, down, l7,
			webService(fam.vip, 53, protoUDP, fam.udpHash, fam.bes),
			udpDown)
	}
	return out
}

func findService(svcs []ServiceSpec, vip netip.Addr, port uint16, proto uint8) ServiceSpec {
	for _, s := range svcs {
		if s.VIP == vip && s.Port == port && s.Proto == proto {
			return s
		}
	}
	panic(fmt.Sprintf("no service %s:%d/%d", vip, port, proto))
}

func (e *sockEnv) serveAll() {
	e.serve(append(append([]netip.Addr{vip4, vip6}, be4...), be6...), []uint16{80, 81, 82, 83, 84, 9090}, []uint16{53, 54})
}

// TestSockSteering: connections from a process in the hooks' cgroup reach
// the backend the ring picks (ip_hash as one source, flow_hash by socket
// cookie) on the service port or the nat backend's port, and see the VIP as
// their peer and as the source of UDP answers; services without a backend
// up refuse at once; L7 VIPs, check_via_vip's marked sockets, processes
// outside the cgroup and other network namespaces are left alone.
func TestSockSteering(t *testing.T) {
	e := newSockEnv(t)
	e.serveAll()
	f := e.open(Options{})
	svcs := sockServices()
	f.apply(Desired{RingSize: 1021, Services: svcs})

	for _, fam := range []struct {
		name string
		vip  netip.Addr
	}{{"ipv4", vip4}, {"ipv6", vip6}} {
		vip := fam.vip
		t.Run(fam.name, func(t *testing.T) {
			t.Run("tcp ip_hash", func(t *testing.T) {
				svc := findService(svcs, vip, 80, protoTCP)
				want := f.expectLocal(svc, 0)
				for range 3 {
					r := e.run(sockReq{Op: "tcp", Addr: addrPort(vip, 80)})
					if r.Err != "" || r.Identity != addrPort(want, 80) || r.Peer != addrPort(vip, 80) {
						t.Fatalf("got %+v, want answer from %s and peer %s", r, addrPort(want, 80), addrPort(vip, 80))
					}
				}
			})
			t.Run("tcp flow_hash", func(t *testing.T) {
				svc := findService(svcs, vip, 81, protoTCP)
				seen := map[string]int{}
				for range 12 {
					r := e.run(sockReq{Op: "tcp", Addr: addrPort(vip, 81)})
					want := addrPort(f.expectLocal(svc, r.Cookie), 81)
					if r.Err != "" || r.Identity != want || r.Peer != addrPort(vip, 81) {
						t.Fatalf("got %+v, want answer from %s and peer %s", r, want, addrPort(vip, 81))
					}
					seen[r.Identity]++
				}
				if len(seen) < 2 {
					t.Errorf("12 sockets all on one backend: %v", seen)
				}
			})
			t.Run("nat goes to the backend port", func(t *testing.T) {
				want := addrPort(f.expectLocal(findService(svcs, vip, 82, protoTCP), 0), 9090)
				r := e.run(sockReq{Op: "tcp", Addr: addrPort(vip, 82)})
				if r.Err != "" || r.Identity != want || r.Peer != addrPort(vip, 82) {
					t.Fatalf("got %+v, want answer from %s and peer %s", r, want, addrPort(vip, 82))
				}
			})
			t.Run("udp unconnected", func(t *testing.T) {
				svc := findService(svcs, vip, 53, protoUDP)
				for range 3 {
					r := e.run(sockReq{Op: "udp", Addr: addrPort(vip, 53)})
					want := addrPort(f.expectLocal(svc, r.Cookie), 53)
					if r.Err != "" || r.Identity != want || r.From != addrPort(vip, 53) {
						t.Fatalf("got %+v, want answer from %s, received from %s", r, want, addrPort(vip, 53))
					}
				}
			})
			t.Run("udp connected", func(t *testing.T) {
				svc := findService(svcs, vip, 53, protoUDP)
				r := e.run(sockReq{Op: "udp-connect", Addr: addrPort(vip, 53)})
				want := addrPort(f.expectLocal(svc, r.Cookie), 53)
				if r.Err != "" || r.Identity != want || r.Peer != addrPort(vip, 53) {
					t.Fatalf("got %+v, want answer from %s and peer %s", r, want, addrPort(vip, 53))
				}
			})
			t.Run("no backend up: refused at once", func(t *testing.T) {
				for _, req := range []sockReq{{Op: "tcp", Addr: addrPort(vip, 83)}, {Op: "udp", Addr: addrPort(vip, 54)}, {Op: "udp-connect", Addr: addrPort(vip, 54)}} {
					r := e.run(req)
					if r.Errno != int(unix.ECONNREFUSED) || r.Elapsed > time.Second {
						t.Errorf("%s %s: got %+v, want ECONNREFUSED within 1s", req.Op, req.Addr, r)
					}
				}
			})
			untouched := func(t *testing.T, r sockResult, port uint16) {
				t.Helper()
				if r.Err != "" || r.Identity != addrPort(vip, port) || r.Peer != addrPort(vip, port) {
					t.Errorf("got %+v, want the VIP's own answer (left alone)", r)
				}
			}
			t.Run("l7 VIP left alone", func(t *testing.T) {
				untouched(t, e.run(sockReq{Op: "tcp", Addr: addrPort(vip, 84)}), 84)
			})
			t.Run("check_via_vip mark left alone", func(t *testing.T) {
				for _, mark := range []uint32{checkroute.Base + 1, checkroute.Base + checkroute.Ranges*(checkroute.MaxSlots+1) - 1} {
					untouched(t, e.run(sockReq{Op: "tcp", Addr: addrPort(vip, 80), Mark: mark}), 80)
				}
				// Other marks are steered.
				if r := e.run(sockReq{Op: "tcp", Addr: addrPort(vip, 80), Mark: checkroute.Base - 1}); r.Identity == addrPort(vip, 80) {
					t.Errorf("mark %#x: %+v, want steered", checkroute.Base-1, r)
				}
			})
			t.Run("outside the cgroup left alone", func(t *testing.T) {
				p := e.start(e.lb, false, sockReq{Op: "tcp", Addr: addrPort(vip, 80)})
				untouched(t, p.next(), 80)
			})
		})
	}

	t.Run("ipv4-mapped on a dual-stack socket", func(t *testing.T) {
		mapped := netip.AddrFrom16(vip4.As16())
		want := addrPort(f.expectLocal(findService(svcs, vip4, 80, protoTCP), 0), 80)
		r := e.run(sockReq{Op: "tcp", Addr: addrPort(mapped, 80), Mapped: true})
		if r.Err != "" || r.Identity != want || r.Peer != addrPort(mapped, 80) {
			t.Fatalf("got %+v, want answer from %s and peer %s", r, want, addrPort(mapped, 80))
		}
	})
	t.Run("another network namespace left alone", func(t *testing.T) {
		// In the backends' namespace the VIP is local: left alone, the
		// connection reaches its listener.
		p := e.start(e.be, true, sockReq{Op: "tcp", Addr: addrPort(vip4, 80)})
		if r := p.next(); r.Err != "" || r.Identity != addrPort(vip4, 80) {
			t.Errorf("got %+v, want the VIP's own answer", r)
		}
	})
	t.Run("counted as new flows", func(t *testing.T) {
		svc := findService(svcs, vip4, 80, protoTCP)
		id := f.serviceID(vip4, 80, protoTCP)
		before, err := f.dp.ServiceCounters(id)
		if err != nil {
			t.Fatal(err)
		}
		beID := backendID(t, f, svc, f.expectLocal(svc, 0))
		beBefore, _ := f.dp.BackendCounters(beID)
		for range 2 {
			if r := e.run(sockReq{Op: "tcp", Addr: addrPort(vip4, 80)}); r.Err != "" {
				t.Fatal(r.Err)
			}
		}
		after, _ := f.dp.ServiceCounters(id)
		beAfter, _ := f.dp.BackendCounters(beID)
		if after.NewFlows-before.NewFlows != 2 || beAfter.NewFlows-beBefore.NewFlows != 2 || after.Packets != before.Packets {
			t.Errorf("service %+v -> %+v, backend %+v -> %+v: want 2 more new flows each and no packets", before, after, beBefore, beAfter)
		}
	})
}

// backendID is the id the datapath gave svc's backend at addr.
func backendID(t *testing.T, f *fixture, svc ServiceSpec, addr netip.Addr) uint32 {
	t.Helper()
	all, err := f.dp.BackendEntries()
	if err != nil {
		t.Fatal(err)
	}
	sid := f.serviceID(svc.VIP, svc.Port, svc.Proto)
	for id, b := range all {
		if b.State != uint8(bpf.XlbBackendStateXLB_BE_UNUSED) && b.ServiceId == sid && BackendAddr(b) == addr {
			return uint32(id)
		}
	}
	t.Fatalf("no backend %s in %s", addr, svc.Name)
	return 0
}

// TestSockDrain: a connection open to a backend that then drains keeps it
// (the socket is connected to the backend itself), new ones go elsewhere;
// an unconnected UDP socket keeps its drained backend too, as a UDP flow in
// the connection table would, until the backend is down.
func TestSockDrain(t *testing.T) {
	e := newSockEnv(t)
	e.serveAll()
	f := e.open(Options{})
	svcs := sockServices()
	f.apply(Desired{RingSize: 1021, Services: svcs})
	svc := findService(svcs, vip4, 81, protoTCP)

	held := e.start(e.lb, true, sockReq{Op: "tcp", Addr: addrPort(vip4, 81), Hold: true})
	first := held.next()
	drained := f.expectLocal(svc, first.Cookie)
	if first.Err != "" || first.Identity != addrPort(drained, 81) {
		t.Fatalf("got %+v, want answer from %s", first, addrPort(drained, 81))
	}
	// An unconnected UDP socket whose flow_hash pick is the same backend.
	udpSvc := findService(svcs, vip6, 53, protoUDP)
	var udp *sockClientProc
	var udpDrained netip.Addr
	for range 50 {
		p := e.start(e.lb, true, sockReq{Op: "udp", Addr: addrPort(vip6, 53), Hold: true})
		r := p.next()
		if r.Err != "" || r.From != addrPort(vip6, 53) {
			t.Fatalf("udp: %+v", r)
		}
		if be := f.expectLocal(udpSvc, r.Cookie); be == be6[0] {
			udp, udpDrained = p, be
			break
		}
		p.stop()
	}
	if udp == nil {
		t.Fatal("no UDP socket of 50 on the first backend")
	}

	draining := svc
	draining.Backends = append([]BackendSpec(nil), svc.Backends...)
	for i := range draining.Backends {
		if draining.Backends[i].Address == drained {
			draining.Backends[i].State = StateDraining
		}
	}
	udpDraining := udpSvc
	udpDraining.Backends = append([]BackendSpec(nil), udpSvc.Backends...)
	udpDraining.Backends[0].State = StateDraining
	next := append([]ServiceSpec(nil), svcs...)
	for i := range next {
		switch next[i].Name {
		case svc.Name:
			next[i] = draining
		case udpSvc.Name:
			next[i] = udpDraining
		}
	}
	f.apply(Desired{RingSize: 1021, Services: next})

	if r := held.ping(); r.Err != "" || r.Identity != addrPort(drained, 81) {
		t.Errorf("held connection after the drain: %+v, want still %s", r, addrPort(drained, 81))
	}
	for range 12 {
		r := e.run(sockReq{Op: "tcp", Addr: addrPort(vip4, 81)})
		want := addrPort(f.expectLocal(draining, r.Cookie), 81)
		if r.Err != "" || r.Identity != want || r.Identity == addrPort(drained, 81) {
			t.Fatalf("new connection after the drain: %+v, want %s (never the drained %s)", r, want, drained)
		}
	}
	if r := held.ping(); r.Err != "" || r.Identity != addrPort(drained, 81) {
		t.Errorf("held connection at the end: %+v, want still %s", r, addrPort(drained, 81))
	}

	if r := udp.ping(); r.Err != "" || r.Identity != addrPort(udpDrained, 53) || r.From != addrPort(vip6, 53) {
		t.Errorf("udp socket after the drain: %+v, want still %s, from the VIP", r, addrPort(udpDrained, 53))
	}
	for range 12 {
		r := e.run(sockReq{Op: "udp", Addr: addrPort(vip6, 53)})
		if want := addrPort(f.expectLocal(udpDraining, r.Cookie), 53); r.Err != "" || r.Identity != want || r.Identity == addrPort(udpDrained, 53) {
			t.Fatalf("new udp socket after the drain: %+v, want %s (never the drained %s)", r, want, udpDrained)
		}
	}
	// Down, the backend loses even the socket that used it.
	udpDown := udpDraining
	udpDown.Backends = append([]BackendSpec(nil), udpDraining.Backends...)
	udpDown.Backends[0].State = StateDown
	for i := range next {
		if next[i].Name == udpSvc.Name {
			next[i] = udpDown
		}
	}
	f.apply(Desired{RingSize: 1021, Services: next})
	if r := udp.ping(); r.Err != "" || r.Identity == addrPort(udpDrained, 53) || r.From != addrPort(vip6, 53) {
		t.Errorf("udp socket once its backend is down: %+v, want another backend, from the VIP", r)
	}
}

// TestSockLifecycle: the hooks follow the datapath's start, Commit and
// Close: pinned beside the XDP maps, kept attached with keep (steering with
// no daemon), adopted by the next start and left as they were by a start
// that fails; a start with steering off removes them at Commit, and a
// committed Close without keep detaches them.
func TestSockLifecycle(t *testing.T) {
	e := newSockEnv(t)
	e.serveAll()
	dir := filepath.Join(bpffsRoot, "xlb-socktest-"+filepath.Base(e.cgroup))
	t.Cleanup(func() { os.RemoveAll(dir) })
	svcs := sockServices()
	web := findService(svcs, vip4, 80, protoTCP)
	steered := func(t *testing.T, want bool) {
		t.Helper()
		r := e.run(sockReq{Op: "tcp", Addr: addrPort(vip4, 80)})
		if got := r.Err == "" && r.Identity != addrPort(vip4, 80); got != want {
			t.Fatalf("steered = %v (%+v), want %v", got, r, want)
		}
	}
	pinned := func(t *testing.T, want bool) {
		t.Helper()
		for _, h := range sockHooks {
			_, err := os.Stat(filepath.Join(dir, h.pin))
			if (err == nil) != want {
				t.Fatalf("%s pinned: %v, want %v", h.pin, err == nil, want)
			}
		}
	}
	open := func(steer bool) *Datapath {
		t.Helper()
		var dp *Datapath
		var err error
		e.lb.do(func() {
			dp, err = Open(Options{Logger: quietLogger(), PinDir: dir, SteerLocal: steer, Cgroup: e.cgroup})
		})
		if err != nil {
			t.Fatal(err)
		}
		return dp
	}

	// openWeb is open(true) with the service applied.
	openWeb := func(t *testing.T) *Datapath {
		t.Helper()
		dp := open(true)
		rec, err := NewReconciler(&dp.Maps, routedResolver{out: loIfIndex}, loIfIndex, quietLogger())
		if err != nil {
			dp.Close(false)
			t.Fatal(err)
		}
		(&fixture{t: t, dp: dp, rec: rec}).apply(Desired{RingSize: 1021, Services: []ServiceSpec{web}})
		return dp
	}

	dp := openWeb(t)
	steered(t, true) // attached at Open, before Commit
	pinned(t, false)
	if err := dp.Commit(); err != nil {
		t.Fatal(err)
	}
	pinned(t, true)
	if err := dp.Close(true); err != nil {
		t.Fatal(err)
	}
	t.Run("kept with no daemon", func(t *testing.T) { steered(t, true) })

	t.Run("a failed start leaves them", func(t *testing.T) {
		next := open(true)
		if len(next.sock.adopted) != len(sockHooks) {
			t.Errorf("adopted %d links, want %d", len(next.sock.adopted), len(sockHooks))
		}
		if err := next.Close(false); err != nil { // never committed
			t.Fatal(err)
		}
		pinned(t, true)
		steered(t, true)
	})

	t.Run("a Commit undone puts back the programs and pins", func(t *testing.T) {
		progs := func() map[string]ebpf.ProgramID {
			out := map[string]ebpf.ProgramID{}
			for _, h := range sockHooks {
				l, err := link.LoadPinnedLink(filepath.Join(dir, h.pin), nil)
				if err != nil {
					t.Fatal(err)
				}
				info, err := l.Info()
				l.Close()
				if err != nil {
					t.Fatal(err)
				}
				out[h.pin] = info.Program
			}
			return out
		}
		before := progs()
		next := open(true)
		var sw pinSwap
		if err := next.sock.commit(&sw); err != nil {
			t.Fatal(err)
		}
		for pin, id := range progs() {
			if id == before[pin] {
				t.Errorf("%s: still program %d after commit", pin, id)
			}
		}
		if err := errors.Join(next.sock.revert(), sw.rollback()); err != nil {
			t.Fatal(err)
		}
		if got := progs(); !maps.Equal(got, before) {
			t.Errorf("programs after the undo %v, want %v", got, before)
		}
		if err := next.Close(false); err != nil {
			t.Fatal(err)
		}

		off := open(false)
		sw = pinSwap{}
		if err := off.sock.commit(&sw); err != nil {
			t.Fatal(err)
		}
		pinned(t, false)
		if err := sw.rollback(); err != nil {
			t.Fatal(err)
		}
		pinned(t, true)
		if err := off.Close(false); err != nil {
			t.Fatal(err)
		}
		steered(t, true)
	})

	t.Run("a start with steering off removes them at Commit", func(t *testing.T) {
		off := open(false)
		steered(t, true)
		if err := off.Commit(); err != nil {
			t.Fatal(err)
		}
		pinned(t, false)
		steered(t, false)
		if err := off.Close(true); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("adopted, committed, dropped", func(t *testing.T) {
		again := openWeb(t) // nothing pinned: attaches anew
		if err := again.Commit(); err != nil {
			t.Fatal(err)
		}
		again.Close(true)
		last := open(true)
		if len(last.sock.adopted) != len(sockHooks) {
			t.Errorf("adopted %d links, want %d", len(last.sock.adopted), len(sockHooks))
		}
		if err := last.Commit(); err != nil { // this start's programs into the links
			t.Fatal(err)
		}
		steered(t, true)
		if err := last.Close(false); err != nil {
			t.Fatal(err)
		}
		steered(t, false)
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pin directory left: %v", err)
		}
	})
}

func TestFindCgroup2(t *testing.T) {
	for _, c := range []struct{ name, text, want string }{
		{"unified", "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n", "/sys/fs/cgroup"},
		{"hybrid", "30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n" +
			"31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n" +
			"40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup/unified"},
		{"a subtree is no root", "50 22 0:26 /system.slice /mnt/x rw - cgroup2 cgroup2 rw\n", ""},
		{"escaped", `51 22 0:26 / /mnt/my\040cgroup rw - cgroup2 cgroup2 rw` + "\n", "/mnt/my cgroup"},
		{"none", "64 61 0:40 / /sys rw,relatime - sysfs sysfs rw\n", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "mountinfo")
			if err := os.WriteFile(path, []byte(c.text), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := findCgroup2(path)
			if err != nil || got != c.want {
				t.Errorf("findCgroup2 = %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

// TestSockCheckMark: the hooks skip exactly checkroute's marks, Base+1 up
// to the last slot of its last range.
func TestSockCheckMark(t *testing.T) {
	base, mask := uint32(bpf.XlbSockSockLimitsXLB_SOCK_CHECK_MARK_BASE), uint32(bpf.XlbSockSockLimitsXLB_SOCK_CHECK_MARK_MASK)
	last := checkroute.Base + checkroute.Ranges*(checkroute.MaxSlots+1) - 1
	for _, c := range []struct {
		mark uint32
		skip bool
	}{{checkroute.Base + 1, true}, {last, true}, {checkroute.Base - 1, false}, {last + 1, false}} {
		if got := c.mark&mask == base; got != c.skip {
			t.Errorf("mark %#x: skipped %v, want %v (sock.h: %#x/%#x)", c.mark, got, c.skip, base, mask)
		}
	}
}

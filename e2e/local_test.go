package e2e

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/loader"
)

// TestLocalClients: a process on the xlb host itself (the lb namespace)
// connects to the L4 VIPs, which the XDP program never sees it reach, and is
// answered by a backend: the one the service's Maglev table gives the host
// (ip_hash of the unspecified address, see bpf/sock.c), through the socket
// hooks xlb attached to the cgroup v2 root and pinned beside the XDP link.
// Its connections count as the service's new flows; the hooks go with xlb;
// with steer_local = false nothing is attached and the VIP, which the lb
// namespace has no route to, stays unreachable from there.
func TestLocalClients(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	tp := NewTopology(t, "xlc"+randomPrefix()[3:])
	pinDir := tp.PinDir(t)
	t.Cleanup(func() {
		if t.Failed() {
			tp.logDiagnostics(t)
		}
	})
	bin := Binary(t, "xlbtest")
	for i, h := range tp.BackendHosts() {
		listen := []string{VIP4 + ":80", "[" + VIP6 + "]:80",
			tp.BackendAddr4(i+1) + ":80", "[" + tp.BackendAddr6(i+1) + "]:80"}
		tp.StartReady(t, h, "ready ", 5*time.Second, bin, "serve", "--name", h, "--listen", strings.Join(listen, ","))
	}
	var be4, be6 []string
	for i := 1; i <= tp.Backends; i++ {
		be4, be6 = append(be4, tp.BackendAddr4(i)), append(be6, tp.BackendAddr6(i))
	}
	config := writeConfig(t, t.TempDir(), "generic", pinDir,
		l4Service{Name: "web", VIP: VIP4, Port: 80, Backends: be4},
		l4Service{Name: "web6", VIP: VIP6, Port: 80, Backends: be6})
	const conns = 5
	load := func(t *testing.T, vip string) LoadSummary {
		t.Helper()
		url := "http://" + netip.AddrPortFrom(netip.MustParseAddr(vip), 80).String() + "/"
		return tp.Load(t, "lb", "--target", url, "--conns", strconv.Itoa(conns), "--parallel", "1", "--timeout", "2s")
	}

	t.Run("steered", func(t *testing.T) {
		xlb := tp.StartXLB(t, config, pinDir, "generic")
		if _, stderr := tp.Output(xlb); logLine(stderr, "socket hooks attached: the host's own connections to L4 VIPs go to their backends") == "" {
			t.Errorf("xlb did not log attaching the socket hooks:\n%s", stderr)
		}
		ids := sockLinks(t, pinDir)
		before := tp.Status(t, pinDir)
		for _, c := range []struct {
			service, vip string
			backends     []string
			unspecified  netip.Addr
		}{{"web", VIP4, be4, netip.IPv4Unspecified()}, {"web6", VIP6, be6, netip.IPv6Unspecified()}} {
			want := predictBackends(t, c.backends, []netip.Addr{c.unspecified})[c.unspecified.String()]
			sum := load(t, c.vip)
			if sum.OK != conns || sum.ByBackend[want] != conns {
				t.Errorf("%s from the lb host: ok %d of %d, by backend %v (errors %v), want all on %s",
					c.vip, sum.OK, conns, sum.ByBackend, sum.Errors, want)
			}
			after := tp.Status(t, pinDir)
			if got := serviceNewFlows(after, c.service) - serviceNewFlows(before, c.service); got != conns {
				t.Errorf("%s: %d new flows counted, want %d (the local connections)", c.service, got, conns)
			}
		}
		tp.requireCleanStop(t, xlb, pinDir)
		for pin, id := range ids {
			if l, err := link.NewFromID(id); err == nil {
				l.Close()
				t.Errorf("%s link %d still exists after xlb stopped", pin, id)
			}
		}
	})

	t.Run("steer_local = false", func(t *testing.T) {
		text, err := os.ReadFile(config)
		if err != nil {
			t.Fatal(err)
		}
		off := filepath.Join(t.TempDir(), "xlb.toml")
		if err := os.WriteFile(off, []byte(strings.Replace(string(text), "[daemon]\n", "[daemon]\nsteer_local = false\n", 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		xlb := tp.StartXLB(t, off, pinDir, "generic")
		if _, err := os.Stat(filepath.Join(pinDir, "sock_connect4")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket hooks pinned with steer_local = false (%v)", err)
		}
		if sum := load(t, VIP4); sum.OK != 0 {
			t.Errorf("%d connections to the VIP from the lb host with steer_local = false, want none (no route there): %v", sum.OK, sum.ByBackend)
		}
		tp.requireCleanStop(t, xlb, pinDir)
	})
}

// sockLinks reads the socket hooks' pinned links: their ids, once each is
// checked to sit on the cgroup v2 root. The links are closed again (a
// descriptor held here would keep them attached).
func sockLinks(t *testing.T, pinDir string) map[string]link.ID {
	t.Helper()
	root := cgroup2Root(t)
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		t.Fatal(err)
	}
	ids := map[string]link.ID{}
	for _, pin := range []string{"sock_connect4", "sock_connect6", "sock_sendmsg4", "sock_sendmsg6",
		"sock_recvmsg4", "sock_recvmsg6", "sock_getpeername4", "sock_getpeername6"} {
		l, err := link.LoadPinnedLink(filepath.Join(pinDir, pin), nil)
		if err != nil {
			t.Errorf("pinned %s: %v", pin, err)
			continue
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Errorf("%s: %v", pin, err)
			continue
		}
		if cg := info.Cgroup(); cg == nil || cg.CgroupId != st.Ino {
			t.Errorf("%s: not attached to the cgroup v2 root %s (inode %d): %+v", pin, root, st.Ino, cg)
		}
		ids[pin] = info.ID
	}
	return ids
}

// cgroup2Root is where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup,
// or /sys/fs/cgroup/unified on a host that mounts cgroup v1 there.
func cgroup2Root(t *testing.T) string {
	t.Helper()
	for _, dir := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir
		}
	}
	t.Fatal("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
	return ""
}

func serviceNewFlows(snap *loader.Snapshot, name string) uint64 {
	for _, s := range snap.Services {
		if s.Name == name {
			return s.NewFlows
		}
	}
	return 0
}

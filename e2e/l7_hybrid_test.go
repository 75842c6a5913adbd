package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/l7"
)

// Ports of the hybrid test: one VIP, an L4 service and an L7 one.
const (
	hybridL4Port     = 8080
	hybridL7Port     = 80
	hybridL7HashPort = 81 // an ip_hash L7 service, proxying to the backends' hybridL7Port
	hybridConns      = 40
)

// TestHybridL4L7 runs one xlb with, on VIP4, an L4 service on port 8080
// (XDP, generic mode, DSR to the backends that hold the VIP on lo) and an L7
// service on port 80 (add_vip: the LB holds the VIP on its lo, the proxy
// listens on it). L4 traffic never reaches the LB's stack: the XDP counters
// of the L4 service grow, the proxy's do not, and the backends see the
// clients' own addresses. L7 traffic to the same VIP passes XDP (pass/l7) and
// is proxied, with the forwarding headers injected.
func TestHybridL4L7(t *testing.T) {
	t.Parallel()
	tp := NewTopology(t, "xhy"+randomPrefix()[3:], WithBackends(2), WithClients(16))
	pinDir := tp.PinDir(t)
	t.Cleanup(func() {
		if t.Failed() {
			tp.logDiagnostics(t)
		}
	})
	var backends []string
	for i := range tp.BackendHosts() {
		backends = append(backends, tp.BackendAddr4(i+1))
		tp.serveHybrid(t, i+1, hybridL4Port, hybridL7Port)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "[daemon]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\nbpffs_dir = %q\nshutdown_grace = \"5s\"\n", pinDir)
	fmt.Fprintf(&b, "\n[health_check]\npath = \"/health\"\ninterval = \"500ms\"\ntimeout = \"300ms\"\n")
	fmt.Fprintf(&b, "\n[admin]\nlisten = %q\ntoken_env = %q\n", adminAddr, noTokenEnv)
	fmt.Fprintf(&b, "\n[[service]]\nname = \"hy-l4\"\nvip = %q\nport = %d\nmode = \"l4\"\n", VIP4, hybridL4Port)
	for _, a := range backends {
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n", a)
	}
	fmt.Fprintf(&b, "\n[[service]]\nname = \"hy-l7\"\nvip = %q\nport = %d\nmode = \"l7\"\nadd_vip = true\n", VIP4, hybridL7Port)
	for _, a := range backends {
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n  port = %d\n", a, hybridL7Port)
	}
	fmt.Fprintf(&b, "\n[[service]]\nname = \"hy-l7-hash\"\nvip = %q\nport = %d\nmode = \"l7\"\nadd_vip = true\nalgorithm = \"ip_hash\"\n", VIP4, hybridL7HashPort)
	for _, a := range backends {
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n  port = %d\n", a, hybridL7Port)
	}
	cfg := filepath.Join(t.TempDir(), "xlb.toml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	xlb := tp.StartXLB(t, cfg, pinDir, "generic")
	if lo, err := tp.Exec("lb", "ip", "-4", "addr", "show", "dev", "lo"); err != nil || !strings.Contains(string(lo), VIP4+"/32") {
		t.Fatalf("the LB's lo lacks the VIP (add_vip): %v\n%s", err, lo)
	}
	admin := newAdminClient(tp.Namespace("lb"))
	l7Metrics := func(t *testing.T) l7.MetricsReport {
		t.Helper()
		code, body := admin.call(t, http.MethodGet, "/lb/metrics?service=hy-l7", "", "")
		var m l7.MetricsReport
		if code != 200 || json.Unmarshal(body, &m) != nil {
			t.Fatalf("GET /lb/metrics: %d %s", code, body)
		}
		return m
	}
	snap0, m0 := tp.Status(t, pinDir), l7Metrics(t)
	var l4BySource map[string][]string // client address -> backends that answered it over L4
	t.Run("L4 port stays in XDP", func(t *testing.T) {
		sum := tp.Load(t, "cl", "--target", fmt.Sprintf("http://%s:%d/", VIP4, hybridL4Port), "--sources", tp.ClientSources4(),
			"--conns", fmt.Sprint(hybridConns), "--parallel", "8", "--timeout", "3s", "--duration-max", "20s",
			// Ports of their own: a reused 5-tuple would be an old flow to XDP.
			"--source-ports", "20000-20099")
		if sum.OK != hybridConns {
			t.Fatalf("L4 load: ok=%d failed=%d %v", sum.OK, sum.Failed, sum.Errors)
		}
		l4BySource = sum.BySource
		snap1, m1 := tp.Status(t, pinDir), l7Metrics(t)
		s0, s1 := service(snap0, "hy-l4"), service(snap1, "hy-l4")
		if s0 == nil || s1 == nil {
			t.Fatalf("no hy-l4 in xlb status")
		}
		if d := s1.NewFlows - s0.NewFlows; d != hybridConns {
			t.Errorf("hy-l4 new flows grew by %d, want the %d connections", d, hybridConns)
		}
		if d := s1.Packets - s0.Packets; d < 3*hybridConns {
			t.Errorf("hy-l4 packets grew by %d for %d connections", d, hybridConns)
		}
		v0, v1 := verdictPackets(snap0), verdictPackets(snap1)
		if d := v1["tx/forwarded"] + v1["redirect/forwarded"] - v0["tx/forwarded"] - v0["redirect/forwarded"]; d < 3*hybridConns {
			t.Errorf("forwarded verdicts grew by %d for %d connections", d, hybridConns)
		}
		if d := v1["pass/l7"] - v0["pass/l7"]; d != 0 {
			t.Errorf("pass/l7 grew by %d during L4 traffic", d)
		}
		if m1.TotalRequests != m0.TotalRequests {
			t.Errorf("the proxy counted %d requests during L4 traffic", m1.TotalRequests-m0.TotalRequests)
		}
		// The backends saw the clients themselves, never the LB.
		clients := map[string]bool{}
		for _, a := range addrRange(ClientAddr4, tp.Clients) {
			clients[a.String()] = true
		}
		total := 0
		for _, h := range tp.BackendHosts() {
			for src, n := range tp.ServerRequests(t, h, VIP4, hybridL4Port) {
				switch {
				case clients[src]:
					total += n
				case src == LBAddr4:
					t.Errorf("%s saw %d requests from the LB before any L7 traffic", h, n)
				default:
					t.Errorf("%s saw %d requests from %s", h, n, src)
				}
			}
		}
		if total != hybridConns {
			t.Errorf("the backends saw %d requests from the clients' own addresses, want %d", total, hybridConns)
		}
		snap0, m0 = snap1, m1
	})

	t.Run("L7 port proxied", func(t *testing.T) {
		c := nsClient(tp.Namespace("cl"), 10*time.Second)
		byBack := map[string]int{}
		const n = 6
		for range n {
			r := do(t, c, "GET", "http://"+VIP4+"/headers", "Authorization: Bearer hy")
			s := parseSeen(t, r)
			byBack[s.Backend]++
			if s.Client != LBAddr4 {
				t.Errorf("the backend's peer is %s, want the LB %s (proxied)", s.Client, LBAddr4)
			}
			for k, v := range map[string]string{
				"X-Forwarded-For": ClientAddr4, "X-Real-Ip": ClientAddr4, "X-Forwarded-Host": VIP4,
				"X-Forwarded-Proto": "http", "Authorization": "Bearer hy",
			} {
				if got := s.one(t, k); got != v {
					t.Errorf("backend saw %s %q, want %q", k, got, v)
				}
			}
			if id := s.one(t, "X-Request-Id"); !uuidRE.MatchString(id) || r.Header.Get("X-Request-Id") != id {
				t.Errorf("X-Request-Id %q (response %q)", id, r.Header.Get("X-Request-Id"))
			}
			if r.Header.Get("X-Proxy") != "xlb" {
				t.Errorf("no X-Proxy in the answer: %v", r.Header)
			}
		}
		if byBack["b1"] != n/2 || byBack["b2"] != n/2 {
			t.Errorf("L7 requests by backend %v, want round robin", byBack)
		}
		snap1, m1 := tp.Status(t, pinDir), l7Metrics(t)
		if d := m1.TotalRequests - m0.TotalRequests; d != n {
			t.Errorf("the proxy counted %d requests, want %d", d, n)
		}
		v0, v1 := verdictPackets(snap0), verdictPackets(snap1)
		if d := v1["pass/l7"] - v0["pass/l7"]; d < n+1 {
			t.Errorf("pass/l7 grew by %d for %d requests on a keep-alive connection: want at least its SYN and the requests", d, n)
		}
		if s0, s1 := service(snap0, "hy-l4"), service(snap1, "hy-l4"); s1.NewFlows != s0.NewFlows || s1.Packets != s0.Packets {
			t.Errorf("hy-l4 counters moved during L7 traffic: %d -> %d flows, %d -> %d packets", s0.NewFlows, s1.NewFlows, s0.Packets, s1.Packets)
		}
		t.Logf("L7: %v, pass/l7 +%d packets", byBack, v1["pass/l7"]-v0["pass/l7"])
	})

	// ip_hash at L7 uses the XDP path's hash and Maglev table: a client
	// reaches the same backend on the L4 port and on an ip_hash L7 port.
	t.Run("ip_hash agrees with L4", func(t *testing.T) {
		if len(l4BySource) == 0 {
			t.Fatal("no L4 result to compare with: the L4 subtest did not get its answers")
		}
		sum := tp.Load(t, "cl", "--target", fmt.Sprintf("http://%s:%d/", VIP4, hybridL7HashPort), "--sources", tp.ClientSources4(),
			"--conns", fmt.Sprint(2*tp.Clients), "--parallel", "8", "--timeout", "3s", "--duration-max", "20s")
		if sum.OK != 2*tp.Clients {
			t.Fatalf("L7 ip_hash load: ok=%d failed=%d %v", sum.OK, sum.Failed, sum.Errors)
		}
		spread := map[string]int{}
		for src, l7 := range sum.BySource {
			l4 := l4BySource[src]
			if len(l4) == 0 {
				t.Errorf("%s: no L4 answer to compare with", src)
				continue
			}
			for _, be := range append(l7, l4...) {
				if be != l4[0] {
					t.Errorf("%s: L4 backends %v, L7 ip_hash backends %v: want one and the same", src, l4, l7)
					break
				}
			}
			spread[l4[0]]++
		}
		if len(sum.BySource) != tp.Clients || len(spread) < 2 {
			t.Errorf("%d clients compared, over backends %v: want all %d, on both backends", len(sum.BySource), spread, tp.Clients)
		}
		t.Logf("clients per backend, the same at L4 and L7: %v", spread)
	})

	tp.requireCleanStop(t, xlb, pinDir)
	if lo, err := tp.Exec("lb", "ip", "-4", "addr", "show", "dev", "lo"); err != nil || strings.Contains(string(lo), VIP4) {
		t.Errorf("the VIP is still on the LB's lo after xlb stopped: %v\n%s", err, lo)
	}
}

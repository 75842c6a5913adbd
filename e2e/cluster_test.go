package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// clusterHold is the BGP hold time of the cluster tests (seconds): a node
// that vanishes without closing its session is withdrawn after this long.
const clusterHold = 3

// clusterHolds is how many long-lived connections each scenario keeps open
// across a node's departure.
const clusterHolds = 30

// TestClusterBGP runs three xlb nodes, each the real `xlb run` with the same
// services, behind a bird2 router that learns the VIP from each of them
// over BGP and spreads the client's flows over them by ECMP (5-tuple hash).
// The scenarios run in turn on one cluster, each leaving all three nodes
// announcing; their figures are logged as they go and summed up at the end.
func TestClusterBGP(t *testing.T) {
	c := NewCluster(t, 3, 3, clusterHold)
	c.PreparePins(t)
	for i := 1; i <= c.Nodes; i++ {
		c.StartNode(t, i)
	}
	var summary []string
	report := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		t.Log(line)
		summary = append(summary, line)
	}
	t.Cleanup(func() { t.Logf("cluster summary:\n  %s", strings.Join(summary, "\n  ")) })
	all := []int{1, 2, 3}

	// Every node peers with the router, which installs one route with a next
	// hop per node.
	t.Run("sessions", func(t *testing.T) {
		took := c.WaitNextHops(t, 30*time.Second, all...)
		protos := c.Birdc(t, "show", "protocols")
		for i := 1; i <= c.Nodes; i++ {
			if !regexp.MustCompile(`(?m)^n` + strconv.Itoa(i) + `\s+BGP\s+---\s+up\s+.*Established`).MatchString(protos) {
				t.Errorf("bird: session n%d not established:\n%s", i, protos)
			}
		}
		routes := c.Birdc(t, "show", "route", "all", ClusterVIP+"/32")
		for i := 1; i <= c.Nodes; i++ {
			if !strings.Contains(routes, "via "+NodeAddr(i)) {
				t.Errorf("bird has no route via node %d:\n%s", i, routes)
			}
		}
		if !strings.Contains(routes, "(64512,80)") {
			t.Errorf("the routes lack the configured community 64512:80:\n%s", routes)
		}
		st := c.CLI(t, 1, "node", "status")
		if !strings.Contains(st, "node: ready") || !strings.Contains(st, "announced: "+ClusterVIP+"/32") ||
			!regexp.MustCompile(`198\.18\.0\.1\s+64500\s+established\s`).MatchString(st) {
			t.Errorf("xlb node status:\n%s", st)
		}
		report("sessions: 3 established, router route with 3 next hops %d ms after the last start", took.Milliseconds())
		t.Logf("birdc show route:\n%s", routes)
	})

	// A reload (SIGHUP) with new communities announces them on the live
	// session: bird's session with the node does not restart.
	t.Run("reload", func(t *testing.T) {
		since := c.SessionSince(t, 1)
		c.Community[1] = "64512:81"
		c.nodeConfig(t, 1)
		c.Node(1).cmd.Process.Signal(syscall.SIGHUP)
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(c.Birdc(t, "show", "route", "all", ClusterVIP+"/32", "protocol", "n1"), "(64512,81)") {
			if time.Now().After(deadline) {
				t.Fatalf("bird did not get node 1's new community:\n%s", c.Birdc(t, "show", "route", "all"))
			}
			time.Sleep(100 * time.Millisecond)
		}
		if now := c.SessionSince(t, 1); now != since {
			t.Errorf("node 1's session restarted on a reload that changed only communities: up since %s, was %s", now, since)
		}
		if st := c.CLI(t, 1, "status"); !strings.Contains(st, "node: ready") || !strings.Contains(st, "established") {
			t.Errorf("xlb status lacks the node and its session:\n%s", st)
		}
		report("reload: node 1's new community reached the router on its session up since %s", since)
	})

	// Flows spread over the nodes; every node sends a client to the same
	// backend: the one xlb's Maglev table names for it.
	t.Run("spread", func(t *testing.T) {
		before := map[int]uint64{}
		for _, i := range all {
			before[i] = c.NodeNewFlows(t, i)
		}
		const conns = 900
		sum := c.Load(t, "--sources", fmt.Sprintf("range:%s-%s", ClusterClient(0), ClusterClient(c.Clients-1)),
			"--conns", strconv.Itoa(conns), "--parallel", "16", "--timeout", "5s")
		if sum.OK != conns || sum.Failed != 0 {
			t.Fatalf("load: %d ok, %d failed (%v)", sum.OK, sum.Failed, sum.Errors)
		}
		addrs := []string{ClusterBackendAddr(1), ClusterBackendAddr(2), ClusterBackendAddr(3)}
		want := predictBackends(t, addrs, clusterSources(c.Clients))
		moved := 0
		for src, got := range sum.BySource {
			for _, b := range got {
				if b != want[src] {
					moved++
				}
			}
		}
		if moved > 0 {
			t.Errorf("%d connections reached another backend than their client's (%v)", moved, sum.BySource)
		}
		perNode := make([]string, 0, 3)
		for _, i := range all {
			n := c.NodeNewFlows(t, i) - before[i]
			if n == 0 {
				t.Errorf("node %d placed no flow: ECMP did not spread", i)
			}
			perNode = append(perNode, fmt.Sprintf("n%d %d", i, n))
		}
		report("spread: %d connections from %d clients: by node %s; by backend %v; each client on its Maglev backend through every node (%d off)",
			conns, c.Clients, strings.Join(perNode, ", "), sum.ByBackend, moved)
	})

	// SIGTERM: the node withdraws first, forwards through its shutdown
	// grace, then stops; its connections move to the others and go on.
	t.Run("sigterm", func(t *testing.T) {
		h := c.StartHolds(t, clusterHolds, 12)
		on3 := c.NodeOpenFlows(t, 3)
		start := time.Now()
		if err := c.StopNode(t, 3); err != nil {
			t.Errorf("xlb after SIGTERM: %v", err)
		}
		stopped := time.Since(start)
		log := c.Node(3).stderr.String()
		for _, msg := range []string{"bgp: prefix withdrawn", "bgp: every VIP withdrawn", "XDP detached and pins removed"} {
			if !strings.Contains(log, msg) {
				t.Errorf("node 3 did not log %q:\n%s", msg, log)
			}
		}
		c.WaitNextHops(t, 10*time.Second, 1, 2)
		ok, failures := h.Wait(t)
		if ok != clusterHolds {
			t.Errorf("%d of %d connections survived node 3's SIGTERM: %v", ok, clusterHolds, failures)
		}
		report("sigterm: node 3 withdrew and stopped in %d ms (shutdown_grace 2s); %d of %d connections survived (%d were open on node 3)",
			stopped.Milliseconds(), ok, clusterHolds, on3)
		c.StartNode(t, 3)
		c.WaitNextHops(t, 30*time.Second, all...)
	})

	// A node lost at once (its link down, then xlb killed): the router
	// withdraws it when the hold time expires; the connections ECMP moves
	// to the other nodes keep their backend.
	t.Run("sigkill", func(t *testing.T) {
		h := c.StartHolds(t, clusterHolds, 15)
		on3 := c.NodeOpenFlows(t, 3)
		if _, err := c.exec("n3", "ip", "link", "set", "eth0", "down"); err != nil {
			t.Fatal(err)
		}
		c.Node(3).cmd.Process.Kill()
		<-c.Node(3).done
		took := c.WaitNextHops(t, time.Duration(clusterHold+10)*time.Second, 1, 2)
		ok, failures := h.Wait(t)
		if ok < clusterHolds-on3 {
			t.Errorf("only %d of %d connections survived, fewer than those not on node 3 (%d): %v", ok, clusterHolds, clusterHolds-on3, failures)
		}
		if ok != clusterHolds {
			t.Logf("connections lost: %v", failures)
		}
		report("sigkill: node 3 (link down, xlb killed) withdrawn by the router %d ms later (hold time %ds, measured from the kill); %d of %d connections survived (%d were open on node 3)",
			took.Milliseconds(), clusterHold, ok, clusterHolds, on3)
		// Back: the pinned datapath is adopted.
		if _, err := c.exec("n3", "ip", "link", "set", "eth0", "up"); err != nil {
			t.Fatal(err)
		}
		c.StartNode(t, 3)
		c.WaitNextHops(t, 30*time.Second, all...)
	})

	// Every backend failing its checks from one node (routes to them
	// blackholed there): that node withdraws, the others serve.
	t.Run("backends-fail", func(t *testing.T) {
		for j := 1; j <= c.Backends; j++ {
			if _, err := c.exec("n2", "ip", "route", "add", "blackhole", ClusterBackendAddr(j)+"/32"); err != nil {
				t.Fatal(err)
			}
		}
		took := c.WaitNextHops(t, 20*time.Second, 1, 3)
		st := c.CLI(t, 2, "node", "status")
		if !strings.Contains(st, "withheld: "+ClusterVIP+"/32") {
			t.Errorf("node 2's status does not show the VIP withheld:\n%s", st)
		}
		sum := c.Load(t, "--sources", fmt.Sprintf("range:%s-%s", ClusterClient(0), ClusterClient(c.Clients-1)),
			"--conns", "300", "--parallel", "16", "--timeout", "5s")
		if sum.Failed != 0 {
			t.Errorf("load with node 2 withdrawn: %d ok, %d failed (%v)", sum.OK, sum.Failed, sum.Errors)
		}
		for j := 1; j <= c.Backends; j++ {
			if _, err := c.exec("n2", "ip", "route", "del", "blackhole", ClusterBackendAddr(j)+"/32"); err != nil {
				t.Fatal(err)
			}
		}
		back := c.WaitNextHops(t, 20*time.Second, all...)
		report("backends-fail: node 2, its backends unreachable, withdrawn %d ms after the blackhole, announced again %d ms after its removal; %d of 300 connections ok meanwhile",
			took.Milliseconds(), back.Milliseconds(), sum.OK)
	})

	// Node drain: new flows leave the node, open connections finish (on the
	// other nodes, which pick the same backends), forwarding goes on.
	t.Run("drain", func(t *testing.T) {
		h := c.StartHolds(t, clusterHolds, 10)
		on1 := c.NodeOpenFlows(t, 1)
		out := c.CLI(t, 1, "node", "drain")
		if !strings.Contains(out, "node: draining") || !strings.Contains(out, "announced: none") {
			t.Errorf("xlb node drain:\n%s", out)
		}
		c.WaitNextHops(t, 10*time.Second, 2, 3)
		before := c.NodeNewFlows(t, 1)
		sum := c.Load(t, "--sources", fmt.Sprintf("range:%s-%s", ClusterClient(0), ClusterClient(c.Clients-1)),
			"--conns", "300", "--parallel", "16", "--timeout", "5s")
		if sum.Failed != 0 {
			t.Errorf("load with node 1 drained: %d failed (%v)", sum.Failed, sum.Errors)
		}
		if n := c.NodeNewFlows(t, 1) - before; n != 0 {
			t.Errorf("node 1 placed %d new flows while drained", n)
		}
		ok, failures := h.Wait(t)
		if ok != clusterHolds {
			t.Errorf("%d of %d connections finished across node 1's drain: %v", ok, clusterHolds, failures)
		}
		if out := c.CLI(t, 1, "node", "ready"); !strings.Contains(out, "node: ready") {
			t.Errorf("xlb node ready:\n%s", out)
		}
		c.WaitNextHops(t, 10*time.Second, all...)
		report("drain: node 1 took 0 of 300 new connections while drained; %d of %d open connections finished (%d were on node 1)", ok, clusterHolds, on1)
	})

	// A restart with --keep-datapath: connections and a steady load go on
	// throughout.
	t.Run("keep-datapath", func(t *testing.T) {
		if err := c.StopNode(t, 1); err != nil {
			t.Fatalf("stop node 1: %v", err)
		}
		c.StartNode(t, 1, "--keep-datapath")
		c.WaitNextHops(t, 30*time.Second, all...)
		h := c.StartHolds(t, clusterHolds, 15)
		var load LoadSummary
		var wg sync.WaitGroup
		wg.Go(func() {
			load = c.Load(t, "--sources", fmt.Sprintf("range:%s-%s", ClusterClient(0), ClusterClient(c.Clients-1)),
				"--conns", "0", "--duration-max", "12s", "--rate", "50", "--parallel", "8", "--timeout", "10s")
		})
		time.Sleep(time.Second)
		if err := c.StopNode(t, 1); err != nil {
			t.Errorf("xlb --keep-datapath after SIGTERM: %v", err)
		}
		if !strings.Contains(c.Node(1).stderr.String(), "datapath kept") {
			t.Errorf("node 1 did not keep its datapath:\n%s", c.Node(1).stderr.String())
		}
		if link, _ := c.exec("n1", "ip", "link", "show", "eth0"); !strings.Contains(string(link), "xdp") {
			t.Errorf("no XDP on node 1 between its runs:\n%s", link)
		}
		p := c.StartNode(t, 1, "--keep-datapath")
		if !strings.Contains(p.stderr.String(), "adopted pinned maps") {
			t.Errorf("the restart did not adopt the pinned datapath:\n%s", p.stderr.String())
		}
		c.WaitNextHops(t, 30*time.Second, all...)
		wg.Wait()
		ok, failures := h.Wait(t)
		if ok != clusterHolds || load.Failed != 0 || load.OK == 0 {
			t.Errorf("across node 1's restart: %d of %d connections survived (%v); load %d ok, %d failed (%v)",
				ok, clusterHolds, failures, load.OK, load.Failed, load.Errors)
		}
		report("keep-datapath: node 1 restarted; %d of %d connections survived, load %d ok, %d failed", ok, clusterHolds, load.OK, load.Failed)
	})
}

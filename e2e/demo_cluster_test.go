package e2e

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDemoCluster runs `make demo-cluster`'s script with the binaries under
// test and checks its story: three sessions and a route with a next hop per
// node, every connection answered with each client on one backend, flows on
// every node, and the long-lived connection carrying on through another
// node after its own stops; nothing left behind.
func TestDemoCluster(t *testing.T) {
	requireRoot(t)
	requireBird(t)
	out := runDemo(t, "demo-cluster.sh")
	for _, want := range []string{
		"nexthop via 198.18.0.2 dev eth0", "nexthop via 198.18.0.3 dev eth0", "nexthop via 198.18.0.4 dev eth0",
		"IPv4: 600 connections ok, 0 failed, from 99 client addresses",
		"announced: 198.19.0.10/32",
		"the connection survived",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo-cluster output lacks %q", want)
		}
	}
	if n := len(regexp.MustCompile(`(?m)^  n[123] +BGP +--- +up .*Established`).FindAllString(out, -1)); n != 3 {
		t.Errorf("%d established sessions in birdc show protocols, want 3", n)
	}
	if n := len(regexp.MustCompile(`(?m)^    n[123]: [1-9][0-9]* connections$`).FindAllString(out, -1)); n != 3 {
		t.Errorf("%d nodes took connections, want 3", n)
	}
	if strings.Contains(out, "!!") {
		t.Errorf("demo-cluster reported a problem (!!)")
	}
	if t.Failed() {
		t.Logf("demo-cluster output:\n%s", out)
	}
	if ns, err := exec.Command("ip", "netns", "list").Output(); err != nil || strings.Contains(string(ns), "xclus-") {
		t.Errorf("demo-cluster namespaces left behind (%v):\n%s", err, ns)
	}
	if left, _ := filepath.Glob("/sys/fs/bpf/xlb-demo-cluster-*"); len(left) > 0 {
		t.Errorf("demo-cluster pins left behind: %v", left)
	}
}

package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTopology checks the namespaces topology.sh builds before any load balancer
// runs: L2/L3 reachability, the VIP on every backend, every client source address,
// and that the VIP is not reachable from the client on its own.
func TestTopology(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	bin := Binary(t, "xlbtest")
	tp := NewTopology(t, "xtopo")

	wantNS := []string{"xtopo-b1", "xtopo-b2", "xtopo-b3", "xtopo-br", "xtopo-cl", "xtopo-lb"}
	if got := Namespaces(t, tp.Prefix); !slices.Equal(sorted(got), wantNS) {
		t.Fatalf("namespaces = %v, want %v", got, wantNS)
	}
	if tp.Peer != "xtopolbp" {
		t.Errorf("peer = %q, want xtopolbp", tp.Peer)
	}
	for _, port := range []string{"xtopoclp", "xtopolbp", "xtopob1p", "xtopob2p", "xtopob3p"} {
		if out, err := tp.Exec("br", "ip", "-o", "link", "show", port); err != nil || !strings.Contains(string(out), "master br0") {
			t.Errorf("bridge port %s: %v %s", port, err, out)
		}
	}

	t.Run("ping", func(t *testing.T) {
		targets := []string{LBAddr4, LBAddr6}
		for i := range tp.Backends {
			targets = append(targets, tp.BackendAddr4(i+1), tp.BackendAddr6(i+1))
		}
		for _, addr := range targets {
			if _, err := tp.Exec("cl", "ping", "-c", "1", "-W", "2", "-q", addr); err != nil {
				t.Errorf("client cannot ping %s: %v", addr, err)
			}
		}
	})

	var servers []*exec.Cmd
	for _, h := range tp.BackendHosts() {
		cmd := tp.StartReady(t, h, "ready ", 5*time.Second,
			bin, "serve", "--name", h, "--listen", VIP4+":80,["+VIP6+"]:80")
		servers = append(servers, cmd)
		// `ip netns exec` execs in place: the PID Start kills is the server itself.
		out, err := exec.Command("ip", "netns", "pids", tp.Namespace(h)).Output()
		if err != nil || !slices.Contains(strings.Fields(string(out)), strconv.Itoa(cmd.Process.Pid)) {
			t.Errorf("pid %d not in %s (%v): %s", cmd.Process.Pid, tp.Namespace(h), err, out)
		}
	}

	t.Run("vip local on each backend", func(t *testing.T) {
		for i, h := range tp.BackendHosts() {
			for _, c := range []struct{ target, source string }{
				{"http://" + VIP4 + "/", tp.BackendAddr4(i + 1)},
				{"http://[" + VIP6 + "]/", tp.BackendAddr6(i + 1)},
			} {
				sum := tp.Load(t, h, "--target", c.target, "--conns", "3", "--timeout", "2s",
					"--duration-max", "10s", "--sources", c.source)
				if sum.OK != 3 || sum.ByBackend[h] != 3 {
					t.Errorf("%s -> %s from %s: %+v, want 3 answers from %s", h, c.target, c.source, sum, h)
				}
			}
		}
	})

	t.Run("every client address reaches a backend", func(t *testing.T) {
		// A second server on b1's own address: no load balancer involved.
		tp.StartReady(t, "b1", "ready ", 5*time.Second,
			bin, "serve", "--name", "b1-direct", "--listen", tp.BackendAddr4(1)+":8080,["+tp.BackendAddr6(1)+"]:8080")
		for _, c := range []struct{ target, sources string }{
			{"http://" + tp.BackendAddr4(1) + ":8080/", tp.ClientSources4()},
			{"http://[" + tp.BackendAddr6(1) + "]:8080/", tp.ClientSources6()},
		} {
			sum := tp.Load(t, "cl", "--target", c.target, "--sources", c.sources,
				"--conns", "120", "--timeout", "3s", "--duration-max", "20s", "--parallel", "16")
			if sum.OK != tp.Clients || len(sum.BySource) != tp.Clients {
				t.Errorf("%s from %s: ok=%d sources=%d errors=%v, want %d each",
					c.target, c.sources, sum.OK, len(sum.BySource), sum.Errors, tp.Clients)
			}
		}
		// A long-lived connection from a secondary address.
		out, err := tp.Exec("cl", bin, "hold", "--target", "http://["+tp.BackendAddr6(1)+"]:8080/",
			"--secs", "1", "--timeout", "2s", "--source", "2001:db8:18::150")
		if err != nil || !strings.Contains(string(out), " done 5 backend=b1-direct\n") {
			t.Errorf("hold: %v\n%s", err, out)
		}
	})

	t.Run("vip unreachable without a load balancer", func(t *testing.T) {
		for _, c := range []struct{ target, sources string }{
			{"http://" + VIP4 + "/", ClientAddr4},
			{"http://[" + VIP6 + "]/", ClientAddr6},
		} {
			start := time.Now()
			sum := tp.Load(t, "cl", "--target", c.target, "--sources", c.sources,
				"--conns", "2", "--timeout", "1s", "--duration-max", "5s", "--parallel", "2")
			if sum.OK != 0 || sum.Failed != 2 {
				t.Errorf("%s from the client: %+v, want 2 failures", c.target, sum)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("%s: failing took %v, want about 1s", c.target, d)
			}
		}
	})

	// SIGTERM is a clean exit for the server.
	if err := tp.Stop(servers[0]); err != nil {
		t.Errorf("serve on b1 after SIGTERM: %v", err)
	}

	tp.Down(t)
	if left := Namespaces(t, tp.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after down: %v", left)
	}
	tp.Down(t) // idempotent
}

// TestTopologyNativeMode checks the options: backend and client counts, and the
// offload settings MODE=native makes for native XDP on veth.
func TestTopologyNativeMode(t *testing.T) {
	t.Parallel()
	tp := NewTopology(t, "xtnat", WithBackends(1), WithClients(2), WithNativeMode())

	wantNS := []string{"xtnat-b1", "xtnat-br", "xtnat-cl", "xtnat-lb"}
	if got := Namespaces(t, tp.Prefix); !slices.Equal(sorted(got), wantNS) {
		t.Fatalf("namespaces = %v, want %v", got, wantNS)
	}
	out, err := tp.Exec("cl", "ethtool", "-k", "eth0")
	if err != nil || !strings.Contains(string(out), "tx-checksumming: off") {
		t.Errorf("client eth0 tx checksumming not off: %v\n%s", err, out)
	}
	out, err = tp.Exec("br", "ethtool", "-k", tp.Peer)
	if err != nil || !strings.Contains(string(out), "generic-receive-offload: on") {
		t.Errorf("%s gro not on: %v\n%s", tp.Peer, err, out)
	}
	out, err = tp.Exec("cl", "ip", "-o", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"198.18.0.100/24", "198.18.0.101/24", "2001:db8:18::100/64", "2001:db8:18::101/64"} {
		if !strings.Contains(string(out), " "+a+" ") {
			t.Errorf("client lacks %s:\n%s", a, out)
		}
	}
	if strings.Contains(string(out), "198.18.0.102/") {
		t.Errorf("client has more than 2 addresses:\n%s", out)
	}
}

// TestTopologyScript checks topology.sh's argument handling and that down is
// idempotent.
func TestTopologyScript(t *testing.T) {
	requireRoot(t)
	script := filepath.Join(repoRoot(t), "scripts", "topology.sh")
	tests := []struct {
		args     []string
		wantCode int
	}{
		{[]string{"down", "xnone"}, 0},
		{[]string{"down", "toolong"}, 2},
		{[]string{"up", "bad-p"}, 2},
		{[]string{"up"}, 2},
		{[]string{"sideways", "xnone"}, 2},
		{[]string{"exec", "xnone", "nohost", "true"}, 2},
	}
	for _, tt := range tests {
		err := exec.Command(script, tt.args...).Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tt.wantCode {
			t.Errorf("topology.sh %v: exit %d, want %d", tt.args, code, tt.wantCode)
		}
	}
	// An up that fails at its last step (a broken ethtool) removes what it built.
	fakeBin := t.TempDir()
	if err := os.WriteFile(filepath.Join(fakeBin, "ethtool"), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(script, "up", "xbad")
	cmd.Env = append(cmd.Environ(), "MODE=native", "NBACKENDS=1", "NCLIENTS=1",
		"PATH="+fakeBin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Cleanup(func() { exec.Command(script, "down", "xbad").Run() })
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("topology.sh up with a failing ethtool succeeded: %s", out)
	}
	if left := Namespaces(t, "xbad"); len(left) > 0 {
		t.Errorf("namespaces left after a failed up: %v", left)
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSecondDaemonRefused: a second `xlb run` on the pin directory of a
// running one exits 1 naming the first one's PID, and the first keeps its
// datapath: same program, same pins, same maps, traffic still forwarded.
func TestSecondDaemonRefused(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	e := newLifeEnv(t, "xlk")
	first := e.tp.StartXLB(t, e.config, e.pinDir, "generic")
	e.requireForwarding(t, "first daemon")
	before := e.state(t)

	second := e.tp.StartNet(t, "lb", Binary(t, "xlb"), "run", "-c", e.config)
	e.requireFailedStart(t, second, 1, "in use by another xlb daemon", fmt.Sprintf("(pid %d)", first.Process.Pid))

	requireSameState(t, before, e.state(t))
	e.requireForwarding(t, "after the refused start")
	if p := e.tp.proc(first); p != nil {
		select {
		case <-p.done:
			t.Fatalf("the first daemon exited: %v", p.err)
		default:
		}
	}
	e.tp.requireCleanStop(t, first, e.pinDir)
}

// TestFailedRestartKeepsDatapath: after `xlb run --keep-datapath` stopped, a
// start that adopts the pins and then fails (at the admin listener, or when
// the L7 tier binds, with the admin API already up) exits 1 and leaves the
// datapath as it found it, forwarding with no daemon; the next start adopts it.
func TestFailedRestartKeepsDatapath(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	e := newLifeEnv(t, "xlf")
	tests := []struct {
		name   string
		config string
		busy   string // address something else holds in the LB's namespace
		want   string // in the failed start's stderr
	}{
		{"admin port taken", e.config, adminAddr, "admin listener " + adminAddr},
		{"L7 listen address taken", e.writeConfig(t, "l7.toml", true), fmt.Sprintf("127.0.0.1:%d", lifeL7Port), "L7 tier"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kept := e.tp.StartXLB(t, e.config, e.pinDir, "generic", "--keep-datapath")
			if err := e.tp.Stop(kept); err != nil {
				t.Fatalf("xlb --keep-datapath after SIGTERM: %v", err)
			}
			if _, log := e.tp.Output(kept); logLine(log, "datapath kept: XDP stays attached, maps stay pinned") == "" {
				t.Fatalf("xlb --keep-datapath did not keep its datapath:\n%s", log)
			}
			before := e.state(t)
			e.requireForwarding(t, "no daemon, before the failed start")

			busy := e.tp.StartReady(t, "lb", "ready ", 5*time.Second, Binary(t, "xlbtest"), "serve", "--name", "busy", "--listen", tt.busy)
			failed := e.tp.StartNet(t, "lb", Binary(t, "xlb"), "run", "-c", tt.config)
			e.requireFailedStart(t, failed, 1, tt.want, "the datapath is left as this start found it")
			e.tp.Stop(busy)

			requireSameState(t, before, e.state(t))
			e.requireForwarding(t, "no daemon, after the failed start")

			next := e.tp.StartXLB(t, e.config, e.pinDir, "generic")
			if _, log := e.tp.Output(next); logLine(log, "adopted pinned XDP link") == "" {
				t.Errorf("the start after the failed one did not adopt the datapath:\n%s", log)
			}
			e.tp.requireCleanStop(t, next, e.pinDir)
		})
	}
}

// TestKeepDatapathUnderIPNetnsExec: `ip netns exec` gives xlb a private /sys,
// so the bpffs it mounts there goes with it: --keep-datapath is refused before
// anything is attached, and a run without it says its pins end with it.
func TestKeepDatapathUnderIPNetnsExec(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	ns := vethNS(t, "xkn")
	// Under /sys/fs/bpf: on the host nothing is made there, which is checked.
	pinDir := filepath.Join(pinRoot, "xlb-e2e-"+ns)
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	cfg := filepath.Join(t.TempDir(), "xlb.toml")
	text := fmt.Sprintf("[daemon]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\nbpffs_dir = %q\n"+
		"\n[[service]]\nname = \"web\"\nvip = %q\nport = 80\n  [[service.backend]]\n  address = \"198.18.0.11\"\n", pinDir, VIP4)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	inNS := []string{"ip", "netns", "exec", ns, Binary(t, "xlb"), "run", "-c", cfg}
	xdpOnEth0 := func() string {
		out, err := exec.Command("ip", "-n", ns, "-d", "link", "show", "eth0").CombinedOutput()
		if err != nil {
			t.Fatalf("ip link: %v: %s", err, out)
		}
		return xdpFlag(string(out))
	}

	t.Run("keep refused", func(t *testing.T) {
		code, _, stderr := runCode(t, append(inNS, "--keep-datapath")...)
		if code != 1 {
			t.Errorf("exit code %d, want 1\n%s", code, stderr)
		}
		for _, w := range []string{"--keep-datapath", "private to this process's mount namespace", "nsenter --net="} {
			if !strings.Contains(stderr, w) {
				t.Errorf("stderr lacks %q:\n%s", w, stderr)
			}
		}
		if strings.Contains(stderr, "XDP attached") {
			t.Errorf("xlb attached XDP before refusing:\n%s", stderr)
		}
		if f := xdpOnEth0(); f != "" {
			t.Errorf("XDP (%s) left on eth0 by the refused start", f)
		}
	})

	t.Run("without keep", func(t *testing.T) {
		xlb := startBackground(t, inNS...)
		waitFor(t, "xlb running", 20*time.Second, 20*time.Millisecond, func() bool { return strings.Contains(xlb.stderr.String(), "xlb running") })
		if !strings.Contains(xlb.stderr.String(), "pins end with xlb") {
			t.Errorf("xlb did not say its pins end with it:\n%s", xlb.stderr.String())
		}
		if f := xdpOnEth0(); f != "xdpgeneric" {
			t.Errorf("XDP on eth0 while xlb runs: %q, want xdpgeneric", f)
		}
		if xlb.stop(); xlb.err != nil {
			t.Errorf("xlb after SIGTERM: %v\n%s", xlb.err, xlb.stderr.String())
		}
		if f := xdpOnEth0(); f != "" {
			t.Errorf("XDP (%s) left on eth0 after xlb stopped", f)
		}
	})
	if _, err := os.Stat(pinDir); err == nil {
		t.Errorf("%s made on the host's bpffs by a run in a private mount namespace", pinDir)
	}
}

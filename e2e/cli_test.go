package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cliTimeout bounds one xlb invocation of TestCLIErrors: each is expected to exit
// at once, and one that starts a daemon by mistake must not hang the suite.
const cliTimeout = 20 * time.Second

// nobody is the unprivileged user the non-root case runs as.
const nobody = "65534"

// TestCLIErrors checks how `xlb run` and `xlb validate` fail: exit code 2 with
// FILE:LINE and field for a bad config, exit code 1 with a one-line reason for a
// runtime problem (not root, missing interface, pin directory not on bpffs). The
// cases that reach the interface run in a throwaway network namespace, so nothing
// can attach to the host's interfaces.
func TestCLIErrors(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	xlb := Binary(t, "xlb")
	dir, pubXLB := publicXLB(t)
	ns := throwawayNS(t, "xcli")
	inNS := []string{"nsenter", "--net=/run/netns/" + ns}

	// Pins of the cases that get that far (none should); under /sys/fs/bpf so
	// that only the case under test can fail.
	pinDir := filepath.Join(pinRoot, "xlb-e2e-"+ns)
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	notBPF := filepath.Join(t.TempDir(), "pins")

	writeCfg := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	daemon := func(iface, bpffs string) string {
		return "[daemon]\ninterface = \"" + iface + "\"\nxdp_mode = \"generic\"\nbpffs_dir = \"" + bpffs + "\"\n" +
			"\n[[service]]\nname = \"web\"\nvip = \"198.19.0.10\"\nport = 80\n" +
			"  [[service.backend]]\n  address = \"198.18.0.11\"\n"
	}
	bad := writeCfg("bad.toml", "[daemon]\ninterface = \"eth0\"\nbogus_key = 1\n")
	valid := writeCfg("valid.toml", daemon("eth0", pinDir))
	noIface := writeCfg("noiface.toml", daemon("nosuch0", pinDir))
	notOnBPF := writeCfg("notbpf.toml", daemon("lo", notBPF))
	example := filepath.Join(repoRoot(t), "examples", "xlb.toml")

	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string // substrings of stderr (stdout for exit 0)
		oneLine  bool     // stderr is exactly one line
	}{
		{"unknown key", []string{xlb, "run", "-c", bad}, 2,
			[]string{bad + ":3: ", "daemon.bogus_key", "unknown key"}, true},
		{"validate unknown key", []string{xlb, "validate", "-c", bad}, 2,
			[]string{bad + ":3: ", "daemon.bogus_key"}, true},
		{"validate example", []string{xlb, "validate", "-c", example}, 0,
			[]string{example + ": ok"}, false},
		{"not root", append(inNS, "setpriv", "--reuid="+nobody, "--regid="+nobody, "--clear-groups",
			pubXLB, "run", "-c", valid), 1, []string{"root"}, true},
		{"missing interface", append(inNS, xlb, "run", "-c", noIface), 1,
			[]string{`"nosuch0"`, "no such interface"}, true},
		{"pin dir not on bpffs", append(inNS, xlb, "run", "-c", notOnBPF), 1,
			[]string{notBPF, "not on a bpf filesystem"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCode(t, tt.args...)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, stdout, stderr)
			}
			text := stderr
			if tt.wantCode == 0 {
				text = stdout
			}
			for _, w := range tt.want {
				if !strings.Contains(text, w) {
					t.Errorf("output lacks %q:\n%s", w, text)
				}
			}
			if tt.oneLine && strings.Count(strings.TrimRight(stderr, "\n"), "\n") != 0 {
				t.Errorf("stderr is not one line:\n%s", stderr)
			}
		})
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed xlb run left %s behind (%v)", pinDir, err)
	}
	if _, err := os.Stat(notBPF); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed xlb run created %s (%v)", notBPF, err)
	}
}

// runCode runs args bounded by cliTimeout and returns the exit code and output.
func runCode(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%v did not exit within %v", args, cliTimeout)
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%v: %v", args, err)
	}
	return code, out.String(), errb.String()
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestL7WithoutRoot: `xlb run` as an unprivileged user, with an XDP interface
// configured and an L7 service, runs the L7 tier alone, says so in one log
// line, and proxies. It runs in a throwaway network namespace.
func TestL7WithoutRoot(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	dir, pubXLB := publicXLB(t)
	ns := throwawayNS(t, "xnr")
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	inNS := []string{"nsenter", "--net=/run/netns/" + ns}
	backend := startBackground(t, append(inNS, Binary(t, "xlbtest"), "serve", "--name", "nr", "--listen", "127.0.0.1:8300")...)
	waitFor(t, "the backend ready", 10*time.Second, 20*time.Millisecond, func() bool { return strings.Contains(backend.stdout.String(), "ready ") })

	cfg := filepath.Join(dir, "l7.toml")
	text := "[daemon]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\n" +
		"\n[[service]]\nname = \"web\"\nvip = \"127.0.0.1\"\nport = 8301\nmode = \"l7\"\n" +
		"  [[service.backend]]\n  address = \"127.0.0.1\"\n  port = 8300\n"
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	xlb := startBackground(t, append(inNS, "setpriv", "--reuid="+nobody, "--regid="+nobody, "--clear-groups",
		pubXLB, "run", "-c", cfg)...)
	waitFor(t, "xlb running", 10*time.Second, 20*time.Millisecond, func() bool { return strings.Contains(xlb.stderr.String(), "xlb running") })
	out, err := exec.Command(inNS[0], append(inNS[1:], Binary(t, "xlbtest"), "load", "--target", "http://127.0.0.1:8301/",
		"--conns", "5", "--timeout", "3s")...).Output()
	var sum LoadSummary
	if jerr := json.Unmarshal(out, &sum); jerr != nil || sum.OK != 5 || sum.ByBackend["nr"] != 5 {
		t.Errorf("requests through the unprivileged proxy: %+v (%v, %v)", sum, err, jerr)
	}
	logs := xlb.stderr.String()
	if n := strings.Count(logs, "only the L7 tier runs"); n != 1 {
		t.Errorf("%d log lines say the L7 tier runs alone, want 1:\n%s", n, logs)
	}
	if !strings.Contains(logs, "not root") {
		t.Errorf("the log does not say why (not root):\n%s", logs)
	}
	if xlb.stop(); xlb.err != nil {
		t.Errorf("xlb after SIGTERM: %v\n%s", xlb.err, logs)
	}
}

// publicXLB is a directory everybody may read with a copy of xlb in it:
// Binary's build directory is private to root, and a non-root run needs both.
func publicXLB(t *testing.T) (dir, xlb string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "xlb-e2e-pub-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	xlb = filepath.Join(dir, "xlb")
	copyFile(t, Binary(t, "xlb"), xlb, 0o755)
	return dir, xlb
}

// throwawayNS creates an empty network namespace, deleted at the end of t.
func throwawayNS(t *testing.T, prefix string) string {
	t.Helper()
	ns := prefix + randomPrefix()[1:]
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	return ns
}

// vethNS is throwawayNS with a veth pair in it, eth0 and eth1, both up.
func vethNS(t *testing.T, prefix string) string {
	t.Helper()
	ns := throwawayNS(t, prefix)
	for _, args := range [][]string{
		{"ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		{"ip", "-n", ns, "link", "set", "eth1", "up"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	return ns
}

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDemo runs `make demo`'s script, the README's first command, with the
// binaries under test, and checks what it reports: every L4 connection and
// L7 request answered, the L4 clients each on one backend, the L7 requests
// spread round robin with the forwarding headers set, and nothing left
// behind.
func TestDemo(t *testing.T) {
	requireRoot(t)
	out := runDemo(t, "demo.sh", "CONNS=310", "L7REQS=90")
	for _, want := range []string{
		"IPv4: 310 connections ok, 0 failed, from 155 client addresses",
		"IPv6: 310 connections ok, 0 failed, from 155 client addresses",
		"90 requests ok, 0 failed; round robin by backend:",
		"X-Forwarded-For: 198.18.0.100",
		"X-Real-Ip: 198.18.0.100",
		"X-Proxy: xlb",
		"health: healthy (9 of 9 backends healthy)",
		"no XDP program on the lb's eth0",
		"no pins left in /sys/fs/bpf/xlb-demo",
		"the VIP is off the lb's lo",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if strings.Contains(out, "!!") {
		t.Errorf("demo reported a problem (!!)")
	}
	for _, be := range []string{"b1", "b2", "b3"} {
		if !regexp.MustCompile(`(?m)^    ` + be + `:   30 requests$`).MatchString(out) {
			t.Errorf("L7 requests on %s: want 30 of 90 (round robin)", be)
		}
	}
	if regexp.MustCompile(`(?m)^  pass +l7 +0 `).MatchString(out) {
		t.Errorf("the L7 requests did not pass XDP as pass/l7")
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", out)
	}
	if ns, err := exec.Command("ip", "netns", "list").Output(); err != nil || strings.Contains(string(ns), "xdemo-") {
		t.Errorf("demo namespaces left behind (%v):\n%s", err, ns)
	}
}

// runDemo runs scripts/NAME with the binaries under test and env added, and
// returns its output; a failure fails the test.
func runDemo(t *testing.T, name string, env ...string) string {
	t.Helper()
	xlb, xlbtest := Binary(t, "xlb"), Binary(t, "xlbtest")
	if filepath.Dir(xlb) != filepath.Dir(xlbtest) {
		t.Fatalf("xlb and xlbtest in different directories: %s, %s", xlb, xlbtest)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot(t), "scripts", name))
	cmd.Env = append(append(os.Environ(), "XLB_BIN_DIR="+filepath.Dir(xlb)), env...)
	cmd.WaitDelay = 10 * time.Second
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	t.Logf("%s took %v", name, time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
	return out
}

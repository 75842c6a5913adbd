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
	xlb, xlbtest := Binary(t, "xlb"), Binary(t, "xlbtest")
	if filepath.Dir(xlb) != filepath.Dir(xlbtest) {
		t.Fatalf("xlb and xlbtest in different directories: %s, %s", xlb, xlbtest)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot(t), "scripts", "demo.sh"))
	cmd.Env = append(os.Environ(), "XLB_BIN_DIR="+filepath.Dir(xlb), "CONNS=310", "L7REQS=90")
	cmd.WaitDelay = 10 * time.Second
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	if err != nil {
		t.Fatalf("demo.sh: %v\n%s", err, out)
	}
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

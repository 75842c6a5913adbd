// Command benchl7 is `make bench-l7`: wrk against xlb's L7 proxy, HAProxy and
// nginx balancing the same three local backends (nginx serving a fixed body),
// in alternating rounds within one invocation, and prints medians of
// requests/s, p50/p99 latency and each proxy's CPU time per request (from
// /proc/PID/stat before and after), the latency each adds over a direct
// connection at one connection (per round, against that round's direct run),
// and a 64 KiB body case. Everything listens on 127.0.0.1 and every process
// it starts is stopped by PID.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/xlb-dev/xlb/scripts/internal/procs"
)

const clkTck = 100 // USER_HZ on Linux

type target struct {
	name  string
	port  int // small body
	bport int // 64 KiB body
	pids  func() []int
}

type result struct {
	rps, p50us, p99us, cpuUs float64
	requests                 int
}

func main() {
	rounds := flag.Int("rounds", 5, "alternating rounds")
	dur := flag.Duration("duration", 5*time.Second, "wrk duration per run")
	conns := flag.Int("conns", 50, "connections for the throughput cases")
	xlbBin := flag.String("xlb", "bin/xlb", "xlb binary")
	accessLog := flag.String("access-log", "", `xlb's [daemon] access_log: "" (off), "file" (a file in the bench's temporary directory), "stdout" or "stderr" (its log file)`)
	accessFormat := flag.String("access-log-format", "json", "xlb's [daemon] access_log_format: json or common")
	flag.Parse()
	// Interrupted, it still stops what it started (run's deferred calls).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *rounds, *dur, *conns, *xlbBin, *accessLog, *accessFormat); err != nil {
		fmt.Fprintln(os.Stderr, "bench-l7:", err)
		os.Exit(1)
	}
}

// benchPorts are the ports the bench listens on: backends, then proxies.
var benchPorts = []int{3101, 3102, 3103, 3201, 3202, 3203, 8101, 8111, 8102, 8112, 8103, 8113}

func run(ctx context.Context, rounds int, dur time.Duration, conns int, xlbBin, accessLog, accessFormat string) error {
	for _, tool := range []string{"wrk", "haproxy", "nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not installed (apt-get install wrk haproxy nginx)", tool)
		}
	}
	// A port someone else listens on would be measured in place of ours.
	for _, p := range benchPorts {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), 200*time.Millisecond); err == nil {
			c.Close()
			return fmt.Errorf("port %d is already in use on 127.0.0.1 (the bench needs %v)", p, benchPorts)
		}
	}
	dir, err := os.MkdirTemp("", "xlb-bench-l7-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	g := procs.New(dir)
	defer g.StopAll()
	start := func(name string, args ...string) (*exec.Cmd, error) {
		return g.Start(filepath.Base(name)+".log", name, args...)
	}

	if err := writeConfigs(dir, accessLog, accessFormat); err != nil {
		return err
	}
	if _, err := start("nginx", "-p", dir, "-c", filepath.Join(dir, "backends.conf")); err != nil {
		return err
	}
	if err := waitPorts(3101, 3102, 3103, 3201, 3202, 3203); err != nil {
		return fmt.Errorf("backends: %w", err)
	}
	hap, err := start("haproxy", "-db", "-f", filepath.Join(dir, "haproxy.cfg"))
	if err != nil {
		return err
	}
	ngx, err := start("nginx", "-p", dir, "-c", filepath.Join(dir, "proxy.conf"))
	if err != nil {
		return err
	}
	xlb, err := start(xlbBin, "run", "-c", filepath.Join(dir, "xlb.toml"))
	if err != nil {
		return err
	}
	if err := waitPorts(8101, 8111, 8102, 8112, 8103, 8113); err != nil {
		return fmt.Errorf("proxies: %w (logs in %s)", err, dir)
	}
	time.Sleep(500 * time.Millisecond)

	targets := []target{
		{"direct", 3101, 3201, nil},
		{"haproxy", 8101, 8111, func() []int { return []int{hap.Process.Pid} }},
		{"nginx", 8102, 8112, func() []int { return withChildren(ngx.Process.Pid) }},
		{"xlb", 8103, 8113, func() []int { return []int{xlb.Process.Pid} }},
	}
	cases := []struct {
		name  string
		conns int
		body  bool
		dur   time.Duration
	}{
		{fmt.Sprintf("c%d, 100 B body", conns), conns, false, dur},
		{"c1, 100 B body", 1, false, dur},
		{fmt.Sprintf("c%d, 64 KiB body", conns), conns, true, dur},
	}
	results := map[string]map[string][]result{}
	for r := 0; r < rounds; r++ {
		for _, c := range cases {
			if results[c.name] == nil {
				results[c.name] = map[string][]result{}
			}
			order := slices.Clone(targets)
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, t := range order {
				port := t.port
				if c.body {
					port = t.bport
				}
				res, err := measure(ctx, t, port, c.conns, c.dur)
				if err != nil {
					return fmt.Errorf("%s %s: %w", c.name, t.name, err)
				}
				results[c.name][t.name] = append(results[c.name][t.name], res)
			}
		}
	}

	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(os.Stdout, "bench-l7: %d rounds of %s per target, medians; wrk -t1; ratios against haproxy; xlb access log: %s\n\n",
		rounds, dur, cmpOr(strings.TrimSpace(xlbAccessLog(dir, accessLog, accessFormat)), "off"))
	for _, c := range cases {
		fmt.Fprintf(w, "%s\treq/s\tx haproxy\tp50 us\tp99 us\tCPU us/req\tadded p50 us\t\n", c.name)
		direct := results[c.name]["direct"]
		hap := median(results[c.name]["haproxy"], func(r result) float64 { return r.rps })
		for _, t := range targets {
			rs := results[c.name][t.name]
			rps := median(rs, func(r result) float64 { return r.rps })
			cpu := "-"
			if t.pids != nil {
				cpu = fmt.Sprintf("%.1f", median(rs, func(r result) float64 { return r.cpuUs }))
			}
			p50 := median(rs, func(r result) float64 { return r.p50us })
			// Added latency is taken within each round (the direct run is
			// minutes closer than the other rounds' and the VM's wake-up
			// latency drifts), then the median over rounds.
			added := make([]float64, len(rs))
			for i := range rs {
				added[i] = rs[i].p50us - direct[i].p50us
			}
			fmt.Fprintf(w, "%s\t%.0f\t%.2f\t%.0f\t%.0f\t%s\t%.0f\t\n", t.name, rps, rps/hap, p50,
				median(rs, func(r result) float64 { return r.p99us }), cpu, median(added, func(v float64) float64 { return v }))
		}
		fmt.Fprintln(w, "\t\t\t\t\t\t\t")
	}
	return w.Flush()
}

func measure(ctx context.Context, t target, port, conns int, dur time.Duration) (result, error) {
	var before []float64
	if t.pids != nil {
		before = cpuSeconds(t.pids())
	}
	ctx, cancel := context.WithTimeout(ctx, dur+30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "wrk", "-t1", fmt.Sprintf("-c%d", conns), "-d"+dur.String(),
		"--latency", fmt.Sprintf("http://127.0.0.1:%d/", port)).CombinedOutput()
	if ctx.Err() != nil {
		return result{}, fmt.Errorf("wrk: %w", context.Cause(ctx))
	}
	if err != nil {
		return result{}, fmt.Errorf("wrk: %v: %s", err, out)
	}
	res, err := parseWrk(string(out))
	if err != nil {
		return result{}, err
	}
	if t.pids != nil && res.requests > 0 {
		after := cpuSeconds(t.pids())
		res.cpuUs = (sum(after) - sum(before)) * 1e6 / float64(res.requests)
	}
	return res, nil
}

var (
	reqsLine = regexp.MustCompile(`(\d+) requests in`)
	rpsLine  = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	pctLine  = regexp.MustCompile(`^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)`)
	errLine  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)`)
)

func parseWrk(out string) (result, error) {
	var r result
	if m := errLine.FindStringSubmatch(out); m != nil {
		return r, fmt.Errorf("wrk saw errors: %s", strings.TrimSpace(m[0]))
	}
	m := reqsLine.FindStringSubmatch(out)
	n := rpsLine.FindStringSubmatch(out)
	if m == nil || n == nil {
		return r, fmt.Errorf("unreadable wrk output: %s", out)
	}
	r.requests, _ = strconv.Atoi(m[1])
	r.rps, _ = strconv.ParseFloat(n[1], 64)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		p := pctLine.FindStringSubmatch(sc.Text())
		if p == nil {
			continue
		}
		v, _ := strconv.ParseFloat(p[2], 64)
		switch p[3] {
		case "ms":
			v *= 1e3
		case "s":
			v *= 1e6
		}
		if p[1] == "50" {
			r.p50us = v
		} else {
			r.p99us = v
		}
	}
	return r, nil
}

// statFields returns the fields of /proc/PID/stat after the command name
// (fields[1] is the parent pid, [11] and [12] utime and stime).
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
}

// cpuSeconds reads utime+stime of each pid.
func cpuSeconds(pids []int) []float64 {
	var out []float64
	for _, pid := range pids {
		fields := statFields(pid)
		if len(fields) < 13 {
			continue
		}
		ut, _ := strconv.ParseFloat(fields[11], 64)
		st, _ := strconv.ParseFloat(fields[12], 64)
		out = append(out, (ut+st)/clkTck)
	}
	return out
}

// withChildren is pid and its children (nginx's master and workers).
func withChildren(pid int) []int {
	out := []int{pid}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if fields := statFields(child); len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

func sum(v []float64) float64 {
	t := 0.0
	for _, x := range v {
		t += x
	}
	return t
}

func median[T any](rs []T, f func(T) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func waitPorts(ports ...int) error {
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range ports {
		for {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), 200*time.Millisecond)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				return errors.New("port " + strconv.Itoa(p) + " not listening")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

func writeConfigs(dir, accessLog, accessFormat string) error {
	body100 := strings.Repeat("x", 100)
	big := make([]byte, 64<<10)
	for i := range big {
		big[i] = 'a' + byte(i%26)
	}
	if err := os.WriteFile(filepath.Join(dir, "64k"), big, 0o644); err != nil {
		return err
	}
	var backends strings.Builder
	for i := 1; i <= 3; i++ {
		fmt.Fprintf(&backends, "  server { listen 127.0.0.1:310%d; location / { default_type text/plain; return 200 %q; } }\n", i, body100)
		fmt.Fprintf(&backends, "  server { listen 127.0.0.1:320%d; root %s; location / { default_type application/octet-stream; try_files /64k =404; } }\n", i, dir)
	}
	files := map[string]string{
		"backends.conf": fmt.Sprintf(`daemon off; master_process off; worker_processes 1; pid %[1]s/backends.pid;
error_log %[1]s/backends-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
%[2]s}
`, dir, backends.String()),
		"proxy.conf": fmt.Sprintf(`daemon off; worker_processes 1; pid %[1]s/proxy.pid;
error_log %[1]s/proxy-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream small { server 127.0.0.1:3101; server 127.0.0.1:3102; server 127.0.0.1:3103; keepalive 64; }
  upstream big { server 127.0.0.1:3201; server 127.0.0.1:3202; server 127.0.0.1:3203; keepalive 64; }
  server { listen 127.0.0.1:8102; location / { proxy_pass http://small; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:8112; location / { proxy_pass http://big; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
`, dir),
		"haproxy.cfg": `global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend small
  bind 127.0.0.1:8101
  default_backend small
frontend big
  bind 127.0.0.1:8111
  default_backend big
backend small
  balance roundrobin
  server b1 127.0.0.1:3101
  server b2 127.0.0.1:3102
  server b3 127.0.0.1:3103
backend big
  balance roundrobin
  server b1 127.0.0.1:3201
  server b2 127.0.0.1:3202
  server b3 127.0.0.1:3203
`,
		"xlb.toml": `[daemon]
log_level = "warn"
threads = 1 # as HAProxy's nbthread 1 and nginx's worker_processes 1 above
` + xlbAccessLog(dir, accessLog, accessFormat) + `
[admin]
listen = ""

[health_check]
type = "tcp"
interval = "5s"

[[service]]
name = "small"
vip = "127.0.0.1"
port = 8103
mode = "l7"
  [[service.backend]]
  address = "127.0.0.1"
  port = 3101
  [[service.backend]]
  address = "127.0.0.1"
  port = 3102
  [[service.backend]]
  address = "127.0.0.1"
  port = 3103

[[service]]
name = "big"
vip = "127.0.0.1"
port = 8113
mode = "l7"
  [[service.backend]]
  address = "127.0.0.1"
  port = 3201
  [[service.backend]]
  address = "127.0.0.1"
  port = 3202
  [[service.backend]]
  address = "127.0.0.1"
  port = 3203
`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// xlbAccessLog is the [daemon] access log keys of xlb's config for the
// -access-log flag ("" when off).
func xlbAccessLog(dir, accessLog, format string) string {
	switch accessLog {
	case "":
		return ""
	case "file":
		accessLog = filepath.Join(dir, "access.log")
	}
	return fmt.Sprintf("access_log = %q\naccess_log_format = %q\n", accessLog, format)
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return strings.ReplaceAll(s, "\n", ", ")
}

package health

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

const (
	benchTargets  = 1000
	benchInterval = time.Second
	benchWarmup   = 3 * time.Second  // first checks (within Jitter×Interval) and connections
	benchWindow   = 10 * time.Second // measured
)

// BenchmarkHealthChecks checks 1000 HTTP backends every second and reports
// the CPU the checking process uses (getrusage(RUSAGE_SELF), user + system,
// over benchWindow) as a percentage of one core, and its goroutines. The
// backends are 1000 loopback listeners (127.2.x.y) of one `xlbtest serve`
// process, so their CPU is not counted (it is reported apart, from
// /proc/PID/stat). Two cases: a new connection for every check (as before
// checks reused connections) and the default, connections reused for
// DefaultChecksPerConnection checks. goroutines-max is the most goroutines
// above those before the Manager started, sampled every 100 ms; checks/s
// counts successful checks (a failed one fails the benchmark). Run it with
// `make bench-control` (-benchtime 1x: each case measures its own window).
func BenchmarkHealthChecks(b *testing.B) {
	addrs, serverCPU := startServe(b, benchTargets)
	cases := []struct {
		name  string
		reuse int // Spec.ChecksPerConnection
	}{
		{"new-connection-per-check", 1},
		{"reused-connections", 0}, // DefaultChecksPerConnection
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			mx := NewMetrics(nil)
			// As the daemon logs (info): a failed check would log a warning,
			// whose reason is kept.
			failures := newLogRecorder()
			log := slog.New(levelHandler{failures, slog.LevelWarn})
			base := runtime.NumGoroutine()
			m := NewManager(log, mx)
			defer m.Close()
			targets := make([]Target, len(addrs))
			for i, a := range addrs {
				targets[i] = Target{
					Spec: Spec{Kind: KindHTTP, Target: a, Path: "/health", Interval: benchInterval,
						Timeout: 500 * time.Millisecond, ChecksPerConnection: c.reuse},
					Subjects: []Subject{{Service: "bench", Backend: a.Addr().String()}},
				}
			}
			if err := m.Set(targets); err != nil {
				b.Fatal(err)
			}
			time.Sleep(benchWarmup)

			checks := func() (ok, failed float64) {
				for _, a := range addrs {
					ok += testutil.ToFloat64(mx.checks.WithLabelValues("bench", a.Addr().String(), resultSuccess))
					failed += testutil.ToFloat64(mx.checks.WithLabelValues("bench", a.Addr().String(), resultFailure))
				}
				return ok, failed
			}
			ok0, failed0 := checks()
			srv0 := serverCPU()
			user0, sys0 := selfCPU(b)
			start := time.Now()
			maxG := 0
			for time.Since(start) < benchWindow {
				maxG = max(maxG, runtime.NumGoroutine()-base)
				time.Sleep(100 * time.Millisecond)
			}
			elapsed := time.Since(start)
			user1, sys1 := selfCPU(b)
			user, sys := user1-user0, sys1-sys0
			cpu := user + sys
			srv := serverCPU() - srv0
			ok1, failed1 := checks()

			if failed1 > failed0 {
				reasons := map[string]int{}
				for _, r := range failures.records(slog.LevelWarn) {
					reasons[r.attrs["reason"]]++
				}
				b.Errorf("%v checks failed in the window; failures by reason, warm-up included: %v", failed1-failed0, reasons)
			}
			for _, st := range m.Snapshot() {
				if st.State != Healthy {
					b.Fatalf("%s is %v (%s)", st.Spec, st.State, st.Reason)
				}
			}
			b.ReportMetric(100*cpu.Seconds()/elapsed.Seconds(), "cpu-%-of-core")
			b.ReportMetric(100*user.Seconds()/elapsed.Seconds(), "user-%")
			b.ReportMetric(100*sys.Seconds()/elapsed.Seconds(), "sys-%")
			b.ReportMetric(100*srv.Seconds()/elapsed.Seconds(), "server-cpu-%-of-core")
			b.ReportMetric((ok1-ok0)/elapsed.Seconds(), "checks/s")
			b.ReportMetric(float64(maxG), "goroutines-max")
			b.ReportMetric(float64(m.running.Load()), "checkers")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// levelHandler passes records at min and above to h.
type levelHandler struct {
	h   slog.Handler
	min slog.Level
}

func (l levelHandler) Enabled(ctx context.Context, lv slog.Level) bool { return lv >= l.min }
func (l levelHandler) Handle(ctx context.Context, r slog.Record) error { return l.h.Handle(ctx, r) }
func (l levelHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return levelHandler{l.h.WithAttrs(a), l.min}
}
func (l levelHandler) WithGroup(g string) slog.Handler { return levelHandler{l.h.WithGroup(g), l.min} }

// selfCPU is the process's user and system CPU time.
func selfCPU(b *testing.B) (user, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// startServe starts `xlbtest serve` on n loopback addresses (127.2.x.y, port
// chosen by the kernel) and returns them, with a function that reads the
// server process's CPU time. The process is killed by PID at cleanup.
func startServe(b *testing.B, n int) ([]netip.AddrPort, func() time.Duration) {
	b.Helper()
	if runtime.GOOS != "linux" {
		b.Skip("reads /proc")
	}
	bin := xlbtestBinary(b)
	listen := make([]string, n)
	for i := range listen {
		listen[i] = fmt.Sprintf("127.2.%d.%d:0", i/250, i%250+1)
	}
	cmd := exec.Command(bin, "serve", "--name", "bench", "--listen", strings.Join(listen, ","))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	pid := cmd.Process.Pid
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ready ") {
				ready <- sc.Text()
			}
		}
		io.Copy(io.Discard, out)
	}()
	var line string
	select {
	case line = <-ready:
	case <-time.After(30 * time.Second):
		b.Fatal("xlbtest serve: no ready line within 30 s")
	}
	_, list, _ := strings.Cut(line, " listen=")
	var addrs []netip.AddrPort
	for a := range strings.SplitSeq(strings.TrimSpace(list), ",") {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			b.Fatalf("xlbtest serve ready line: %v", err)
		}
		addrs = append(addrs, ap)
	}
	if len(addrs) != n {
		b.Fatalf("xlbtest serve listens on %d addresses, want %d", len(addrs), n)
	}
	return addrs, func() time.Duration { return procCPU(b, pid) }
}

// procCPU is a process's user + system CPU time from /proc/PID/stat.
func procCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: state is
	// field 3, utime 14 and stime 15, in clock ticks (100 per second).
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / 100)
}

// xlbtestBinary is $XLB_BIN_DIR/xlbtest (make sets it), else a build of
// ./scripts/xlbtest into a temporary directory.
func xlbtestBinary(b *testing.B) string {
	b.Helper()
	if dir := os.Getenv("XLB_BIN_DIR"); dir != "" {
		p := filepath.Join(dir, "xlbtest")
		if _, err := os.Stat(p); err != nil {
			b.Fatalf("XLB_BIN_DIR: %v", err)
		}
		return p
	}
	p := filepath.Join(b.TempDir(), "xlbtest")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", p, "github.com/xlb-dev/xlb/scripts/xlbtest")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build xlbtest: %v\n%s", err, out)
	}
	return p
}

// Command benchl4 is `make bench-l4`: iperf3 through an L4 VIP of xlb, per
// forwarding mode, against the direct path to the same backend in the same
// run. It builds the namespace topology of scripts/topology.sh (a client, the
// xlb host and one backend on a bridge), runs `xlb run` in the xlb namespace
// in generic XDP mode, alternates direct and VIP runs for IPv4 and IPv6 and
// prints the medians and their ratio. Modes: dsr, ipip (the backend runs
// `xlb decap`) and nat (the backend holds no VIP; checksum offload off). Everything it starts is stopped by PID
// and the topology is removed, also when it fails or is interrupted.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/xlb-dev/xlb/scripts/internal/procs"
)

const (
	prefix  = "xbl4"
	vip4    = "198.19.0.10"
	vip6    = "2001:db8:19::10"
	backend = "198.18.0.11"
	back6   = "2001:db8:18::11"
	port    = 5201 // iperf3's
)

// mode is a forwarding mode and what its target ratio is (issue 10: DSR and
// IPIP at least 0.9x direct, NAT 0.8x, generic mode).
type mode struct {
	name   string
	target float64
	// decap: the backend runs `xlb decap` for the VIPs, and the client
	// segments in software (TSO and GSO off), in its direct runs too: generic
	// XDP sees TSO super-packets whole, and encapsulated they exceed every
	// MTU (they only earn an ICMP answer). A real NIC hands XDP frames of
	// at most the MTU.
	decap bool
	// nat: the backend holds no VIP (xlb translates to its address), and
	// the client and the backend send full checksums (tx checksum offload
	// off, which takes TSO with it; GSO still segments in software), in
	// the direct runs too: a veth's partial checksum holds only the
	// pseudo-header's sum, which xlb's incremental update cannot carry
	// (LAB.md). A real NIC delivers full checksums.
	nat bool
}

var modes = []mode{{"dsr", 0.9, false, false}, {"ipip", 0.9, true, false}, {"nat", 0.8, false, true}}

// direct names a mode's direct runs (after the family).
func (m mode) direct() string {
	switch {
	case m.decap:
		return " direct, no TSO"
	case m.nat:
		return " direct, no tx csum"
	}
	return " direct"
}

// prepare sets the client's offloads for m and, for nat, takes the VIPs off
// the backend and its offload too; the returned func undoes the backend's
// (each mode sets the client's). On an error the topology goes whole.
func (m mode) prepare() (func(), error) {
	nsRun := func(ns string, args ...string) error {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", prefix + "-" + ns}, args...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s in %s: %v: %s", strings.Join(args, " "), ns, err, out)
		}
		return nil
	}
	features := []string{"tx", "on", "tso", "on", "gso", "on"}
	switch {
	case m.decap:
		features = []string{"tx", "on", "tso", "off", "gso", "off"}
	case m.nat:
		features = []string{"tx", "off", "gso", "on"}
	}
	if err := nsRun("cl", append([]string{"ethtool", "-K", "eth0"}, features...)...); err != nil {
		return nil, err
	}
	if !m.nat {
		return func() {}, nil
	}
	for _, args := range [][]string{
		{"ethtool", "-K", "eth0", "tx", "off"},
		{"ip", "addr", "del", vip4 + "/32", "dev", "lo"},
		{"ip", "addr", "del", vip6 + "/128", "dev", "lo"},
	} {
		if err := nsRun("b1", args...); err != nil {
			return nil, err
		}
	}
	return func() {
		nsRun("b1", "ethtool", "-K", "eth0", "tx", "on")
		nsRun("b1", "ip", "addr", "add", vip4+"/32", "dev", "lo")
		nsRun("b1", "ip", "addr", "add", vip6+"/128", "dev", "lo", "nodad")
	}, nil
}

func main() {
	rounds := flag.Int("rounds", 3, "alternating rounds per case")
	dur := flag.Duration("duration", 5*time.Second, "iperf3 time per run")
	bin := flag.String("bin", "bin", "directory with xlb and xlbtest")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *rounds, *dur, *bin); err != nil {
		fmt.Fprintln(os.Stderr, "bench-l4:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, rounds int, dur time.Duration, bin string) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, XDP)")
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		return errors.New("iperf3 not installed (apt-get install iperf3)")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "xlb-bench-l4-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	topo := func(args ...string) error {
		out, err := exec.Command("scripts/topology.sh", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("topology.sh %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	up := exec.Command("scripts/topology.sh", "up", prefix)
	up.Env = append(os.Environ(), "NBACKENDS=1", "NCLIENTS=1", "MODE=generic")
	if out, err := up.CombinedOutput(); err != nil {
		return fmt.Errorf("topology.sh up: %v: %s", err, out)
	}
	defer topo("down", prefix) // also stops whatever still runs in its namespaces

	g := procs.New(dir)
	defer g.StopAll()
	start := func(ns, logName string, args ...string) (*exec.Cmd, error) {
		return g.Start(logName, "ip", append([]string{"netns", "exec", prefix + "-" + ns}, args...)...)
	}
	// The backend: iperf3 (on every address, the VIP on lo included) and a
	// listener on its own address for xlb's TCP check, kept apart from
	// iperf3, which takes one client at a time.
	if _, err := start("b1", "iperf3.log", "iperf3", "-s", "-p", fmt.Sprint(port)); err != nil {
		return err
	}
	if _, err := start("b1", "check.log", filepath.Join(bin, "xlbtest"), "serve", "--name", "b1", "--listen",
		backend+":8080,["+back6+"]:8080"); err != nil {
		return err
	}

	results := map[string][]float64{} // case -> Gbit/s per round
	var order []string
	measure := func(name, target string, family int, viaLB bool) error {
		before, err := lbReceived()
		if err != nil {
			return err
		}
		gbps, sent, err := iperf(ctx, target, family, dur)
		if err != nil {
			return fmt.Errorf("%s: %w (logs in %s)", name, err, dir)
		}
		after, err := lbReceived()
		if err != nil {
			return err
		}
		// The VIP run's bytes must have crossed the xlb host (and the
		// direct run's not): a figure from a path that skipped it would be
		// meaningless.
		if through := float64(after-before) >= 0.9*float64(sent); through != viaLB {
			return fmt.Errorf("%s: the xlb host received %d bytes while iperf3 sent %d", name, after-before, sent)
		}
		if _, ok := results[name]; !ok {
			order = append(order, name)
		}
		results[name] = append(results[name], gbps)
		return nil
	}
	for _, m := range modes {
		direct := m.direct()
		undo, err := m.prepare()
		if err != nil {
			return err
		}
		var decap *exec.Cmd
		if m.decap {
			if decap, err = start("b1", "decap.log", filepath.Join(bin, "xlb"), "decap", "--interface", "eth0",
				"--vip", vip4, "--vip", vip6); err != nil {
				return err
			}
			if err := waitLog(ctx, filepath.Join(dir, "decap.log"), "xlb decap running"); err != nil {
				return err
			}
		}
		conf := filepath.Join(dir, m.name+".toml")
		if err := os.WriteFile(conf, []byte(config(m.name)), 0o644); err != nil {
			return err
		}
		xlb, err := start("lb", "xlb-"+m.name+".log", filepath.Join(bin, "xlb"), "run", "-c", conf)
		if err != nil {
			return err
		}
		if err := waitLog(ctx, filepath.Join(dir, "xlb-"+m.name+".log"), "xlb running"); err != nil {
			return err
		}
		time.Sleep(2 * time.Second) // the backend's first health checks (interval 1s)
		for r := 0; r < rounds; r++ {
			for _, fam := range []struct {
				family             int
				direct, vip, label string
			}{{4, backend, vip4, "IPv4"}, {6, back6, vip6, "IPv6"}} {
				direct := fam.label + direct
				via := fam.label + " " + m.name
				steps := []func() error{
					func() error { return measure(direct, fam.direct, fam.family, false) },
					func() error { return measure(via, fam.vip, fam.family, true) },
				}
				if r%2 == 1 {
					slices.Reverse(steps)
				}
				for _, s := range steps {
					if err := s(); err != nil {
						return err
					}
				}
			}
		}
		xlb.Process.Signal(syscall.SIGTERM)
		xlb.Wait()
		if decap != nil {
			decap.Process.Signal(syscall.SIGTERM)
			decap.Wait()
		}
		undo()
	}

	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Printf("bench-l4: iperf3 -t %s, one TCP stream client -> backend, %d rounds, medians; generic XDP on veth\n\n", dur, rounds)
	fmt.Fprintf(w, "case\tGbit/s\tx direct\ttarget\t\n")
	for _, name := range order {
		g := median(results[name])
		ratio, target := "", ""
		fam, m, _ := strings.Cut(name, " ")
		for _, md := range modes {
			if md.name != m {
				continue
			}
			ratio = fmt.Sprintf("%.2f", g/median(results[fam+md.direct()]))
			target = fmt.Sprintf(">= %.1f", md.target)
		}
		fmt.Fprintf(w, "%s\t%.1f\t%s\t%s\t\n", name, g, ratio, target)
	}
	return w.Flush()
}

// config is the xlb configuration for forwarding mode m: one L4 service per
// family on iperf3's port, the backend checked on its own listener.
func config(m string) string {
	return fmt.Sprintf(`[daemon]
interface = "eth0"
xdp_mode = "generic"
bpffs_dir = "/sys/fs/bpf/xlb-bench-l4"

[admin]
listen = ""

[health_check]
type = "tcp"
port = 8080
interval = "1s"
timeout = "500ms"

[[service]]
name = "v4"
vip = %q
port = %d
forwarding = %q
  [[service.backend]]
  address = %q

[[service]]
name = "v6"
vip = %q
port = %d
forwarding = %q
  [[service.backend]]
  address = %q
`, vip4, port, m, backend, vip6, port, m, back6)
}

// waitLog waits for a line containing want in the log at path.
func waitLog(ctx context.Context, path, want string) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), want) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	b, _ := os.ReadFile(path)
	return fmt.Errorf("no %q in %s: %s", want, filepath.Base(path), b)
}

// lbReceived is what the xlb host's interface has received, in bytes.
func lbReceived() (uint64, error) {
	out, err := exec.Command("ip", "netns", "exec", prefix+"-lb", "cat", "/sys/class/net/eth0/statistics/rx_bytes").Output()
	if err != nil {
		return 0, fmt.Errorf("reading the xlb host's rx_bytes: %w", err)
	}
	return strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
}

// iperf runs one iperf3 client from the client namespace and returns the
// receiver's throughput in Gbit/s and the bytes sent.
func iperf(ctx context.Context, target string, family int, dur time.Duration) (gbps float64, sent uint64, err error) {
	ctx, cancel := context.WithTimeout(ctx, dur+20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", prefix+"-cl", "iperf3", fmt.Sprintf("-%d", family),
		"-c", target, "-p", fmt.Sprint(port), "-t", fmt.Sprint(int(dur.Seconds())), "-J").Output()
	var res struct {
		End struct {
			SumSent struct {
				Bytes uint64 `json:"bytes"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		return 0, 0, fmt.Errorf("iperf3 -c %s: %v: %s", target, err, out)
	}
	if res.Error != "" || err != nil {
		return 0, 0, fmt.Errorf("iperf3 -c %s: %v %s", target, err, res.Error)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, res.End.SumSent.Bytes, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

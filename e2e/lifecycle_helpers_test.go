package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// lifePort is the service port of the lifecycle tests; lifeL7Port is where
// their L7 service listens on the LB's lo.
const (
	lifePort   = 80
	lifeL7Port = 8081
	// exitWithin bounds how long a start that fails may take to exit.
	exitWithin = 20 * time.Second
)

// lifeEnv is a small topology (two backends, a few clients) whose backends
// serve the IPv4 VIP, with one L4 service and the admin API in xlb's config.
type lifeEnv struct {
	tp     *Topology
	pinDir string
	dir    string // configs
	config string
}

func newLifeEnv(t *testing.T, prefix string) *lifeEnv {
	t.Helper()
	tp := NewTopology(t, prefix+randomPrefix()[len(prefix):], WithBackends(2), WithClients(8))
	e := &lifeEnv{tp: tp, pinDir: tp.PinDir(t), dir: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() {
			tp.logDiagnostics(t)
		}
	})
	for i, h := range tp.BackendHosts() {
		tp.StartReady(t, h, "ready ", 5*time.Second, Binary(t, "xlbtest"), "serve", "--name", h,
			"--listen", fmt.Sprintf("%s:%d,%s:%d", VIP4, lifePort, tp.BackendAddr4(i+1), lifePort))
	}
	e.config = e.writeConfig(t, "xlb.toml", false)
	return e
}

// writeConfig writes the env's config; withL7 adds an L7 service on
// 127.0.0.1:lifeL7Port (its backend need not exist: xlb only binds).
func (e *lifeEnv) writeConfig(t *testing.T, name string, withL7 bool) string {
	t.Helper()
	var backends []string
	for i := range e.tp.Backends {
		backends = append(backends, e.tp.BackendAddr4(i+1))
	}
	path := writeConfig(t, e.dir, "generic", e.pinDir, l4Service{Name: "web", VIP: VIP4, Port: lifePort, Backends: backends})
	text := fmt.Sprintf("\n[admin]\nlisten = %q\ntoken_env = %q\n", adminAddr, noTokenEnv)
	if withL7 {
		text += fmt.Sprintf("\n[[service]]\nname = \"l7\"\nvip = \"127.0.0.1\"\nport = %d\nmode = \"l7\"\n"+
			"  [[service.backend]]\n  address = \"127.0.0.1\"\n  port = 8300\n", lifeL7Port)
	}
	cfg, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(e.dir, name)
	if err := os.WriteFile(out, append(cfg, text...), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// requireForwarding sends connections from every client address through the
// VIP and checks they all succeed and the datapath counted them: the VIP is
// reachable only through the LB's XDP program.
func (e *lifeEnv) requireForwarding(t *testing.T, when string) {
	t.Helper()
	before := e.servicePackets(t)
	n := e.tp.Clients
	sum := e.tp.Load(t, "cl", "--target", fmt.Sprintf("http://%s:%d/", VIP4, lifePort),
		"--sources", e.tp.ClientSources4(), "--conns", fmt.Sprint(n), "--timeout", "3s", "--duration-max", "20s")
	if sum.OK != n || sum.Failed != 0 {
		t.Errorf("%s: %d of %d connections through the VIP succeeded (errors %v)", when, sum.OK, n, sum.Errors)
	}
	if after := e.servicePackets(t); after <= before {
		t.Errorf("%s: the datapath counted no packets for the service (%d, then %d)", when, before, after)
	}
}

func (e *lifeEnv) servicePackets(t *testing.T) uint64 {
	t.Helper()
	s := service(e.tp.Status(t, e.pinDir), "web")
	if s == nil {
		t.Fatalf("service web not in the pinned maps")
	}
	return s.Packets
}

// datapathState is what a failed or refused start must leave unchanged: the
// XDP program attached to the LB's eth0, the pins, and what the maps say of
// services and backends (counters left out).
type datapathState struct {
	progID string
	pins   []string
	maps   string
}

func (e *lifeEnv) state(t *testing.T) datapathState {
	t.Helper()
	m := regexp.MustCompile(`prog/xdp id (\d+)`).FindStringSubmatch(e.tp.LinkXDP(t, "lb", "eth0"))
	st := datapathState{}
	if m != nil {
		st.progID = m[1]
	}
	entries, err := os.ReadDir(e.pinDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, en := range entries {
		st.pins = append(st.pins, en.Name())
	}
	var b strings.Builder
	for _, s := range e.tp.Status(t, e.pinDir).Services {
		fmt.Fprintf(&b, "%s id=%d %s:%d ring=%d\n", s.Name, s.ID, s.VIP, s.Port, s.RingSize)
		for _, be := range s.Backends {
			fmt.Fprintf(&b, "  %d %s %s %s slots=%d\n", be.ID, be.Address, be.State, be.MAC, be.Slots)
		}
	}
	st.maps = b.String()
	return st
}

// requireSameState fails t where after differs from before.
func requireSameState(t *testing.T, before, after datapathState) {
	t.Helper()
	if before.progID == "" {
		t.Fatal("no XDP program attached to begin with")
	}
	if after.progID != before.progID {
		t.Errorf("XDP program on the LB's eth0: id %q, was %q", after.progID, before.progID)
	}
	if !slices.Equal(after.pins, before.pins) {
		t.Errorf("pins: %v, were %v", after.pins, before.pins)
	}
	if after.maps != before.maps {
		t.Errorf("maps say:\n%s\nwere:\n%s", after.maps, before.maps)
	}
}

// requireFailedStart waits for cmd (an xlb run) to exit on its own and checks
// it exited with code, its stderr containing every want.
func (e *lifeEnv) requireFailedStart(t *testing.T, cmd *exec.Cmd, code int, want ...string) {
	t.Helper()
	err := e.tp.Wait(cmd, exitWithin)
	_, stderr := e.tp.Output(cmd)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != code {
		t.Errorf("xlb run: %v, want exit code %d\n%s", err, code, stderr)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("xlb run's stderr lacks %q:\n%s", w, stderr)
		}
	}
}

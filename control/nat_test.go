package control

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xlb-dev/xlb/config"
)

const natConfig = `
[[service]]
name = "nat"
vip = "198.19.0.30"
port = 80
forwarding = "nat"
  [[service.backend]]
  address = "198.18.9.21"
  port = 8080
[[service]]
name = "tunnel"
vip = "198.19.0.31"
port = 80
forwarding = "ipip"
  [[service.backend]]
  address = "198.18.9.21"
[[service]]
name = "dsr"
vip = "198.19.0.32"
port = 80
  [[service.backend]]
  address = "198.18.0.21"
`

// The admin API agrees with the config on nat backends: a port is theirs
// to set (and reaches the datapath, and the health check), a MAC is dsr's.
func TestAdminNATBackends(t *testing.T) {
	cfg, err := config.Parse([]byte(natConfig), "nat.toml")
	if err != nil {
		t.Fatal(err)
	}
	c := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if _, err := c.AddBackend(AddRequest{Service: "nat", Address: "198.18.9.22", Port: 9090}); err != nil {
		t.Fatalf("nat backend with a port: %v", err)
	}
	if _, err := c.AddBackend(AddRequest{Service: "nat", Address: "198.18.9.23"}); err != nil {
		t.Fatalf("nat backend without a port: %v", err)
	}
	c.mu.Lock()
	d := c.desired()
	c.mu.Unlock()
	ports := map[string]uint16{}
	for _, s := range d.Services {
		for _, b := range s.Backends {
			ports[s.Name+" "+b.Address.String()] = b.Port
		}
	}
	for key, want := range map[string]uint16{"nat 198.18.9.21": 8080, "nat 198.18.9.22": 9090, "nat 198.18.9.23": 80} {
		if ports[key] != want {
			t.Errorf("%s: port %d in the datapath, want %d", key, ports[key], want)
		}
	}
	for _, tc := range []struct {
		req  AddRequest
		want string
	}{
		{AddRequest{Service: "dsr", Address: "198.18.0.22", Port: 8080}, "port applies to l7 and nat services only"},
		{AddRequest{Service: "tunnel", Address: "198.18.9.22", Port: 8080}, "port applies to l7 and nat services only"},
		{AddRequest{Service: "nat", Address: "198.18.9.24", MAC: "02:00:00:00:00:01"}, "mac applies to l4 services with dsr forwarding only"},
		{AddRequest{Service: "tunnel", Address: "198.18.9.24", MAC: "02:00:00:00:00:01"}, "mac applies to l4 services with dsr forwarding only"},
	} {
		_, err := c.AddBackend(tc.req)
		if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want ErrBadRequest saying %q", tc.req, err, tc.want)
		}
	}
}

// nat_port_range must stay clear of the host's ephemeral ports, but only
// matters while a service uses nat.
func TestNATPortsOverlap(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ip_local_port_range")
	old := ephemeralPortsFile
	ephemeralPortsFile = file
	t.Cleanup(func() { ephemeralPortsFile = old })
	nat, err := config.Parse([]byte(natConfig), "nat.toml")
	if err != nil {
		t.Fatal(err)
	}
	dsrOnly, err := config.Parse([]byte("[datapath]\nnat_port_range = \"40000-50000\"\n"), "dsr.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, ephemeral string
		cfg             *config.Config
		overlap         bool
	}{
		{"default ranges", "32768\t60999\n", nat, false},
		{"ephemeral moved down", "20000\t60999\n", nat, true},
		{"one shared port", "32767 60999\n", nat, true},
		{"no nat service", "32768\t60999\n", dsrOnly, false},
	} {
		if err := os.WriteFile(file, []byte(tc.ephemeral), 0o644); err != nil {
			t.Fatal(err)
		}
		err := CheckNATPorts(tc.cfg)
		if got := errors.Is(err, ErrNATPortsOverlap); got != tc.overlap || (err != nil && !tc.overlap) {
			t.Errorf("%s: %v, want overlap %v", tc.name, err, tc.overlap)
		}
		if tc.overlap && !strings.Contains(err.Error(), "datapath.nat_port_range") {
			t.Errorf("%s: %v does not name the key", tc.name, err)
		}
	}
}

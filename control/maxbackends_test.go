package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/xlb-dev/xlb/config"
)

// maxConfig is one L4 service with the given backends and max_backends.
func maxConfig(t *testing.T, max int, addrs ...string) *config.Config {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[health_check]\nenabled = false\n[datapath]\nmax_backends = %d\n", max)
	b.WriteString("[[service]]\nname = \"web\"\nvip = \"198.19.0.10\"\nport = 80\n")
	for _, a := range addrs {
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n", a)
	}
	cfg, err := config.Parse([]byte(b.String()), "max.toml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A reload is accepted only when the loaded backends table (not the file's
// max_backends) holds every wanted L4 backend, admin-added ones included;
// once accepted, reconciles keep succeeding.
func TestReloadWithinLoadedMaxBackends(t *testing.T) {
	tests := []struct {
		name    string
		loaded  uint32
		first   *config.Config
		added   []string // through the admin API before the reload
		next    *config.Config
		refused bool
	}{
		{name: "swap every backend at the limit", loaded: 2,
			first: maxConfig(t, 2, "198.18.0.11", "198.18.0.12"),
			next:  maxConfig(t, 2, "198.18.0.13", "198.18.0.14")},
		{name: "config fits, admin-added backend does not", loaded: 3,
			first: maxConfig(t, 3, "198.18.0.11", "198.18.0.12"), added: []string{"198.18.0.20"},
			next: maxConfig(t, 3, "198.18.0.11", "198.18.0.12", "198.18.0.13"), refused: true},
		{name: "file raises max_backends past the loaded table", loaded: 1,
			first: maxConfig(t, 1, "198.18.0.11"),
			next:  maxConfig(t, 10, "198.18.0.11", "198.18.0.12", "198.18.0.13"), refused: true},
		{name: "admin-added backend carried within the limit", loaded: 3,
			first: maxConfig(t, 3, "198.18.0.11"), added: []string{"198.18.0.20"},
			next: maxConfig(t, 3, "198.18.0.12", "198.18.0.13")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, c := newL4ControllerSized(t, tt.first, tt.loaded)
			ctx := context.Background()
			if err := c.Start(ctx); err != nil {
				t.Fatal(err)
			}
			for _, a := range tt.added {
				if _, err := c.AddBackend(AddRequest{Service: "web", Address: a}); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			err := c.Reload(tt.next)
			switch {
			case tt.refused && !errors.Is(err, ErrTooManyBackends):
				t.Fatalf("reload: %v, want ErrTooManyBackends", err)
			case tt.refused && !strings.Contains(err.Error(), "datapath.max_backends"):
				t.Fatalf("reload error %q does not name datapath.max_backends", err)
			case tt.refused && c.Config() != tt.first:
				t.Fatal("refused reload replaced the running config")
			case !tt.refused && err != nil:
				t.Fatalf("reload: %v", err)
			}
			if err := c.reconcile(ctx); err != nil {
				t.Fatalf("reconcile after the reload: %v", err)
			}
		})
	}
}

// Only L4 backends take datapath ids: max_backends does not cap L7 ones.
func TestAddL7BackendNotCappedByMaxBackends(t *testing.T) {
	cfg, err := config.Parse([]byte(`
[health_check]
enabled = false
[datapath]
max_backends = 1
[[service]]
name = "web"
mode = "l7"
vip = "127.0.0.1"
port = 18080
  [[service.backend]]
  address = "127.0.0.2"
  port = 80
`), "l7.toml")
	if err != nil {
		t.Fatal(err)
	}
	c := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	for _, a := range []string{"127.0.0.3", "127.0.0.4"} {
		if _, err := c.AddBackend(AddRequest{Service: "web", Address: a, Port: 80}); err != nil {
			t.Fatalf("add %s: %v", a, err)
		}
	}
}

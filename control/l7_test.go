package control

import (
	"io"
	"log/slog"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/l7"
)

// TestL7ConfigsCarryEveryKey: each L7 key of a service reaches the L7 tier.
// The config sets every one to a value other than its default; a key the
// controller forgot to copy (or a new l7.ServiceConfig field nobody fills)
// fails here.
func TestL7ConfigsCarryEveryKey(t *testing.T) {
	cfg, err := config.Load("testdata/l7_every_key.toml")
	if err != nil {
		t.Fatal(err)
	}
	c := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	c.mu.Lock()
	got := c.l7Configs()
	c.mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("%d L7 services, want 1", len(got))
	}
	want := l7.ServiceConfig{
		Name:                  "every",
		Listen:                netip.MustParseAddrPort("127.0.0.1:8080"),
		Hosts:                 []string{"a.example", "*.b.example"},
		PathPrefix:            "/api/",
		Policy:                "least_connections",
		MaxInFlight:           7,
		MaglevSize:            251,
		ConnectTimeout:        time.Second,
		ResponseHeaderTimeout: 2 * time.Second,
		RequestTimeout:        3 * time.Second,
		RetryIdempotent:       false,
		LBEndpoints:           false,
		Sticky:                &l7.StickyConfig{Cookie: "pin", TTL: 2 * time.Minute},
		Passive:               l7.PassiveConfig{MaxFails: 3, BaseEjection: 4 * time.Second, MaxEjection: 40 * time.Second},
		Headers: l7.HeaderRules{
			RequestAdd: map[string]string{"X-Add": "1"}, RequestSet: map[string]string{"X-Set": "2"},
			RequestRemove: []string{"X-Remove"},
			ResponseAdd:   map[string]string{"X-Radd": "3"}, ResponseSet: map[string]string{"X-Rset": "4"},
			ResponseRemove: []string{"X-Rremove"},
			Forwarded:      true, XTimestamp: true,
			TrustedProxies: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")},
			ProxyHeader:    "Via-Lb", ProxyHeaderValue: "edge", ResponseTimeHeader: "X-Took",
		},
		Backends: []l7.BackendConfig{{
			ID: "every@127.0.0.1:1", Addr: netip.MustParseAddrPort("127.0.0.1:1"), Weight: 3, State: l7.StateUp,
		}},
	}
	if !reflect.DeepEqual(got[0], want) {
		t.Errorf("l7Configs:\n got %+v\nwant %+v", got[0], want)
	}
	// Every field of want is set (bools to their non-default false above):
	// a new field of l7.ServiceConfig must be added here and to l7Configs.
	v := reflect.ValueOf(want)
	for i := range v.NumField() {
		if f := v.Field(i); f.IsZero() && f.Kind() != reflect.Bool {
			t.Errorf("l7.ServiceConfig.%s is not covered by this test", v.Type().Field(i).Name)
		}
	}
}

package config

import (
	"errors"
	"github.com/xlb-dev/xlb/l7/h1"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestHealthCheckAndAdmin(t *testing.T) {
	cfg, err := Load("testdata/health.toml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	global := HealthCheck{
		Enabled: true, Type: CheckHTTP, Path: "/health", ExpectStatus: "200-299, 301",
		Interval: 1500 * time.Millisecond, Timeout: 500 * time.Millisecond,
		UnhealthyThreshold: 4, HealthyThreshold: 1, InitialState: StateDown, Port: 8081,
	}
	if cfg.HealthCheck != global {
		t.Errorf("global health check =\n%+v\nwant\n%+v", cfg.HealthCheck, global)
	}
	wantAdmin := Admin{Listen: "unix:/run/xlb/admin.sock", TokenFile: "/etc/xlb/admin.token", TokenEnv: "MY_TOKEN",
		DrainTimeout: 300 * time.Second}
	if cfg.Admin != wantAdmin {
		t.Errorf("admin = %+v, want %+v", cfg.Admin, wantAdmin)
	}

	// An explicit false and 0 override the global true and 8081; what the
	// service does not set comes from the global table.
	web := cfg.Services[0]
	wantWeb := global
	wantWeb.Enabled, wantWeb.Type, wantWeb.Port, wantWeb.Interval = false, CheckTCP, 0, 10*time.Second
	if web.HealthCheck != wantWeb {
		t.Errorf("web health check =\n%+v\nwant\n%+v", web.HealthCheck, wantWeb)
	}
	if web.Algorithm != "" || web.Backends[0].Port != 0 {
		t.Errorf("l4 service got algorithm %q, backend port %d", web.Algorithm, web.Backends[0].Port)
	}
	if got := web.BackendCheck(web.Backends[0]).Port; got != 9000 {
		t.Errorf("l4 backend with health_check_port: check port %d, want 9000", got)
	}
	if got := web.BackendCheck(web.Backends[1]).Port; got != 80 {
		t.Errorf("l4 backend: check port %d, want the service port 80", got)
	}

	api := cfg.Services[1]
	wantAPI := global
	wantAPI.Timeout, wantAPI.InitialState = time.Second, StateUp
	if api.HealthCheck != wantAPI {
		t.Errorf("api health check =\n%+v\nwant\n%+v", api.HealthCheck, wantAPI)
	}
	if api.VIP != netip.IPv4Unspecified() || api.Algorithm != AlgoLeastConnections {
		t.Errorf("api vip %s algorithm %q", api.VIP, api.Algorithm)
	}
	wantBackends := []Backend{
		{Address: netip.MustParseAddr("198.18.0.11"), Port: 3000, Weight: 1, HealthCheckPath: "/ready", Line: 47},
		{Address: netip.MustParseAddr("198.18.0.11"), Port: 3001, Weight: 1, Line: 52},
		{Address: netip.MustParseAddr("2001:db8:18::11"), Port: 8080, Weight: 1, Line: 56},
	}
	if !reflect.DeepEqual(api.Backends, wantBackends) {
		t.Errorf("api backends =\n%+v\nwant\n%+v", api.Backends, wantBackends)
	}
	bc := api.BackendCheck(api.Backends[0])
	if bc.Path != "/ready" || bc.Port != 8081 {
		t.Errorf("api backend 0 check: path %q port %d, want /ready 8081", bc.Path, bc.Port)
	}
	if api.HealthCheck.Path != "/health" {
		t.Errorf("BackendCheck changed the service's check")
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate of a parsed config: %v", err)
	}
}

func TestBackendCheckPortL7(t *testing.T) {
	s := Service{Port: 8080, Mode: ModeL7, HealthCheck: DefaultHealthCheck()}
	if got := s.BackendCheck(Backend{Port: 3001}).Port; got != 3001 {
		t.Errorf("l7 check port = %d, want the backend port 3001", got)
	}
	s.HealthCheck.Port = 9000
	if got := s.BackendCheck(Backend{Port: 3001}).Port; got != 9000 {
		t.Errorf("l7 check port = %d, want the service check port 9000", got)
	}
}

func TestHealthDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`
[[service]]
name = "web"
vip = "198.19.0.10"
port = 80
[[service.backend]]
address = "198.18.0.11"
`), "min.toml")
	if err != nil {
		t.Fatal(err)
	}
	def := HealthCheck{Enabled: true, Type: "http", Path: "/", ExpectStatus: "2xx", Interval: 5 * time.Second,
		Timeout: 2 * time.Second, UnhealthyThreshold: 3, HealthyThreshold: 2, InitialState: "up"}
	if cfg.HealthCheck != def || cfg.Services[0].HealthCheck != def || DefaultHealthCheck() != def {
		t.Errorf("health check defaults = %+v / %+v, want %+v", cfg.HealthCheck, cfg.Services[0].HealthCheck, def)
	}
	wantAdmin := Admin{Listen: "127.0.0.1:9090", TokenEnv: "XLB_ADMIN_TOKEN", DrainTimeout: 60 * time.Second}
	if cfg.Admin != wantAdmin {
		t.Errorf("admin defaults = %+v, want %+v", cfg.Admin, wantAdmin)
	}

	// listen = "" disables the listener and stays disabled.
	cfg, err = Parse([]byte("[admin]\nlisten = \"\"\ndrain_timeout = \"90s\"\n"), "admin.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Admin.Listen != "" || cfg.Admin.DrainTimeout != 90*time.Second || cfg.Admin.TokenEnv != DefaultAdminTokenEnv {
		t.Errorf("admin = %+v", cfg.Admin)
	}
}

// TestApplyDefaultsInCode: a Config built in code gets the same defaults as
// an empty file, and a service's check inherits the global one.
func TestApplyDefaultsInCode(t *testing.T) {
	empty, err := Parse(nil, "empty.toml")
	if err != nil {
		t.Fatal(err)
	}
	c := &Config{}
	c.ApplyDefaults()
	if !reflect.DeepEqual(c, empty) {
		t.Errorf("ApplyDefaults(Config{}) =\n%+v\nParse(\"\") =\n%+v", c, empty)
	}

	c = &Config{
		HealthCheck: HealthCheck{Type: CheckTCP, Interval: time.Second, Timeout: time.Second},
		Services: []Service{
			{Name: "a", VIP: netip.MustParseAddr("198.19.0.10"), Port: 80,
				Backends: []Backend{{Address: netip.MustParseAddr("198.18.0.11"), Weight: 1}}},
			{Name: "b", VIP: netip.MustParseAddr("198.19.0.10"), Port: 81, HealthCheck: HealthCheck{Enabled: true, HealthyThreshold: 5},
				Backends: []Backend{{Address: netip.MustParseAddr("198.18.0.11"), Weight: 1}}},
		},
	}
	c.ApplyDefaults()
	// A partly filled check keeps Enabled as given (false here).
	if h := c.HealthCheck; h.Enabled || h.Type != CheckTCP || h.Path != "/" || h.UnhealthyThreshold != 3 {
		t.Errorf("global = %+v", h)
	}
	if c.Services[0].HealthCheck != c.HealthCheck {
		t.Errorf("service without a check = %+v, want the global %+v", c.Services[0].HealthCheck, c.HealthCheck)
	}
	want := c.HealthCheck
	want.Enabled, want.HealthyThreshold = true, 5
	if c.Services[1].HealthCheck != want {
		t.Errorf("service with a partial check = %+v, want %+v", c.Services[1].HealthCheck, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	again := *c
	again.Services = append([]Service(nil), c.Services...)
	again.ApplyDefaults()
	if !reflect.DeepEqual(&again, c) {
		t.Error("ApplyDefaults is not idempotent")
	}

	// A service's bad value is reported under the service; one it shares
	// with the global table only under health_check.
	c.HealthCheck.Timeout = 3 * time.Second
	c.Services[1].HealthCheck.Timeout = 3 * time.Second
	c.Services[1].HealthCheck.Interval = 2 * time.Second
	c.Services[0].HealthCheck.Timeout = 3 * time.Second
	err = c.Validate()
	wantErr := "health_check.timeout: timeout 3s is longer than interval 1s: a check must end before the next one starts\n" +
		"service[1].health_check.timeout: timeout 3s is longer than interval 2s: a check must end before the next one starts"
	if err == nil || err.Error() != wantErr {
		t.Errorf("Validate = %v\nwant %s", err, wantErr)
	}
}

func TestDurationForms(t *testing.T) {
	for _, tt := range []struct {
		src  string
		want time.Duration
	}{
		{`interval = "1500ms"`, 1500 * time.Millisecond},
		{`interval = "5s"`, 5 * time.Second},
		{`interval = "1m30s"`, 90 * time.Second},
		{`interval_secs = 5`, 5 * time.Second},
		{`interval_secs = 1.5`, 1500 * time.Millisecond},
		{`interval_secs = 0.001`, time.Millisecond},
		{`interval_secs = 3600`, time.Hour},
	} {
		cfg, err := Parse([]byte("[health_check]\ntimeout = \"1ms\"\n"+tt.src+"\n"), "d.toml")
		if err != nil {
			t.Errorf("%s: %v", tt.src, err)
			continue
		}
		if cfg.HealthCheck.Interval != tt.want {
			t.Errorf("%s: interval %v, want %v", tt.src, cfg.HealthCheck.Interval, tt.want)
		}
	}
}

func TestExpectStatus(t *testing.T) {
	for _, tt := range []struct {
		spec string
		ok   []int
		bad  []int
	}{
		{"2xx", []int{200, 204, 299}, []int{199, 300, 404}},
		{"2XX", []int{250}, []int{300}},
		{"200", []int{200}, []int{201}},
		{"200,204", []int{200, 204}, []int{201, 203}},
		{"200-399", []int{200, 302, 399}, []int{199, 400}},
		{" 200 , 3xx,404-404 ", []int{200, 301, 404}, []int{201, 405}},
	} {
		h := HealthCheck{ExpectStatus: tt.spec}
		for _, c := range tt.ok {
			if !h.StatusExpected(c) {
				t.Errorf("%q: %d not expected", tt.spec, c)
			}
		}
		for _, c := range tt.bad {
			if h.StatusExpected(c) {
				t.Errorf("%q: %d expected", tt.spec, c)
			}
		}
	}
	for _, spec := range []string{"", " ", "2", "20", "2000", "2xxx", "x2x", "6xx", "0xx", "200,", ",200",
		"200-", "-200", "399-200", "099", "600", "abc", "2 00", "200-300-400", "+200"} {
		if _, err := parseExpectStatus(spec); err == nil {
			t.Errorf("parseExpectStatus(%q) accepted", spec)
		}
		if (HealthCheck{ExpectStatus: spec}).StatusExpected(200) {
			t.Errorf("invalid %q expects 200", spec)
		}
	}
}

func TestAdminListen(t *testing.T) {
	for s, ok := range map[string]bool{
		"127.0.0.1:9090": true, "[::1]:9090": true, "0.0.0.0:1": true, "unix:/run/xlb/admin.sock": true,
		"localhost:9090": false, "127.0.0.1": false, "127.0.0.1:0": false, ":9090": false,
		"unix:admin.sock": false, "unix:": false, "unix:/" + strings.Repeat("a", 107): false,
		"224.0.0.1:9090": false, "http://127.0.0.1:9090": false,
	} {
		if got := listenError(s) == ""; got != ok {
			t.Errorf("listen %q: accepted %v, want %v (%s)", s, got, ok, listenError(s))
		}
	}
}

// legacyText is the compatibility configuration exactly as issue 4 gives it;
// testdata/legacy.toml must hold this text.
const legacyText = `[loadbalancer]
listen_address = "0.0.0.0"
listen_port = 8080
algorithm = "round_robin"  # round_robin | least_connections | ip_hash

[health_check]
interval_secs = 5
timeout_secs = 2
unhealthy_threshold = 3
healthy_threshold = 2

[[backends]]
address = "127.0.0.1"
port = 3001
weight = 1
health_check_path = "/health"

[[backends]]
address = "127.0.0.1"
port = 3002
weight = 2
health_check_path = "/health"
`

func TestLegacyForm(t *testing.T) {
	data, err := os.ReadFile("testdata/legacy.toml")
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != legacyText {
		t.Fatalf("testdata/legacy.toml is not the compatibility config of issue 4:\n%s", data)
	}
	cfg, err := Parse(data, "legacy.toml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	check := DefaultHealthCheck() // the file's values are the defaults
	want := &Config{
		Daemon: Daemon{XDPMode: XDPAuto, BPFFSDir: DefaultBPFFSDir, MaglevTableSize: DefaultMaglevTableSize,
			LogFormat: "text", LogLevel: "info", ShutdownGrace: DefaultShutdownGrace, HeadTimeout: h1.DefaultHeadTimeout, IdleTimeout: h1.DefaultIdleTimeout, ClientTimeout: h1.DefaultClientTimeout, MaxRequestLine: h1.DefaultMaxRequestLine, MaxRequestHead: h1.DefaultMaxRequestHead, AccessLogFormat: DefaultAccessLogFormat},
		HealthCheck: check,
		Admin:       DefaultAdmin(),
		Datapath:    DefaultDatapath(),
		Services: []Service{withL7Defaults(Service{
			Name: "default", VIP: netip.MustParseAddr("0.0.0.0"), Port: 8080,
			Protocol: ProtoTCP, Mode: ModeL7, Algorithm: AlgoRoundRobin, HealthCheck: check, Line: 1,
			Backends: []Backend{
				{Address: netip.MustParseAddr("127.0.0.1"), Port: 3001, Weight: 1, HealthCheckPath: "/health", Line: 12},
				{Address: netip.MustParseAddr("127.0.0.1"), Port: 3002, Weight: 2, HealthCheckPath: "/health", Line: 18},
			},
		})},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Parse(legacy.toml) =\n%+v\nwant\n%+v", cfg, want)
	}
	s := cfg.Services[0]
	for i, port := range []uint16{3001, 3002} {
		bc := s.BackendCheck(s.Backends[i])
		if bc.Path != "/health" || bc.Port != port || bc.Interval != 5*time.Second || bc.Timeout != 2*time.Second {
			t.Errorf("backend %d check = %+v", i, bc)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

// TestLegacyExample parses the compatibility form documented in a comment
// block of examples/xlb.toml.
func TestLegacyExample(t *testing.T) {
	src, err := os.ReadFile("../examples/xlb.toml")
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "# --- begin compatibility form ---\n", "# --- end compatibility form ---\n"
	_, rest, ok1 := strings.Cut(string(src), begin)
	block, _, ok2 := strings.Cut(rest, end)
	if !ok1 || !ok2 {
		t.Fatalf("examples/xlb.toml has no %q ... %q block", begin, end)
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(block, "\n") {
		if line == "#\n" {
			b.WriteString("\n")
			continue
		}
		text, ok := strings.CutPrefix(line, "# ")
		if !ok && line != "" {
			t.Fatalf("line %q in the compatibility block is not commented with \"# \"", line)
		}
		b.WriteString(text)
	}
	cfg, err := Parse([]byte(b.String()), "compat.toml")
	if err != nil {
		t.Fatalf("the compatibility form in examples/xlb.toml: %v\n%s", err, b.String())
	}
	if len(cfg.Services) != 1 || cfg.Services[0].Mode != ModeL7 || cfg.Services[0].Name != LegacyServiceName {
		t.Errorf("compatibility form = %+v", cfg.Services)
	}
}

func TestLegacyErrorsMatchErrInvalid(t *testing.T) {
	_, err := Parse([]byte("[[backends]]\naddress = \"127.0.0.1\"\n"), "x.toml")
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v", err)
	}
	want := "x.toml:1: loadbalancer.listen_port: required: [[backends]] belongs to the compatibility form, which needs a [loadbalancer] table with listen_port (or write [[service]] with [[service.backend]])"
	if err.Error() != want {
		t.Errorf("err =\n%v\nwant\n%s", err, want)
	}
}

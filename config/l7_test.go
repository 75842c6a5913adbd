package config

import (
	"github.com/xlb-dev/xlb/l7/h1"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestL7Settings(t *testing.T) {
	cfg, err := Load("testdata/l7.toml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.Daemon.ShutdownGrace != 12500*time.Millisecond {
		t.Errorf("shutdown_grace = %v, want 12.5s", cfg.Daemon.ShutdownGrace)
	}
	if len(cfg.Services) != 6 {
		t.Fatalf("%d services, want 6", len(cfg.Services))
	}

	api := cfg.Services[0]
	want := Service{
		Name: "api", VIP: netip.MustParseAddr("198.19.0.10"), Port: 8080, Protocol: ProtoTCP, Mode: ModeL7,
		Algorithm:             AlgoLeastConnections,
		Hosts:                 []string{"api.example.com", "*.example.org", "2001:db8::1", "198.19.0.10"},
		PathPrefix:            "/api",
		AddVIP:                true,
		LBEndpoints:           false,
		ConnectTimeout:        1500 * time.Millisecond,
		ResponseHeaderTimeout: 10 * time.Second,
		RequestTimeout:        0,
		RetryIdempotent:       false,
		MaxInFlight:           100,
		Sticky:                &Sticky{Cookie: "srv", TTL: 2 * time.Hour},
		PassiveHealth:         PassiveHealth{MaxFails: 0, Ejection: time.Second, MaxEjection: time.Minute},
		Headers: Headers{
			RequestAdd:     map[string]string{"X-Env": "prod", "X-Tags": "a\tb"},
			RequestSet:     map[string]string{"X-Team": "core", "Host": "backend.internal"},
			RequestRemove:  []string{"X-Debug", "Cookie2"},
			ResponseSet:    map[string]string{"Cache-Control": "no-store"},
			ResponseRemove: []string{"Server", "X-Powered-By"},
			Forwarded:      true,
			XTimestamp:     true,
			TrustedProxies: []netip.Prefix{
				netip.MustParsePrefix("198.18.0.0/24"), netip.MustParsePrefix("10.1.2.3/32"),
				netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8:18::/48"),
			},
			ProxyHeader:        "",
			ProxyHeaderValue:   "edge-1",
			ResponseTimeHeader: "X-Took",
		},
		HealthCheck: DefaultHealthCheck(),
		Backends:    []Backend{{Address: netip.MustParseAddr("198.18.0.11"), Port: 3000, Weight: 1, Line: 46}},
		Line:        7,
	}
	if !reflect.DeepEqual(api, want) {
		t.Errorf("api =\n%+v\nwant\n%+v", api, want)
	}

	// Defaults, with an empty [service.sticky] turning stickiness on.
	web := cfg.Services[1]
	wantWeb := withL7Defaults(Service{})
	wantWeb.LBEndpoints = false
	wantWeb.Sticky = &Sticky{Cookie: DefaultStickyCookie, TTL: DefaultStickyTTL}
	if web.Hosts != nil || web.PathPrefix != "" || web.AddVIP || web.LBEndpoints ||
		web.ConnectTimeout != 5*time.Second || web.ResponseHeaderTimeout != 30*time.Second ||
		web.RequestTimeout != 30*time.Second || !web.RetryIdempotent || web.MaxInFlight != 0 ||
		!reflect.DeepEqual(web.Sticky, wantWeb.Sticky) || !reflect.DeepEqual(web.Headers, wantWeb.Headers) ||
		web.PassiveHealth != (PassiveHealth{MaxFails: 5, Ejection: 10 * time.Second, MaxEjection: 5 * time.Minute}) {
		t.Errorf("web = %+v", web)
	}
	if h := DefaultHeaders(); h.ProxyHeader != "X-Proxy" || h.ProxyHeaderValue != "xlb" || h.ResponseTimeHeader != "X-Response-Time" {
		t.Errorf("DefaultHeaders() = %+v", h)
	}

	// L4 services keep every L7 setting zero.
	for _, s := range cfg.Services[4:] {
		if s.Mode != ModeL4 || !s.l7Zero() {
			t.Errorf("l4 service %s has L7 settings: %+v", s.Name, s)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate of a parsed config: %v", err)
	}
}

func TestL7MinimalAndLegacyDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`
[[service]]
name = "api"
vip = "198.19.0.10"
port = 80
mode = "l7"
[[service.backend]]
address = "198.18.0.11"
`), "min.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := withL7Defaults(Service{})
	got := cfg.Services[0]
	if !reflect.DeepEqual(l7Part(got), l7Part(want)) {
		t.Errorf("minimal l7 service =\n%+v\nwant the L7 defaults\n%+v", l7Part(got), l7Part(want))
	}
	if cfg.Daemon.ShutdownGrace != DefaultShutdownGrace {
		t.Errorf("shutdown_grace = %v", cfg.Daemon.ShutdownGrace)
	}

	cfg, err = Parse([]byte(legacyText), "legacy.toml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Services[0]; !reflect.DeepEqual(l7Part(got), l7Part(want)) {
		t.Errorf("legacy service =\n%+v\nwant the L7 defaults", l7Part(got))
	}
}

// l7Part is s with only its L7 settings.
func l7Part(s Service) Service {
	return Service{
		Hosts: s.Hosts, PathPrefix: s.PathPrefix, AddVIP: s.AddVIP, LBEndpoints: s.LBEndpoints,
		ConnectTimeout: s.ConnectTimeout, ResponseHeaderTimeout: s.ResponseHeaderTimeout, RequestTimeout: s.RequestTimeout,
		RetryIdempotent: s.RetryIdempotent, MaxInFlight: s.MaxInFlight, Sticky: s.Sticky,
		PassiveHealth: s.PassiveHealth, Headers: s.Headers,
	}
}

// TestL7ApplyDefaultsInCode: an L7 service built in code with no L7
// settings gets them all; a partly filled one only those whose zero means
// nothing.
func TestL7ApplyDefaultsInCode(t *testing.T) {
	svc := func() Service {
		return Service{Name: "api", VIP: netip.MustParseAddr("198.19.0.10"), Port: 80, Mode: ModeL7,
			Backends: []Backend{{Address: netip.MustParseAddr("198.18.0.11"), Weight: 1}}}
	}
	partial := svc()
	partial.Name, partial.Port = "api2", 81
	partial.RequestTimeout = 10 * time.Second
	partial.Hosts = []string{"API.example.com", "[2001:DB8::1]"}
	partial.Sticky = &Sticky{}
	partial.Headers.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}
	c := &Config{Services: []Service{svc(), partial}}
	c.ApplyDefaults()

	if got, want := l7Part(c.Services[0]), l7Part(withL7Defaults(Service{})); !reflect.DeepEqual(got, want) {
		t.Errorf("zero L7 settings =\n%+v\nwant\n%+v", got, want)
	}
	p := c.Services[1]
	if p.ConnectTimeout != DefaultConnectTimeout || p.ResponseHeaderTimeout != DefaultResponseHeaderTimeout ||
		p.RequestTimeout != 10*time.Second || p.LBEndpoints || p.RetryIdempotent ||
		p.PassiveHealth != (PassiveHealth{MaxFails: 0, Ejection: DefaultEjection, MaxEjection: DefaultMaxEjection}) ||
		*p.Sticky != (Sticky{Cookie: DefaultStickyCookie, TTL: DefaultStickyTTL}) ||
		p.Headers.ProxyHeader != "" || p.Headers.ProxyHeaderValue != DefaultProxyHeaderValue || p.Headers.ResponseTimeHeader != "" {
		t.Errorf("partly filled L7 settings = %+v", l7Part(p))
	}
	if !reflect.DeepEqual(p.Hosts, []string{"api.example.com", "2001:db8::1"}) {
		t.Errorf("hosts = %q", p.Hosts)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}; !reflect.DeepEqual(p.Headers.TrustedProxies, want) {
		t.Errorf("trusted proxies = %v, want %v", p.Headers.TrustedProxies, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	before := l7Part(c.Services[1])
	c.ApplyDefaults()
	if !reflect.DeepEqual(l7Part(c.Services[1]), before) {
		t.Error("ApplyDefaults is not idempotent on L7 settings")
	}

	// SetL7Defaults overwrites.
	p.SetL7Defaults()
	if !reflect.DeepEqual(l7Part(p), l7Part(withL7Defaults(Service{}))) {
		t.Errorf("SetL7Defaults = %+v", l7Part(p))
	}

	// An L4 service built in code with L7 settings, and an L7 one without
	// defaults applied.
	c = &Config{Services: []Service{svc(), svc()}}
	c.Services[0].Mode = ModeL4
	c.Services[0].Name, c.Services[0].Port = "l4", 81
	c.Services[0].MaxInFlight = 3
	c.Services[0].Headers.Forwarded = true
	c.Services[1].Hosts = []string{"a.example.com"}
	c.Services[1].Algorithm = AlgoRandom
	c.Daemon.ShutdownGrace = time.Second
	c.ApplyDefaults()
	c.Services[1].ConnectTimeout = -time.Second
	err := c.Validate()
	wantErr := []string{
		"service[0].max_in_flight: applies to l7 services only",
		"service[0].headers: applies to l7 services only",
		"service[1].connect_timeout: must be at least 1ms, got -1s",
	}
	if err == nil {
		t.Fatal("Validate succeeded")
	}
	for _, w := range wantErr {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Validate =\n%v\nwant a line %q", err, w)
		}
	}
}

func TestL7SharedListener(t *testing.T) {
	base := `
[[service]]
name = "a"
vip = "198.19.0.10"
port = 80
mode = "l7"
%s
[[service.backend]]
address = "198.18.0.11"

[[service]]
name = "b"
vip = "198.19.0.10"
port = 80
mode = "l7"
%s
[[service.backend]]
address = "198.18.0.12"
`
	for _, tt := range []struct {
		a, b string
		err  string // "" if valid
	}{
		{"", `hosts = ["x.example.com"]`, ""},
		{"", `path_prefix = "/api"`, ""},
		{`path_prefix = "/api"`, `path_prefix = "/api/"`, ""},
		{`hosts = ["x.example.com"]`, `hosts = ["*.example.com"]`, ""},
		{`hosts = ["x.example.com"]`, `hosts = ["x.example.com"]` + "\n" + `path_prefix = "/a"`, ""},
		{"", "", "service[1].vip: the default route"},
		{`hosts = ["X.example.com"]`, `hosts = ["y.example.com", "x.EXAMPLE.com"]`, `service[1].hosts[1]: host "x.example.com" (any path)`},
		{`path_prefix = "/a"`, `path_prefix = "/a"`, `service[1].path_prefix: path_prefix "/a" (any host)`},
		{"", `lb_endpoints = false` + "\n" + `hosts = ["b.example.com"]`, "service[1].lb_endpoints: lb_endpoints = false differs"},
		{"mode = \"l4\"", "", "duplicate key"},
	} {
		src := strings.Replace(strings.Replace(base, "%s", tt.a, 1), "%s", tt.b, 1)
		if strings.HasPrefix(tt.a, "mode") {
			src = strings.Replace(src, "mode = \"l7\"\nmode = \"l4\"", "mode = \"l4\"", 1)
			tt.err = "service[1].vip: 198.19.0.10:80/tcp is already used by service[0]"
		}
		_, err := Parse([]byte(src), "shared.toml")
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("a: %s, b: %s: %v", tt.a, tt.b, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("a: %s, b: %s: error %v, want %q", tt.a, tt.b, err, tt.err)
		}
	}
}

func TestHostError(t *testing.T) {
	for h, ok := range map[string]bool{
		"api.example.com": true, "API.Example.COM": true, "*.example.org": true, "localhost": true,
		"198.19.0.10": true, "2001:db8::1": true, "[2001:db8::1]": true, "my_host.internal": true, "xn--bcher-kva.de": true,
		"": false, "*": false, "*.": false, "a.*.b": false, "**.a": false, "http://a": false, "a/b": false,
		"a?b": false, "a#b": false, "a:80": false, "[::1]:80": false, "a..b": false, "a.": false, ".a": false,
		"-a.b": false, "a-.b": false, "a b": false, "[198.19.0.10]": false, "fe80::1%eth0": false, "bücher.de": false,
		strings.Repeat("a", 64) + ".com": false, strings.Repeat("a.", 127) + "ab": false,
	} {
		if msg := hostError(h); (msg == "") != ok {
			t.Errorf("hostError(%q) = %q, want ok %v", h, msg, ok)
		}
	}
	for in, want := range map[string]string{
		"API.Example.com": "api.example.com", "[2001:DB8:0::1]": "2001:db8::1", "2001:DB8::1": "2001:db8::1",
		"*.Example.ORG": "*.example.org", "Bad Host": "Bad Host",
	} {
		if got := canonicalHost(in); got != want {
			t.Errorf("canonicalHost(%q) = %q, want %q", in, got, want)
		}
		if again := canonicalHost(want); again != want {
			t.Errorf("canonicalHost is not idempotent on %q: %q", want, again)
		}
	}
}

func TestHeaderSyntax(t *testing.T) {
	for s, ok := range map[string]bool{"X-Env": true, "x_y.z~!": true, "": false, "X Env": false, "X:Env": false, "Ä": false} {
		if isToken(s) != ok {
			t.Errorf("isToken(%q) = %v", s, !ok)
		}
	}
	for s, ok := range map[string]bool{"": true, "a\tb": true, "ü": true, "a\rb": false, "a\nb": false, "a\x00": false, "\x7f": false} {
		if validHeaderValue(s) != ok {
			t.Errorf("validHeaderValue(%q) = %v", s, !ok)
		}
	}
	for _, h := range []string{"Connection", "transfer-encoding", "UPGRADE", "Content-Length", "TE"} {
		if managedHeader(h) == "" {
			t.Errorf("%s can be added", h)
		}
	}
	for _, h := range []string{"Host", "X-Forwarded-For", "Cookie"} {
		if managedHeader(h) != "" {
			t.Errorf("%s cannot be added", h)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	for in, want := range map[string]string{
		"198.18.0.0/24": "198.18.0.0/24", "10.1.2.3": "10.1.2.3/32", "2001:db8::1": "2001:db8::1/128",
		"::ffff:10.1.2.3": "10.1.2.3/32", "::ffff:10.0.0.0/104": "10.0.0.0/8", "2001:db8::/32": "2001:db8::/32",
	} {
		p, msg := parsePrefix(in)
		if msg != "" || p.String() != want {
			t.Errorf("parsePrefix(%q) = %v, %q; want %s", in, p, msg, want)
		}
	}
	for _, in := range []string{"", "x", "10.0.0.0/33", "10.0.0.0/", "fe80::1%eth0", "10.0.0.1:80"} {
		if _, msg := parsePrefix(in); msg == "" {
			t.Errorf("parsePrefix(%q) accepted", in)
		}
	}
}

// The client-connection limits: parsed, defaulted from package h1, and a
// request line longer than the head refused with its field and line.
func TestClientLimits(t *testing.T) {
	cfg, err := Parse([]byte("[daemon]\nhead_timeout = \"2s\"\nclient_timeout = \"5s\"\nmax_request_head = 4096\nmax_request_line = 1024\n"), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Daemon
	if d.HeadTimeout != 2*time.Second || d.ClientTimeout != 5*time.Second || d.IdleTimeout != h1.DefaultIdleTimeout ||
		d.MaxRequestHead != 4096 || d.MaxRequestLine != 1024 {
		t.Errorf("%+v", d)
	}
	_, err = Parse([]byte("[daemon]\nmax_request_head = 4096\nmax_request_line = 8192\n"), "x.toml")
	if err == nil || !strings.Contains(err.Error(), "x.toml:3: daemon.max_request_line") {
		t.Errorf("line over head: %v", err)
	}
}

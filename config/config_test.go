package config

import (
	"errors"
	"flag"
	"github.com/xlb-dev/xlb/l7/h1"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/bad/*.golden from the current output")

func mustMAC(s string) net.HardwareAddr {
	hw, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return hw
}

// withL7Defaults returns s with the default L7 settings.
func withL7Defaults(s Service) Service {
	s.SetL7Defaults()
	return s
}

func TestParseValid(t *testing.T) {
	cfg, err := Load("testdata/valid.toml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := &Config{
		Daemon: Daemon{
			Interface:       "veth-lb",
			XDPMode:         XDPNative,
			BPFFSDir:        "/sys/fs/bpf/xlb-test",
			MaglevTableSize: 251,
			LogFormat:       "json",
			LogLevel:        "debug",
			ShutdownGrace:   DefaultShutdownGrace, HeadTimeout: h1.DefaultHeadTimeout, IdleTimeout: h1.DefaultIdleTimeout, ClientTimeout: h1.DefaultClientTimeout, MaxRequestLine: h1.DefaultMaxRequestLine, MaxRequestHead: h1.DefaultMaxRequestHead, AccessLogFormat: DefaultAccessLogFormat,
		},
		HealthCheck: DefaultHealthCheck(),
		Admin:       DefaultAdmin(),
		Datapath:    DefaultDatapath(),
		Services: []Service{
			{
				Name: "web", VIP: netip.MustParseAddr("198.19.0.10"), Port: 80,
				Protocol: ProtoTCP, Mode: ModeL4, Hash: HashIP, Forwarding: ForwardDSR, Line: 12,
				HealthCheck: DefaultHealthCheck(),
				Backends: []Backend{
					{Address: netip.MustParseAddr("198.18.0.11"), Weight: 1, MAC: mustMAC("02:00:00:00:00:11"), Line: 21},
					{Address: netip.MustParseAddr("198.18.0.12"), Weight: 2, Line: 26},
					{Address: netip.MustParseAddr("198.18.0.13"), Weight: 0, Line: 30},
				},
			},
			{
				Name: "dns6", VIP: netip.MustParseAddr("2001:db8:19::10"), Port: 53,
				Protocol: ProtoUDP, Mode: ModeL4, Hash: HashFlow, Forwarding: ForwardDSR, Line: 34,
				HealthCheck: DefaultHealthCheck(),
				Backends: []Backend{
					{Address: netip.MustParseAddr("2001:db8:18::11"), Weight: 1, Line: 41},
					{Address: netip.MustParseAddr("2001:db8:18::12"), Weight: 1, MAC: mustMAC("02:00:00:00:00:12"), Line: 44},
				},
			},
			withL7Defaults(Service{
				Name: "api.v1", VIP: netip.MustParseAddr("198.19.0.10"), Port: 8080,
				Protocol: ProtoTCP, Mode: ModeL7, Algorithm: AlgoRoundRobin, Line: 48,
				HealthCheck: DefaultHealthCheck(),
				Backends: []Backend{
					{Address: netip.MustParseAddr("198.18.0.11"), Port: 8080, Weight: 3, Line: 54},
					{Address: netip.MustParseAddr("198.18.0.12"), Port: 8080, Weight: 1, Line: 55},
				},
			}),
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Load(valid.toml) =\n%+v\nwant\n%+v", cfg, want)
	}
	if got := cfg.Services[2].Protocol.Number(); got != 6 {
		t.Errorf("tcp Number() = %d, want 6", got)
	}
	if got := cfg.Services[1].Protocol.Number(); got != 17 {
		t.Errorf("udp Number() = %d, want 17", got)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate of a parsed config: %v", err)
	}
}

func TestParseDefaults(t *testing.T) {
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
	wantDaemon := Daemon{XDPMode: XDPAuto, BPFFSDir: DefaultBPFFSDir, MaglevTableSize: DefaultMaglevTableSize,
		LogFormat: "text", LogLevel: "info", ShutdownGrace: 30 * time.Second, HeadTimeout: h1.DefaultHeadTimeout, IdleTimeout: h1.DefaultIdleTimeout, ClientTimeout: h1.DefaultClientTimeout, MaxRequestLine: h1.DefaultMaxRequestLine, MaxRequestHead: h1.DefaultMaxRequestHead, AccessLogFormat: DefaultAccessLogFormat}
	if cfg.Daemon != wantDaemon {
		t.Errorf("daemon defaults = %+v, want %+v", cfg.Daemon, wantDaemon)
	}
	s := cfg.Services[0]
	if s.Protocol != ProtoTCP || s.Mode != ModeL4 || s.Hash != HashIP || s.Forwarding != ForwardDSR {
		t.Errorf("service defaults = %s %s %s %s", s.Protocol, s.Mode, s.Hash, s.Forwarding)
	}
	if b := s.Backends[0]; b.Weight != DefaultWeight || b.MAC != nil {
		t.Errorf("backend defaults = weight %d, mac %v", b.Weight, b.MAC)
	}
}

func TestParseEmpty(t *testing.T) {
	cfg, err := Parse(nil, "empty.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Services) != 0 || cfg.Daemon.MaglevTableSize != DefaultMaglevTableSize {
		t.Errorf("empty config = %+v", cfg)
	}
}

func TestExampleConfig(t *testing.T) {
	cfg, err := Load("../examples/xlb.toml")
	if err != nil {
		t.Fatalf("examples/xlb.toml: %v", err)
	}
	if len(cfg.Services) != 5 {
		t.Errorf("examples/xlb.toml has %d services, want 5", len(cfg.Services))
	}
	// The example documents every key, so it must set every one of them.
	src, err := os.ReadFile("../examples/xlb.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{
		"interface", "xdp_mode", "bpffs_dir", "maglev_table_size", "log_format", "log_level",
		"name", "vip", "port", "protocol", "mode", "hash", "forwarding", "ipip_source_prefix", "nat_source",
		"address", "weight", "mac",
		"enabled", "type", "path", "expect_status", "interval", "interval_secs", "timeout", "timeout_secs",
		"unhealthy_threshold", "healthy_threshold", "initial_state", "check_via_vip",
		"listen", "token_file", "token_env", "drain_timeout",
		"algorithm", "health_check_path", "health_check_port",
		"shutdown_grace", "threads", "head_timeout", "idle_timeout", "client_timeout", "max_request_line", "max_request_head", "access_log", "access_log_format",
		"steer_local",
		"conntrack_size", "max_backends", "tcp_syn_timeout", "tcp_established_timeout", "tcp_closing_timeout", "udp_timeout", "nat_port_range",
		"hosts", "path_prefix", "add_vip", "lb_endpoints", "connect_timeout", "response_header_timeout",
		"request_timeout", "retry_idempotent", "max_in_flight",
		"cookie", "ttl", "max_fails", "ejection", "max_ejection",
		"request_add", "request_set", "request_remove", "response_add", "response_set", "response_remove",
		"forwarded", "x_timestamp", "trusted_proxies", "proxy_header", "proxy_header_value", "response_time_header",
		"local_asn", "router_id", "listen_port", "hold_time", "next_hop", "communities", "asn", "password",
	} {
		if !strings.Contains(string(src), "\n"+key+" = ") && !strings.Contains(string(src), "  "+key+" = ") {
			t.Errorf("examples/xlb.toml does not show key %q", key)
		}
	}
	// Only one form of a duration can be set in one table, so the other may
	// be shown in a comment; so is the compatibility form (TestLegacyExample
	// parses it).
	for _, key := range []string{"drain_timeout_secs", "listen_address", "listen_port",
		"shutdown_grace_secs", "connect_timeout_secs", "udp_timeout_secs"} {
		if !strings.Contains(string(src), "# "+key+" = ") {
			t.Errorf("examples/xlb.toml does not show key %q", key)
		}
	}
}

// TestBadConfigs parses every testdata/bad/*.toml and compares the error text
// with the .golden file next to it. Run with -update to rewrite them.
func TestBadConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata/bad/*.toml")
	}
	for _, file := range files {
		name := filepath.Base(file)
		t.Run(strings.TrimSuffix(name, ".toml"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := Parse(data, name)
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", cfg)
			}
			if cfg != nil {
				t.Errorf("Parse returned a config along with an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not match ErrInvalid: %v", err)
			}
			var one *Error
			if !errors.As(err, &one) || one.File != name {
				t.Errorf("errors.As(*Error) = %v, file %q", one, name)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(file, ".toml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if got != string(want) {
				t.Errorf("errors differ from %s\ngot:\n%swant:\n%s", golden, got, want)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/does-not-exist.toml")
	if err == nil || errors.Is(err, ErrInvalid) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want a not-exist error that is not ErrInvalid", err)
	}
}

func TestErrorFormat(t *testing.T) {
	tests := []struct {
		err  Error
		want string
	}{
		{Error{File: "x.toml", Line: 3, Field: "service[0].port", Msg: "required"}, "x.toml:3: service[0].port: required"},
		{Error{File: "x.toml", Line: 3, Msg: "syntax error: boom"}, "x.toml:3: syntax error: boom"},
		{Error{File: "x.toml", Field: "daemon.log_level", Msg: "bad"}, "x.toml: daemon.log_level: bad"},
		{Error{Line: 7, Field: "f", Msg: "bad"}, "line 7: f: bad"},
		{Error{Field: "f", Msg: "bad"}, "f: bad"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
		if !errors.Is(&tt.err, ErrInvalid) {
			t.Errorf("%q does not match ErrInvalid", tt.want)
		}
	}
	errs := Errors{&Error{Field: "a", Msg: "x"}, &Error{Field: "b", Msg: "y"}}
	if got := errs.Error(); got != "a: x\nb: y" {
		t.Errorf("Errors.Error() = %q", got)
	}
	if !errors.Is(errs, ErrInvalid) {
		t.Error("Errors does not match ErrInvalid")
	}
}

// TestValidateInCode covers a Config built without a file: lines come from
// the Line fields, or are absent.
func TestValidateInCode(t *testing.T) {
	cfg := &Config{Services: []Service{{
		Name: "web", VIP: netip.MustParseAddr("198.19.0.10"), Port: 80, Line: 4,
		Backends: []Backend{
			{Address: netip.MustParseAddr("198.18.0.11"), Weight: 1},
			{Address: netip.MustParseAddr("2001:db8:18::11"), Weight: 1, Line: 9},
		},
	}}}
	if err := cfg.Validate(); err == nil {
		t.Error("Validate without defaults succeeded, want invalid enum errors")
	}
	cfg.ApplyDefaults()
	err := cfg.Validate()
	want := "line 9: service[0].backend[1].address: IPv6 address 2001:db8:18::11 in an IPv4 service (vip 198.19.0.10)"
	if err == nil || err.Error() != want {
		t.Errorf("Validate = %v, want %q", err, want)
	}
	cfg.Services[0].Backends[1].Address = netip.MustParseAddr("198.18.0.12")
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate of a fixed config: %v", err)
	}
}

func TestKeyLines(t *testing.T) {
	src := `# comment [[service]]
[daemon]   # trailing
interface = "eth0"
"quoted key" = 1
a.b . c = """
x = 1
[[not a header]]
"""
lit = '''
'''
dt = 1979-05-27 07:32:00 # date with a space

[[service]]
name = "s0"
[[service.backend]]
address = "a"
[[service.backend]]
address = "b"
[service.extra]
k = 'v'
[[service]]
name = "s1"
backend = [
  { address = "c", weight = 1 },   # comment ] }
  {address="d"},
]
[[service]]
[[ service . backend ]]
address = "e"
arr = [[1, 2], [3,
  4]]
`
	want := map[string]int{
		"daemon":                        2,
		"daemon.interface":              3,
		`daemon."quoted key"`:           4,
		"daemon.a":                      5,
		"daemon.a.b.c":                  5,
		"daemon.lit":                    9,
		"daemon.dt":                     11,
		"service":                       13,
		"service[0]":                    13,
		"service[0].name":               14,
		"service[0].backend[0]":         15,
		"service[0].backend[0].address": 16,
		"service[0].backend[1]":         17,
		"service[0].backend[1].address": 18,
		"service[0].extra":              19,
		"service[0].extra.k":            20,
		"service[1]":                    21,
		"service[1].name":               22,
		"service[1].backend":            23,
		"service[1].backend[0]":         24,
		"service[1].backend[0].weight":  24,
		"service[1].backend[1].address": 25,
		"service[2]":                    27,
		"service[2].backend[0]":         28,
		"service[2].backend[0].address": 29,
		"service[2].backend[0].arr[1]":  30,
	}
	got := scanKeyLines([]byte(src))
	for path, line := range want {
		if got[path] != line {
			t.Errorf("line of %s = %d, want %d", path, got[path], line)
		}
	}
	for path := range got {
		if strings.Contains(path, "not a header") || strings.Contains(path, "x") && !strings.Contains(path, "extra") {
			t.Errorf("scanner took string content for a key: %s", path)
		}
	}
}

func TestClosest(t *testing.T) {
	known := []string{"address", "weight", "mac"}
	for in, want := range map[string]string{"adress": "address", "wieght": "weight", "MAC": "mac", "port": "", "x": ""} {
		if got := closest(in, known); got != want {
			t.Errorf("closest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIsPrime(t *testing.T) {
	for n, want := range map[uint32]bool{0: false, 1: false, 2: true, 4: false, 251: true, 65536: false,
		DefaultMaglevTableSize: true, MaxMaglevTableSize: true, 4294967291: true} {
		if got := isPrime(n); got != want {
			t.Errorf("isPrime(%d) = %v", n, got)
		}
	}
	// MaxMaglevTableSize is the largest prime below 2^20.
	if p := nextPrime(MaxMaglevTableSize); p < 1<<20 {
		t.Errorf("prime %d between MaxMaglevTableSize and 2^20", p)
	}
}

func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/bad/*.toml")
	seeds = append(seeds, "testdata/valid.toml", "testdata/health.toml", "testdata/legacy.toml", "testdata/l7.toml", "../examples/xlb.toml")
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, "fuzz.toml")
		if err != nil {
			if cfg != nil {
				t.Fatal("config returned with an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not a non-empty Errors: %#v", err)
			}
			nlines := strings.Count(string(data), "\n") + 1
			for _, e := range errs {
				if e.Line < 0 || e.Line > nlines {
					t.Fatalf("line %d outside the %d-line input: %v", e.Line, nlines, e)
				}
			}
			return
		}
		// What Parse accepts is valid and already defaulted.
		if err := cfg.Validate(); err != nil {
			t.Fatalf("parsed config fails Validate: %v", err)
		}
		again := *cfg
		again.ApplyDefaults()
		if !reflect.DeepEqual(&again, cfg) {
			t.Fatal("ApplyDefaults changed a parsed config")
		}
	})
}

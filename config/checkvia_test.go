package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// Services of the check_via_vip cases, each line numbered as written.
const (
	viaL4 = `
[[service]]
name = "web"
vip = "198.19.0.10"
port = 80
[[service.backend]]
address = "198.18.0.11"
`
	viaL7 = `
[[service]]
name = "api"
vip = "198.19.0.10"
port = 8080
mode = "l7"
[[service.backend]]
address = "198.18.0.11"
`
)

func TestCheckViaVIP(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []bool // CheckViaVIP of each service
		err  string // the whole error, when the config is refused
	}{
		{name: "default off", src: viaL4 + viaL7, want: []bool{false, false}},
		{name: "global, l4 dsr only", src: "[health_check]\ncheck_via_vip = true\n" + viaL4, want: []bool{true}},
		{name: "global off, one service on", src: "[health_check]\ncheck_via_vip = false\n" + viaL4 +
			"[service.health_check]\ncheck_via_vip = true\n" + strings.NewReplacer(`"web"`, `"web2"`, "80", "81").Replace(viaL4)[1:],
			want: []bool{true, false}},
		{name: "explicit dsr", src: strings.Replace(viaL4, "port = 80\n", "port = 80\nforwarding = \"dsr\"\n", 1) +
			"[service.health_check]\ncheck_via_vip = true\n", want: []bool{true}},
		{name: "global on, l7 service opts out", src: "[health_check]\ncheck_via_vip = true\n" + viaL4 + viaL7 +
			"[service.health_check]\ncheck_via_vip = false\n", want: []bool{true, false}},
		{name: "checks disabled: the key is still valid", src: viaL4 +
			"[service.health_check]\nenabled = false\ncheck_via_vip = true\n", want: []bool{true}},
		{name: "vip shared with an l7 service that does not add it", src: "[health_check]\ncheck_via_vip = true\n" +
			viaL4 + strings.Replace(viaL7, "mode = \"l7\"\n", "mode = \"l7\"\nadd_vip = false\n", 1) +
			"[service.health_check]\ncheck_via_vip = false\n", want: []bool{true, false}},

		{name: "not a boolean", src: viaL4 + "[service.health_check]\ncheck_via_vip = \"yes\"\n",
			err: `x.toml:9: service[0].health_check.check_via_vip: must be true or false, got string "yes"`},
		{name: "on an l7 service", src: viaL7 + "[service.health_check]\ncheck_via_vip = true\n",
			err: `x.toml:10: service[0].health_check.check_via_vip: applies to l4 services with forwarding = "dsr" only, and this service is l7`},
		{name: "global, inherited by an l7 service", src: "[health_check]\ncheck_via_vip = true\n" + viaL4 + viaL7,
			err: `x.toml:2: health_check.check_via_vip: applies to l4 services with forwarding = "dsr" only, ` +
				`and service[1] "api" (line 11) is l7: set check_via_vip = false in its [service.health_check], or set the key per service`},
		{name: "vip on this host's lo", src: viaL4 + "[service.health_check]\ncheck_via_vip = true\n" +
			strings.Replace(viaL7, "mode = \"l7\"\n", "mode = \"l7\"\nadd_vip = true\n", 1),
			err: `x.toml:9: service[0].health_check.check_via_vip: the vip 198.19.0.10 of this service is also on this host's lo ` +
				`(service[1] "api" (line 11) has add_vip = true): checks through it would never leave the host`},
		{name: "global, vip on this host's lo", src: "[health_check]\ncheck_via_vip = true\n" + viaL4 +
			strings.Replace(viaL7, "mode = \"l7\"\n", "mode = \"l7\"\nadd_vip = true\n", 1) + "[service.health_check]\ncheck_via_vip = false\n",
			err: `x.toml:2: health_check.check_via_vip: the vip 198.19.0.10 of service[0] "web" (line 4) is also on this host's lo ` +
				`(service[1] "api" (line 11) has add_vip = true): checks through it would never leave the host`},
		// There [health_check] is the one service's own.
		{name: "compatibility form", src: "[health_check]\ncheck_via_vip = true\n" +
			"[loadbalancer]\nlisten_address = \"127.0.0.1\"\nlisten_port = 8080\n[[backends]]\naddress = \"127.0.0.1\"\nport = 3000\n",
			err: `x.toml:2: health_check.check_via_vip: applies to l4 services with forwarding = "dsr" only, and this service is l7`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.src), "x.toml")
			if tt.err != "" {
				if !errors.Is(err, ErrInvalid) || err.Error() != tt.err {
					t.Fatalf("Parse error:\n%v\nwant:\n%s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			var got []bool
			for _, s := range cfg.Services {
				got = append(got, s.HealthCheck.CheckViaVIP)
				if bc := s.BackendCheck(s.Backends[0]); bc.CheckViaVIP != s.HealthCheck.CheckViaVIP {
					t.Errorf("%s: BackendCheck lost check_via_vip", s.Name)
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("services %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("check_via_vip of the services = %v, want %v", got, tt.want)
					break
				}
			}
		})
	}
}

// A Config built in code is checked too, at its Line.
func TestCheckViaVIPInCode(t *testing.T) {
	cfg := &Config{Services: []Service{{
		Name: "api", VIP: netip.MustParseAddr("198.19.0.10"), Port: 8080, Mode: ModeL7, Line: 7,
		Backends: []Backend{{Address: netip.MustParseAddr("198.18.0.11"), Weight: 1}},
	}}}
	cfg.ApplyDefaults()
	cfg.Services[0].HealthCheck.CheckViaVIP = true
	want := `line 7: service[0].health_check.check_via_vip: applies to l4 services with forwarding = "dsr" only, and this service is l7`
	if err := cfg.Validate(); err == nil || err.Error() != want {
		t.Errorf("Validate = %v, want %q", err, want)
	}
	cfg = &Config{Services: []Service{{
		Name: "web", VIP: netip.MustParseAddr("198.19.0.10"), Port: 80, Line: 7,
		Backends: []Backend{{Address: netip.MustParseAddr("198.18.0.11"), Weight: 1}},
	}}}
	cfg.ApplyDefaults()
	cfg.Services[0].HealthCheck.CheckViaVIP = true
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate of an l4 dsr service: %v", err)
	}
}

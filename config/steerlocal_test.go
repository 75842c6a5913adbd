package config

import "testing"

// daemon.steer_local: on unless the file says false.
func TestSteerLocal(t *testing.T) {
	for _, c := range []struct {
		name, src string
		want      bool
	}{
		{"no [daemon]", "", true},
		{"key left out", "[daemon]\ninterface = \"eth0\"\n", true},
		{"true", "[daemon]\nsteer_local = true\n", true},
		{"false", "[daemon]\nsteer_local = false\n", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse([]byte(c.src), "xlb.toml")
			if err != nil {
				t.Fatal(err)
			}
			if got := !cfg.Daemon.DisableSteerLocal; got != c.want {
				t.Errorf("steering = %v, want %v", got, c.want)
			}
		})
	}
}

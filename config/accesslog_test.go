package config

import "testing"

// The access log keys: off by default, json by default, and the targets
// the grammar takes.
func TestAccessLogKeys(t *testing.T) {
	cfg, err := Parse(nil, "empty.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Daemon.AccessLog != "" || cfg.Daemon.AccessLogFormat != AccessLogJSON {
		t.Errorf("defaults: access_log %q, format %q; want off and json", cfg.Daemon.AccessLog, cfg.Daemon.AccessLogFormat)
	}
	for _, target := range []string{"stdout", "stderr", "/var/log/xlb/access.log", ""} {
		for _, format := range []string{"json", "common"} {
			src := "[daemon]\naccess_log = \"" + target + "\"\naccess_log_format = \"" + format + "\"\n"
			cfg, err := Parse([]byte(src), "x.toml")
			if err != nil {
				t.Errorf("%q: %v", src, err)
				continue
			}
			if cfg.Daemon.AccessLog != target || cfg.Daemon.AccessLogFormat != format {
				t.Errorf("%q: got %q %q", src, cfg.Daemon.AccessLog, cfg.Daemon.AccessLogFormat)
			}
		}
	}
	for _, bad := range []string{"relative.log", "/var/log/", "/a\x00b"} {
		if msg := accessLogTargetError(bad); msg == "" {
			t.Errorf("access_log %q accepted", bad)
		}
	}
}

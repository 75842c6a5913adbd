package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
)

// maxUnixPathLen is the size of sun_path minus the terminating NUL.
const maxUnixPathLen = 107

// decodeAdmin reads the [admin] table; t may be nil. The listener default is
// applied here, where a missing key can be told from listen = "" (disabled).
func decodeAdmin(t *table) Admin {
	a := DefaultAdmin()
	if t == nil {
		return a
	}
	t.str("listen", &a.Listen)
	if t.str("token_file", &a.TokenFile) && a.TokenFile == "" {
		t.errorf("token_file", "must not be empty (leave the key out when the token is not in a file)")
	}
	nonEmpty(t, "token_env", &a.TokenEnv)
	t.duration("drain_timeout", MinDuration, MaxDrainTimeout, &a.DrainTimeout)
	t.finish()
	return a
}

func (v *validator) admin(a *Admin) {
	line := v.lines.line("admin", 0)
	if a.Listen != "" {
		if msg := listenError(a.Listen); msg != "" {
			v.errorf("admin.listen", line, "%s", msg)
		}
	}
	if a.TokenFile != "" && !filepath.IsAbs(a.TokenFile) {
		v.errorf("admin.token_file", line, "must be an absolute path, got %q", a.TokenFile)
	}
	if !validEnvName(a.TokenEnv) {
		v.errorf("admin.token_env", line,
			"invalid environment variable name %q (want letters, digits and _, not starting with a digit)", a.TokenEnv)
	}
	if msg := durationRange(a.DrainTimeout, MinDuration, MaxDrainTimeout); msg != "" {
		v.errorf(v.durationKey("admin", "drain_timeout"), line, "%s, got %s", msg, fmtDuration(a.DrainTimeout))
	}
}

// listenError says what is wrong with an admin listen address, or "".
func listenError(s string) string {
	const want = `want "IP:PORT" (like "127.0.0.1:9090" or "[::1]:9090"), "unix:/absolute/path", or "" to disable`
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		switch {
		case !filepath.IsAbs(path):
			return fmt.Sprintf("invalid listen address %q: the socket path must be absolute, like \"unix:/run/xlb/admin.sock\"", s)
		case len(path) > maxUnixPathLen:
			return fmt.Sprintf("invalid listen address %q: a unix socket path has at most %d bytes, got %d", s, maxUnixPathLen, len(path))
		case strings.ContainsRune(path, 0):
			return fmt.Sprintf("invalid listen address %q: NUL in the socket path", s)
		}
		return ""
	}
	ap, err := netip.ParseAddrPort(s)
	switch {
	case err != nil:
		return fmt.Sprintf("invalid listen address %q: %s", s, want)
	case ap.Port() == 0:
		return fmt.Sprintf("invalid listen address %q: port 0 (want 1..65535)", s)
	case ap.Addr().IsMulticast():
		return fmt.Sprintf("invalid listen address %q: a multicast address", s)
	}
	return ""
}

// validEnvName accepts a portable environment variable name.
func validEnvName(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

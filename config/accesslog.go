package config

import (
	"path/filepath"
	"strings"
)

// The L7 tier's access log: [daemon] access_log and access_log_format. Both
// keys are defined here, once: their values, defaults and checks.
const (
	// AccessLogStdout and AccessLogStderr are the access_log values that
	// write to the daemon's standard output or error; any other non-empty
	// value is an absolute file path, opened for appending (and reopened
	// on SIGUSR1, for logrotate). "" (the default) turns the log off.
	AccessLogStdout = "stdout"
	AccessLogStderr = "stderr"
	// AccessLogJSON (one JSON object per line, the default) and
	// AccessLogCommon (the Common Log Format, with the rest appended) are
	// the access_log_format values; package l7 writes them.
	AccessLogJSON          = "json"
	AccessLogCommon        = "common"
	DefaultAccessLogFormat = AccessLogJSON
)

var accessLogFormats = []string{AccessLogJSON, AccessLogCommon}

// decodeAccessLog reads the access log keys of the [daemon] table.
func decodeAccessLog(t *table, d *Daemon) {
	t.str("access_log", &d.AccessLog)
	enum(t, "access_log_format", &d.AccessLogFormat)
}

// accessLog checks the access log keys of d (defaults applied).
func (v *validator) accessLog(d *Daemon, line int) {
	if msg := accessLogTargetError(d.AccessLog); msg != "" {
		v.errorf("daemon.access_log", line, "%s", msg)
	}
	checkEnum(v, "daemon.access_log_format", line, d.AccessLogFormat, accessLogFormats)
}

// accessLogTargetError says what is wrong with an access_log value, or "".
func accessLogTargetError(s string) string {
	switch {
	case s == "" || s == AccessLogStdout || s == AccessLogStderr:
		return ""
	case strings.ContainsRune(s, 0):
		return "NUL in the path"
	case !filepath.IsAbs(s):
		return `want "stdout", "stderr", an absolute file path, or "" (off), got "` + s + `"`
	case strings.HasSuffix(s, "/"):
		return `names a directory, want a file: "` + s + `"`
	}
	return ""
}

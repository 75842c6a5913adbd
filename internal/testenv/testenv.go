// Package testenv is what tests ask of the machine they run on: whether they
// run in CI, and root for the tests that load the XDP program or build
// network namespaces.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// CI reports whether the tests run in CI: CI is set, as CI systems and
// .ci/run set it, and is not "false" or "0".
func CI() bool {
	switch os.Getenv("CI") {
	case "", "false", "0":
		return false
	}
	return true
}

// RequireRoot returns when the process runs as root. Otherwise it skips tb
// with why, or fails it in CI: CI runs as root, so a root-only test skipped
// there would be a test that silently never ran.
func RequireRoot(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if CI() {
		tb.Fatalf("%s, and CI is set (CI=%q), so this is a failure, not a skip: run as root", why, os.Getenv("CI"))
	}
	tb.Skip(why)
}

// RequireTool returns the path of the program tool. Without it, it skips tb,
// or fails it in CI, where make deps installs pkg (the Debian package that
// has it): a test skipped there would be a test that silently never ran.
func RequireTool(tb testing.TB, tool, pkg string) string {
	tb.Helper()
	path, err := exec.LookPath(tool)
	if err == nil {
		return path
	}
	if CI() {
		tb.Fatalf("%s is missing, and CI is set: install it (apt-get install %s; make deps does)", tool, pkg)
	}
	tb.Skipf("%s is not installed (apt-get install %s)", tool, pkg)
	return ""
}

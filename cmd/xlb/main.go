// Command xlb is the xlb load balancer: `xlb run` is the daemon, the other
// subcommands inspect and check what it runs.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/xlb-dev/xlb/config"
)

const usage = `xlb: eBPF-accelerated L4/L7 load balancer

Usage:
  xlb run -c FILE [--keep-datapath]   run the daemon until SIGINT/SIGTERM (SIGHUP reloads)
  xlb status [--bpffs DIR] [--json]   show services, backends and counters from the pinned maps
  xlb validate -c FILE                check a config file and exit
  xlb backend add|drain|ready|remove|list ...   change backends through the running daemon's admin API
  xlb sidecar --listen ADDR --backend URL [--timeout 30s] [--header K=V ...]
                                      a one-backend L7 proxy (no root, no config file)

Exit codes: 0 ok, 1 runtime error, 2 bad config or usage.
`

// exitError carries an exit code to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageError(format string, args ...any) error {
	return &exitError{2, fmt.Errorf(format, args...)}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "run":
		err = runCmd(args)
	case "status":
		err = statusCmd(args, os.Stdout)
	case "sidecar":
		err = sidecarCmd(args)
	case "backend":
		err = backendCmd(args, os.Stdout)
	case "validate":
		err = validateCmd(args, os.Stdout)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		err = usageError("unknown command %q (see xlb help)", cmd)
	}
	os.Exit(exitCode(err))
}

// exitCode prints err and maps it to the exit code: 2 for config and usage
// errors, 1 for everything else.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "xlb:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if errors.Is(err, config.ErrInvalid) {
		return 2
	}
	return 1
}

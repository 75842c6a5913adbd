// Command xlb is the xlb load balancer: `xlb run` is the daemon, the other
// subcommands inspect and check what it runs.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/xlb-dev/xlb/config"
)

const usage = `xlb: eBPF-accelerated L4/L7 load balancer

Usage:
  xlb run -c FILE [--keep-datapath]   run the daemon until SIGINT/SIGTERM (SIGHUP reloads)
  xlb status [--bpffs DIR] [--json]   show services, backends and counters from the pinned maps
  xlb validate -c FILE                check a config file and exit
  xlb backend add|drain|ready|remove|list ...   change backends through the running daemon's admin API
  xlb node drain|ready|status         withdraw / announce again this node's VIPs (BGP); show its sessions
  xlb decap --interface IFACE --vip ADDR [--vip ADDR ...]
                                      on an ipip backend: strip the tunnel header of packets for the VIPs
  xlb sidecar --listen ADDR --backend URL [--timeout 30s] [--header K=V ...]
                                      a one-backend L7 proxy (no root, no config file)
  xlb version                         print the version (also xlb --version)
  xlb completion bash|zsh             print a shell completion script

xlb COMMAND --help (or -h, or xlb help COMMAND) shows a command's flags; flags
may come before or after a command's arguments.

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
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the command line args (without the program name) and returns the
// exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	var err error
	switch c := findCommand(cmd); {
	case c != nil:
		err = c.run(args, stdout)
	case cmd == "help" || cmd == "-h" || cmd == "--help" || cmd == "-help":
		if len(args) > 0 && args[0] != "help" {
			// xlb help COMMAND [SUBCOMMAND]: that command's --help.
			return run(append(slices.Clone(args), "--help"), stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = usageError("unknown command %q (see xlb --help)", cmd)
	}
	return exitCode(err, stderr)
}

// command is one of xlb's commands: the table that run dispatches on and
// that `xlb completion` reads, so completions cannot drift from the CLI.
type command struct {
	name    string
	summary string
	run     func(args []string, out io.Writer) error
	// subs are the subcommands' usages (xlb backend add|drain|...); nil
	// for a command without subcommands. run(SUB --help) shows each.
	subs    map[string]string
	aliases []string
}

// commands is every command; a func, not a var, since completion reads it.
func commands() []command {
	return []command{
		{name: "run", summary: "run the daemon", run: runCmd},
		{name: "status", summary: "show services, backends and counters", run: statusCmd},
		{name: "validate", summary: "check a config file", run: validateCmd},
		{name: "backend", summary: "change backends through the admin API", run: backendCmd, subs: backendUsages},
		{name: "node", summary: "drain or ready this node's VIPs (BGP), show its sessions", run: nodeCmd, subs: nodeUsages},
		{name: "decap", summary: "strip the tunnel header on an ipip backend", run: decapCmd},
		{name: "sidecar", summary: "a one-backend L7 proxy", run: sidecarCmd},
		{name: "version", summary: "print the version", run: versionCmd, aliases: []string{"--version", "-version"}},
		{name: "completion", summary: "print a bash or zsh completion script", run: completionCmd},
	}
}

// findCommand is the command named (or aliased) name, or nil.
func findCommand(name string) *command {
	for _, c := range commands() {
		if c.name == name || slices.Contains(c.aliases, name) {
			return &c
		}
	}
	return nil
}

// exitCode prints err and maps it to the exit code: 0 for help that was
// asked for, 2 for config and usage errors, 1 for everything else.
func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "xlb:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if errors.Is(err, config.ErrInvalid) {
		return 2
	}
	return 1
}

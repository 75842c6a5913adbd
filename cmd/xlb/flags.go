package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
)

// parseArgs parses args with fs and returns the positional arguments. Flags
// may come before, between and after them (`xlb backend drain ID --admin
// X`); "--" ends the flags, everything after it is positional. -h, -help or
// --help prints usage and fs's flags to out and returns flag.ErrHelp (exit
// 0); a flag fs does not know or a value it refuses is a usage error (exit
// 2), so a bad number stops the command before anything is sent.
func parseArgs(fs *flag.FlagSet, args []string, usage string, out io.Writer) ([]string, error) {
	if seenFlags != nil {
		seenFlags(fs)
	}
	fs.SetOutput(io.Discard) // errors go to the caller, help to out
	fs.Usage = func() {}
	var pos []string
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			printUsage(out, fs, usage)
			return nil, flag.ErrHelp
		}
		if err != nil {
			return nil, usageError("%s: %v (see xlb %s --help)", fs.Name(), err, fs.Name())
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// seenFlags, when set, gets every FlagSet parseArgs parses with: `xlb
// completion` learns a command's flags by running COMMAND --help.
var seenFlags func(*flag.FlagSet)

// printUsage prints a command's usage text and its flags.
func printUsage(out io.Writer, fs *flag.FlagSet, usage string) {
	fmt.Fprintln(out, strings.TrimRight(usage, "\n"))
	has := false
	fs.VisitAll(func(*flag.Flag) { has = true })
	if !has {
		return
	}
	fmt.Fprintln(out, "\nFlags:")
	fs.SetOutput(out)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// noArgs is the check of a command that takes no positional arguments.
func noArgs(fs *flag.FlagSet, pos []string) error {
	if len(pos) > 0 {
		return usageError("%s: unexpected argument %q (see xlb %s --help)", fs.Name(), pos[0], fs.Name())
	}
	return nil
}

// rangeFlag is a decimal integer flag in [min, max], checked as it is parsed:
// flag.Int took --port 99999 and the uint16 it was sent as wrapped it to
// 34463.
type rangeFlag struct {
	v, min, max int64
	set         bool
}

func newRangeFlag(fs *flag.FlagSet, name string, def, min, max int64, help string) *rangeFlag {
	f := &rangeFlag{v: def, min: min, max: max}
	fs.Var(f, name, fmt.Sprintf("%s, %d..%d", help, min, max))
	return f
}

func (f *rangeFlag) String() string {
	if f == nil {
		return "0"
	}
	return strconv.FormatInt(f.v, 10)
}

func (f *rangeFlag) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < f.min || n > f.max {
		return fmt.Errorf("want a whole number %d..%d", f.min, f.max)
	}
	f.v, f.set = n, true
	return nil
}

// checkAdminAddr refuses an admin address whose port is not 1..65535
// (host:port; unix:/path is left to the dialer).
func checkAdminAddr(addr string) error {
	if strings.HasPrefix(addr, "unix:") {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return usageError("--admin %q: want host:port or unix:/path", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return usageError("--admin %q: port must be 1..65535", addr)
	}
	return nil
}

// subcommand splits the arguments of a command group (xlb backend, xlb
// node) into the subcommand, its arguments and its --help text. `help`,
// -h and --help print the group's usage (flag.ErrHelp); `help SUB` is
// SUB --help; an unknown subcommand is a usage error.
func subcommand(group string, args []string, usage string, usages map[string]string, out io.Writer) (sub string, rest []string, help string, err error) {
	if len(args) == 0 {
		return "", nil, "", usageError("%s", usage)
	}
	sub, rest = args[0], args[1:]
	switch sub {
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 && usages[rest[0]] != "" {
			return rest[0], []string{"--help"}, usages[rest[0]], nil
		}
		fmt.Fprintln(out, usage)
		return "", nil, "", flag.ErrHelp
	}
	help, ok := usages[sub]
	if !ok {
		return "", nil, "", usageError("unknown %s command %q\n%s", group, sub, usage)
	}
	return sub, rest, help, nil
}

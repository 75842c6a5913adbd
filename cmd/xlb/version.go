package main

import (
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

const versionUsage = `usage: xlb version   (or xlb --version)
Print xlb's version: the module version, the VCS revision and commit time when
the binary was built from a checkout, and the Go version it was built with.`

func versionCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	pos, err := parseArgs(fs, args, versionUsage, out)
	if err != nil {
		return err
	}
	if err := noArgs(fs, pos); err != nil {
		return err
	}
	bi, ok := debug.ReadBuildInfo()
	fmt.Fprintln(out, versionString(bi, ok))
	return nil
}

// versionString is one line: "xlb VERSION (revision REV, TIME, modified)
// GOVERSION OS/ARCH", the parenthesis only with VCS information.
func versionString(bi *debug.BuildInfo, ok bool) string {
	version, goVersion := "(devel)", runtime.Version()
	var vcs []string
	if ok && bi != nil {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		if bi.GoVersion != "" {
			goVersion = bi.GoVersion
		}
		var rev, at, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if rev != "" {
			vcs = append(vcs, "revision "+rev)
		}
		if at != "" {
			vcs = append(vcs, at)
		}
		if modified == "true" {
			vcs = append(vcs, "modified")
		}
	}
	s := "xlb " + version
	if len(vcs) > 0 {
		s += " (" + strings.Join(vcs, ", ") + ")"
	}
	return s + " " + goVersion + " " + runtime.GOOS + "/" + runtime.GOARCH
}

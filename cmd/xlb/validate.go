package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/xlb-dev/xlb/config"
)

const validateUsage = `usage: xlb validate -c FILE
Check a config file and exit: 0 if it is valid, 2 naming file, line and field if not.`

func validateCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	path := fs.String("c", "", "config file")
	pos, err := parseArgs(fs, args, validateUsage, out)
	if err != nil {
		return err
	}
	if err := noArgs(fs, pos); err != nil {
		return err
	}
	if *path == "" {
		return usageError("validate: -c FILE is required")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: ok (%d services)\n", *path, len(cfg.Services))
	return nil
}

package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/xlb-dev/xlb/config"
)

func validateCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	path := fs.String("c", "", "config file")
	if err := fs.Parse(args); err != nil {
		return &exitError{2, err}
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

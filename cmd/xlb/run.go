package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/loader"
)

// resolveRetry is how often backends whose MAC is still unknown are retried.
const resolveRetry = 2 * time.Second

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	path := fs.String("c", "", "config file")
	keep := fs.Bool("keep-datapath", false, "on exit leave the XDP program attached and the maps pinned, for a restart that adopts them")
	if err := fs.Parse(args); err != nil {
		return &exitError{2, err}
	}
	if *path == "" {
		return usageError("run: -c FILE is required")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Daemon)
	slog.SetDefault(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	if cfg.Daemon.Interface == "" {
		log.Warn("no XDP interface configured: the L4 datapath is off, only the L7 tier runs")
		<-ctx.Done()
		return nil
	}

	dp, err := loader.Open(loader.Options{
		Interface: cfg.Daemon.Interface,
		Mode:      loader.XDPMode(cfg.Daemon.XDPMode),
		PinDir:    cfg.Daemon.BPFFSDir,
		Logger:    log,
	})
	if err != nil {
		return err
	}
	if dp.Adopted {
		log.Info("adopted pinned maps: established flows keep their backends", "dir", cfg.Daemon.BPFFSDir)
	}
	defer func() {
		if err := dp.Close(*keep); err != nil {
			log.Error("closing datapath", "err", err)
		}
		if *keep {
			log.Info("datapath kept: XDP stays attached, maps stay pinned", "dir", cfg.Daemon.BPFFSDir)
		} else {
			log.Info("XDP detached and pins removed")
		}
	}()

	rec, err := loader.NewReconciler(&dp.Maps, loader.NetlinkResolver{}, dp.IfIndex, log)
	if err != nil {
		return err
	}
	apply := func(cfg *config.Config) (loader.Change, error) {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		ch, err := rec.Apply(actx, desiredFromConfig(cfg))
		if err == nil && !ch.Empty() {
			log.Info("datapath reconciled",
				"services_added", ch.ServicesAdded, "services_removed", ch.ServicesRemoved,
				"backends_added", ch.BackendsAdded, "backends_updated", ch.BackendsUpdated,
				"backends_removed", ch.BackendsRemoved, "rings_swapped", ch.RingsSwapped)
		}
		return ch, err
	}
	ch, err := apply(cfg)
	if err != nil {
		return fmt.Errorf("apply config: %w", err)
	}
	log.Info("xlb running", "interface", cfg.Daemon.Interface, "mode", string(dp.Mode),
		"services", len(cfg.Services), "config", *path)

	retry := time.NewTicker(resolveRetry)
	defer retry.Stop()
	pending := len(ch.Unresolved) > 0
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			return nil
		case <-hup:
			next, err := config.Load(*path)
			if err != nil {
				log.Error("reload refused: the running config stays in force", "err", err)
				continue
			}
			if cfg.Daemon != next.Daemon {
				log.Warn("reload: [daemon] changes need a restart; applying services only")
			}
			cfg.Services = next.Services
			ch, err := apply(cfg)
			if err != nil {
				log.Error("reload failed", "err", err)
				continue
			}
			pending = len(ch.Unresolved) > 0
			log.Info("config reloaded", "services", len(cfg.Services))
		case <-retry.C:
			if !pending {
				continue
			}
			ch, err := apply(cfg)
			if err != nil && !errors.Is(err, context.Canceled) {
				log.Error("retrying unresolved backends", "err", err)
				continue
			}
			pending = len(ch.Unresolved) > 0
		}
	}
}

func newLogger(d config.Daemon) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(d.LogLevel)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if d.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

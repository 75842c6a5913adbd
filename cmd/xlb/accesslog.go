package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/l7"
)

// openAccessLog opens the L7 tier's access log of d ([daemon] access_log;
// nil when off) and reopens it on every SIGUSR1 until ctx ends, for
// logrotate: move the file, then `systemctl kill -s USR1 xlb` (or kill
// -USR1 PID).
func openAccessLog(ctx context.Context, d *config.Daemon, log *slog.Logger) (*l7.AccessLog, error) {
	if d.AccessLog == "" {
		// A logrotate postrotate that signals anyway must not kill xlb
		// (SIGUSR1's default action).
		signal.Ignore(syscall.SIGUSR1)
		return nil, nil
	}
	al, err := l7.NewAccessLog(l7.AccessLogOptions{Path: d.AccessLog, Format: d.AccessLogFormat})
	if err != nil {
		return nil, err
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		defer signal.Stop(usr1)
		for {
			select {
			case <-ctx.Done():
				return
			case <-usr1:
				if err := al.Reopen(); err != nil {
					log.Error("access log: reopen failed, writing on to the old file", "path", d.AccessLog, "err", err)
				} else {
					log.Info("access log reopened", "path", d.AccessLog)
				}
			}
		}
	}()
	log.Info("access log on", "path", d.AccessLog, "format", d.AccessLogFormat)
	return al, nil
}

package bgp

import (
	"context"
	"log/slog"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// slogger hands GoBGP's log lines to slog. GoBGP's info lines (every
// message exchanged, every FSM step) go to debug: the speaker logs the
// session changes an operator needs itself.
type slogger struct{ log *slog.Logger }

var _ gobgplog.Logger = slogger{}

func (l slogger) emit(level slog.Level, msg string, fields gobgplog.Fields) {
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	args := make([]any, 0, 2*len(fields))
	for k, v := range fields {
		args = append(args, k, v)
	}
	l.log.Log(context.Background(), level, "gobgp: "+msg, args...)
}

func (l slogger) Panic(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f) }
func (l slogger) Fatal(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f) }
func (l slogger) Error(msg string, f gobgplog.Fields) { l.emit(slog.LevelWarn, msg, f) }
func (l slogger) Warn(msg string, f gobgplog.Fields)  { l.emit(slog.LevelWarn, msg, f) }
func (l slogger) Info(msg string, f gobgplog.Fields)  { l.emit(slog.LevelDebug, msg, f) }
func (l slogger) Debug(msg string, f gobgplog.Fields) {}
func (l slogger) SetLevel(gobgplog.LogLevel)          {}
func (l slogger) GetLevel() gobgplog.LogLevel         { return gobgplog.InfoLevel }

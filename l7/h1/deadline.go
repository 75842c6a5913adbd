package h1

import (
	"net"
	"time"
)

// Deadline is a connection's read or write deadline as last set. A
// deadline already set up to slack before the one wanted is kept: a busy
// connection does not rearm a runtime timer on every request, and a
// timeout may fire up to slack early, never late.
type Deadline struct{ t time.Time }

// ALongTimeAgo is a deadline that makes blocked I/O return at once.
var ALongTimeAgo = time.Unix(1, 0)

// SetRead makes nc's read deadline t (zero: none), unless the one set is
// the same or up to slack before it, and reports whether it changed it.
func (d *Deadline) SetRead(nc net.Conn, t time.Time, slack time.Duration) bool {
	if !d.change(t, slack) {
		return false
	}
	nc.SetReadDeadline(t)
	return true
}

// SetWrite is SetRead for the write deadline.
func (d *Deadline) SetWrite(nc net.Conn, t time.Time, slack time.Duration) bool {
	if !d.change(t, slack) {
		return false
	}
	nc.SetWriteDeadline(t)
	return true
}

func (d *Deadline) change(t time.Time, slack time.Duration) bool {
	if d.t.Equal(t) || !d.t.IsZero() && !t.IsZero() && !d.t.After(t) && t.Sub(d.t) <= slack {
		return false
	}
	d.t = t
	return true
}

// Slack is the slack for a timeout: 1/32 of it, at most 100 ms, so that a
// timeout ends within 100 ms of its setting.
func Slack(timeout time.Duration) time.Duration { return min(timeout/32, 100*time.Millisecond) }

// earliest is the earlier of a and b, a zero time being no deadline.
func earliest(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero() || a.Before(b):
		return a
	}
	return b
}

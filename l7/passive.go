package l7

import (
	"fmt"
	"time"
)

// Passive health and the in-flight limit.
//
// Ejection: with Pool.Passive.MaxFails > 0, MaxFails consecutive failed
// requests (ResultConnectError, ResultServerError, ResultBroken) to an
// upstream eject it: it is not Usable until the ejection ends. The first
// ejection lasts BaseEjection, each successive one twice the previous, at
// most MaxEjection. A ResultOK resets the count of consecutive failures; the
// first ResultOK after an ejection has ended resets the back-off to
// BaseEjection. While an upstream is ejected its remaining in-flight
// requests neither count towards another ejection nor reset the back-off.
// ResultCanceled is neutral.
//
// Ejection and the control loop's State are separate and neither overrides
// the other: Usable needs both State up and no ejection. An ejection never
// makes a down upstream usable, and an active health check (or the admin
// API) setting the state to up does not end an ejection early; the ejection
// does not change State either, so the active checker and passive health
// never fight over one value. Readmit ends an ejection explicitly.
// Pool.OnEject tells the control loop of each ejection (for its log, its
// metrics and the shared health view).

// acquire takes one in-flight slot on u unless it has limit or more (limit
// <= 0: no limit). InFlight never goes above limit, whatever the
// concurrency: the increment is a compare-and-swap on the value checked.
func (u *Upstream) acquire(limit int64) bool {
	if limit <= 0 {
		u.InFlight.Add(1)
		return true
	}
	for {
		n := u.InFlight.Load()
		if n >= limit {
			return false
		}
		if u.InFlight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Done ends a request that Pool.Pick gave to u: it releases the in-flight
// slot, counts the request (Requests, Errors for failures, LatencySum) and
// feeds passive health with p's Passive config (p is the pool Pick was
// called on; nil skips passive health). Call it exactly once per Pick.
func (u *Upstream) Done(p *Pool, res Result, latency time.Duration) {
	u.InFlight.Add(-1)
	u.Requests.Add(1)
	if res.failure() {
		u.Errors.Add(1)
	}
	if latency > 0 {
		u.LatencySum.Add(uint64(latency))
	}
	if p == nil || p.Passive.MaxFails <= 0 {
		return
	}
	switch {
	case res == ResultOK:
		if u.consecutiveFails.Load() != 0 {
			u.consecutiveFails.Store(0)
		}
		if u.ejections.Load() != 0 && !u.Ejected(time.Now()) {
			u.ejections.Store(0)
		}
	case res.failure():
		now := time.Now()
		if u.Ejected(now) {
			return
		}
		n := u.consecutiveFails.Add(1)
		// Exactly one of concurrent failures sees n == MaxFails. The second
		// look at the ejection catches failures that passed the first one
		// just before another goroutine ejected u and then counted up to
		// MaxFails again after it reset the count (eject stores the
		// ejection before the reset): one ejection per burst.
		if int(n) == p.Passive.MaxFails {
			if u.Ejected(now) {
				u.consecutiveFails.Store(0)
				return
			}
			u.eject(p, now, fmt.Sprintf("%d consecutive failures, last %s", n, res))
		}
	}
}

// eject takes u out for the next back-off period and reports it.
func (u *Upstream) eject(p *Pool, now time.Time, reason string) {
	k := u.ejections.Add(1)
	d := p.Passive.ejection(int(k))
	until := now.Add(d)
	u.ejectedUntil.Store(until.UnixNano())
	u.consecutiveFails.Store(0)
	if p.OnEject != nil {
		p.OnEject(u, until, reason)
	}
}

// ejection is the length of the k-th successive ejection (k >= 1).
func (c PassiveConfig) ejection(k int) time.Duration {
	base, maxd := c.BaseEjection, c.MaxEjection
	if base <= 0 {
		base = DefaultBaseEjection
	}
	if maxd <= 0 {
		maxd = DefaultMaxEjection
	}
	if maxd < base {
		maxd = base
	}
	d := base
	for i := 1; i < k && d < maxd; i++ {
		d *= 2
	}
	return min(d, maxd)
}

// EjectedUntil is when u's latest passive ejection ends (or ended): the zero
// Time if u was never ejected, possibly a past time. u is ejected now when
// EjectedUntil().After(time.Now()).
func (u *Upstream) EjectedUntil() time.Time {
	until := u.ejectedUntil.Load()
	if until == 0 {
		return time.Time{}
	}
	return time.Unix(0, until)
}

// Readmit ends a passive ejection at once and resets the failure count and
// the back-off, for an operator's explicit "ready" (an active health check
// turning up does not call it).
func (u *Upstream) Readmit() {
	u.ejectedUntil.Store(0)
	u.consecutiveFails.Store(0)
	u.ejections.Store(0)
}

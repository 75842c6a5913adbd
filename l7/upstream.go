package l7

import (
	"net/netip"
	"sync/atomic"
	"time"
)

// State is what the control loop says of an upstream.
type State int32

const (
	StateUp       State = iota // takes new requests
	StateDraining              // in-flight requests finish, no new ones
	StateDown                  // no requests
)

func (s State) String() string {
	switch s {
	case StateUp:
		return "up"
	case StateDraining:
		return "draining"
	}
	return "down"
}

// Upstream is one backend of an L7 service. Its counters and state are
// atomics: nothing on the request path takes a lock for them.
//
// ID, Addr, Name and Weight are set before the Upstream is first published
// in a Pool and never change afterwards (a new weight is a new Upstream).
type Upstream struct {
	ID     string         // control's backend id, "service@addr:port"
	Addr   netip.AddrPort // where requests go
	Name   string         // Maglev name (see AssignNames): address, or address:port
	Weight int            // > 0 takes part in balancing; 0 only keeps sticky/in-flight

	state atomic.Int32 // State

	// Request path counters. InFlight is raised by Pool.Pick and lowered by
	// Done; Requests, Errors and LatencySum are counted by Done.
	InFlight   atomic.Int64
	Requests   atomic.Uint64
	Errors     atomic.Uint64 // gateway errors and 5xx answers
	LatencySum atomic.Uint64 // nanoseconds, for the average

	// Passive health (see passive.go).
	consecutiveFails atomic.Int32
	ejectedUntil     atomic.Int64 // unix nanoseconds; 0 = not ejected
	ejections        atomic.Int32 // successive ejections, for the back-off

	// Smooth weighted round robin's current weight and the usable set it
	// belongs to (selection.go). They live here, not in the policy, so the
	// rotation survives pool swaps.
	rrCurrent atomic.Int64
	rrSet     atomic.Uint64

	// Cookie value for stickiness, computed once (sticky.go).
	stickyValue atomic.Pointer[string]
}

// State returns the control loop's state.
func (u *Upstream) State() State { return State(u.state.Load()) }

// SetState is called by the control loop. It never touches a passive
// ejection: an upstream set up while ejected stays out until the ejection
// expires (see passive.go).
func (u *Upstream) SetState(s State) { u.state.Store(int32(s)) }

// Ejected reports whether passive health has taken u out until a later time.
func (u *Upstream) Ejected(now time.Time) bool {
	until := u.ejectedUntil.Load()
	return until != 0 && now.UnixNano() < until
}

// Usable: may take a new request (not counting the in-flight limit).
func (u *Upstream) Usable(now time.Time) bool {
	return u.State() == StateUp && u.Weight > 0 && !u.Ejected(now)
}

// clock reads the time at most once, and only when an ejection needs it: in
// the common case (nothing ejected) selection never calls time.Now.
type clock struct{ ns int64 }

func (c *clock) now() int64 {
	if c.ns == 0 {
		c.ns = time.Now().UnixNano()
	}
	return c.ns
}

// notEjected is !Ejected without reading the time when u was never ejected.
func (u *Upstream) notEjected(c *clock) bool {
	until := u.ejectedUntil.Load()
	return until == 0 || c.now() >= until
}

// usable is Usable with a lazy clock.
func (u *Upstream) usable(c *clock) bool {
	return State(u.state.Load()) == StateUp && u.Weight > 0 && u.notEjected(c)
}

// AssignNames sets each upstream's Name, its identity in the ip_hash Maglev
// table: the address alone (IPv4-mapped addresses unmapped, as the L4
// loader names its backends) when no other upstream in ups has the same
// address, else address:port. Because the L4 datapath names its backends by
// address, an L4 and an L7 service on the same VIP with the same backend
// addresses build the same table and send a client to the same backend.
// Call it on a pool's upstreams before publishing the pool.
func AssignNames(ups []*Upstream) {
	count := make(map[netip.Addr]int, len(ups))
	for _, u := range ups {
		count[u.Addr.Addr().Unmap()]++
	}
	for _, u := range ups {
		a := u.Addr.Addr().Unmap()
		if count[a] == 1 {
			u.Name = a.String()
		} else {
			u.Name = netip.AddrPortFrom(a, u.Addr.Port()).String()
		}
	}
}

package l7

import (
	"errors"
	"net/http"
	"time"
)

var (
	// ErrNoUpstream: no usable upstream (all down, draining or ejected): 503.
	ErrNoUpstream = errors.New("no usable backend")
	// ErrOverloaded: every usable upstream is at its in-flight limit: 503.
	ErrOverloaded = errors.New("backends at their in-flight limit")
	// ErrUnknownPolicy: NewPolicy was given a name it does not know.
	ErrUnknownPolicy = errors.New("unknown balancing policy")
)

// Policy picks an upstream for a request among the pool's usable ones.
// exclude (may be nil) is skipped: the upstream a retry moves away from.
// Select returns nil when no upstream other than exclude is usable. It does
// not look at the in-flight limit and does not touch InFlight: Pool.Pick
// does both (see pick.go).
type Policy interface {
	Select(p *Pool, r *http.Request, exclude *Upstream) *Upstream
}

// StickyConfig enables cookie stickiness on top of the policy.
type StickyConfig struct {
	Cookie string        // cookie name; "" is DefaultStickyCookie
	TTL    time.Duration // at least 60 s (MinStickyTTL); 0 is DefaultStickyTTL
}

// Sticky cookie defaults (see sticky.go).
const (
	DefaultStickyCookie = "xlb_sticky"
	DefaultStickyTTL    = time.Hour
	MinStickyTTL        = 60 * time.Second
)

// PassiveConfig is passive health: MaxFails consecutive connect errors or 5xx
// answers eject an upstream for BaseEjection, doubling on each successive
// ejection up to MaxEjection. MaxFails 0 disables it. A zero BaseEjection is
// DefaultBaseEjection, a zero MaxEjection DefaultMaxEjection; a MaxEjection
// below BaseEjection is BaseEjection.
type PassiveConfig struct {
	MaxFails     int
	BaseEjection time.Duration
	MaxEjection  time.Duration
}

// Passive health defaults (see passive.go).
const (
	DefaultBaseEjection = 30 * time.Second
	DefaultMaxEjection  = 5 * time.Minute
)

// Pool is one service's upstreams and how to choose among them. A Pool is
// immutable once built; the control loop swaps in a new one on changes,
// carrying Upstream pointers over so counters, states and in-flight counts
// survive. Give the new Pool the old one's Policy value when the service's
// policy did not change: the ip_hash table cache lives in the Policy (the
// round robin position lives in the Upstreams and survives either way). One
// Policy value per service: do not share one between services.
type Pool struct {
	Service     string
	Upstreams   []*Upstream
	Policy      Policy        // nil: round robin
	Sticky      *StickyConfig // nil: no stickiness
	MaxInFlight int64         // per upstream; 0: unlimited
	Passive     PassiveConfig
	MaglevSize  uint32 // for ip_hash: the daemon's maglev_table_size; 0: maglev.DefaultTableSize

	// OnEject, if set, is called once per ejection by passive health, from
	// the Done call that crossed MaxFails (a request goroutine: it must not
	// block). until is when the upstream becomes usable again; reason says
	// why, e.g. "3 consecutive failures, last connect_error".
	OnEject func(u *Upstream, until time.Time, reason string)
}

// Result classifies a finished request for passive health.
type Result int

const (
	ResultOK           Result = iota // any answer below 500
	ResultServerError                // the upstream answered 5xx
	ResultConnectError               // could not connect
	ResultBroken                     // connection broke or timed out mid-request
	// ResultCanceled: the client went away (or the proxy gave up for a
	// reason of its own) before the upstream answered. Counted as a
	// request, not as an error, and neutral for passive health.
	ResultCanceled
	// ResultClientError: the client's request was at fault (a malformed or
	// short body, a body that stalled past its deadline): answered 400 or
	// 408, neutral for passive health.
	ResultClientError
)

// String is a short name usable as a metric label: "ok", "server_error",
// "connect_error", "broken", "canceled", "client_error".
func (r Result) String() string {
	switch r {
	case ResultOK:
		return "ok"
	case ResultServerError:
		return "server_error"
	case ResultConnectError:
		return "connect_error"
	case ResultBroken:
		return "broken"
	case ResultCanceled:
		return "canceled"
	case ResultClientError:
		return "client_error"
	}
	return "unknown"
}

// failure reports whether r counts against the upstream in passive health
// and in Errors.
func (r Result) failure() bool {
	return r == ResultServerError || r == ResultConnectError || r == ResultBroken
}

package health

import (
	"encoding"
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// State is a checked target's health. The zero value is Healthy, so a Target
// whose Initial is not set starts healthy.
type State uint8

const (
	Healthy   State = iota // receives traffic
	Unhealthy              // taken out of the tables
)

// String is "healthy" or "unhealthy".
func (s State) String() string {
	switch s {
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// ParseState reads "healthy" or "unhealthy" (also "up" and "down"), in any
// case.
func ParseState(s string) (State, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "healthy", "up":
		return Healthy, nil
	case "unhealthy", "down":
		return Unhealthy, nil
	}
	return 0, fmt.Errorf("%w: state %q: want healthy or unhealthy", ErrInvalidSpec, s)
}

// MarshalText is String.
func (s State) MarshalText() ([]byte, error) {
	if s > Unhealthy {
		return nil, fmt.Errorf("health: invalid state %d", uint8(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText is ParseState.
func (s *State) UnmarshalText(b []byte) error {
	v, err := ParseState(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Kind is how a target is checked.
type Kind string

const (
	KindHTTP  Kind = "http"  // GET Path, expect a status in ExpectStatus
	KindHTTPS Kind = "https" // the same over TLS; the certificate is not verified
	KindTCP   Kind = "tcp"   // a TCP connect that completes, then closes
)

// Defaults that Spec.Normalize fills in for zero fields.
const (
	DefaultInterval           = 5 * time.Second
	DefaultTimeout            = 2 * time.Second
	DefaultHealthyThreshold   = 2
	DefaultUnhealthyThreshold = 3
	DefaultJitter             = 0.1
	DefaultPath               = "/"
	// DefaultChecksPerConnection is how many HTTP(S) checks one connection
	// serves before the next check opens a new one. Opening and closing the
	// connection is the largest cost of a check (on loopback, a third of the
	// checking process's CPU at 5 checks a connection); 10 halves it, and a
	// backend that stops accepting connections is still marked unhealthy
	// within 9+UnhealthyThreshold checks.
	DefaultChecksPerConnection = 10
)

// NoJitter, as Spec.Jitter, checks at exactly Interval (any negative value
// normalizes to it; zero means DefaultJitter).
const NoJitter = -1.0

// Spec says what to check and how. It is comparable and, once normalized,
// identifies a checker: targets with equal normalized Specs share one checker
// and so one state.
type Spec struct {
	Kind   Kind
	Target netip.AddrPort
	// HTTP(S) only (cleared for TCP by Normalize).
	Path         string    // request path and optional query; default "/"
	Host         string    // Host header (and TLS server name); default the target address
	ExpectStatus StatusSet // statuses that count as success; default 2xx
	// ChecksPerConnection is how many checks may use one connection (HTTP
	// keep-alive) before it is closed and the next check opens a new one;
	// default DefaultChecksPerConnection, 1 for a new connection every check.
	// A backend that stops accepting connections but still answers on the
	// open one fails from the first check after it is closed: it is marked
	// unhealthy within ChecksPerConnection-1+UnhealthyThreshold checks.
	ChecksPerConnection int

	Interval time.Duration // between check starts; default 5s
	Timeout  time.Duration // bound of one check; default 2s
	// Consecutive results needed to change state.
	HealthyThreshold   int // successes while unhealthy; default 2
	UnhealthyThreshold int // failures while healthy; default 3
	// Jitter is the fraction of Interval by which each delay varies,
	// uniformly in [Interval*(1-Jitter), Interval*(1+Jitter)]. Zero means
	// DefaultJitter, negative means none; it must be below 1.
	Jitter float64

	// Via, when set, checks Target (a VIP) through this backend: the
	// check's socket carries Mark (SO_MARK), which the caller's policy
	// routing maps to a route to Target via Via (package checkroute). Mark
	// is required with Via and unused without it.
	Via  netip.Addr
	Mark uint32
}

// String is short, for logs: "http 10.0.0.1:80/healthz", "tcp 10.0.0.1:443",
// "http 10.0.1.1:80/healthz via 10.0.0.1".
func (s Spec) String() string {
	out := string(s.Kind) + " " + s.Target.String()
	if s.Kind != KindTCP {
		out += s.Path
	}
	if s.Via.IsValid() {
		out += " via " + s.Via.String()
	}
	return out
}

// Normalize fills in the defaults, clears the fields that do not apply to the
// kind, puts ExpectStatus in canonical form and validates the result. The
// Manager keys its checkers on normalized Specs, and the Specs it reports (in
// Transition and Status) are normalized. The error matches ErrInvalidSpec.
func (s Spec) Normalize() (Spec, error) {
	var probs []string
	bad := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }

	switch s.Kind {
	case KindHTTP, KindHTTPS:
		if s.Path == "" {
			s.Path = DefaultPath
		}
		if err := checkPath(s.Path); err != nil {
			bad("path %q: %v", s.Path, err)
		}
		if err := checkHost(s.Host); err != nil {
			bad("host %q: %v", s.Host, err)
		}
		if s.ExpectStatus == "" {
			s.ExpectStatus = DefaultStatusSet
		} else if set, err := ParseStatusSet(string(s.ExpectStatus)); err != nil {
			bad("expect_status: %v", err)
		} else {
			s.ExpectStatus = set
		}
		if s.ChecksPerConnection == 0 {
			s.ChecksPerConnection = DefaultChecksPerConnection
		} else if s.ChecksPerConnection < 0 {
			bad("checks per connection %d must be at least 1", s.ChecksPerConnection)
		}
	case KindTCP:
		s.Path, s.Host, s.ExpectStatus, s.ChecksPerConnection = "", "", "", 0
	case "":
		bad("kind is required (http, https or tcp)")
	default:
		bad("unknown kind %q (want http, https or tcp)", string(s.Kind))
	}

	if !s.Target.IsValid() || !s.Target.Addr().IsValid() {
		bad("target address is required")
	} else if s.Target.Port() == 0 {
		bad("target %s: port is required", s.Target)
	}

	s.Via = s.Via.Unmap()
	switch {
	case !s.Via.IsValid() && s.Mark != 0:
		bad("mark %#x without via", s.Mark)
	case !s.Via.IsValid():
	case s.Mark == 0:
		bad("via %s needs a mark", s.Via)
	case s.Target.IsValid() && s.Via.Is4() != s.Target.Addr().Unmap().Is4():
		bad("via %s and target %s differ in family", s.Via, s.Target)
	}

	if s.Interval == 0 {
		s.Interval = DefaultInterval
	} else if s.Interval < 0 {
		bad("interval %v must be positive", s.Interval)
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultTimeout
	} else if s.Timeout < 0 {
		bad("timeout %v must be positive", s.Timeout)
	}
	if s.HealthyThreshold == 0 {
		s.HealthyThreshold = DefaultHealthyThreshold
	} else if s.HealthyThreshold < 0 {
		bad("healthy_threshold %d must be at least 1", s.HealthyThreshold)
	}
	if s.UnhealthyThreshold == 0 {
		s.UnhealthyThreshold = DefaultUnhealthyThreshold
	} else if s.UnhealthyThreshold < 0 {
		bad("unhealthy_threshold %d must be at least 1", s.UnhealthyThreshold)
	}
	switch {
	case math.IsNaN(s.Jitter) || s.Jitter >= 1:
		bad("jitter %v must be below 1", s.Jitter)
	case s.Jitter == 0:
		s.Jitter = DefaultJitter
	case s.Jitter < 0:
		s.Jitter = NoJitter
	}

	if len(probs) > 0 {
		return Spec{}, fmt.Errorf("%w %s: %s", ErrInvalidSpec, s, strings.Join(probs, "; "))
	}
	return s, nil
}

func checkPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("must start with /")
	}
	if strings.IndexFunc(p, func(r rune) bool { return r == '#' || unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return fmt.Errorf("must not contain spaces, control characters or #")
	}
	if _, err := url.ParseRequestURI(p); err != nil {
		return err
	}
	return nil
}

func checkHost(h string) error {
	if strings.IndexFunc(h, func(r rune) bool {
		return strings.ContainsRune("/?#@\\", r) || unicode.IsSpace(r) || unicode.IsControl(r)
	}) >= 0 {
		return fmt.Errorf("not a host name")
	}
	return nil
}

// jitterFraction is Jitter without the NoJitter marker.
func (s Spec) jitterFraction() float64 { return max(s.Jitter, 0) }

// Subject is one user of a checker, named in logs and metric labels.
type Subject struct {
	Service string
	Backend string
}

// String is "service/backend".
func (s Subject) String() string { return s.Service + "/" + s.Backend }

// Target is one check the Manager should run and who uses it.
type Target struct {
	Spec     Spec
	Initial  State     // state of a new checker; unused when the checker already runs
	Subjects []Subject // may be empty
}

// Interface guards.
var (
	_ fmt.Stringer             = State(0)
	_ encoding.TextMarshaler   = State(0)
	_ encoding.TextUnmarshaler = (*State)(nil)
	_ fmt.Stringer             = Spec{}
	_ fmt.Stringer             = Subject{}
)

// Package health runs xlb's active health checks and turns their results into
// backend states that the reconciler subscribes to.
//
// It knows nothing of BPF maps or proxies: a check is a Spec (what to probe
// and how often), its users are Subjects (service and backend names, for logs
// and metric labels), and the output is a State per Spec, delivered as
// Transitions. The files follow the concerns:
//
//   - spec.go: Spec, its defaults and validation (Normalize), State, Kind,
//     Subject, Target; status.go: StatusSet and ParseStatusSet;
//   - check.go: the probes (HTTP(S) GET, TCP connect) and the classification
//     of their errors into short reasons; Check runs one;
//   - threshold.go: Tracker, the threshold state machine, pure;
//   - manager.go: Manager, one goroutine per checker, Set, State, Snapshot,
//     Close; subscribe.go: Subscribe and its delivery;
//   - metrics.go: the Prometheus metrics.
//
// # Checks
//
// An HTTP check is an HTTP/1.1 GET of Spec.Path (default "/") on the target
// address, with Spec.Host as Host header if set, without following
// redirects; it succeeds when the status is in Spec.ExpectStatus (default
// 2xx). HTTPS is the same over TLS without certificate verification (Host is
// the server name). A TCP check succeeds when a connection completes; it is
// closed at once.
//
// A Spec with Via checks Target, a VIP, through the backend Via: its
// sockets carry Spec.Mark (SO_MARK, set before the connect; it needs
// CAP_NET_ADMIN), which the caller's policy routing (package checkroute)
// sends to the VIP via that backend. The Host header then defaults to the
// VIP and port, as a client's would.
//
// HTTP(S) checks reuse their connection (keep-alive, as Envoy does), which
// at 1000 checks a second saves most of their cost, but a connection serves
// at most Spec.ChecksPerConnection checks (default 10): the last of them
// sends "Connection: close" and the next check opens a new connection. So a
// backend that stops accepting connections while still answering on the
// open one (a full accept queue, a listener closed for a graceful restart,
// a firewall that lets only established flows through) fails from the first
// check after that, and is marked unhealthy within ChecksPerConnection-1 +
// UnhealthyThreshold checks (12 with the defaults: 60 s at the default
// Interval); one that goes away or stops answering fails at
// the next check, as without reuse. A kept connection that the server closed
// while it was idle is retried once on a new connection within the same
// check (as net/http does for a GET). ChecksPerConnection 1 opens a new
// connection for every check. A connection is also not kept after an answer
// with a body that is not delimited or longer than 4 KiB, after
// "Connection: close" from the server, or after any failure. Check, which
// runs a single check, always uses a new connection.
//
// Each check is bounded by Spec.Timeout (default 2s) through its context: a
// server that accepts and never answers fails with reason "timeout" after
// Timeout, not later. A failed check has a short reason, found with errors.Is
// on the error chain: "timeout" (context.DeadlineExceeded,
// os.ErrDeadlineExceeded), "refused" (ECONNREFUSED), "reset" (ECONNRESET),
// "unreachable" (EHOSTUNREACH, ENETUNREACH), "closed" (the server hung up
// without an answer), "status 503" (a status outside the set), or else the
// innermost error's message, shortened. Check errors are *CheckError values
// that match ErrTimeout, ErrRefused, ... with errors.Is.
//
// # Scheduling
//
// Each checker runs in its own goroutine, so a slow or hanging target never
// delays another's checks. The first check starts within Jitter×Interval of
// the checker's start (at once without jitter); each next one starts
// Interval±Jitter×Interval (uniformly; default Interval 5s, Jitter 0.1) after
// the start of the previous one. A checker never runs two checks at a time:
// if a check lasts longer than the delay (Timeout > Interval), the next starts
// when it ends. With jitter, every start is then rounded to the nearest
// multiple of Interval/10 (at most 100 ms) of the clock, so that the checks of
// many targets wake the process together rather than one by one: with 1000
// targets at 1 s this cuts the CPU the checks cost by more than half, and
// moves a start by at most 5% of Interval (50 ms). Without jitter
// (NoJitter) starts are not rounded.
// A checker reuses one timer, its prober and the prober's connection; a
// check runs in the checker's goroutine (no goroutines per connection). New
// checkers all check within Jitter×Interval of Set, and their phases then
// drift apart by the jitter of every delay (over the steps of the grid).
//
// # States
//
// A checker starts in its Target's Initial state, healthy by default, so a
// restart never blackholes a service while the first checks run. While
// healthy, UnhealthyThreshold consecutive failures (default 3) make it
// unhealthy; while unhealthy, HealthyThreshold consecutive successes
// (default 2) make it healthy. A success resets the count of failures and a
// failure that of successes: results that alternate never cross a threshold
// above 1.
//
// Targets with equal normalized Specs share one checker, and so one state,
// whichever services use them (an L4 and an L7 service on the same backend
// and check). Set on a reload keeps the checkers, state and counts of the
// Specs that did not change; a changed Spec (another port, path, interval...)
// is a new checker starting from its Initial state.
//
// # Transitions
//
// Subscribe delivers every state change to every subscriber. Delivery never
// blocks a checker: each subscription has a goroutine feeding its buffered
// channel, typically within microseconds of the deciding check; behind a slow
// reader, transitions are coalesced per Spec so that the latest state is
// never lost (see Subscribe).
//
// # Logs
//
// One line per event, with the service(s), backend(s), check and reason:
//
//	WARN  health check failed (2/3)  failure while healthy, below the threshold
//	ERROR marked UNHEALTHY           the failure that crosses the threshold
//	INFO  marked HEALTHY             the success that crosses the threshold
//
// Successful checks, and failures of a target already unhealthy, are logged
// at debug level only.
//
// # Lifecycle
//
// NewManager starts nothing. Set starts and stops checkers at once. Close
// stops them all, cancelling checks in flight, closes subscriptions and waits
// for every goroutine of the Manager to exit.
package health

package control

import (
	"fmt"
	"sync"
	"time"

	"github.com/xlb-dev/xlb/health"
)

// Event is one thing that happened to the balancer, as the status page
// shows it: a health transition, an admin change, a removal, a passive
// ejection, a reload.
type Event struct {
	Seq     uint64    `json:"seq"` // 1, 2, ... in order
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // one of the Event* kinds
	Service string    `json:"service,omitempty"`
	Backend string    `json:"backend,omitempty"` // the backend's id
	Message string    `json:"message"`
}

// Event kinds.
const (
	EventHealth = "health" // a health check verdict changed
	EventAdmin  = "admin"  // drained, readied, added, removal started or done; node drained or readied
	EventEject  = "eject"  // passive health took an L7 backend out
	EventReload = "reload" // the config was reloaded, or a reload refused
	EventStart  = "start"  // the daemon started
)

// DefaultEventsSize is how many events the daemon keeps.
const DefaultEventsSize = 256

// Events is a bounded ring of the latest events; safe for concurrent use.
// Readers ask for the events after the last sequence number they saw and
// get a channel that is closed at the next Add, so any number of them
// follow it without a subscription (and a slow one just misses the events
// that fell out of the ring).
type Events struct {
	mu   sync.Mutex
	ring []Event
	next uint64        // the next event's Seq
	wake chan struct{} // closed and replaced by Add
}

// NewEvents keeps the last size events (DefaultEventsSize if size <= 0).
func NewEvents(size int) *Events {
	if size <= 0 {
		size = DefaultEventsSize
	}
	return &Events{ring: make([]Event, size), next: 1, wake: make(chan struct{})}
}

// Add records an event now; Seq and Time are set here.
func (e *Events) Add(kind, service, backend, format string, args ...any) {
	e.add(Event{Time: time.Now(), Kind: kind, Service: service, Backend: backend, Message: fmt.Sprintf(format, args...)})
}

func (e *Events) add(ev Event) {
	if e == nil {
		return
	}
	e.mu.Lock()
	ev.Seq = e.next
	e.next++
	e.ring[ev.Seq%uint64(len(e.ring))] = ev
	close(e.wake)
	e.wake = make(chan struct{})
	e.mu.Unlock()
}

// Since returns the events kept whose Seq is above seq, oldest first, and
// a channel closed when the next one is added.
func (e *Events) Since(seq uint64) ([]Event, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	first := e.next - min(e.next-1, uint64(len(e.ring))) // the oldest kept
	first = max(first, seq+1)
	var out []Event
	for s := first; s < e.next; s++ {
		out = append(out, e.ring[s%uint64(len(e.ring))])
	}
	return out, e.wake
}

// Last is the Seq of the latest event (0: none yet).
func (e *Events) Last() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.next - 1
}

// healthEvent records a health transition as applied, once per subject.
func (e *Events) healthEvent(tr health.Transition) {
	for _, s := range tr.Subjects {
		e.add(Event{
			Time: tr.At, Kind: EventHealth, Service: s.Service, Backend: s.Service + "@" + s.Backend,
			Message: fmt.Sprintf("%s → %s (%s)", tr.From, tr.To, tr.Reason),
		})
	}
}

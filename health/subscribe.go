package health

import (
	"slices"
	"sync"
	"time"
)

// Transition is one change of a checker's state.
type Transition struct {
	Spec     Spec // normalized
	From, To State
	// Reason is that of the check that decided the change: "timeout",
	// "refused", "status 503", ... for To == Unhealthy; "status 200" or
	// "connected" for To == Healthy.
	Reason   string
	At       time.Time // when the deciding check ended
	Subjects []Subject // the checker's subjects at that time; a copy per subscriber
}

// Subscribe returns a channel that receives every state transition of every
// checker, and a function that ends the subscription and closes the channel
// (it is idempotent and returns once the channel is closed). Close closes the
// channels of all subscriptions.
//
// Delivery never blocks a checker. Each subscription has its own goroutine
// that feeds the channel, whose capacity is buffer, from a queue with at most
// one entry per Spec: while a reader is slow, a new transition of a Spec that
// already waits in the queue is merged into it (From of the older, To, Reason,
// At and Subjects of the newer), and when the two cancel out (healthy →
// unhealthy → healthy, the only way with two states) the entry is removed.
// So the reader may miss a round trip it was too slow to see, but never the
// latest state: the last transition it receives for a Spec always leads to
// the checker's current state, and transitions of one Spec arrive in order.
//
// There is no initial snapshot: to know every state, Subscribe first, then
// read Snapshot, then apply transitions. A transition of a Spec that a
// concurrent Set removes may still arrive after Set returns.
func (m *Manager) Subscribe(buffer int) (<-chan Transition, func()) {
	s := newSubscriber(buffer)
	m.subsMu.Lock()
	defer m.subsMu.Unlock()
	if m.subsClosed {
		close(s.out)
		return s.out, func() {}
	}
	m.subs[s] = struct{}{}
	m.wg.Go(s.run)
	return s.out, func() {
		m.subsMu.Lock()
		delete(m.subs, s)
		m.subsMu.Unlock()
		s.stop()
	}
}

// publish hands t to every subscriber without blocking.
func (m *Manager) publish(t Transition) {
	m.subsMu.Lock()
	defer m.subsMu.Unlock()
	for s := range m.subs {
		t := t
		t.Subjects = slices.Clone(t.Subjects)
		s.push(t)
	}
}

// closeSubscribers ends every subscription (Close).
func (m *Manager) closeSubscribers() {
	m.subsMu.Lock()
	m.subsClosed = true
	subs := m.subs
	m.subs = nil
	m.subsMu.Unlock()
	for s := range subs {
		s.stop()
	}
}

// subscriber is one subscription: a coalescing queue and the goroutine that
// moves it into out.
type subscriber struct {
	out    chan Transition
	wake   chan struct{} // capacity 1: something was pushed
	done   chan struct{} // closed by stop
	exited chan struct{} // closed when run has closed out
	once   sync.Once

	mu      sync.Mutex
	queue   []Spec // arrival order; may hold Specs no longer pending (skipped)
	pending map[Spec]Transition
}

func newSubscriber(buffer int) *subscriber {
	return &subscriber{
		out:     make(chan Transition, max(buffer, 0)),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		exited:  make(chan struct{}),
		pending: make(map[Spec]Transition),
	}
}

// push queues t, merging it with a queued transition of the same Spec.
func (s *subscriber) push(t Transition) {
	s.mu.Lock()
	if p, ok := s.pending[t.Spec]; ok {
		if p.From == t.To {
			delete(s.pending, t.Spec) // round trip: nothing to tell
		} else {
			t.From = p.From
			s.pending[t.Spec] = t
		}
	} else {
		s.pending[t.Spec] = t
		s.queue = append(s.queue, t.Spec)
		if len(s.queue) > 2*len(s.pending)+64 {
			s.compact()
		}
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// compact drops the queue entries of Specs that are no longer pending, and
// duplicates, keeping the first occurrence of each. Called with mu held.
func (s *subscriber) compact() {
	seen := make(map[Spec]bool, len(s.pending))
	q := s.queue[:0]
	for _, spec := range s.queue {
		if _, ok := s.pending[spec]; ok && !seen[spec] {
			seen[spec] = true
			q = append(q, spec)
		}
	}
	clear(s.queue[len(q):])
	s.queue = q
}

// pop takes the oldest pending transition.
func (s *subscriber) pop() (Transition, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) > 0 {
		spec := s.queue[0]
		s.queue[0] = Spec{}
		s.queue = s.queue[1:]
		if t, ok := s.pending[spec]; ok {
			delete(s.pending, spec)
			return t, true
		}
	}
	s.queue = nil // let the backing array go
	return Transition{}, false
}

// queued is the number of transitions waiting (tests).
func (s *subscriber) queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

func (s *subscriber) run() {
	defer close(s.exited)
	defer close(s.out)
	for {
		t, ok := s.pop()
		if !ok {
			select {
			case <-s.wake:
				continue
			case <-s.done:
				return
			}
		}
		select {
		case s.out <- t:
		case <-s.done:
			return
		}
	}
}

// stop ends run and waits until out is closed.
func (s *subscriber) stop() {
	s.once.Do(func() { close(s.done) })
	<-s.exited
}

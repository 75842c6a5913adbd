package health

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// Whatever the reader's speed, the transitions it gets for each Spec form a
// chain (each From is the previous To) that ends in the latest state, and
// pushing never blocks.
func TestSubscriberCoalesces(t *testing.T) {
	specs := make([]Spec, 5)
	for i := range specs {
		specs[i] = Spec{Kind: KindTCP, Target: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(1000+i))}
	}
	tests := []struct {
		name   string
		buffer int
		pushes int
		pause  time.Duration // reader's pause per transition
	}{
		{name: "unbuffered, no reader during pushes", buffer: 0, pushes: 10000},
		{name: "buffered, no reader during pushes", buffer: 3, pushes: 10000},
		{name: "slow reader", buffer: 1, pushes: 300, pause: 100 * time.Microsecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSubscriber(tt.buffer)
			go s.run()
			defer s.stop()

			state := make(map[Spec]State)
			seen := make(map[Spec]State)
			read := func(timeout time.Duration) bool {
				select {
				case tr := <-s.out:
					if tr.From == tr.To {
						t.Fatalf("transition to the same state: %+v", tr)
					}
					if tr.From != seen[tr.Spec] {
						t.Fatalf("%s: transition from %v, but the last one seen went to %v", tr.Spec, tr.From, seen[tr.Spec])
					}
					seen[tr.Spec] = tr.To
					time.Sleep(tt.pause)
					return true
				case <-time.After(timeout):
					return false
				}
			}

			start := time.Now()
			for range tt.pushes {
				spec := specs[rand.IntN(len(specs))]
				from := state[spec]
				to := 1 - from
				state[spec] = to
				s.push(Transition{Spec: spec, From: from, To: to})
				if q := s.queued(); q > len(specs) {
					t.Fatalf("%d transitions queued for %d specs", q, len(specs))
				}
				if tt.pause > 0 && rand.IntN(3) == 0 {
					read(0)
				}
			}
			if tt.pause == 0 {
				if d := time.Since(start); d > time.Second {
					t.Errorf("%d pushes without a reader took %v", tt.pushes, d)
				}
			}
			for read(50 * time.Millisecond) {
			}
			for _, spec := range specs {
				if seen[spec] != state[spec] {
					t.Errorf("%s: reader ends at %v, state is %v", spec, seen[spec], state[spec])
				}
			}
		})
	}
}

// A transition reaches a waiting reader at once.
func TestSubscriberLatency(t *testing.T) {
	s := newSubscriber(0)
	go s.run()
	defer s.stop()
	spec := Spec{Kind: KindTCP}
	var worst time.Duration
	for i := range 100 {
		at := time.Now()
		s.push(Transition{Spec: spec, From: State(i % 2), To: State(1 - i%2), At: at})
		tr := <-s.out
		worst = max(worst, time.Since(tr.At))
	}
	if worst > 50*time.Millisecond {
		t.Errorf("worst delivery latency %v", worst)
	}
	t.Logf("worst delivery latency %v", worst)
}

func TestSubscriberStop(t *testing.T) {
	s := newSubscriber(0)
	go s.run()
	s.push(Transition{Spec: Spec{Kind: KindTCP}, To: Unhealthy}) // blocks run on send: nobody reads
	done := make(chan struct{})
	go func() { s.stop(); s.stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("stop blocked")
	}
	for range s.out {
	}
}

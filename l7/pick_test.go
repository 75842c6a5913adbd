package l7

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testUpstreams returns upstreams 198.18.0.11:8080, 198.18.0.12:8080, ...
// with the given weights, named by AssignNames.
func testUpstreams(weights ...int) []*Upstream {
	ups := make([]*Upstream, len(weights))
	for i, w := range weights {
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i / 200), byte(11 + i%200)}), 8080)
		ups[i] = &Upstream{ID: "web@" + addr.String(), Addr: addr, Weight: w}
	}
	AssignNames(ups)
	return ups
}

func testPool(t testing.TB, policy string, ups []*Upstream) *Pool {
	t.Helper()
	pol, err := NewPolicy(policy)
	if err != nil {
		t.Fatal(err)
	}
	return &Pool{Service: "web", Upstreams: ups, Policy: pol}
}

// testRequest is a GET from client ip ("" for 192.0.2.1).
func testRequest(ip string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://vip.test/", nil)
	if ip != "" {
		r.RemoteAddr = netip.AddrPortFrom(netip.MustParseAddr(ip), 40000).String()
	}
	return r
}

func indexOf(ups []*Upstream, u *Upstream) int {
	for i, x := range ups {
		if x == u {
			return i
		}
	}
	return -1
}

// pickSeq picks n times, each request finished at once with ResultOK, and
// returns the upstream indexes.
func pickSeq(t testing.TB, p *Pool, n int) []int {
	t.Helper()
	seq := make([]int, n)
	for i := range seq {
		u, _, err := p.Pick(testRequest(""), nil)
		if err != nil {
			t.Fatalf("pick %d: %v", i, err)
		}
		seq[i] = indexOf(p.Upstreams, u)
		u.Done(p, ResultOK, time.Millisecond)
	}
	return seq
}

func counts(seq []int, n int) []int {
	c := make([]int, n)
	for _, i := range seq {
		c[i]++
	}
	return c
}

var allPolicies = []string{PolicyRoundRobin, PolicyLeastConnections, PolicyIPHash, PolicyRandom}

func TestPickNoUpstream(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(ups []*Upstream)
		exclude int // index, -1 none
	}{
		{"all down", func(ups []*Upstream) {
			for _, u := range ups {
				u.SetState(StateDown)
			}
		}, -1},
		{"all draining", func(ups []*Upstream) {
			for _, u := range ups {
				u.SetState(StateDraining)
			}
		}, -1},
		{"all ejected", func(ups []*Upstream) {
			for _, u := range ups {
				u.ejectedUntil.Store(time.Now().Add(time.Hour).UnixNano())
			}
		}, -1},
		{"all weight 0", func(ups []*Upstream) {
			for _, u := range ups {
				u.Weight = 0
			}
		}, -1},
		{"mixed", func(ups []*Upstream) {
			ups[0].SetState(StateDown)
			ups[1].SetState(StateDraining)
			ups[2].ejectedUntil.Store(time.Now().Add(time.Hour).UnixNano())
		}, -1},
		{"only the excluded one usable", func(ups []*Upstream) {
			ups[0].SetState(StateDown)
			ups[1].SetState(StateDown)
		}, 2},
		{"no upstreams", nil, -1},
	}
	for _, tt := range tests {
		for _, policy := range allPolicies {
			t.Run(tt.name+"/"+policy, func(t *testing.T) {
				ups := testUpstreams(1, 1, 1)
				if tt.setup == nil {
					ups = nil
				} else {
					tt.setup(ups)
				}
				var exclude *Upstream
				if tt.exclude >= 0 {
					exclude = ups[tt.exclude]
				}
				p := testPool(t, policy, ups)
				p.MaxInFlight = 10
				if u := p.Policy.Select(p, testRequest("203.0.113.7"), exclude); u != nil {
					t.Errorf("Select = %v, want nil", u.Addr)
				}
				u, ck, err := p.Pick(testRequest("203.0.113.7"), exclude)
				if !errors.Is(err, ErrNoUpstream) || u != nil || ck != nil {
					t.Errorf("Pick = %v, %v, %v; want ErrNoUpstream", u, ck, err)
				}
			})
		}
	}
	var nilPool *Pool
	if _, _, err := nilPool.Pick(testRequest(""), nil); !errors.Is(err, ErrNoUpstream) {
		t.Errorf("nil pool: %v", err)
	}
}

func TestPickOverloaded(t *testing.T) {
	for _, policy := range allPolicies {
		t.Run(policy, func(t *testing.T) {
			ups := testUpstreams(1, 1, 1)
			p := testPool(t, policy, ups)
			p.MaxInFlight = 2
			var held []*Upstream
			// Six slots in all: every pick succeeds (the policy's choice
			// when it has room, another one's otherwise), whatever the
			// policy (ip_hash sends every request of one client to one
			// upstream first).
			for i := range 6 {
				u, _, err := p.Pick(testRequest("203.0.113.7"), nil)
				if err != nil {
					t.Fatalf("pick %d: %v", i, err)
				}
				held = append(held, u)
			}
			for i, u := range ups {
				if n := u.InFlight.Load(); n != 2 {
					t.Errorf("upstream %d InFlight = %d, want 2", i, n)
				}
			}
			if u, _, err := p.Pick(testRequest("203.0.113.7"), nil); !errors.Is(err, ErrOverloaded) {
				t.Fatalf("7th pick = %v, %v; want ErrOverloaded", u, err)
			}
			// One finishes: exactly its slot is free again.
			held[0].Done(p, ResultOK, 0)
			u, _, err := p.Pick(testRequest("198.51.100.1"), nil)
			if err != nil || u != held[0] {
				t.Fatalf("pick after Done = %v, %v; want the upstream that finished", u, err)
			}
			// Full and down: down wins, ErrNoUpstream.
			for _, u := range ups {
				u.SetState(StateDown)
			}
			if _, _, err := p.Pick(testRequest(""), nil); !errors.Is(err, ErrNoUpstream) {
				t.Fatalf("all down and full: %v; want ErrNoUpstream", err)
			}
		})
	}
}

func TestPickChosenFullGoesToLeastLoaded(t *testing.T) {
	ups := testUpstreams(1, 1, 1)
	p := testPool(t, PolicyRoundRobin, ups)
	p.MaxInFlight = 3
	ups[0].InFlight.Store(3) // round robin's next choice, full
	ups[1].InFlight.Store(2)
	ups[2].InFlight.Store(1)
	u, _, err := p.Pick(testRequest(""), nil)
	if err != nil || u != ups[2] {
		t.Fatalf("Pick = %v, %v; want upstream 2 (the least loaded with room)", u, err)
	}
	if n := ups[0].InFlight.Load(); n != 3 {
		t.Errorf("full upstream InFlight = %d, want 3", n)
	}
}

func TestPickExclude(t *testing.T) {
	for _, policy := range allPolicies {
		t.Run(policy, func(t *testing.T) {
			ups := testUpstreams(1, 1, 1)
			p := testPool(t, policy, ups)
			for i := range 300 {
				ex := ups[i%3]
				r := testRequest(fmt.Sprintf("203.0.113.%d", i%250))
				u, _, err := p.Pick(r, ex)
				if err != nil {
					t.Fatal(err)
				}
				if u == ex {
					t.Fatalf("pick %d returned the excluded upstream", i)
				}
				u.Done(p, ResultOK, 0)
			}
		})
	}
}

func TestPickNilPolicyIsRoundRobin(t *testing.T) {
	ups := testUpstreams(1, 1, 1)
	p := &Pool{Upstreams: ups}
	if got, want := fmt.Sprint(pickSeq(t, p, 6)), "[0 1 2 0 1 2]"; got != want {
		t.Errorf("sequence = %s, want %s", got, want)
	}
}

// TestPickInFlightLimitConcurrent: many goroutines pick and finish; no
// upstream ever holds more than MaxInFlight requests, and every slot is
// given back.
func TestPickInFlightLimitConcurrent(t *testing.T) {
	for _, policy := range allPolicies {
		t.Run(policy, func(t *testing.T) {
			const limit, workers, rounds = 3, 64, 300
			ups := testUpstreams(1, 2, 1, 1)
			p := testPool(t, policy, ups)
			p.MaxInFlight = limit
			p.Passive = PassiveConfig{MaxFails: 5, BaseEjection: time.Millisecond, MaxEjection: 4 * time.Millisecond}
			holders := make([]atomic.Int64, len(ups)) // our own count of holders
			var maxSeen [8]atomic.Int64
			var ok, overloaded, none atomic.Int64
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					r := testRequest(fmt.Sprintf("203.0.113.%d", w))
					for i := range rounds {
						u, _, err := p.Pick(r, nil)
						switch {
						case errors.Is(err, ErrOverloaded):
							overloaded.Add(1)
							continue
						case errors.Is(err, ErrNoUpstream):
							none.Add(1) // all ejected for a moment
							continue
						case err != nil:
							t.Error(err)
							return
						}
						ok.Add(1)
						k := indexOf(ups, u)
						h := holders[k].Add(1)
						for {
							m := maxSeen[k].Load()
							if h <= m || maxSeen[k].CompareAndSwap(m, h) {
								break
							}
						}
						if n := u.InFlight.Load(); n > limit {
							t.Errorf("InFlight = %d > %d", n, limit)
						}
						holders[k].Add(-1)
						res := ResultOK
						if (w+i)%7 == 0 {
							res = ResultServerError
						}
						u.Done(p, res, time.Microsecond)
					}
				})
			}
			wg.Wait()
			var total uint64
			for k, u := range ups {
				if m := maxSeen[k].Load(); m > limit {
					t.Errorf("upstream %d had %d requests at once, limit %d", k, m, limit)
				}
				if n := u.InFlight.Load(); n != 0 {
					t.Errorf("upstream %d InFlight = %d after all done", k, n)
				}
				total += u.Requests.Load()
			}
			if total != uint64(ok.Load()) {
				t.Errorf("Requests sum = %d, successful picks %d", total, ok.Load())
			}
			if ok.Load() == 0 || ok.Load()+overloaded.Load()+none.Load() != workers*rounds {
				t.Errorf("ok %d overloaded %d none %d", ok.Load(), overloaded.Load(), none.Load())
			}
			t.Logf("ok %d, overloaded %d, no upstream %d", ok.Load(), overloaded.Load(), none.Load())
		})
	}
}

func TestPickAllocs(t *testing.T) {
	for _, policy := range allPolicies {
		t.Run(policy, func(t *testing.T) {
			ups := testUpstreams(1, 1, 1)
			p := testPool(t, policy, ups)
			p.MaxInFlight = 100
			r := testRequest("203.0.113.9")
			p.Pick(r, nil) // builds the ip_hash table
			allocs := testing.AllocsPerRun(1000, func() {
				u, _, err := p.Pick(r, nil)
				if err != nil {
					t.Fatal(err)
				}
				u.Done(p, ResultOK, time.Millisecond)
			})
			if allocs != 0 {
				t.Errorf("Pick+Done: %v allocations, want 0", allocs)
			}
		})
	}
}

func BenchmarkPick(b *testing.B) {
	for _, policy := range allPolicies {
		b.Run(policy, func(b *testing.B) {
			ups := testUpstreams(1, 1, 1, 1, 1, 1, 1, 1)
			p := testPool(b, policy, ups)
			p.MaxInFlight = 1 << 20
			b.RunParallel(func(pb *testing.PB) {
				r := testRequest("203.0.113.9")
				for pb.Next() {
					u, _, err := p.Pick(r, nil)
					if err != nil {
						b.Fatal(err)
					}
					u.Done(p, ResultOK, time.Millisecond)
				}
			})
		})
	}
}

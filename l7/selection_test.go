package l7

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/maglev"
)

func TestNewPolicy(t *testing.T) {
	tests := []struct {
		name    string
		wantErr bool
	}{
		{PolicyRoundRobin, false},
		{PolicyLeastConnections, false},
		{PolicyIPHash, false},
		{PolicyRandom, false},
		{"", true},
		{"roundrobin", true},
		{"Round_Robin", true},
		{"least_conn", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewPolicy(tt.name)
			if tt.wantErr {
				if !errors.Is(err, ErrUnknownPolicy) || p != nil {
					t.Fatalf("NewPolicy(%q) = %v, %v; want ErrUnknownPolicy", tt.name, p, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := fmt.Sprint(p); s != tt.name {
				t.Errorf("policy prints as %q", s)
			}
		})
	}
	a, _ := NewPolicy(PolicyRoundRobin)
	b, _ := NewPolicy(PolicyRoundRobin)
	if a == b {
		t.Error("NewPolicy returned a shared instance")
	}
}

// unusable makes ups[i] unusable in one of the ways a pool sees.
func unusable(how string, u *Upstream) {
	switch how {
	case "down":
		u.SetState(StateDown)
	case "draining":
		u.SetState(StateDraining)
	case "ejected":
		u.ejectedUntil.Store(time.Now().Add(time.Hour).UnixNano())
	case "weight0":
		u.Weight = 0
	}
}

func TestRoundRobin(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		out     map[int]string // index -> how it is unusable
		n       int
		seq     string // exact sequence, if set
		counts  []int
	}{
		{name: "equal weights cycle", weights: []int{1, 1, 1}, n: 6, seq: "[0 1 2 0 1 2]", counts: []int{2, 2, 2}},
		{name: "one down", weights: []int{1, 1, 1}, out: map[int]string{1: "down"}, n: 6, seq: "[0 2 0 2 0 2]", counts: []int{3, 0, 3}},
		{name: "one draining", weights: []int{1, 1, 1}, out: map[int]string{1: "draining"}, n: 6, counts: []int{3, 0, 3}},
		{name: "one ejected", weights: []int{1, 1, 1}, out: map[int]string{1: "ejected"}, n: 6, counts: []int{3, 0, 3}},
		{name: "one weight 0", weights: []int{1, 0, 1}, n: 6, counts: []int{3, 0, 3}},
		{name: "first down", weights: []int{1, 1, 1}, out: map[int]string{0: "down"}, n: 4, seq: "[1 2 1 2]"},
		{name: "two down", weights: []int{1, 1, 1}, out: map[int]string{0: "down", 2: "draining"}, n: 3, seq: "[1 1 1]"},
		{name: "weights 2:1 smooth", weights: []int{2, 1}, n: 6, seq: "[0 1 0 0 1 0]"},
		{name: "weights 2:1 share", weights: []int{2, 1}, n: 300, counts: []int{200, 100}},
		{name: "weights 1:2 (compat config)", weights: []int{1, 2}, n: 300, counts: []int{100, 200}},
		{name: "nginx 5:1:1", weights: []int{5, 1, 1}, n: 7, seq: "[0 0 1 0 2 0 0]"},
		{name: "weights 3:2:1 share", weights: []int{3, 2, 1}, n: 600, counts: []int{300, 200, 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ups := testUpstreams(tt.weights...)
			for i, how := range tt.out {
				unusable(how, ups[i])
			}
			p := testPool(t, PolicyRoundRobin, ups)
			seq := pickSeq(t, p, tt.n)
			if tt.seq != "" {
				if got := fmt.Sprint(seq); got != tt.seq {
					t.Errorf("sequence %s, want %s", got, tt.seq)
				}
			}
			if tt.counts != nil {
				if got := counts(seq, len(ups)); !slices.Equal(got, tt.counts) {
					t.Errorf("counts %v, want %v", got, tt.counts)
				}
			}
		})
	}
}

// TestRoundRobinAcrossSwaps: the rotation lives in the upstreams, so a new
// pool (even with a new policy value) carrying them over continues it; an
// upstream coming back joins the rotation.
func TestRoundRobinAcrossSwaps(t *testing.T) {
	ups := testUpstreams(1, 1, 1)
	p1 := testPool(t, PolicyRoundRobin, ups)
	got := pickSeq(t, p1, 2)
	p2 := testPool(t, PolicyRoundRobin, ups) // a reload: new pool, new policy
	got = append(got, pickSeq(t, p2, 4)...)
	if s := fmt.Sprint(got); s != "[0 1 2 0 1 2]" {
		t.Errorf("across a swap: %s, want [0 1 2 0 1 2]", s)
	}
	// An upstream added by the swap takes part at once.
	more := append(slices.Clone(ups), testUpstreams(1, 1, 1, 1)[3])
	p3 := &Pool{Upstreams: more, Policy: p2.Policy}
	if c := counts(pickSeq(t, p3, 40), 4); !slices.Equal(c, []int{10, 10, 10, 10}) {
		t.Errorf("after adding one: %v, want 10 each", c)
	}
	// Down then up again: back in the rotation with an even share.
	ups[1].SetState(StateDown)
	if c := counts(pickSeq(t, p3, 30), 4); c[1] != 0 {
		t.Errorf("down upstream picked %d times", c[1])
	}
	ups[1].SetState(StateUp)
	if c := counts(pickSeq(t, p3, 40), 4); !slices.Equal(c, []int{10, 10, 10, 10}) {
		t.Errorf("after coming back: %v, want 10 each", c)
	}
}

// TestRoundRobinSetChange: when the usable set changes, the rotation
// restarts from the new set, whatever position the old one had reached: with
// three equal upstreams and one gone the next picks alternate between the
// other two (the stale current weights used to give 2,2,0,2 after one
// request), one coming back takes its turn at once, and weights still hold.
func TestRoundRobinSetChange(t *testing.T) {
	// change is applied to the upstreams (and may return a new upstream list
	// for the pool, a swap) after `before` picks.
	type change func(ups []*Upstream) []*Upstream
	set := func(i int, s State) change {
		return func(ups []*Upstream) []*Upstream { ups[i].SetState(s); return ups }
	}
	ejectNow := func(i int) change {
		return func(ups []*Upstream) []*Upstream { unusable("ejected", ups[i]); return ups }
	}
	readmit := func(i int) change {
		return func(ups []*Upstream) []*Upstream { ups[i].Readmit(); return ups }
	}
	remove := func(i int) change {
		return func(ups []*Upstream) []*Upstream { return slices.Delete(slices.Clone(ups), i, i+1) }
	}
	tests := []struct {
		name    string
		weights []int
		setup   map[int]string // unusable from the start: index -> how
		before  int            // picks before the change
		change  change
		after   int
		seq     string // the picks after the change (indexes into the original upstreams)
		counts  []int  // their counts, if set
	}{
		{name: "down after 0", weights: []int{1, 1, 1}, before: 0, change: set(1, StateDown), after: 4, seq: "[0 2 0 2]"},
		{name: "down after 1 (the issue)", weights: []int{1, 1, 1}, before: 1, change: set(1, StateDown), after: 4, seq: "[0 2 0 2]"},
		{name: "down after 2", weights: []int{1, 1, 1}, before: 2, change: set(1, StateDown), after: 4, seq: "[0 2 0 2]"},
		{name: "last down after 1", weights: []int{1, 1, 1}, before: 1, change: set(2, StateDown), after: 4, seq: "[0 1 0 1]"},
		{name: "first down after 2", weights: []int{1, 1, 1}, before: 2, change: set(0, StateDown), after: 4, seq: "[1 2 1 2]"},
		{name: "draining after 4", weights: []int{1, 1, 1}, before: 4, change: set(1, StateDraining), after: 4, seq: "[0 2 0 2]"},
		{name: "ejected after 1", weights: []int{1, 1, 1}, before: 1, change: ejectNow(1), after: 4, seq: "[0 2 0 2]"},
		{name: "removed by a swap after 1", weights: []int{1, 1, 1}, before: 1, change: remove(1), after: 4, seq: "[0 2 0 2]"},
		{name: "back up after 1", weights: []int{1, 1, 1}, setup: map[int]string{1: "down"}, before: 1, change: set(1, StateUp), after: 6, seq: "[0 1 2 0 1 2]"},
		{name: "back up after 3", weights: []int{1, 1, 1}, setup: map[int]string{1: "down"}, before: 3, change: set(1, StateUp), after: 6, seq: "[0 1 2 0 1 2]"},
		{name: "readmitted after 1", weights: []int{1, 1, 1}, setup: map[int]string{0: "ejected"}, before: 1, change: readmit(0), after: 6, seq: "[0 1 2 0 1 2]"},
		{name: "weighted 2:1:1, one down", weights: []int{2, 1, 1}, before: 1, change: set(2, StateDown), after: 6, seq: "[0 1 0 0 1 0]", counts: []int{4, 2, 0}},
		{name: "weighted 3:2:1, one down", weights: []int{3, 2, 1}, before: 5, change: set(1, StateDown), after: 40, counts: []int{30, 0, 10}},
		{name: "weighted 5:1:1, one back", weights: []int{5, 1, 1}, setup: map[int]string{2: "draining"}, before: 3, change: set(2, StateUp), after: 7, seq: "[0 0 1 0 2 0 0]", counts: []int{5, 1, 1}},
		{name: "weighted 1:3, one added", weights: []int{1, 3, 2}, setup: map[int]string{2: "down"}, before: 2, change: set(2, StateUp), after: 60, counts: []int{10, 30, 20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ups := testUpstreams(tt.weights...)
			for i, how := range tt.setup {
				unusable(how, ups[i])
			}
			p := testPool(t, PolicyRoundRobin, ups)
			pickSeq(t, p, tt.before)
			if now := tt.change(ups); !slices.Equal(now, ups) {
				p = &Pool{Service: p.Service, Upstreams: now, Policy: p.Policy}
			}
			var seq []int
			for _, i := range pickSeq(t, p, tt.after) {
				seq = append(seq, indexOf(ups, p.Upstreams[i]))
			}
			if tt.seq != "" {
				if got := fmt.Sprint(seq); got != tt.seq {
					t.Errorf("after the change: %s, want %s", got, tt.seq)
				}
			}
			if tt.counts != nil {
				if got := counts(seq, len(ups)); !slices.Equal(got, tt.counts) {
					t.Errorf("counts after the change %v, want %v", got, tt.counts)
				}
			}
		})
	}
}

// TestRoundRobinRetryKeepsRotation: a retry's exclude does not restart the
// rotation (the excluded upstream is still in the usable set).
func TestRoundRobinRetryKeepsRotation(t *testing.T) {
	ups := testUpstreams(1, 1, 1)
	p := testPool(t, PolicyRoundRobin, ups)
	seq := pickSeq(t, p, 1)                                                      // 0
	seq = append(seq, indexOf(ups, p.Policy.Select(p, testRequest(""), ups[1]))) // a retry away from 1: 2
	seq = append(seq, pickSeq(t, p, 4)...)
	// The rotation goes on: 1 gets the turn the retry skipped it for. (A
	// restart on the retry and again on the next pick would give 0 0 0 1 2 0.)
	if got := fmt.Sprint(seq); got != "[0 2 1 2 0 1]" {
		t.Errorf("sequence %s, want [0 2 1 2 0 1]", got)
	}
}

// TestRoundRobinSetChangeConcurrent: picks from many goroutines (through
// two policy values, as around a swap) while two upstreams go down and up
// always find one (two stay up), the race detector sees no unguarded access,
// and once the flapping stops the rotation is even again.
func TestRoundRobinSetChangeConcurrent(t *testing.T) {
	const workers, rounds = 16, 500
	ups := testUpstreams(1, 1, 1, 1)
	p1 := testPool(t, PolicyRoundRobin, ups)
	p2 := testPool(t, PolicyRoundRobin, ups)
	stop := make(chan struct{})
	var flap sync.WaitGroup
	flap.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			u := ups[1+i%2] // 0 and 3 stay up
			u.SetState(StateDown)
			time.Sleep(10 * time.Microsecond)
			u.SetState(StateUp)
		}
	})
	var wg sync.WaitGroup
	for w := range workers {
		p := p1
		if w%2 == 1 {
			p = p2
		}
		wg.Go(func() {
			r := testRequest("")
			for range rounds {
				if u := p.Policy.Select(p, r, nil); u == nil {
					t.Error("no upstream while two stay up")
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	flap.Wait()
	if c := counts(pickSeq(t, p1, 400), 4); !slices.Equal(c, []int{100, 100, 100, 100}) {
		t.Errorf("after the flapping: %v, want 100 each", c)
	}
}

func TestLeastConnections(t *testing.T) {
	tests := []struct {
		name     string
		weights  []int
		inFlight []int64
		out      map[int]string
		n        int
		seq      string
	}{
		{name: "5,2,10 picks the second", weights: []int{1, 1, 1}, inFlight: []int64{5, 2, 10}, n: 3, seq: "[1 1 1]"},
		{name: "ties round robin", weights: []int{1, 1, 1}, inFlight: []int64{0, 0, 0}, n: 6, seq: "[0 1 2 0 1 2]"},
		{name: "ties among two", weights: []int{1, 1, 1}, inFlight: []int64{3, 4, 3}, n: 4, seq: "[0 2 0 2]"},
		{name: "least loaded is down", weights: []int{1, 1, 1}, inFlight: []int64{5, 2, 10}, out: map[int]string{1: "down"}, n: 2, seq: "[0 0]"},
		{name: "least loaded is ejected", weights: []int{1, 1, 1}, inFlight: []int64{5, 2, 10}, out: map[int]string{1: "ejected"}, n: 2, seq: "[0 0]"},
		{name: "per unit of weight", weights: []int{1, 3, 1}, inFlight: []int64{2, 5, 3}, n: 2, seq: "[1 1]"},
		{name: "weighted tie", weights: []int{1, 2}, inFlight: []int64{2, 4}, n: 4, seq: "[0 1 0 1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ups := testUpstreams(tt.weights...)
			for i, n := range tt.inFlight {
				ups[i].InFlight.Store(n)
			}
			for i, how := range tt.out {
				unusable(how, ups[i])
			}
			p := testPool(t, PolicyLeastConnections, ups)
			// Select, so the in-flight counts stay as set.
			var seq []int
			for range tt.n {
				seq = append(seq, indexOf(ups, p.Policy.Select(p, testRequest(""), nil)))
			}
			if got := fmt.Sprint(seq); got != tt.seq {
				t.Errorf("sequence %s, want %s", got, tt.seq)
			}
		})
	}
}

// TestLeastConnectionsFollowsLoad: with requests held open, new ones go to
// the upstream that has the fewest.
func TestLeastConnectionsFollowsLoad(t *testing.T) {
	ups := testUpstreams(1, 1, 1)
	p := testPool(t, PolicyLeastConnections, ups)
	ups[0].InFlight.Store(4)
	for range 6 {
		if _, _, err := p.Pick(testRequest(""), nil); err != nil {
			t.Fatal(err)
		}
	}
	// 6 new requests fill 1 and 2 up to 3 each; 0 gets none.
	for i, want := range []int64{4, 3, 3} {
		if n := ups[i].InFlight.Load(); n != want {
			t.Errorf("upstream %d InFlight = %d, want %d", i, n, want)
		}
	}
}

func TestRandomPrefersLessLoaded(t *testing.T) {
	const n = 30000
	tests := []struct {
		name     string
		weights  []int
		inFlight []int64
		// Expected shares: with two distinct candidates out of three
		// equal ones, the least loaded wins whenever drawn (2/3), the
		// middle one when drawn with the most loaded (1/3), the most
		// loaded never.
		want []float64
	}{
		{"0,50,100", []int{1, 1, 1}, []int64{0, 50, 100}, []float64{2. / 3, 1. / 3, 0}},
		{"100,0,50", []int{1, 1, 1}, []int64{100, 0, 50}, []float64{0, 2. / 3, 1. / 3}},
		{"equal load is uniform", []int{1, 1, 1}, []int64{7, 7, 7}, []float64{1. / 3, 1. / 3, 1. / 3}},
		{"two: the lighter always", []int{1, 1}, []int64{9, 3}, []float64{0, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ups := testUpstreams(tt.weights...)
			for i, l := range tt.inFlight {
				ups[i].InFlight.Store(l)
			}
			p := testPool(t, PolicyRandom, ups)
			c := make([]int, len(ups))
			for range n {
				c[indexOf(ups, p.Policy.Select(p, testRequest(""), nil))]++
			}
			for i, w := range tt.want {
				got := float64(c[i]) / n
				if math.Abs(got-w) > 0.02 {
					t.Errorf("upstream %d share %.3f, want %.3f (counts %v)", i, got, w, c)
				}
			}
		})
	}
}

func TestRandomHonoursWeightsAndSkipsUnusable(t *testing.T) {
	ups := testUpstreams(3, 1, 1, 1)
	unusable("down", ups[3])
	p := testPool(t, PolicyRandom, ups)
	// Equal load: P2C keeps the first draw, so shares follow the weights.
	c := make([]int, len(ups))
	const n = 30000
	for range n {
		c[indexOf(ups, p.Policy.Select(p, testRequest(""), nil))]++
	}
	if c[3] != 0 {
		t.Errorf("down upstream picked %d times", c[3])
	}
	if got := float64(c[0]) / n; math.Abs(got-0.6) > 0.02 {
		t.Errorf("weight 3 of 5 share %.3f, want 0.6 (counts %v)", got, c)
	}
}

func TestAssignNames(t *testing.T) {
	tests := []struct {
		name  string
		addrs []string
		want  []string
	}{
		{"unique addresses", []string{"198.18.0.11:80", "198.18.0.12:80"}, []string{"198.18.0.11", "198.18.0.12"}},
		{"one host, two ports (the compat config)", []string{"127.0.0.1:3001", "127.0.0.1:3002"}, []string{"127.0.0.1:3001", "127.0.0.1:3002"}},
		{"mixed", []string{"198.18.0.11:80", "198.18.0.12:80", "198.18.0.12:81"}, []string{"198.18.0.11", "198.18.0.12:80", "198.18.0.12:81"}},
		{"IPv4-mapped", []string{"[::ffff:198.18.0.11]:80", "198.18.0.11:81"}, []string{"198.18.0.11:80", "198.18.0.11:81"}},
		{"IPv6", []string{"[2001:db8::1]:80", "[2001:db8::2]:80", "[2001:db8::2]:81"}, []string{"2001:db8::1", "[2001:db8::2]:80", "[2001:db8::2]:81"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ups []*Upstream
			for _, a := range tt.addrs {
				ups = append(ups, &Upstream{Addr: netip.MustParseAddrPort(a), Weight: 1})
			}
			AssignNames(ups)
			for i, u := range ups {
				if u.Name != tt.want[i] {
					t.Errorf("%s: Name %q, want %q", tt.addrs[i], u.Name, tt.want[i])
				}
			}
		})
	}
}

func TestClientIP(t *testing.T) {
	tests := []struct {
		remote   string
		override string
		want     string
	}{
		{"203.0.113.7:5555", "", "203.0.113.7"},
		{"[2001:db8::7]:5555", "", "2001:db8::7"},
		{"[::ffff:203.0.113.7]:5555", "", "203.0.113.7"},
		{"203.0.113.7", "", "203.0.113.7"},
		{"[fe80::1%eth0]:5555", "", "fe80::1%eth0"},
		{"garbage", "", "invalid IP"},
		{"", "", "invalid IP"},
		{"203.0.113.7:5555", "198.51.100.9", "198.51.100.9"},
		{"203.0.113.7:5555", "::ffff:198.51.100.9", "198.51.100.9"},
	}
	for _, tt := range tests {
		t.Run(tt.remote+"/"+tt.override, func(t *testing.T) {
			r := testRequest("")
			r.RemoteAddr = tt.remote
			if tt.override != "" {
				r = r.WithContext(WithClientIP(r.Context(), netip.MustParseAddr(tt.override)))
			}
			if got := ClientIP(r).String(); got != tt.want {
				t.Errorf("ClientIP = %s, want %s", got, tt.want)
			}
		})
	}
}

// clientIPs returns n distinct client addresses.
func clientIPs(n int) []netip.Addr {
	ips := make([]netip.Addr, n)
	for i := range ips {
		ips[i] = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	return ips
}

func ipRequest(a netip.Addr) *http.Request {
	return testRequest(a.String())
}

// TestIPHashMatchesMaglev: ip_hash sends a client where an independent
// maglev.Build + Lookup(SourceHash) over the usable upstreams' names and
// weights says, which is what the XDP path does, and always there.
func TestIPHashMatchesMaglev(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		out     map[int]string
		size    uint32
	}{
		{name: "three equal", weights: []int{1, 1, 1}},
		{name: "weighted", weights: []int{1, 2, 3, 1}},
		{name: "one down", weights: []int{1, 1, 1, 1}, out: map[int]string{2: "down"}},
		{name: "draining and weight 0", weights: []int{1, 0, 1, 1}, out: map[int]string{0: "draining"}},
		{name: "small table", weights: []int{1, 1, 1}, size: 251},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ups := testUpstreams(tt.weights...)
			for i, how := range tt.out {
				unusable(how, ups[i])
			}
			p := testPool(t, PolicyIPHash, ups)
			p.MaglevSize = tt.size
			size := tt.size
			if size == 0 {
				size = maglev.DefaultTableSize
			}
			// Independently: the loader's view.
			var bs []maglev.Backend
			var idx []int
			for i, u := range ups {
				if u.State() == StateUp && u.Weight > 0 && !u.Ejected(time.Now()) {
					bs = append(bs, maglev.Backend{Name: u.Addr.Addr().String(), Weight: uint32(u.Weight)})
					idx = append(idx, i)
				}
			}
			tbl, err := maglev.Build(bs, size)
			if err != nil {
				t.Fatal(err)
			}
			for _, ip := range clientIPs(2000) {
				want := idx[tbl.Lookup(maglev.SourceHash(ip))]
				for range 3 {
					u, _, err := p.Pick(ipRequest(ip), nil)
					if err != nil {
						t.Fatal(err)
					}
					if got := indexOf(ups, u); got != want {
						t.Fatalf("client %s: upstream %d, maglev says %d", ip, got, want)
					}
					u.Done(p, ResultOK, 0)
				}
			}
		})
	}
}

// TestIPHashDisruption: when an upstream goes, its clients move and few
// others do (Maglev); when it comes back, they return.
func TestIPHashDisruption(t *testing.T) {
	const n, clients = 10, 20000
	ups := testUpstreams(slices.Repeat([]int{1}, n)...)
	p := testPool(t, PolicyIPHash, ups)
	where := func() []*Upstream {
		out := make([]*Upstream, clients)
		for i, ip := range clientIPs(clients) {
			out[i] = p.Policy.Select(p, ipRequest(ip), nil)
		}
		return out
	}
	before := where()
	ups[4].SetState(StateDown)
	after := where()
	var onRemoved, movedOthers int
	for i := range before {
		if before[i] == ups[4] {
			onRemoved++
			if after[i] == ups[4] {
				t.Fatal("client still on the down upstream")
			}
		} else if after[i] != before[i] {
			movedOthers++
		}
	}
	moved := float64(onRemoved+movedOthers) / clients
	t.Logf("removed upstream had %d clients; %d other clients moved; %.1f%% moved in all", onRemoved, movedOthers, 100*moved)
	if share := float64(onRemoved) / clients; math.Abs(share-1./n) > 0.02 {
		t.Errorf("removed upstream had %.3f of clients, want about %.3f", share, 1./n)
	}
	if moved > 1./n+0.03 {
		t.Errorf("%.3f of clients moved, want about 1/%d", moved, n)
	}
	ups[4].SetState(StateUp)
	if back := where(); !slices.Equal(back, before) {
		t.Error("clients did not all return when the upstream came back")
	}
}

// TestIPHashTableCache: the table is built once per usable set, not per
// request, and rebuilt when the set changes.
func TestIPHashTableCache(t *testing.T) {
	ups := testUpstreams(1, 1, 1)
	p := testPool(t, PolicyIPHash, ups)
	h := p.Policy.(*ipHash)
	r := testRequest("203.0.113.7")
	p.Policy.Select(p, r, nil)
	first := h.table.Load()
	for range 100 {
		p.Policy.Select(p, r, nil)
	}
	if h.table.Load() != first {
		t.Fatal("table rebuilt without a change")
	}
	// A new pool with the same upstreams and policy: same table.
	p2 := &Pool{Upstreams: slices.Clone(ups), Policy: p.Policy}
	p2.Policy.Select(p2, r, nil)
	if h.table.Load() != first {
		t.Fatal("table rebuilt for an equal usable set")
	}
	// A change in load or in non-usable upstreams' states: same table.
	ups[0].InFlight.Store(50)
	p.Policy.Select(p, r, nil)
	if h.table.Load() != first {
		t.Fatal("table rebuilt on a load change")
	}
	ups[1].SetState(StateDraining)
	p.Policy.Select(p, r, nil)
	second := h.table.Load()
	if second == first || len(second.members) != 2 {
		t.Fatal("table not rebuilt when an upstream left")
	}
	ups[1].SetState(StateDown)
	p.Policy.Select(p, r, nil)
	if h.table.Load() != second {
		t.Fatal("table rebuilt between two unusable states")
	}
	allocs := testing.AllocsPerRun(100, func() { p.Policy.Select(p, r, nil) })
	if allocs != 0 {
		t.Errorf("Select with a cached table: %v allocations", allocs)
	}
}

// TestIPHashRetry: a retry away from the client's upstream goes to another
// one, the same one every time.
func TestIPHashRetry(t *testing.T) {
	ups := testUpstreams(1, 1, 1, 1)
	p := testPool(t, PolicyIPHash, ups)
	for _, ip := range clientIPs(200) {
		r := ipRequest(ip)
		first := p.Policy.Select(p, r, nil)
		second := p.Policy.Select(p, r, first)
		if second == nil || second == first {
			t.Fatalf("client %s: retry got %v", ip, second)
		}
		for range 3 {
			if again := p.Policy.Select(p, r, first); again != second {
				t.Fatalf("client %s: retry not deterministic", ip)
			}
		}
	}
}

// TestIPHashUnnamed: upstreams without Name (AssignNames not called) or with
// duplicate names still get a table.
func TestIPHashUnnamed(t *testing.T) {
	ups := testUpstreams(1, 1, 1)
	ups[0].Name, ups[1].Name, ups[2].Name = "", "x", "x"
	p := testPool(t, PolicyIPHash, ups)
	seen := map[*Upstream]bool{}
	for _, ip := range clientIPs(300) {
		u := p.Policy.Select(p, ipRequest(ip), nil)
		if u == nil {
			t.Fatal("no upstream")
		}
		seen[u] = true
	}
	if len(seen) != 3 {
		t.Errorf("%d upstreams used, want 3", len(seen))
	}
}

func TestSelectAllocs(t *testing.T) {
	for _, policy := range allPolicies {
		t.Run(policy, func(t *testing.T) {
			ups := testUpstreams(1, 2, 1)
			ups[1].ejectedUntil.Store(time.Now().Add(-time.Second).UnixNano()) // expired
			p := testPool(t, policy, ups)
			r := testRequest("203.0.113.9")
			p.Policy.Select(p, r, nil)
			if a := testing.AllocsPerRun(1000, func() { p.Policy.Select(p, r, ups[0]) }); a != 0 {
				t.Errorf("%v allocations", a)
			}
		})
	}
}

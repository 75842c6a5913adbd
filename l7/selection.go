package l7

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/xlb-dev/xlb/maglev"
)

// Policy names accepted by NewPolicy.
const (
	PolicyRoundRobin       = "round_robin"
	PolicyLeastConnections = "least_connections"
	PolicyIPHash           = "ip_hash"
	PolicyRandom           = "random"
)

// NewPolicy returns a new instance of the named balancing policy. Each
// service needs its own instance (see Pool).
func NewPolicy(name string) (Policy, error) {
	switch name {
	case PolicyRoundRobin:
		return new(roundRobin), nil
	case PolicyLeastConnections:
		return new(leastConnections), nil
	case PolicyIPHash:
		return new(ipHash), nil
	case PolicyRandom:
		return random{}, nil
	}
	return nil, fmt.Errorf("%w %q (want %s, %s, %s or %s)", ErrUnknownPolicy, name,
		PolicyRoundRobin, PolicyLeastConnections, PolicyIPHash, PolicyRandom)
}

var (
	_ Policy = (*roundRobin)(nil)
	_ Policy = (*leastConnections)(nil)
	_ Policy = (*ipHash)(nil)
	_ Policy = random{}
)

// candidate: usable and not the upstream a retry moves away from.
func candidate(u, exclude *Upstream, c *clock) bool {
	return u != exclude && u.usable(c)
}

// lighter reports whether a carries less load per unit of weight than b:
// a.InFlight/a.Weight < b.InFlight/b.Weight, cross-multiplied (weights > 0).
func lighter(aLoad int64, aWeight int, bLoad int64, bWeight int) bool {
	return aLoad*int64(bWeight) < bLoad*int64(aWeight)
}

// roundRobin is nginx's smooth weighted round robin: on each pick every
// candidate's current weight grows by its weight, the largest (first in pool
// order on a tie) wins and loses the sum of the candidates' weights. Equal
// weights cycle in pool order; weights 2:1 give a, b, a; a down upstream is
// not a candidate and takes no turn.
//
// The current weights are in the Upstreams (so a swap that carries them over
// keeps the rotation); the mutex keeps one pick's read-modify-write of all of
// them whole. They are only meaningful for the set of usable upstreams they
// were accumulated over: when that set changes (one goes down, up, draining,
// is ejected or readmitted, or a swap adds or removes one), the survivors'
// current weights are whatever the old rotation left, and the leaver's stale
// one would give it a head start on its return. So each usable upstream
// records the set it was last balanced in (rrSet), and a pick that finds
// the usable set changed zeroes their current weights first: the rotation
// restarts from the new set, in pool order, honouring the weights. (The
// upstream a retry excludes still belongs to the set: a retry does not
// restart the rotation.)
type roundRobin struct {
	mu sync.Mutex
}

// rrSets numbers the usable sets round robin has balanced over (0: none).
var rrSets atomic.Uint32

// rrSetID packs a set's number and its size into Upstream.rrSet: one atomic
// word, so the two are read together.
func rrSetID(set uint32, n int) uint64 { return uint64(set)<<32 | uint64(uint32(n)) }

func (*roundRobin) String() string { return PolicyRoundRobin }

func (rr *roundRobin) Select(p *Pool, _ *http.Request, exclude *Upstream) *Upstream {
	var c clock
	var best *Upstream
	var bestCur, total int64
	rr.mu.Lock()
	// Is the usable set the one the current weights belong to? It is when
	// every usable upstream recorded the same set and that set had as many
	// members: a set's number is recorded only by its members, so they are
	// all here.
	n, same, set := 0, true, uint64(0)
	for _, u := range p.Upstreams {
		if !u.usable(&c) {
			continue
		}
		if s := u.rrSet.Load(); n == 0 {
			set = s
		} else if s != set {
			same = false
		}
		n++
	}
	if n > 0 && (!same || set>>32 == 0 || uint32(set) != uint32(n)) {
		id := rrSetID(rrSets.Add(1), n)
		for _, u := range p.Upstreams {
			if u.usable(&c) {
				u.rrCurrent.Store(0)
				u.rrSet.Store(id)
			}
		}
	}
	for _, u := range p.Upstreams {
		if !candidate(u, exclude, &c) {
			continue
		}
		w := int64(u.Weight)
		total += w
		cur := u.rrCurrent.Add(w)
		if best == nil || cur > bestCur {
			best, bestCur = u, cur
		}
	}
	if best != nil {
		best.rrCurrent.Add(-total)
	}
	rr.mu.Unlock()
	return best
}

// defaultPolicy serves pools without a Policy.
var defaultPolicy Policy = new(roundRobin)

// leastConnections picks the candidate with the fewest in-flight requests
// per unit of weight (with equal weights: the fewest in-flight requests);
// ties go round robin among the tied candidates.
type leastConnections struct {
	next atomic.Uint64 // tie-break rotation
}

func (*leastConnections) String() string { return PolicyLeastConnections }

func (lc *leastConnections) Select(p *Pool, _ *http.Request, exclude *Upstream) *Upstream {
	var c clock
	var first *Upstream
	var minLoad int64
	var minWeight, ties int
	for _, u := range p.Upstreams {
		if !candidate(u, exclude, &c) {
			continue
		}
		load := u.InFlight.Load()
		switch {
		case first == nil || lighter(load, u.Weight, minLoad, minWeight):
			first, minLoad, minWeight, ties = u, load, u.Weight, 1
		case !lighter(minLoad, minWeight, load, u.Weight):
			ties++
		}
	}
	if ties <= 1 {
		return first
	}
	k := int((lc.next.Add(1) - 1) % uint64(ties))
	// Second pass to the k-th tie. Loads move meanwhile: if the k-th is no
	// longer there, the first minimum of the first pass will do.
	for _, u := range p.Upstreams {
		if !candidate(u, exclude, &c) {
			continue
		}
		load := u.InFlight.Load()
		if !lighter(load, u.Weight, minLoad, minWeight) && !lighter(minLoad, minWeight, load, u.Weight) {
			if k == 0 {
				return u
			}
			k--
		}
	}
	return first
}

// random is the power of two choices: two distinct candidates drawn at
// random (in proportion to their weights), the less loaded one (in-flight
// per unit of weight) wins. It never picks the most loaded of three or more
// candidates, and spreads load almost as evenly as least_connections without
// a shared counter.
type random struct{}

func (random) String() string { return PolicyRandom }

func (random) Select(p *Pool, _ *http.Request, exclude *Upstream) *Upstream {
	var c clock
	var n, total int
	var only *Upstream
	for _, u := range p.Upstreams {
		if candidate(u, exclude, &c) {
			n++
			total += u.Weight
			only = u
		}
	}
	if n <= 1 {
		return only
	}
	a := nthByWeight(p, exclude, nil, rand.IntN(total), &c)
	if a == nil || total-a.Weight <= 0 {
		return a // states changed between the passes
	}
	b := nthByWeight(p, exclude, a, rand.IntN(total-a.Weight), &c)
	if b == nil || !lighter(b.InFlight.Load(), b.Weight, a.InFlight.Load(), a.Weight) {
		return a
	}
	return b
}

// nthByWeight walks the candidates other than skip, each covering Weight
// units, and returns the one covering unit x.
func nthByWeight(p *Pool, exclude, skip *Upstream, x int, c *clock) *Upstream {
	var last *Upstream
	for _, u := range p.Upstreams {
		if u == skip || !candidate(u, exclude, c) {
			continue
		}
		if x < u.Weight {
			return u
		}
		x -= u.Weight
		last = u
	}
	return last // a state changed between the passes
}

// ipHash sends a client to the upstream that the XDP path's ip_hash would:
// maglev.SourceHash of the client address (ClientIP) looked up in a Maglev
// table built from the usable upstreams' Names and weights with the pool's
// MaglevSize. So:
//
//   - the same client always reaches the same upstream while that upstream
//     is usable, and when the usable set changes only the clients of the
//     upstreams that came or went move, give or take Maglev's small
//     disruption (about 1/N of the clients when one of N goes);
//   - an L4 and an L7 service on the same VIP send a client to the same
//     backend when their usable backends have the same Names (AssignNames
//     gives the address, as the loader does, when addresses are unique in
//     the pool) and weights, and the table size is the same. Two caveats:
//     an upstream ejected by passive health (L7 only) is out of the L7
//     table until the ejection ends, and with WithClientIP set from
//     X-Forwarded-For the L7 side hashes the real client while L4 hashes
//     the packet's source.
//
// The table is built only when the usable set changes (a build of 65537
// slots takes a millisecond or two) and cached in the policy; a request
// compares the cached set with the pool's, O(upstreams), no allocation.
// A retry (exclude set) keeps the table and walks on from the client's
// slot to the next slot of another upstream, so it is deterministic too.
type ipHash struct {
	table atomic.Pointer[hashTable]
	mu    sync.Mutex // one build at a time
}

type hashTable struct {
	size    uint32
	members []*Upstream // the usable upstreams, pool order
	weights []int       // their weights when built
	t       *maglev.Table
}

func (*ipHash) String() string { return PolicyIPHash }

func (h *ipHash) Select(p *Pool, r *http.Request, exclude *Upstream) *Upstream {
	var c clock
	size := p.MaglevSize
	if size == 0 {
		size = maglev.DefaultTableSize
	}
	ht := h.table.Load()
	if !ht.matches(p, size, &c) {
		if ht = h.build(p, size, &c); ht == nil {
			return nil
		}
	}
	if len(ht.members) == 1 && ht.members[0] == exclude {
		return nil
	}
	hash := maglev.SourceHash(ClientIP(r))
	entries := ht.t.Entries()
	slot := hash % ht.t.Size()
	for i := uint32(0); i < ht.t.Size(); i++ {
		u := ht.members[entries[slot]]
		if u != exclude {
			return u
		}
		if slot++; slot == ht.t.Size() {
			slot = 0
		}
	}
	return nil // exclude was the only usable upstream
}

// matches reports whether ht was built for p's current usable set.
func (ht *hashTable) matches(p *Pool, size uint32, c *clock) bool {
	if ht == nil || ht.size != size {
		return false
	}
	i := 0
	for _, u := range p.Upstreams {
		if !u.usable(c) {
			continue
		}
		if i == len(ht.members) || ht.members[i] != u || ht.weights[i] != u.Weight {
			return false
		}
		i++
	}
	return i == len(ht.members)
}

func (h *ipHash) build(p *Pool, size uint32, c *clock) *hashTable {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ht := h.table.Load(); ht.matches(p, size, c) {
		return ht // another request built it meanwhile
	}
	ht := &hashTable{size: size}
	var backends []maglev.Backend
	seen := make(map[string]bool, len(p.Upstreams))
	for _, u := range p.Upstreams {
		if !u.usable(c) {
			continue
		}
		ht.members = append(ht.members, u)
		ht.weights = append(ht.weights, u.Weight)
		backends = append(backends, maglev.Backend{Name: tableName(u, seen), Weight: uint32(min(u.Weight, 1<<31))})
	}
	if len(backends) == 0 {
		return nil
	}
	t, err := maglev.Build(backends, size)
	if err != nil && size != maglev.DefaultTableSize {
		// A size that is not prime (config validates it; be safe).
		t, err = maglev.Build(backends, maglev.DefaultTableSize)
	}
	if err != nil {
		return nil
	}
	ht.t = t
	h.table.Store(ht)
	return ht
}

// tableName is u's Maglev name: Name, or its address if Name is unset; a
// duplicate (a misconfigured pool) is made unique with the ID rather than
// failing the whole table.
func tableName(u *Upstream, seen map[string]bool) string {
	name := u.Name
	if name == "" {
		name = u.Addr.String()
	}
	if seen[name] {
		name += "|" + u.ID
	}
	seen[name] = true
	return name
}

type clientIPKey struct{}

// WithClientIP records the client address that ip_hash hashes, for a proxy
// that knows better than the connection's peer (the first untrusted hop of
// X-Forwarded-For behind trusted proxies).
func WithClientIP(ctx context.Context, addr netip.Addr) context.Context {
	return context.WithValue(ctx, clientIPKey{}, addr)
}

// ClientIP is the client address for ip_hash: the one set with WithClientIP
// on r's context if any, else the address of r.RemoteAddr (unmapped), else
// the zero Addr (all such requests hash alike).
func ClientIP(r *http.Request) netip.Addr {
	if a, ok := r.Context().Value(clientIPKey{}).(netip.Addr); ok && a.IsValid() {
		return a.Unmap()
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap()
	}
	host := r.RemoteAddr
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return a.Unmap()
	}
	return netip.Addr{}
}

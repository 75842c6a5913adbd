package maglev

import (
	"cmp"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strings"
	"sync"
)

// DefaultTableSize is the default number of Maglev slots: a prime well above
// 100 times any realistic backend count, as the paper advises, small enough
// that a table is 256 KiB.
const DefaultTableSize = 65537

var (
	ErrTableSizeNotPrime = errors.New("maglev: table size is not prime")
	ErrTooManyBackends   = errors.New("maglev: more backends than table slots")
	ErrNoBackends        = errors.New("maglev: no backend with weight > 0")
	ErrDuplicateBackend  = errors.New("maglev: duplicate backend name")
)

// Seeds of the two hashes of a backend's Name that give its permutation:
// offset = murmur3(name, offsetSeed) % M, skip = murmur3(name, skipSeed) %
// (M-1) + 1. Murmur3 runs the seed through the full mix, so the two seeds
// give effectively independent hashes. They are part of the table format: changing either
// moves almost every slot and breaks agreement between xlb hosts.
const (
	offsetSeed uint32 = 0x6d676f66 // "mgof"
	skipSeed   uint32 = 0x6d67736b // "mgsk"
)

// Backend is one candidate for the table. Name is its stable identity (for
// example its address): the permutation, hence its slots, derive from it.
type Backend struct {
	Name   string
	Weight uint32
}

// Table is a built Maglev lookup table. It is immutable and safe for
// concurrent use.
type Table struct {
	m       uint32
	entries []uint32
	slots   []uint32
}

// Size is M, the number of slots.
func (t *Table) Size() uint32 { return t.m }

// Entries returns the M slots, each an index into the backends given to
// Build. The slice is shared with the table: callers must not modify it.
func (t *Table) Entries() []uint32 { return t.entries }

// Lookup returns the backend index for a packet hash: Entries()[hash % M].
func (t *Table) Lookup(hash uint32) uint32 { return t.entries[hash%t.m] }

// Slots returns, per backend index, how many slots that backend owns. The
// slice is shared with the table: callers must not modify it.
func (t *Table) Slots() []uint32 { return t.slots }

// IsPrime reports whether n is prime. Trial division is enough: a uint32 has
// no factor pair above 65536.
func IsPrime(n uint32) bool {
	switch {
	case n < 2:
		return false
	case n < 4:
		return true
	case n%2 == 0 || n%3 == 0:
		return false
	}
	for d := uint64(5); d*d <= uint64(n); d += 6 {
		if uint64(n)%d == 0 || uint64(n)%(d+2) == 0 {
			return false
		}
	}
	return true
}

var builderPool = sync.Pool{New: func() any { return new(Builder) }}

// Build builds a table of m slots (m prime) for backends; see Builder.Build.
func Build(backends []Backend, m uint32) (*Table, error) {
	b := builderPool.Get().(*Builder)
	defer builderPool.Put(b)
	return b.Build(backends, m)
}

// Builder builds tables, reusing its scratch buffers between builds. The
// zero value is ready to use; a Builder is not safe for concurrent use.
type Builder struct {
	order   []uint32      // caller indexes sorted by backend name
	members []member      // backends with weight > 0, heaviest first, then by name
	classes []weightClass // runs of members with equal weight
	heap    []uint32      // indexes into classes, ordered by next turn
	used    []uint64      // bitset of filled slots: 8 KiB for M=65537, stays in L1
}

// member is the fill state of one backend: where its permutation goes next
// and how many slots it owns.
type member struct {
	index  uint32 // into the caller's backends
	weight uint32
	next   uint32 // next slot of its permutation to try
	skip   uint32
	claims uint32
}

// weightClass is members[start:end], all of one weight. Every turn fills a
// slot, so the members of a class take their turns in lockstep and the turn
// order depends on the weights alone, never on the table's contents.
type weightClass struct {
	start, end uint32
	weight     uint32
	turns      uint32 // turns each member has had
}

// Build builds a Maglev table of m slots for backends. Entries are indexes
// into backends.
//
// Backends fill the table by turns, as in the paper: on its turn a backend
// takes the first still-empty slot along its permutation. Weights decide the
// order of turns: a backend's k-th turn (k = 1, 2, ...) comes at virtual time
// (k-1/2)/weight; at equal times the heavier backend goes first, then the
// smaller name. The half step is Sainte-Lague apportionment: it rounds
// without favouring heavy or light backends, so backend i ends with
// M*w_i/sum(w) slots give or take one. With equal weights this is the
// paper's plain round-robin. The order never looks
// at positions in backends, so the slot -> name mapping depends only on the
// set of (name, weight) pairs, and the same list gives byte-identical
// Entries on any host. Weight 0 backends own no slots.
//
// Errors: ErrTableSizeNotPrime, ErrNoBackends (empty, or all weights 0),
// ErrTooManyBackends (len(backends) > m), ErrDuplicateBackend.
func (b *Builder) Build(backends []Backend, m uint32) (*Table, error) {
	if !IsPrime(m) {
		return nil, fmt.Errorf("%w: %d", ErrTableSizeNotPrime, m)
	}
	if len(backends) == 0 {
		return nil, ErrNoBackends
	}
	if uint64(len(backends)) > uint64(m) {
		return nil, fmt.Errorf("%w: %d backends, %d slots", ErrTooManyBackends, len(backends), m)
	}

	b.order = b.order[:0]
	for i := range backends {
		b.order = append(b.order, uint32(i))
	}
	slices.SortFunc(b.order, func(x, y uint32) int {
		return strings.Compare(backends[x].Name, backends[y].Name)
	})
	b.members = b.members[:0]
	for pos, i := range b.order {
		be := &backends[i]
		if pos > 0 && backends[b.order[pos-1]].Name == be.Name {
			return nil, fmt.Errorf("%w: %q", ErrDuplicateBackend, be.Name)
		}
		if be.Weight == 0 {
			continue
		}
		b.members = append(b.members, member{
			index:  i,
			weight: be.Weight,
			next:   murmur3(be.Name, offsetSeed) % m,
			skip:   murmur3(be.Name, skipSeed)%(m-1) + 1,
		})
	}
	if len(b.members) == 0 {
		return nil, ErrNoBackends
	}
	// Stable: name order survives within each weight.
	slices.SortStableFunc(b.members, func(x, y member) int {
		return cmp.Compare(y.weight, x.weight)
	})

	b.classes = b.classes[:0]
	for i, mb := range b.members {
		if i == 0 || mb.weight != b.members[i-1].weight {
			b.classes = append(b.classes, weightClass{start: uint32(i), weight: mb.weight})
		}
		b.classes[len(b.classes)-1].end = uint32(i + 1)
	}
	// Classes are heaviest first, so class order is the tie-break order and
	// the initial slice is already a valid heap.
	b.heap = b.heap[:0]
	for c := range b.classes {
		b.heap = append(b.heap, uint32(c))
	}

	words := (int(m) + 63) / 64
	b.used = slices.Grow(b.used[:0], words)[:words]
	clear(b.used)

	t := &Table{
		m:       m,
		entries: make([]uint32, m),
		slots:   make([]uint32, len(backends)),
	}
	for filled := uint32(0); filled < m; {
		cl := &b.classes[b.heap[0]]
		for p := cl.start; p < cl.end && filled < m; p++ {
			mb := &b.members[p]
			// The permutation is a full cycle (skip < M, M prime) and the
			// table is not full, so this walk ends.
			c, s := mb.next, mb.skip
			for b.used[c/64]&(1<<(c%64)) != 0 {
				c = step(c, s, m)
			}
			b.used[c/64] |= 1 << (c % 64)
			t.entries[c] = mb.index
			mb.next = step(c, s, m)
			mb.claims++
			filled++
		}
		cl.turns++
		b.siftDown(0)
	}

	for _, mb := range b.members {
		t.slots[mb.index] = mb.claims
	}
	return t, nil
}

// step is (c + s) % m without overflowing for m close to 2^32.
func step(c, s, m uint32) uint32 {
	if c >= m-s {
		return c - (m - s)
	}
	return c + s
}

// before reports whether class x takes its next turn before class y:
// (2*turns_x+1)/(2*w_x) < (2*turns_y+1)/(2*w_y), cross-multiplied in 128
// bits, ties to the heavier class, which comes first in b.classes.
func (b *Builder) before(x, y uint32) bool {
	cx, cy := &b.classes[x], &b.classes[y]
	xhi, xlo := bits.Mul64(2*uint64(cx.turns)+1, uint64(cy.weight))
	yhi, ylo := bits.Mul64(2*uint64(cy.turns)+1, uint64(cx.weight))
	if xhi != yhi {
		return xhi < yhi
	}
	if xlo != ylo {
		return xlo < ylo
	}
	return x < y
}

func (b *Builder) siftDown(i int) {
	h := b.heap
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && b.before(h[r], h[l]) {
			c = r
		}
		if !b.before(h[c], h[i]) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

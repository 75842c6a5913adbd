package loader

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/bpf"
	"github.com/xlb-dev/xlb/maglev"
)

// State is a backend's state in the datapath.
type State uint8

const (
	StateUp         = State(bpf.XlbBackendStateXLB_BE_UP)
	StateDraining   = State(bpf.XlbBackendStateXLB_BE_DRAINING)
	StateDown       = State(bpf.XlbBackendStateXLB_BE_DOWN)
	StateUnresolved = State(bpf.XlbBackendStateXLB_BE_UNRESOLVED)
)

func (s State) String() string {
	switch s {
	case StateUp:
		return "up"
	case StateDraining:
		return "draining"
	case StateDown:
		return "down"
	case StateUnresolved:
		return "unresolved"
	}
	return "unused"
}

// Kind is what the datapath does with a service's packets.
type Kind uint8

const (
	KindL4 = Kind(bpf.XlbSvcKindXLB_SVC_L4)
	KindL7 = Kind(bpf.XlbSvcKindXLB_SVC_L7)
)

// HashMode picks a service's Maglev hash input.
type HashMode uint8

const (
	HashIP   = HashMode(bpf.XlbHashModeXLB_HASH_IP)
	HashFlow = HashMode(bpf.XlbHashModeXLB_HASH_FLOW)
)

func (h HashMode) String() string {
	if h == HashFlow {
		return "flow_hash"
	}
	return "ip_hash"
}

// Forwarding is how an L4 service's packets reach its backends.
type Forwarding uint8

const (
	ForwardDSR  = Forwarding(bpf.XlbForwardingXLB_FWD_DSR)  // L2 direct server return
	ForwardIPIP = Forwarding(bpf.XlbForwardingXLB_FWD_IPIP) // IP-in-IP / IPv6-in-IPv6 tunnel
	ForwardNAT  = Forwarding(bpf.XlbForwardingXLB_FWD_NAT)  // full NAT, both directions
)

func (f Forwarding) String() string {
	switch f {
	case ForwardIPIP:
		return "ipip"
	case ForwardNAT:
		return "nat"
	}
	return "dsr"
}

// routed reports whether backends are reached through the kernel's routes
// (any next hop, routers included) rather than on an attached network.
func (f Forwarding) routed() bool { return f == ForwardIPIP || f == ForwardNAT }

// BackendSpec is one desired backend of an L4 service.
type BackendSpec struct {
	Address netip.Addr
	Weight  uint32
	State   State // StateUp, StateDraining or StateDown
	MAC     net.HardwareAddr
	// Port is nat only: the backend's port (0: the service's).
	Port uint16
}

// ServiceSpec is one desired service.
type ServiceSpec struct {
	Name  string
	VIP   netip.Addr
	Port  uint16
	Proto uint8
	Kind  Kind
	Hash  HashMode
	// Forwarding and IPIPSource are L4 only. IPIPSource, when valid, is
	// the prefix ipip packets take their outer source from, one address
	// per flow (the flow's hash fills its host bits, at most the last 32);
	// otherwise the outer source is the host's address toward the backend.
	Forwarding Forwarding
	IPIPSource netip.Prefix
	// NATSource is nat only: the address translated packets leave from
	// (invalid: the host's address toward each backend).
	NATSource netip.Addr
	Backends  []BackendSpec // L4 only
}

// Desired is the whole state the maps should hold.
type Desired struct {
	RingSize uint32 // Maglev M, prime
	Services []ServiceSpec
}

type svcIdent struct {
	vip   netip.Addr
	port  uint16
	proto uint8
}

type beIdent struct {
	service uint32
	addr    netip.Addr
}

type svcState struct {
	id      uint32
	value   bpf.XlbSvcValue
	info    bpf.XlbSvcInfo
	ringSum uint64 // fnv-64 of the ring's entries; 0 = no ring
	// ringInput is what the current ring was built from (M, then each usable
	// backend's name, weight and id): unchanged input, no rebuild.
	ringInput string
}

type beState struct {
	id    uint32
	entry bpf.XlbBackend
	mac   net.HardwareAddr // configured MAC the entry was resolved with
	// n is the resolution the entry was built from; routed says it was
	// the next hop of an ipip backend (gateways allowed).
	n      Neighbour
	routed bool
}

// beWant is one desired backend with its service.
type beWant struct {
	b *BackendSpec
	s *ServiceSpec
}

// Reconciler turns a Desired state into map writes. It is the only writer of
// the maps; Apply is idempotent and logs every change it makes.
type Reconciler struct {
	maps     *Maps
	resolver Resolver
	ifindex  int // the XDP interface: backends behind it get XDP_TX
	log      *slog.Logger

	// ResolveTimeout bounds the neighbour resolution of one backend.
	ResolveTimeout time.Duration
	// Metrics, when set, counts table rebuilds and times Apply.
	Metrics *Metrics

	mu       sync.Mutex
	services map[svcIdent]*svcState
	markers  map[svcIdent]bpf.XlbSvcValue
	backends map[beIdent]*beState
	txPorts  map[uint32]bool
	vipBits  map[uint32]uint64 // vip_filter words with bits set
	svcIDs   idPool
	beIDs    idPool

	// Reresolve bumps reresolveGen; an Apply that succeeds with resolutions
	// made after gen g sets resolvedGen to g.
	reresolveGen atomic.Uint64
	resolvedGen  uint64
}

// Change counts what one Apply did.
type Change struct {
	ServicesAdded, ServicesRemoved, ServicesUpdated int
	BackendsAdded, BackendsRemoved, BackendsUpdated int
	RingsSwapped                                    int
	Unresolved                                      []string // "service/address: reason"
}

// Empty reports whether Apply changed nothing.
func (c Change) Empty() bool {
	return c.ServicesAdded+c.ServicesRemoved+c.ServicesUpdated+c.BackendsAdded+
		c.BackendsRemoved+c.BackendsUpdated+c.RingsSwapped == 0
}

// NewReconciler recovers the current state from the maps (which may have been
// adopted from pins), so the first Apply only writes the difference and ids
// of surviving services and backends stay stable for their conntrack entries.
func NewReconciler(maps *Maps, resolver Resolver, xdpIfIndex int, log *slog.Logger) (*Reconciler, error) {
	if log == nil {
		log = slog.Default()
	}
	r := &Reconciler{
		maps: maps, resolver: resolver, ifindex: xdpIfIndex, log: log,
		ResolveTimeout: time.Second,
		services:       map[svcIdent]*svcState{},
		markers:        map[svcIdent]bpf.XlbSvcValue{},
		backends:       map[beIdent]*beState{},
		txPorts:        map[uint32]bool{},
		svcIDs:         newIDPool(MaxServices),
		beIDs:          newIDPool(maps.Backends.MaxEntries()),
	}
	if err := r.recover(); err != nil {
		return nil, fmt.Errorf("read current datapath state: %w", err)
	}
	return r, nil
}

func (r *Reconciler) recover() error {
	var key bpf.XlbSvcKey
	var val bpf.XlbSvcValue
	it := r.maps.Services.Iterate()
	for it.Next(&key, &val) {
		vip, port, proto := KeyAddr(key)
		id := svcIdent{vip, port, proto}
		if val.Kind == uint8(bpf.XlbSvcKindXLB_SVC_VIP) {
			r.markers[id] = val
			continue
		}
		st := &svcState{id: val.Id, value: val}
		if err := r.maps.ServiceInfo.Lookup(val.Id, &st.info); err != nil {
			return err
		}
		if ring, err := r.maps.Ring(val.Id); err != nil {
			return err
		} else if ring != nil {
			st.ringSum = ringSum(ring)
		}
		r.services[id] = st
		r.svcIDs.take(val.Id)
	}
	if err := it.Err(); err != nil {
		return err
	}
	entries, err := r.maps.BackendEntries()
	if err != nil {
		return err
	}
	for i, be := range entries {
		if be.State == uint8(bpf.XlbBackendStateXLB_BE_UNUSED) {
			continue
		}
		id := uint32(i)
		st := &beState{id: id, entry: be, n: neighbourOf(be), routed: Forwarding(be.Forwarding).routed()}
		r.backends[beIdent{be.ServiceId, BackendAddr(be)}] = st
		r.beIDs.take(id)
	}
	var port uint32
	var dv bpf.XlbBpfDevmapVal
	pit := r.maps.TxPorts.Iterate()
	for pit.Next(&port, &dv) {
		r.txPorts[port] = true
	}
	return pit.Err()
}

func ringSum(entries []uint32) uint64 {
	h := fnv.New64a()
	var b [4]byte
	for _, e := range entries {
		b[0], b[1], b[2], b[3] = byte(e), byte(e>>8), byte(e>>16), byte(e>>24)
		h.Write(b[:])
	}
	return h.Sum64() | 1 // never 0, which means "no ring"
}

// ServiceID returns the datapath id of a service, if present.
func (r *Reconciler) ServiceID(vip netip.Addr, port uint16, proto uint8) (uint32, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.services[svcIdent{vip.Unmap(), port, proto}]
	if !ok {
		return 0, false
	}
	return st.id, true
}

// BackendID returns the datapath id of a service's backend, if present.
func (r *Reconciler) BackendID(serviceID uint32, addr netip.Addr) (uint32, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.backends[beIdent{serviceID, addr.Unmap()}]
	if !ok {
		return 0, false
	}
	return b.id, true
}

// BackendState returns the datapath id and state of a service's backend.
func (r *Reconciler) BackendState(serviceID uint32, addr netip.Addr) (uint32, State, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.backends[beIdent{serviceID, addr.Unmap()}]
	if !ok {
		return 0, 0, false
	}
	return b.id, State(b.entry.State), true
}

// Reresolve makes the next Apply resolve every backend again, not only new,
// changed and unresolved ones: a route or neighbour change may have moved a
// backend (or an ipip backend's next hop) to another interface or MAC. Safe
// to call while Apply runs (that Apply may or may not see it; the next does).
func (r *Reconciler) Reresolve() { r.reresolveGen.Add(1) }

// Apply makes the maps hold d. Order matters for packets in flight: backends
// that become usable are written before the rings that use them, and backends
// that stop being usable are written after the rings that dropped them, so
// a ring never points at a backend the datapath would refuse; likewise an
// egress interface is in tx_ports before any backend entry names it, and
// leaves it only once none does.
func (r *Reconciler) Apply(ctx context.Context, d Desired) (Change, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	gen := r.reresolveGen.Load()
	if r.Metrics != nil {
		defer prometheusTimer(r.Metrics.reconcile)()
	}
	var ch Change
	if d.RingSize == 0 {
		d.RingSize = maglev.DefaultTableSize
	}
	if !maglev.IsPrime(d.RingSize) {
		return ch, fmt.Errorf("maglev table size %d: %w", d.RingSize, maglev.ErrTableSizeNotPrime)
	}

	// Services: ids and values.
	want := make(map[svcIdent]*ServiceSpec, len(d.Services))
	for i := range d.Services {
		s := &d.Services[i]
		want[svcIdent{s.VIP.Unmap(), s.Port, s.Proto}] = s
	}
	for ident, s := range want {
		st, ok := r.services[ident]
		if !ok {
			id, err := r.svcIDs.get()
			if err != nil {
				return ch, fmt.Errorf("service %s: %w", s.Name, err)
			}
			if err := resetCounters(r.maps.ServiceStats, id); err != nil {
				return ch, err
			}
			st = &svcState{id: id}
			r.services[ident] = st
			ch.ServicesAdded++
			r.log.Info("service added", "service", s.Name, "id", id, "vip", s.VIP, "port", s.Port, "proto", s.Proto)
		}
		st.info = serviceInfo(s, d.RingSize)
	}

	// Backends: ids, neighbours, entries.
	wantBe := map[beIdent]beWant{}
	for ident, s := range want {
		if s.Kind != KindL4 {
			continue
		}
		sid := r.services[ident].id
		for i := range s.Backends {
			b := &s.Backends[i]
			wantBe[beIdent{sid, b.Address.Unmap()}] = beWant{b, s}
		}
	}
	resolved := r.resolveAll(ctx, wantBe, gen != r.resolvedGen)
	newEntries := map[beIdent]bpf.XlbBackend{}
	for ident, w := range wantBe {
		b := w.b
		res := resolved[ident]
		if res.err == nil && w.s.Forwarding == ForwardNAT && r.ifindex != 0 && res.n.IfIndex != r.ifindex {
			res.err = fmt.Errorf("%s via interface %d: %w", ident.addr, res.n.IfIndex, ErrNATBypass)
		}
		state := b.State
		if res.err != nil {
			state = StateUnresolved
			ch.Unresolved = append(ch.Unresolved, fmt.Sprintf("%s: %v", ident.addr, res.err))
			if cur, ok := r.backends[ident]; !ok || cur.entry.State != uint8(StateUnresolved) {
				r.log.Warn("backend unresolved: kept out of the Maglev tables, retrying",
					"backend", ident.addr, "reason", res.err.Error())
			}
		}
		e := NewBackend(ident.addr, ident.service, uint16(min(b.Weight, 65535)), state, res.n)
		switch w.s.Forwarding {
		case ForwardIPIP:
			setOuterSource(&e, res.n.Src, w.s.IPIPSource)
		case ForwardNAT:
			setNATSource(&e, res.n.Src, w.s.NATSource, cmp.Or(b.Port, w.s.Port))
		}
		newEntries[ident] = e
	}

	// Egress interfaces first: a backend entry written below may name one
	// (a new backend, or one resolved anew behind another interface).
	if err := r.addTxPorts(newEntries); err != nil {
		return ch, err
	}

	// Phase 1: new or newly usable backends. New ones the free ids cannot
	// hold wait for the ids of removed backends (deferred, below).
	deferred := map[beIdent]bool{}
	for ident, e := range newEntries {
		cur, ok := r.backends[ident]
		if ok && cur.entry == e {
			continue
		}
		if !ok && r.beIDs.empty() {
			deferred[ident] = true
			continue
		}
		if e.State == uint8(StateUp) || !ok {
			if err := r.writeBackend(ident, e, wantBe[ident], resolved[ident].n, &ch); err != nil {
				return ch, err
			}
		}
	}

	// Phase 2: services map values and rings.
	for ident, s := range want {
		st := r.services[ident]
		val := bpf.XlbSvcValue{Id: st.id, Kind: uint8(s.Kind), Hash: uint8(s.Hash)}
		if s.Kind == KindL4 {
			val.RingSize = d.RingSize
			if err := r.swapRing(s, st, d.RingSize, newEntries, &ch); err != nil {
				return ch, err
			}
		}
		if err := r.maps.ServiceInfo.Put(st.id, st.info); err != nil {
			return ch, fmt.Errorf("service %s info: %w", s.Name, err)
		}
		if st.value != val {
			key := ServiceKey(ident.vip, ident.port, ident.proto)
			if err := r.maps.Services.Put(key, val); err != nil {
				return ch, fmt.Errorf("service %s: %w", s.Name, err)
			}
			if st.value != (bpf.XlbSvcValue{}) {
				ch.ServicesUpdated++
			}
			st.value = val
		}
	}
	if err := r.writeMarkers(want); err != nil {
		return ch, err
	}
	if err := r.writeVIPFilter(want, newEntries); err != nil {
		return ch, err
	}

	// Phase 3: backends that stop taking new flows, then removed ones.
	for ident, e := range newEntries {
		if deferred[ident] {
			continue
		}
		if cur := r.backends[ident]; cur.entry != e {
			if err := r.writeBackend(ident, e, wantBe[ident], resolved[ident].n, &ch); err != nil {
				return ch, err
			}
		}
	}
	for ident, cur := range r.backends {
		if _, ok := newEntries[ident]; ok {
			continue
		}
		if err := r.maps.Backends.Put(cur.id, bpf.XlbBackend{}); err != nil {
			return ch, fmt.Errorf("remove backend %s: %w", ident.addr, err)
		}
		r.beIDs.put(cur.id)
		delete(r.backends, ident)
		ch.BackendsRemoved++
		r.log.Info("backend removed", "service_id", ident.service, "backend", ident.addr, "id", cur.id)
	}

	// Phase 4: removed services.
	for ident, st := range r.services {
		if _, ok := want[ident]; ok {
			continue
		}
		if err := r.maps.Services.Delete(ServiceKey(ident.vip, ident.port, ident.proto)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return ch, fmt.Errorf("remove service %s: %w", cString(st.info.Name[:]), err)
		}
		if err := r.maps.Rings.Delete(st.id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return ch, fmt.Errorf("remove ring of %s: %w", cString(st.info.Name[:]), err)
		}
		if err := r.maps.ServiceInfo.Put(st.id, bpf.XlbSvcInfo{}); err != nil {
			return ch, err
		}
		r.svcIDs.put(st.id)
		delete(r.services, ident)
		ch.ServicesRemoved++
		r.log.Info("service removed", "service", cString(st.info.Name[:]), "id", st.id)
	}

	// Phase 5: backends that waited for ids, now that removed backends and
	// services are gone from every ring (an id taken over before that would
	// let the old ring send its packets to another service's backend), then
	// the rings that use them.
	if len(deferred) > 0 {
		for ident := range deferred {
			if err := r.writeBackend(ident, newEntries[ident], wantBe[ident], resolved[ident].n, &ch); err != nil {
				return ch, err
			}
		}
		for ident, s := range want {
			if s.Kind != KindL4 || !hasDeferred(deferred, r.services[ident].id) {
				continue
			}
			if err := r.swapRing(s, r.services[ident], d.RingSize, newEntries, &ch); err != nil {
				return ch, err
			}
		}
	}

	if err := r.pruneTxPorts(newEntries); err != nil {
		return ch, err
	}
	r.resolvedGen = gen
	return ch, nil
}

// hasDeferred reports whether a backend of service id waits for an id.
func hasDeferred(deferred map[beIdent]bool, id uint32) bool {
	for ident := range deferred {
		if ident.service == id {
			return true
		}
	}
	return false
}

func (r *Reconciler) writeBackend(ident beIdent, e bpf.XlbBackend, w beWant, n Neighbour, ch *Change) error {
	cur, ok := r.backends[ident]
	if !ok {
		id, err := r.beIDs.get()
		if err != nil {
			return fmt.Errorf("backend %s: %w", ident.addr, err)
		}
		if err := resetCounters(r.maps.BackendStats, id); err != nil {
			return err
		}
		cur = &beState{id: id}
		r.backends[ident] = cur
		ch.BackendsAdded++
		r.log.Info("backend added", "service_id", ident.service, "backend", ident.addr, "id", id,
			"state", State(e.State).String(), "forwarding", Forwarding(e.Forwarding).String(),
			"mac", macString(e.Mac), "ifindex", e.Ifindex)
	} else {
		ch.BackendsUpdated++
		if cur.entry.State != e.State {
			r.log.Info("backend state changed", "service_id", ident.service, "backend", ident.addr,
				"from", State(cur.entry.State).String(), "to", State(e.State).String())
		}
	}
	if err := r.maps.Backends.Put(cur.id, e); err != nil {
		return fmt.Errorf("write backend %s: %w", ident.addr, err)
	}
	cur.entry = e
	cur.mac = w.b.MAC
	cur.n, cur.routed = n, w.s.Forwarding.routed()
	return nil
}

// swapRing builds the service's Maglev table over its usable backends and
// swaps it in whole when it differs from the current one.
func (r *Reconciler) swapRing(s *ServiceSpec, st *svcState, m uint32, entries map[beIdent]bpf.XlbBackend, ch *Change) error {
	var names []maglev.Backend
	var ids []uint32
	for _, b := range s.Backends {
		ident := beIdent{st.id, b.Address.Unmap()}
		e := entries[ident]
		if e.State != uint8(StateUp) || b.Weight == 0 {
			continue
		}
		cur, ok := r.backends[ident]
		if !ok {
			continue // waits for an id: the next swap adds it
		}
		names = append(names, maglev.Backend{Name: ident.addr.String(), Weight: b.Weight})
		ids = append(ids, cur.id)
	}
	input := ringInputKey(m, names, ids)
	if st.ringSum != 0 && input == st.ringInput {
		return nil
	}
	if len(names) == 0 {
		st.ringInput = ""
		if st.ringSum == 0 {
			return nil
		}
		if err := r.maps.Rings.Delete(st.id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear ring of %s: %w", s.Name, err)
		}
		st.ringSum = 0
		ch.RingsSwapped++
		r.log.Warn("service has no usable backend: its packets are dropped", "service", s.Name)
		return nil
	}
	table, err := maglev.Build(names, m)
	if err != nil {
		return fmt.Errorf("maglev table of %s: %w", s.Name, err)
	}
	ring := make([]uint32, m)
	for i, idx := range table.Entries() {
		ring[i] = ids[idx]
	}
	sum := ringSum(ring)
	if sum == st.ringSum {
		st.ringInput = input
		return nil
	}
	inner, err := newRing(ring)
	if err != nil {
		return fmt.Errorf("service %s: %w", s.Name, err)
	}
	defer inner.Close() // the outer map holds its own reference
	if err := r.maps.Rings.Put(st.id, inner); err != nil {
		return fmt.Errorf("swap ring of %s: %w", s.Name, err)
	}
	st.ringSum = sum
	st.ringInput = input
	ch.RingsSwapped++
	if r.Metrics != nil {
		r.Metrics.rebuilds.Inc()
	}
	r.log.Info("maglev table swapped", "service", s.Name, "backends", len(names), "size", m)
	return nil
}

func ringInputKey(m uint32, names []maglev.Backend, ids []uint32) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d", m)
	for i, n := range names {
		fmt.Fprintf(&b, "|%s/%d/%d", n.Name, n.Weight, ids[i])
	}
	return b.String()
}

// writeMarkers keeps one (VIP, 0, proto) marker per VIP and protocol with an
// L4 service. Non-first fragments are steered only when the VIP has exactly
// one service on that protocol and it hashes by source address alone.
func (r *Reconciler) writeMarkers(want map[svcIdent]*ServiceSpec) error {
	type group struct {
		n   int
		l4  bool
		svc *svcState
		s   *ServiceSpec
	}
	groups := map[svcIdent]*group{}
	for ident, s := range want {
		k := svcIdent{ident.vip, 0, ident.proto}
		g := groups[k]
		if g == nil {
			g = &group{}
			groups[k] = g
		}
		g.n++
		if s.Kind == KindL4 {
			g.l4 = true
		}
		g.svc, g.s = r.services[ident], s
	}
	next := map[svcIdent]bpf.XlbSvcValue{}
	for k, g := range groups {
		if !g.l4 {
			continue
		}
		v := bpf.XlbSvcValue{Id: noID, Kind: uint8(bpf.XlbSvcKindXLB_SVC_VIP)}
		if g.n == 1 && g.s.Hash == HashIP {
			v.Id, v.RingSize, v.Hash = g.svc.id, g.svc.value.RingSize, uint8(HashIP)
		}
		next[k] = v
	}
	for k, v := range next {
		if cur, ok := r.markers[k]; ok && cur == v {
			continue
		}
		if err := r.maps.Services.Put(ServiceKey(k.vip, 0, k.proto), v); err != nil {
			return fmt.Errorf("VIP marker %s: %w", k.vip, err)
		}
	}
	for k := range r.markers {
		if _, ok := next[k]; ok {
			continue
		}
		if err := r.maps.Services.Delete(ServiceKey(k.vip, 0, k.proto)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove VIP marker %s: %w", k.vip, err)
		}
	}
	r.markers = next
	return nil
}

// VIPFilterBit is the vip_filter word and bit of a VIP address (see
// maybe_vip in xlb.c).
func VIPFilterBit(vip netip.Addr) (word uint32, bit uint64) {
	h := maglev.SourceHash(vip)
	return (h >> 6) % uint32(bpf.XlbLimitsXLB_VIP_FILTER_WORDS), 1 << (h & 63)
}

// writeVIPFilter sets the filter bits of every VIP and every nat source
// address, where the backends' answers arrive (adding before removing is
// not needed: a bit is only cleared when no VIP uses it any more, and a VIP's
// services are already gone from the services map by then).
func (r *Reconciler) writeVIPFilter(want map[svcIdent]*ServiceSpec, entries map[beIdent]bpf.XlbBackend) error {
	next := map[uint32]uint64{}
	for ident := range want {
		w, b := VIPFilterBit(ident.vip)
		next[w] |= b
	}
	for _, e := range entries {
		if Forwarding(e.Forwarding) == ForwardNAT {
			w, b := VIPFilterBit(addrFromBytes(e.Src, e.Family))
			next[w] |= b
		}
	}
	if r.vipBits == nil {
		// Unknown after a restart: rewrite every word once.
		r.vipBits = map[uint32]uint64{}
		for w := uint32(0); w < uint32(bpf.XlbLimitsXLB_VIP_FILTER_WORDS); w++ {
			r.vipBits[w] = ^uint64(0)
		}
	}
	for w, bits := range r.vipBits {
		if next[w] != bits {
			if err := r.maps.VipFilter.Put(w, next[w]); err != nil {
				return fmt.Errorf("vip filter: %w", err)
			}
		}
	}
	for w, bits := range next {
		if _, seen := r.vipBits[w]; !seen {
			if err := r.maps.VipFilter.Put(w, bits); err != nil {
				return fmt.Errorf("vip filter: %w", err)
			}
		}
	}
	r.vipBits = next
	return nil
}

// txPortsOf is the egress interfaces of entries other than the XDP one:
// those backends are reached by XDP_REDIRECT through tx_ports.
func (r *Reconciler) txPortsOf(entries map[beIdent]bpf.XlbBackend) map[uint32]bool {
	ports := map[uint32]bool{}
	for _, e := range entries {
		if e.Ifindex != 0 && int(e.Ifindex) != r.ifindex {
			ports[e.Ifindex] = true
		}
	}
	return ports
}

// addTxPorts puts in tx_ports every egress interface of entries it lacks.
func (r *Reconciler) addTxPorts(entries map[beIdent]bpf.XlbBackend) error {
	for p := range r.txPortsOf(entries) {
		if r.txPorts[p] {
			continue
		}
		if err := r.maps.TxPorts.Put(p, bpf.XlbBpfDevmapVal{Ifindex: p}); err != nil {
			return fmt.Errorf("add egress interface %d to tx_ports: %w", p, err)
		}
		r.txPorts[p] = true
	}
	return nil
}

// pruneTxPorts removes from tx_ports the interfaces no entry uses, once the
// backends map no longer names them.
func (r *Reconciler) pruneTxPorts(entries map[beIdent]bpf.XlbBackend) error {
	keep := r.txPortsOf(entries)
	for p := range r.txPorts {
		if keep[p] {
			continue
		}
		if err := r.maps.TxPorts.Delete(p); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove egress interface %d from tx_ports: %w", p, err)
		}
		delete(r.txPorts, p)
	}
	return nil
}

type resolution struct {
	n   Neighbour
	err error
}

// resolveAll resolves new, changed and unresolved backends (all of them with
// every) concurrently, so one silent backend costs one timeout, not one per
// backend. ipip backends are resolved to their next hop, which may be a
// router.
func (r *Reconciler) resolveAll(ctx context.Context, want map[beIdent]beWant, every bool) map[beIdent]resolution {
	out := make(map[beIdent]resolution, len(want))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for ident, w := range want {
		routed := w.s.Forwarding.routed()
		if cur, ok := r.backends[ident]; ok && !every && cur.entry.State != uint8(StateUnresolved) &&
			slices.Equal(cur.mac, w.b.MAC) && cur.routed == routed && (!routed || cur.n.Src.IsValid()) {
			mu.Lock() // resolutions already started write out too
			out[ident] = resolution{n: cur.n}
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, r.ResolveTimeout)
			defer cancel()
			var res resolution
			if rr, ok := r.resolver.(RoutedResolver); routed && ok {
				res.n, res.err = rr.ResolveRouted(rctx, ident.addr)
			} else if routed {
				res.err = fmt.Errorf("%s: %w", ident.addr, ErrNoRoutedResolver)
			} else {
				res.n, res.err = r.resolver.Resolve(rctx, ident.addr, w.b.MAC)
			}
			mu.Lock()
			out[ident] = res
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// neighbourOf is the resolution a backends map entry was built from, as far
// as the entry tells it: the outer source only when no prefix replaced it.
func neighbourOf(e bpf.XlbBackend) Neighbour {
	n := Neighbour{
		IfIndex: int(e.Ifindex),
		MAC:     net.HardwareAddr(e.Mac[:]),
		SrcMAC:  net.HardwareAddr(e.Smac[:]),
	}
	if Forwarding(e.Forwarding).routed() && e.SrcHashMask == 0 {
		n.Src = addrFromBytes(e.Src, e.Family)
	}
	return n
}

// setOuterSource makes e an ipip entry whose outer source is host (the
// host's address toward the backend) or, when prefix is valid, one address
// of prefix per flow.
func setOuterSource(e *bpf.XlbBackend, host netip.Addr, prefix netip.Prefix) {
	e.Forwarding = uint8(ForwardIPIP)
	if !prefix.IsValid() {
		e.Src, _ = addrBytes(host)
		return
	}
	e.Src, _ = addrBytes(prefix.Masked().Addr())
	e.SrcHashMask = SourceHashMask(prefix)
}

// setNATSource makes e a nat entry to the backend's port whose answers come
// back to src (the host's address toward the backend when invalid).
func setNATSource(e *bpf.XlbBackend, host, src netip.Addr, port uint16) {
	e.Forwarding = uint8(ForwardNAT)
	e.Port = port
	e.Src, _ = addrBytes(cmp.Or(src, host))
}

// SourceHashMask is the part of an outer source address in prefix that the
// flow's hash fills: the host bits within the address's last 32 bits.
func SourceHashMask(prefix netip.Prefix) uint32 {
	host := prefix.Addr().BitLen() - prefix.Bits()
	if host >= 32 {
		return ^uint32(0)
	}
	return uint32(1)<<host - 1
}

func serviceInfo(s *ServiceSpec, m uint32) bpf.XlbSvcInfo {
	var info bpf.XlbSvcInfo
	for i := 0; i < len(s.Name) && i < len(info.Name)-1; i++ {
		info.Name[i] = int8(s.Name[i])
	}
	info.Key = ServiceKey(s.VIP, s.Port, s.Proto)
	info.Kind = uint8(s.Kind)
	info.Hash = uint8(s.Hash)
	info.Forwarding = uint8(s.Forwarding)
	if s.Kind == KindL4 {
		info.RingSize = m
	}
	return info
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// idPool hands out ids; freed ids go to the back of the queue, so an id is not
// reused while conntrack entries that still name it are likely to be around.
type idPool struct {
	free  []uint32
	taken map[uint32]bool
}

func newIDPool(n uint32) idPool {
	p := idPool{taken: map[uint32]bool{}}
	for i := uint32(0); i < n; i++ {
		p.free = append(p.free, i)
	}
	return p
}

func (p *idPool) take(id uint32) { p.taken[id] = true }

func (p *idPool) get() (uint32, error) {
	for len(p.free) > 0 {
		id := p.free[0]
		p.free = p.free[1:]
		if !p.taken[id] {
			p.taken[id] = true
			return id, nil
		}
	}
	return 0, ErrFull
}

// empty reports whether get would fail.
func (p *idPool) empty() bool {
	for len(p.free) > 0 && p.taken[p.free[0]] {
		p.free = p.free[1:] // as get would skip it
	}
	return len(p.free) == 0
}

func (p *idPool) put(id uint32) {
	delete(p.taken, id)
	p.free = append(p.free, id)
}

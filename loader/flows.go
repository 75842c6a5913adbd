package loader

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/bpf"
)

// FlowTimeouts are how long a connection table entry may stay idle, by
// protocol and TCP state, before the datapath treats it as gone (its next
// packet is placed by the Maglev table as a new flow's) and ExpireFlows
// deletes it. Zero: never. The datapath sees only the client's packets, so
// a TCP state is what the client sent last.
type FlowTimeouts struct {
	TCPSyn         time.Duration // only the SYN seen
	TCPEstablished time.Duration // an ACK without SYN seen
	TCPClosing     time.Duration // a FIN or RST seen
	UDP            time.Duration
}

// FlowTick is the datapath's unit of flow time: entries record their last
// packet, and timeouts are counted, in ticks of 2^30 ns (about 1.07 s), so
// an idle timeout takes effect up to two ticks late.
const FlowTick = time.Duration(1) << bpf.XlbLimitsXLB_FLOW_TICK_SHIFT

// toTicks rounds up, so that an entry never expires before its timeout, and
// stays below 2^31: the datapath compares ages as signed numbers.
func toTicks(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	n := d / FlowTick
	if d%FlowTick != 0 {
		n++
	}
	return uint32(min(n, math.MaxInt32))
}

func (t FlowTimeouts) ticks() bpf.XlbIdleTimeouts {
	return bpf.XlbIdleTimeouts{
		TcpSyn: toTicks(t.TCPSyn), TcpEstablished: toTicks(t.TCPEstablished),
		TcpClosing: toTicks(t.TCPClosing), Udp: toTicks(t.UDP),
	}
}

// SetFlowTimeouts makes the datapath apply t from its next packet on, with
// this start's seen floor (the current tick the first time).
func (m *Maps) SetFlowTimeouts(t FlowTimeouts) error {
	m.timeoutsMu.Lock()
	defer m.timeoutsMu.Unlock()
	if m.seenFloor == 0 {
		now, err := currentTick()
		if err != nil {
			return err
		}
		m.seenFloor = now
	}
	v := t.ticks()
	v.SeenFloor = m.seenFloor
	if err := m.XlbMaps.FlowTimeouts.Put(uint32(0), v); err != nil {
		return fmt.Errorf("write flow timeouts: %w", err)
	}
	return nil
}

// raiseSeenFloor makes the current tick the seen floor, keeping the
// timeouts in force: no flow counts as idle since before now.
func (m *Maps) raiseSeenFloor() error {
	m.timeoutsMu.Lock()
	defer m.timeoutsMu.Unlock()
	now, err := currentTick()
	if err != nil {
		return err
	}
	var v bpf.XlbIdleTimeouts
	if err := m.XlbMaps.FlowTimeouts.Lookup(uint32(0), &v); err != nil {
		return fmt.Errorf("read flow timeouts: %w", err)
	}
	m.seenFloor, v.SeenFloor = now, now
	if err := m.XlbMaps.FlowTimeouts.Put(uint32(0), v); err != nil {
		return fmt.Errorf("write flow timeouts: %w", err)
	}
	return nil
}

// ReadFlowTimeouts returns the timeouts in force, in whole ticks.
func (m *Maps) ReadFlowTimeouts() (FlowTimeouts, error) {
	var v bpf.XlbIdleTimeouts
	if err := m.XlbMaps.FlowTimeouts.Lookup(uint32(0), &v); err != nil {
		return FlowTimeouts{}, fmt.Errorf("read flow timeouts: %w", err)
	}
	d := func(n uint32) time.Duration { return time.Duration(n) * FlowTick }
	return FlowTimeouts{TCPSyn: d(v.TcpSyn), TCPEstablished: d(v.TcpEstablished), TCPClosing: d(v.TcpClosing), UDP: d(v.Udp)}, nil
}

// flowRules decide what an entry is: the timeouts in force and the
// datapath's clock, read once per walk of the table.
type flowRules struct {
	limits bpf.XlbIdleTimeouts
	nowNs  uint64
	now    uint32 // in ticks
}

func (m *Maps) flowRules() (flowRules, error) {
	var r flowRules
	if err := m.XlbMaps.FlowTimeouts.Lookup(uint32(0), &r.limits); err != nil {
		return r, fmt.Errorf("read flow timeouts: %w", err)
	}
	ns, err := monotonicNow()
	if err != nil {
		return r, err
	}
	r.nowNs, r.now = ns, uint32(ns>>bpf.XlbLimitsXLB_FLOW_TICK_SHIFT)
	return r, nil
}

const (
	flowClosing     = uint16(bpf.XlbFlowFlagsXLB_FLOW_CLOSING)
	flowEstablished = uint16(bpf.XlbFlowFlagsXLB_FLOW_ESTABLISHED)
)

// expired mirrors flow_gone in xlb.c: idle longer than the timeout of the
// entry's protocol and state, counting from the later of its last packet and
// the seen floor (the daemon's start; an entry from a build before timeouts
// has seen 0). A seen after the clock read (a packet meanwhile) is fresh.
func (r flowRules) expired(k bpf.XlbFlowKey, v bpf.XlbFlowValue) bool {
	var limit uint32
	switch {
	case k.Proto == unix.IPPROTO_UDP:
		limit = r.limits.Udp
	case v.Flags&flowClosing != 0:
		limit = r.limits.TcpClosing
	case v.Flags&flowEstablished != 0 || legacyEstablished(v):
		limit = r.limits.TcpEstablished
	default:
		limit = r.limits.TcpSyn
	}
	last := v.Seen
	if int32(r.limits.SeenFloor-last) > 0 {
		last = r.limits.SeenFloor
	}
	return limit != 0 && int32(r.now-last) > int32(limit)
}

// legacyEstablished: an entry from a build before flow states (and
// timeouts: seen 0) is past its SYN when it saw more than one packet.
func legacyEstablished(v bpf.XlbFlowValue) bool { return v.Seen == 0 && v.Packets > 1 }

// abandonedHandshake: a TCP flow that saw only its SYN this long ago never
// completed its handshake (refused or unanswered by the backend, whose RST
// goes straight to the client): it is not an open connection, even before
// its tcp_syn timeout.
const abandonedHandshake = 3 * time.Second

// open reports whether an entry is a connection a drain should wait for: not
// expired, not closed by the client (FIN/RST) and silent since, and for TCP
// past its SYN unless that is recent.
func (r flowRules) open(k bpf.XlbFlowKey, v bpf.XlbFlowValue) bool {
	if r.expired(k, v) {
		return false
	}
	// A FIN may be a half-close and an RST forged: a closing flow that
	// goes on sending is still open.
	if v.Flags&flowClosing != 0 && int32(r.now-v.Seen) >= int32(bpf.XlbLimitsXLB_CLOSING_QUIET_TICKS) {
		return false
	}
	established := v.Flags&flowEstablished != 0 || legacyEstablished(v)
	if k.Proto == unix.IPPROTO_TCP && !established && r.nowNs > v.CreatedNs && r.nowNs-v.CreatedNs > uint64(abandonedHandshake) {
		return false
	}
	return true
}

// flowBatch is how many entries one batch system call reads or deletes.
const flowBatch = 4096

// walkFlows calls fn for every connection table entry, read in batches: one
// system call per flowBatch entries rather than two per entry. Entries that
// change meanwhile may be seen twice or not at all.
func (m *Maps) walkFlows(fn func(k bpf.XlbFlowKey, v bpf.XlbFlowValue)) error {
	return walkMap(m.Conntrack, fn)
}

// walkMap calls fn for every entry of a hash map, read in batches.
func walkMap[K, V any](mp *ebpf.Map, fn func(k K, v V)) error {
	keys := make([]K, flowBatch)
	vals := make([]V, flowBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := mp.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(keys[i], vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", mp.String(), err)
		}
	}
}

// deleteAll deletes keys in batches, skipping keys deleted meanwhile (by
// the datapath, or evicted), and returns how many it deleted.
func deleteAll(mp *ebpf.Map, keys []bpf.XlbFlowKey) (int, error) {
	deleted := 0
	for len(keys) > 0 {
		n, err := mp.BatchDelete(keys[:min(len(keys), flowBatch)], nil)
		deleted += n
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			n++ // gone meanwhile: skip it
		case err != nil:
			return deleted, fmt.Errorf("delete from %s: %w", mp.String(), err)
		}
		keys = keys[n:]
	}
	return deleted, nil
}

// OpenFlows counts, per backend id, the connection table entries a drain
// waits for (see flowRules.open).
func (m *Maps) OpenFlows() (map[uint32]int, error) {
	r, err := m.flowRules()
	if err != nil {
		return nil, err
	}
	out := map[uint32]int{}
	err = m.walkFlows(func(k bpf.XlbFlowKey, v bpf.XlbFlowValue) {
		if r.open(k, v) {
			out[v.BackendId]++
		}
	})
	return out, err
}

// FlowSweep is what one ExpireFlows did.
type FlowSweep struct {
	Expired int // entries deleted, idle past their timeout
	Live    int // entries left
}

// ExpireFlows deletes the connection table entries the datapath already
// treats as gone, so that the table holds live flows only. It writes no
// value: the datapath may have re-created or re-steered an entry since the
// walk read it, and on a full table an update could evict a live flow. A
// packet of a flow whose entry is being deleted at that moment becomes a new
// flow, placed by the same Maglev table.
func (m *Maps) ExpireFlows() (FlowSweep, error) {
	var s FlowSweep
	r, err := m.flowRules()
	if err != nil {
		return s, err
	}
	var dead []bpf.XlbFlowKey
	err = m.walkFlows(func(k bpf.XlbFlowKey, v bpf.XlbFlowValue) {
		if r.expired(k, v) {
			dead = append(dead, k)
		} else {
			s.Live++
		}
	})
	if err != nil {
		return s, err
	}
	s.Expired, err = deleteAll(m.Conntrack, dead)
	if err != nil {
		return s, fmt.Errorf("delete expired conntrack entries: %w", err)
	}
	return s, nil
}

// ExpireFlows runs one sweep of the connection table (Maps.ExpireFlows) and
// of the NAT tables (Maps.ExpireNAT), and counts them in the metrics. It
// takes no lock: Apply never writes conntrack or the NAT tables.
func (r *Reconciler) ExpireFlows() (FlowSweep, error) {
	s, err := r.maps.ExpireFlows()
	if r.Metrics != nil {
		r.Metrics.expired.Add(float64(s.Expired))
		if err == nil {
			r.Metrics.flows.Set(float64(s.Live))
		}
	}
	if err != nil {
		return s, err
	}
	ns, err := r.maps.ExpireNAT()
	if r.Metrics != nil {
		r.Metrics.natFreed.Add(float64(ns.Expired))
		if err == nil {
			r.Metrics.natPorts.Reset()
			for id, n := range ns.Live {
				r.Metrics.natPorts.WithLabelValues(r.maps.serviceName(id)).Set(float64(n))
			}
		}
	}
	return s, err
}

// currentTick is the datapath's flow clock now.
func currentTick() (uint32, error) {
	ns, err := monotonicNow()
	return uint32(ns >> bpf.XlbLimitsXLB_FLOW_TICK_SHIFT), err
}

// monotonicNow reads the clock bpf_ktime_get_coarse_ns counts on: the
// host's monotonic clock, which in a time namespace (a container's) is this
// process's minus the namespace's offset.
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return 0, err
	}
	off, err := monotonicOffset()
	if err != nil {
		return 0, err
	}
	return uint64(ts.Nano() - off), nil
}

// timensOffsets lists this process's time namespace offsets (Linux 5.6+;
// absent before, where there are none).
const timensOffsets = "/proc/self/timens_offsets"

var monotonicOffset = sync.OnceValues(func() (int64, error) {
	b, err := os.ReadFile(timensOffsets)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read time namespace offsets: %w", err)
	}
	return parseMonotonicOffset(string(b))
})

// parseMonotonicOffset reads the monotonic line of timens_offsets
// ("monotonic <seconds> <nanoseconds>") in nanoseconds.
func parseMonotonicOffset(s string) (int64, error) {
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "monotonic" {
			continue
		}
		sec, err1 := strconv.ParseInt(f[1], 10, 64)
		nsec, err2 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("%s: bad line %q", timensOffsets, strings.TrimSpace(line))
		}
		return sec*1e9 + nsec, nil
	}
	return 0, nil
}

package loader

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/bpf"
)

// NATPorts is the range of source ports NAT flows are given: [First,
// First+Count). Each (backend, port, protocol, source address) has its own
// Count ports, so a backend holds up to Count NAT flows per source address.
type NATPorts struct {
	First uint16
	Count uint32
}

// Last is the range's last port.
func (p NATPorts) Last() uint16 { return uint16(uint32(p.First) + p.Count - 1) }

// SetNATPorts makes the datapath give new NAT flows ports from p (Count 0:
// new NAT flows are dropped as exhaustion). Flows keep the ports they have:
// answers are still looked for on the ports of the range before, until the
// sweep finds none held there (ExpireNAT).
func (m *Maps) SetNATPorts(p NATPorts) error {
	if p.Count > 0 && uint32(p.First)+p.Count > 1<<16 {
		return fmt.Errorf("nat ports %d+%d: past 65535", p.First, p.Count)
	}
	m.natMu.Lock()
	defer m.natMu.Unlock()
	var cur bpf.XlbNatPortRange
	if err := m.NatPorts.Lookup(uint32(0), &cur); err != nil {
		return fmt.Errorf("read nat ports: %w", err)
	}
	next := bpf.XlbNatPortRange{First: p.First, Count: p.Count}
	next.ReplyFirst, next.ReplyCount = cover(cur.ReplyFirst, cur.ReplyCount, p.First, p.Count)
	return m.writeNATPorts(next)
}

func (m *Maps) writeNATPorts(r bpf.XlbNatPortRange) error {
	if err := m.NatPorts.Put(uint32(0), r); err != nil {
		return fmt.Errorf("write nat ports: %w", err)
	}
	return nil
}

// cover is the smallest range holding both [a, a+n) and [b, b+k) (either
// may be empty).
func cover(a uint16, n uint32, b uint16, k uint32) (uint16, uint32) {
	switch {
	case n == 0:
		return b, k
	case k == 0:
		return a, n
	}
	first := min(uint32(a), uint32(b))
	end := max(uint32(a)+n, uint32(b)+k)
	return uint16(first), end - first
}

// narrowReplyPorts makes the datapath look for answers on the allocation
// range alone once no binding holds a port outside it (held: the ports
// the sweep left).
func (m *Maps) narrowReplyPorts(held []uint16) error {
	m.natMu.Lock()
	defer m.natMu.Unlock()
	var cur bpf.XlbNatPortRange
	if err := m.NatPorts.Lookup(uint32(0), &cur); err != nil {
		return fmt.Errorf("read nat ports: %w", err)
	}
	if cur.ReplyFirst == cur.First && cur.ReplyCount == cur.Count {
		return nil
	}
	for _, port := range held {
		if uint32(port)-uint32(cur.First) >= cur.Count {
			return nil
		}
	}
	cur.ReplyFirst, cur.ReplyCount = cur.First, cur.Count
	return m.writeNATPorts(cur)
}

// NATSweep is what one ExpireNAT did.
type NATSweep struct {
	Expired int            // bindings deleted: idle past their timeout, or abandoned
	Live    map[uint32]int // bindings left, by service id: the ports in use
}

// natOrphanAge is how many ticks a binding that no flow names may live: the
// datapath inserts a binding just before the flow's entry that names it,
// so a younger one may be a flow being set up.
const natOrphanAge = 2

// ExpireNAT deletes the NAT bindings whose flows are gone: idle past their
// state's timeout (both directions count), or no longer named by their
// client flow (it moved to another backend or port) for natOrphanAge
// ticks; and the client flows' entries whose binding is gone. Only this
// sweep frees ports: the datapath never takes a binding over, so a port is
// reused only once its flow is over.
func (m *Maps) ExpireNAT() (NATSweep, error) {
	s := NATSweep{Live: map[uint32]int{}}
	r, err := m.flowRules()
	if err != nil {
		return s, err
	}
	var deadBindings, deadFlows []bpf.XlbFlowKey
	var held []uint16
	err = walkMap(m.NatBindings, func(k bpf.XlbFlowKey, b bpf.XlbNatBinding) {
		var nf bpf.XlbNatFlow
		named := m.NatFlows.Lookup(&b.Client, &nf) == nil && nf.BackendId == b.BackendId && nf.Port == k.Dport
		orphan := !named && int32(r.now-b.Seen) > natOrphanAge
		if orphan || r.expired(k, bpf.XlbFlowValue{Flags: b.Flags, Seen: b.Seen}) {
			deadBindings = append(deadBindings, k)
			if named {
				deadFlows = append(deadFlows, b.Client)
			}
			return
		}
		s.Live[uint32(b.ServiceId)]++
		held = append(held, k.Dport)
	})
	if err != nil {
		return s, err
	}
	// A flow's entry goes first: a packet meanwhile then takes a new port
	// rather than putting the dying binding back.
	if err := batchDelete(m.NatFlows, deadFlows); err != nil {
		return s, err
	}
	n, err := deleteAll(m.NatBindings, deadBindings)
	s.Expired = n
	if err != nil {
		return s, err
	}
	if err := m.narrowReplyPorts(held); err != nil {
		return s, err
	}
	return s, m.dropUnboundNATFlows()
}

// dropUnboundNATFlows deletes client flow entries whose binding is gone or
// names another flow (the binding the datapath inserts first, so an entry
// without one is never a flow being set up).
func (m *Maps) dropUnboundNATFlows() error {
	entries, err := m.BackendEntries()
	if err != nil {
		return err
	}
	var dead []bpf.XlbFlowKey
	err = walkMap(m.NatFlows, func(k bpf.XlbFlowKey, nf bpf.XlbNatFlow) {
		if int(nf.BackendId) >= len(entries) {
			dead = append(dead, k)
			return
		}
		be := entries[nf.BackendId]
		rk := bpf.XlbFlowKey{Src: be.Addr, Dst: be.Src, Sport: be.Port, Dport: nf.Port, Proto: k.Proto, Family: k.Family}
		var b bpf.XlbNatBinding
		if m.NatBindings.Lookup(&rk, &b) != nil || b.Client != k {
			dead = append(dead, k)
		}
	})
	if err != nil {
		return err
	}
	return batchDelete(m.NatFlows, dead)
}

func batchDelete(mp *ebpf.Map, keys []bpf.XlbFlowKey) error {
	_, err := deleteAll(mp, keys)
	return err
}

// NATPortsInUse counts the NAT bindings (allocated source ports) by service
// id, expired ones included until the sweep deletes them.
func (m *Maps) NATPortsInUse() (map[uint32]int, error) {
	out := map[uint32]int{}
	err := walkMap(m.NatBindings, func(_ bpf.XlbFlowKey, b bpf.XlbNatBinding) {
		out[uint32(b.ServiceId)]++
	})
	return out, err
}

// serviceName is the name service_info gives service id ("" unknown).
func (m *Maps) serviceName(id uint32) string {
	var info bpf.XlbSvcInfo
	if err := m.ServiceInfo.Lookup(id, &info); err != nil {
		return ""
	}
	return cString(info.Name[:])
}

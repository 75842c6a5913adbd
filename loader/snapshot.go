package loader

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/xlb-dev/xlb/bpf"
)

// Snapshot is what the maps say right now: services, their backends with
// state and Maglev share, and the counters. It needs no daemon.
type Snapshot struct {
	Services []ServiceStatus `json:"services"`
	Verdicts []VerdictStatus `json:"verdicts"`
}

// ServiceStatus is one service as the datapath sees it.
type ServiceStatus struct {
	ID       uint32     `json:"id"`
	Name     string     `json:"name"`
	VIP      netip.Addr `json:"vip"`
	Port     uint16     `json:"port"`
	Protocol string     `json:"protocol"`
	Mode     string     `json:"mode"`
	Hash     string     `json:"hash,omitempty"`
	// Forwarding is "dsr", "ipip" or "nat" (L4 only).
	Forwarding string `json:"forwarding,omitempty"`
	// NATPorts counts the source ports its NAT flows hold (nat only).
	NATPorts int             `json:"nat_ports_in_use,omitempty"`
	RingSize uint32          `json:"ring_size,omitempty"`
	Packets  uint64          `json:"packets"`
	Bytes    uint64          `json:"bytes"`
	NewFlows uint64          `json:"new_flows"`
	Backends []BackendStatus `json:"backends,omitempty"`
}

// BackendStatus is one backend of a service.
type BackendStatus struct {
	ID      uint32     `json:"id"`
	Address netip.Addr `json:"address"`
	State   string     `json:"state"`
	Weight  uint16     `json:"weight"`
	// MAC is the backend's (dsr) or its next hop's as the daemon resolved
	// it (ipip, where the kernel's FIB decides per packet when it can).
	MAC     string `json:"mac"`
	IfIndex uint32 `json:"ifindex"`
	// Port and Source are nat only: where translated packets go to, and
	// the address they leave from.
	Port   uint16     `json:"port,omitempty"`
	Source netip.Addr `json:"source,omitzero"`
	// Slots is how many Maglev table entries point at the backend, Share
	// the fraction of the table that is.
	Slots    uint32  `json:"slots"`
	Share    float64 `json:"share"`
	Packets  uint64  `json:"packets"`
	Bytes    uint64  `json:"bytes"`
	NewFlows uint64  `json:"new_flows"`
	// OpenFlows counts its connection table entries whose client has not
	// sent FIN or RST and that are not past their idle timeout: the flows a
	// drain waits for.
	OpenFlows int `json:"open_flows"`
}

// VerdictStatus is one reason counter.
type VerdictStatus struct {
	Verdict string `json:"verdict"`
	Reason  string `json:"reason"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// TakeSnapshot reads the maps.
func (m *Maps) TakeSnapshot() (*Snapshot, error) {
	snap := &Snapshot{}
	byID := map[uint32]*ServiceStatus{}
	var key bpf.XlbSvcKey
	var val bpf.XlbSvcValue
	it := m.Services.Iterate()
	for it.Next(&key, &val) {
		if val.Kind == uint8(bpf.XlbSvcKindXLB_SVC_VIP) {
			continue
		}
		var info bpf.XlbSvcInfo
		if err := m.ServiceInfo.Lookup(val.Id, &info); err != nil {
			return nil, fmt.Errorf("service info %d: %w", val.Id, err)
		}
		vip, port, proto := KeyAddr(key)
		s := &ServiceStatus{
			ID: val.Id, Name: cString(info.Name[:]), VIP: vip, Port: port,
			Protocol: protoName(proto), Mode: "l4", RingSize: val.RingSize,
		}
		if val.Kind == uint8(KindL7) {
			s.Mode = "l7"
		} else {
			s.Hash = HashMode(val.Hash).String()
			s.Forwarding = Forwarding(info.Forwarding).String()
		}
		c, err := m.ServiceCounters(val.Id)
		if err != nil {
			return nil, err
		}
		s.Packets, s.Bytes, s.NewFlows = c.Packets, c.Bytes, c.NewFlows
		byID[val.Id] = s
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read services: %w", err)
	}

	flows, err := m.OpenFlows()
	if err != nil {
		return nil, err
	}
	entries, err := m.BackendEntries()
	if err != nil {
		return nil, err
	}
	nat := false
	for i, be := range entries {
		id := uint32(i)
		s := byID[be.ServiceId]
		if be.State == uint8(bpf.XlbBackendStateXLB_BE_UNUSED) || s == nil {
			continue
		}
		c, err := m.BackendCounters(id)
		if err != nil {
			return nil, err
		}
		st := BackendStatus{
			ID: id, Address: BackendAddr(be), State: State(be.State).String(), Weight: be.Weight,
			MAC: macString(be.Mac), IfIndex: be.Ifindex,
			Packets: c.Packets, Bytes: c.Bytes, NewFlows: c.NewFlows, OpenFlows: flows[id],
		}
		if Forwarding(be.Forwarding) == ForwardNAT {
			nat = true
			st.Port, st.Source = be.Port, addrFromBytes(be.Src, be.Family)
		}
		s.Backends = append(s.Backends, st)
	}
	if nat {
		ports, err := m.NATPortsInUse()
		if err != nil {
			return nil, err
		}
		for id, n := range ports {
			if s := byID[id]; s != nil {
				s.NATPorts = n
			}
		}
	}
	for _, s := range byID {
		if err := m.fillShares(s); err != nil {
			return nil, err
		}
		sort.Slice(s.Backends, func(i, j int) bool { return s.Backends[i].Address.Less(s.Backends[j].Address) })
		snap.Services = append(snap.Services, *s)
	}
	sort.Slice(snap.Services, func(i, j int) bool { return snap.Services[i].Name < snap.Services[j].Name })

	rc, err := m.ReasonCounters()
	if err != nil {
		return nil, err
	}
	for i, c := range rc {
		snap.Verdicts = append(snap.Verdicts, VerdictStatus{
			Verdict: Reasons[i].Verdict, Reason: Reasons[i].Name, Packets: c.Packets, Bytes: c.Bytes,
		})
	}
	return snap, nil
}

func (m *Maps) fillShares(s *ServiceStatus) error {
	if s.Mode != "l4" {
		return nil
	}
	ring, err := m.Ring(s.ID)
	if err != nil || ring == nil {
		return err
	}
	slots := map[uint32]uint32{}
	for _, id := range ring {
		slots[id]++
	}
	for i := range s.Backends {
		b := &s.Backends[i]
		b.Slots = slots[b.ID]
		b.Share = float64(b.Slots) / float64(len(ring))
	}
	return nil
}

func protoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	}
	return fmt.Sprint(p)
}

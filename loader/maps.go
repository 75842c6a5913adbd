package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/bpf"
)

// Maps is typed access to the datapath's maps. The reconciler is the only
// writer; readers (status, metrics) may use it concurrently.
type Maps struct {
	bpf.XlbMaps

	// timeoutsMu orders the writes of flow_timeouts; seenFloor is the
	// tick this start counts as every flow's last packet (0: not yet set).
	timeoutsMu sync.Mutex
	seenFloor  uint32
	// natMu orders the writes of nat_ports (SetNATPorts and the sweep).
	natMu sync.Mutex
}

// mapFields lists the *ebpf.Map fields of bpf.XlbMaps with their map names, so
// pin handling does not repeat the list bpf2go already wrote.
func (m *Maps) mapFields() map[string]**ebpf.Map {
	out := make(map[string]**ebpf.Map)
	v := reflect.ValueOf(&m.XlbMaps).Elem()
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		name := t.Field(i).Tag.Get("ebpf")
		if ptr, ok := v.Field(i).Addr().Interface().(**ebpf.Map); ok && name != "" {
			out[name] = ptr
		}
	}
	return out
}

// OpenPinnedMaps opens the maps a running (or kept) datapath pinned in dir.
func OpenPinnedMaps(dir string) (*Maps, error) {
	m := &Maps{}
	for name, ptr := range m.mapFields() {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			m.Close()
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("%s: %w", dir, ErrNotPinned)
			}
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		*ptr = mp
	}
	return m, nil
}

// Close closes the map file descriptors (pins stay).
func (m *Maps) Close() error {
	var errs []error
	for _, ptr := range m.mapFields() {
		if *ptr != nil {
			errs = append(errs, (*ptr).Close())
			*ptr = nil
		}
	}
	return errors.Join(errs...)
}

// addrBytes is the datapath's address layout: IPv4 in the first 4 bytes.
func addrBytes(a netip.Addr) (out [16]byte, family uint8) {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		copy(out[:], b[:])
		return out, uint8(bpf.XlbFamilyXLB_FAMILY_V4)
	}
	return a.As16(), uint8(bpf.XlbFamilyXLB_FAMILY_V6)
}

func addrFromBytes(b [16]uint8, family uint8) netip.Addr {
	if family == uint8(bpf.XlbFamilyXLB_FAMILY_V4) {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// ServiceKey builds the services map key; port 0 is the VIP marker.
func ServiceKey(vip netip.Addr, port uint16, proto uint8) bpf.XlbSvcKey {
	addr, family := addrBytes(vip)
	return bpf.XlbSvcKey{Addr: addr, Port: port, Proto: proto, Family: family}
}

// KeyAddr returns the VIP, port and protocol of a services map key.
func KeyAddr(k bpf.XlbSvcKey) (netip.Addr, uint16, uint8) {
	return addrFromBytes(k.Addr, k.Family), k.Port, k.Proto
}

// BackendAddr returns a backend entry's address.
func BackendAddr(b bpf.XlbBackend) netip.Addr { return addrFromBytes(b.Addr, b.Family) }

// NewBackend builds a backends map entry.
func NewBackend(addr netip.Addr, serviceID uint32, weight uint16, state State, n Neighbour) bpf.XlbBackend {
	a, family := addrBytes(addr)
	be := bpf.XlbBackend{
		Addr: a, Family: family, ServiceId: serviceID, Weight: weight,
		State: uint8(state), Ifindex: uint32(n.IfIndex),
	}
	copy(be.Mac[:], n.MAC)
	copy(be.Smac[:], n.SrcMAC)
	return be
}

// FlowKey builds a conntrack key for a client flow to a service.
func FlowKey(src, dst netip.Addr, sport, dport uint16, proto uint8) bpf.XlbFlowKey {
	s, family := addrBytes(src)
	d, _ := addrBytes(dst)
	return bpf.XlbFlowKey{Src: s, Dst: d, Sport: sport, Dport: dport, Proto: proto, Family: family}
}

// Counters are summed over CPUs.
type Counters struct {
	Packets, Bytes, NewFlows uint64
}

func (m *Maps) sumCounters(mp *ebpf.Map, idx uint32) (Counters, error) {
	var per []bpf.XlbCounters
	if err := mp.Lookup(idx, &per); err != nil {
		return Counters{}, err
	}
	var c Counters
	for _, p := range per {
		c.Packets += p.Packets
		c.Bytes += p.Bytes
		c.NewFlows += p.NewFlows
	}
	return c, nil
}

// ServiceCounters returns a service's packets, bytes and new flows.
func (m *Maps) ServiceCounters(id uint32) (Counters, error) {
	return m.sumCounters(m.ServiceStats, id)
}

// BackendCounters returns what was forwarded to a backend.
func (m *Maps) BackendCounters(id uint32) (Counters, error) {
	return m.sumCounters(m.BackendStats, id)
}

// ReasonCounters returns every reason's counters, indexed by reason.
func (m *Maps) ReasonCounters() ([]Counters, error) {
	out := make([]Counters, bpf.XlbReasonXLB_R_MAX)
	for i := range out {
		c, err := m.sumCounters(m.ReasonStats, uint32(i))
		if err != nil {
			return nil, err
		}
		out[i] = c
	}
	return out, nil
}

// resetCounters zeroes a per-CPU slot when its id is handed to something new.
func resetCounters(mp *ebpf.Map, idx uint32) error {
	zero := make([]bpf.XlbCounters, ebpf.MustPossibleCPU())
	return mp.Put(idx, zero)
}

// BackendEntries reads the whole backends array in one batch syscall and
// returns it indexed by backend id (unused ids have state XLB_BE_UNUSED).
// One lookup per id would cost a syscall for each of the MaxBackends ids.
func (m *Maps) BackendEntries() ([]bpf.XlbBackend, error) {
	n := m.Backends.MaxEntries()
	keys := make([]uint32, n)
	vals := make([]bpf.XlbBackend, n)
	var cursor ebpf.MapBatchCursor
	got, err := m.Backends.BatchLookup(&cursor, keys, vals, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read backends: %w", err)
	}
	if got != int(n) {
		return nil, fmt.Errorf("read backends: got %d of %d entries", got, n)
	}
	out := make([]bpf.XlbBackend, n)
	for i, k := range keys {
		out[k] = vals[i]
	}
	return out, nil
}

// Ring returns the backend ids of a service's current Maglev table, or nil when
// the service has none (no usable backend).
func (m *Maps) Ring(serviceID uint32) ([]uint32, error) {
	var innerID ebpf.MapID
	if err := m.Rings.Lookup(serviceID, &innerID); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("ring of service %d: %w", serviceID, err)
	}
	inner, err := ebpf.NewMapFromID(innerID)
	if err != nil {
		return nil, fmt.Errorf("open ring of service %d: %w", serviceID, err)
	}
	defer inner.Close()
	return readRing(inner)
}

func readRing(inner *ebpf.Map) ([]uint32, error) {
	n := inner.MaxEntries()
	keys := make([]uint32, n)
	vals := make([]uint32, n)
	var cursor ebpf.MapBatchCursor
	got, err := inner.BatchLookup(&cursor, keys, vals, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read ring: %w", err)
	}
	if got != int(n) {
		return nil, fmt.Errorf("read ring: got %d of %d slots", got, n)
	}
	out := make([]uint32, n)
	for i, k := range keys {
		out[k] = vals[i]
	}
	return out, nil
}

// newRing creates an inner ring map holding entries (backend ids), filled
// through its memory mapping: one copy instead of a kernel update per slot.
func newRing(entries []uint32) (*ebpf.Map, error) {
	inner, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "xlb_ring",
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  4,
		MaxEntries: uint32(len(entries)),
		Flags:      innerMapFlags,
	})
	if err != nil {
		return nil, fmt.Errorf("create ring: %w", err)
	}
	mem, err := inner.Memory()
	if err != nil {
		inner.Close()
		return nil, fmt.Errorf("map ring: %w", err)
	}
	// The kernel lays array elements out 8 bytes apart (round_up(value_size, 8)).
	const stride = 8
	buf := make([]byte, stride*len(entries))
	for i, e := range entries {
		binary.NativeEndian.PutUint32(buf[stride*i:], e)
	}
	if _, err := mem.WriteAt(buf, 0); err != nil {
		inner.Close()
		return nil, fmt.Errorf("fill ring: %w", err)
	}
	return inner, nil
}

// innerMapFlags must equal the rings template's flags in xlb.c
// (BPF_F_INNER_MAP | BPF_F_MMAPABLE), or the kernel refuses the inner map.
const innerMapFlags = unix.BPF_F_INNER_MAP | unix.BPF_F_MMAPABLE

// macString formats a MAC from a fixed array; all-zero prints as "-".
func macString(b [6]uint8) string {
	if b == [6]uint8{} {
		return "-"
	}
	return net.HardwareAddr(b[:]).String()
}

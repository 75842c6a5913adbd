package loader

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/bpf"
)

// checkpointMaps are the maps the daemon writes as it starts, in the order a
// restore writes them back: egress ports and backends before the services and
// rings that point at them, as Apply does; and the flow timeouts. The counters
// are left out (the program writes them all the time, so a copy is stale at
// once), and so is the connection table (the program writes it, the daemon
// only sweeps it once running).
var checkpointMaps = []string{
	bpf.XlbMapTxPorts, bpf.XlbMapBackends, bpf.XlbMapServiceInfo,
	bpf.XlbMapRings, bpf.XlbMapServices, bpf.XlbMapVipFilter, bpf.XlbMapFlowTimeouts,
}

// checkpoint is what the reconciler's maps held when a start adopted them, so
// that a start that fails after its first Apply puts them back.
type checkpoint struct {
	copies []*mapCopy
}

// mapCopy is one map's entries, keyed by the key's bytes.
type mapCopy struct {
	m      *ebpf.Map
	values map[string][]byte // a map of maps holds an inner map's id
	// inner holds a map of maps' inner maps open, so that the ones a swap
	// replaces survive to be put back.
	inner map[string]*ebpf.Map
}

// takeCheckpoint copies the checkpointed maps but those in skip (created by
// this start: nobody else's state).
func (m *Maps) takeCheckpoint(skip map[string]bool) (*checkpoint, error) {
	fields := m.mapFields()
	cp := &checkpoint{}
	for _, name := range checkpointMaps {
		if skip[name] {
			continue
		}
		c, err := copyMap(*fields[name])
		if err != nil {
			cp.close()
			return nil, fmt.Errorf("checkpoint map %s: %w", name, err)
		}
		cp.copies = append(cp.copies, c)
	}
	return cp, nil
}

// restore writes back every entry that changed and deletes the ones added.
func (cp *checkpoint) restore() error {
	var errs []error
	for _, c := range cp.copies {
		if err := c.restore(); err != nil {
			errs = append(errs, fmt.Errorf("restore map %s: %w", c.m.String(), err))
		}
	}
	return errors.Join(errs...)
}

func (cp *checkpoint) close() {
	if cp == nil {
		return
	}
	for _, c := range cp.copies {
		c.closeInner()
	}
	cp.copies = nil
}

func copyMap(m *ebpf.Map) (*mapCopy, error) {
	values, err := entries(m)
	if err != nil {
		return nil, err
	}
	c := &mapCopy{m: m, values: values}
	if t := m.Type(); t != ebpf.ArrayOfMaps && t != ebpf.HashOfMaps {
		return c, nil
	}
	c.inner = make(map[string]*ebpf.Map, len(values))
	for k := range values {
		var in *ebpf.Map
		if err := m.Lookup([]byte(k), &in); err != nil {
			c.closeInner()
			return nil, fmt.Errorf("open inner map: %w", err)
		}
		c.inner[k] = in
	}
	return c, nil
}

func (c *mapCopy) closeInner() {
	for _, in := range c.inner {
		in.Close()
	}
}

// entries reads a map's entries as bytes (a map of maps: the inner map ids;
// an empty slot of an array of maps is no entry).
func entries(m *ebpf.Map) (map[string][]byte, error) {
	out := map[string][]byte{}
	it := m.Iterate()
	for {
		// Fresh slices each time: the library reads into a slice of the
		// right length in place, which would overwrite the previous value.
		var k, v []byte
		if !it.Next(&k, &v) {
			break
		}
		out[string(k)] = v
	}
	return out, it.Err()
}

func (c *mapCopy) restore() error {
	now, err := entries(c.m)
	if err != nil {
		return err
	}
	for k := range now {
		if _, ok := c.values[k]; ok {
			continue
		}
		if err := c.m.Delete([]byte(k)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	for k, v := range c.values {
		if cur, ok := now[k]; ok && bytes.Equal(cur, v) {
			continue
		}
		var value any = v
		if in := c.inner[k]; in != nil {
			value = in
		}
		if err := c.m.Put([]byte(k), value); err != nil {
			return err
		}
	}
	return nil
}

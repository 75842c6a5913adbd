package loader

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// pinIDs is the id of the map or link behind every pin in dir (directories
// left out).
func pinIDs(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	ids := map[string]uint64{}
	for _, name := range pinNames(t, dir) {
		path := filepath.Join(dir, name)
		if st, err := os.Stat(path); err != nil || st.IsDir() {
			continue
		}
		if m, err := ebpf.LoadPinnedMap(path, nil); err == nil {
			info, err := m.Info()
			m.Close()
			if id, ok := info.ID(); err == nil && ok {
				ids[name] = uint64(id)
				continue
			}
		}
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			t.Fatalf("pin %s: neither a map nor a link: %v", name, err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = uint64(info.ID)
	}
	return ids
}

// attachedProg is the id of the XDP program on the namespace's interface
// (0: none).
func (n *testNet) attachedProg(t *testing.T, name string) uint32 {
	t.Helper()
	l, err := n.h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		return x.ProgId
	}
	return 0
}

// A Commit that fails halfway undoes what it did: the pins and the attached
// program are those Open found, and a later Commit still takes over. The
// failures: the path a replaced pin is moved aside to is taken. A pin's
// place taken by a directory is no failure (moved aside like a pin).
func TestCommitFailureRollsBack(t *testing.T) {
	tests := []struct {
		name  string
		iface string // the second start's interface ("": none)
		// block, after the second start's Open, makes its Commit fail
		// (fails) or not; it returns what undoes it.
		block func(t *testing.T, dir string) (undo func())
		fails bool
	}{
		{"a map's pin cannot move aside", "", blockPath("conntrack" + backupSuffix), true},
		{"the link's pin cannot move aside, after the maps'", "xc1", blockPath(linkPinName + backupSuffix), true},
		{"a map's place taken by a directory", "xc1", func(t *testing.T, dir string) func() {
			// The first start's conntrack pin, incompatible, gone.
			if err := os.Remove(filepath.Join(dir, "conntrack")); err != nil {
				t.Fatal(err)
			}
			blockPath("conntrack/x")(t, dir)
			return nil
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newTestNet(t)
			n.veth("xc0", "xc1", nil, 0)
			dir := testPinDir(t, "commit")
			open := func(o Options) *Datapath {
				t.Helper()
				o.PinDir, o.Mode, o.Logger = dir, XDPGeneric, quietLogger()
				var dp *Datapath
				var err error
				n.do(func() { dp, err = Open(o) })
				if err != nil {
					t.Fatal(err)
				}
				return dp
			}
			first := open(Options{Interface: "xc0"})
			if err := first.Commit(); err != nil {
				t.Fatal(err)
			}
			if err := first.Close(true); err != nil {
				t.Fatal(err)
			}
			prog := n.attachedProg(t, "xc0")
			pins := pinIDs(t, dir)

			// Backends of another size: backends, backend_stats and
			// conntrack are fresh, and replace their pins at Commit.
			second := open(Options{Interface: tt.iface, MaxBackends: 64})
			defer second.Close(false)
			undo := tt.block(t, dir)
			if tt.fails {
				err := second.Commit()
				if err == nil {
					t.Fatal("Commit succeeded")
				}
				t.Logf("Commit: %v", err)
				if second.Committed() {
					t.Error("Committed after a failed Commit")
				}
				if got := pinIDs(t, dir); !maps.Equal(got, pins) {
					t.Errorf("pins after the failed Commit:\n%v\nwere\n%v", got, pins)
				}
				if got := n.attachedProg(t, "xc0"); got != prog {
					t.Errorf("program on xc0 %d after the failed Commit, was %d", got, prog)
				}
				undo()
			}
			if err := second.Commit(); err != nil {
				t.Fatalf("Commit: %v", err)
			}
			got := pinIDs(t, dir)
			for _, name := range []string{"backends", "backend_stats", "conntrack"} {
				info, err := (*second.mapFields()[name]).Info()
				if err != nil {
					t.Fatal(err)
				}
				if id, _ := info.ID(); got[name] != uint64(id) {
					t.Errorf("pin %s: map %d, want this start's %d", name, got[name], id)
				}
			}
			if tt.iface != "" {
				info, err := second.link.Info()
				if err != nil {
					t.Fatal(err)
				}
				if got[linkPinName] != uint64(info.ID) {
					t.Errorf("pinned link %d, want this start's %d", got[linkPinName], info.ID)
				}
				if id := n.attachedProg(t, "xc0"); id != 0 {
					t.Errorf("program %d still on xc0, the stale link's interface", id)
				}
			}
			want := slices.Sorted(maps.Keys(pins))
			if names := pinNames(t, dir); tt.fails && !slices.Equal(names, want) {
				t.Errorf("pins after Commit: %v, want %v", names, want)
			}
		})
	}
}

// blockPath makes the directory path (and its parents) in the pin
// directory; the undo removes it.
func blockPath(path string) func(t *testing.T, dir string) func() {
	return func(t *testing.T, dir string) func() {
		t.Helper()
		p := filepath.Join(dir, path)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		return func() {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A start finds the pins an unfinished Commit (its daemon killed) moved
// aside: put back where their place is empty, removed where it is not.
func TestRestoreMovedPins(t *testing.T) {
	requireRoot(t)
	dir := testPinDir(t, "moved")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	pin := func(name string) uint64 {
		t.Helper()
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Pin(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		info, _ := m.Info()
		id, _ := info.ID()
		return uint64(id)
	}
	movedAlone := pin("services" + backupSuffix)
	replaced := pin("backends")
	pin("backends" + backupSuffix)
	if err := restoreMovedPins(dir, quietLogger()); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"services": movedAlone, "backends": replaced}
	if got := pinIDs(t, dir); !maps.Equal(got, want) {
		t.Errorf("pins %v, want %v", got, want)
	}
}

package loader

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// testPinDir is a pin directory of this test process, removed when t ends
// (which also detaches a link pinned there once no fd holds it).
func testPinDir(t *testing.T, name string) string {
	t.Helper()
	dir := fmt.Sprintf("/sys/fs/bpf/xlb-test-%s-%d", name, os.Getpid())
	os.RemoveAll(dir)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// pinNames lists dir ("" if it does not exist).
func pinNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// xdpProgID is the id of the XDP program attached to ifindex (0: none).
func xdpProgID(t *testing.T, ifindex int) uint32 {
	t.Helper()
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	if l.Attrs().Xdp == nil || !l.Attrs().Xdp.Attached {
		return 0
	}
	return l.Attrs().Xdp.ProgId
}

// dumpPinned reads the checkpointed maps from their pins.
func dumpPinned(t *testing.T, dir string) map[string]map[string][]byte {
	t.Helper()
	m, err := OpenPinnedMaps(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	fields := m.mapFields()
	out := map[string]map[string][]byte{}
	for _, name := range checkpointMaps {
		e, err := entries(*fields[name])
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		out[name] = e
	}
	return out
}

// verdictOf runs the program with id on data: the verdict and the MACs of
// the frame it sends.
func verdictOf(t *testing.T, id uint32, data []byte) (uint32, string) {
	t.Helper()
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	out := make([]byte, len(data)+256)
	ret, err := prog.Run(&ebpf.RunOptions{Data: data, DataOut: out, Repeat: 1})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret, fmt.Sprintf("% x", out[:12])
}

// openOn opens a datapath pinned in dir and attached (generic mode) to iface,
// with a reconciler whose backends sit behind egress.
func openOn(t *testing.T, dir, iface string, ifindex, egress int) *fixture {
	t.Helper()
	return openMode(t, dir, iface, ifindex, egress, XDPGeneric)
}

// A start that adopted a kept datapath and fails (closes before Commit) after
// its first Apply leaves it as it found it: the same program attached through
// the pinned link, every pin, the maps' contents, and the same forwarding.
func TestFailedStartLeavesAdoptedDatapath(t *testing.T) {
	requireRoot(t)
	ifindex := newDummyLink(t, "xlbt-life0")
	other := newDummyLink(t, "xlbt-life1")
	dir := testPinDir(t, "life")

	first := openOn(t, dir, "xlbt-life0", ifindex, other)
	first.apply(standardDesired())
	if err := first.dp.SetFlowTimeouts(FlowTimeouts{TCPSyn: time.Minute, UDP: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := first.dp.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := first.dp.Close(true); err != nil {
		t.Fatal(err)
	}
	prog := xdpProgID(t, ifindex)
	pins, dump := pinNames(t, dir), dumpPinned(t, dir)
	p := pkt{src: client4, dst: vip4, proto: protoTCP, sport: 1, dport: 80, tcpFlags: tcpSYN}
	verdict, macs := verdictOf(t, prog, p.build())
	if prog == 0 || verdict != xdpRedirect {
		t.Fatalf("kept datapath: program %d, verdict %s, want attached and REDIRECT", prog, verdictNames[verdict])
	}

	// The failing start: another config (a service gone, one added, every
	// backend behind another interface) applied, then no Commit.
	second := openOn(t, dir, "xlbt-life0", ifindex, loIfIndex)
	if !second.dp.Adopted {
		t.Fatal("pinned maps not adopted")
	}
	d := standardDesired()
	d.Services = append(d.Services[1:], webService(vip4, 8080, protoTCP, HashIP, be4[:1]))
	second.apply(d)
	if err := second.dp.SetFlowTimeouts(FlowTimeouts{UDP: time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := second.dp.Close(false); err != nil {
		t.Fatalf("close before commit: %v", err)
	}

	if got := xdpProgID(t, ifindex); got != prog {
		t.Errorf("XDP program %d after the failed start, was %d", got, prog)
	}
	if got := pinNames(t, dir); !slices.Equal(got, pins) {
		t.Errorf("pins after the failed start: %v, were %v", got, pins)
	}
	after := dumpPinned(t, dir)
	for _, name := range checkpointMaps {
		if !maps.EqualFunc(after[name], dump[name], slices.Equal) {
			t.Errorf("map %s changed by the failed start: %d entries, were %d", name, len(after[name]), len(dump[name]))
		}
	}
	if pinned, err := OpenPinnedMaps(dir); err != nil {
		t.Error(err)
	} else {
		if got, err := pinned.ReadFlowTimeouts(); err != nil || got.UDP != 56*FlowTick {
			t.Errorf("flow timeouts after the failed start: %+v, %v; want the kept udp 1m (56 ticks)", got, err)
		}
		pinned.Close()
	}
	p.sport = 2 // a new flow: the ring decides
	if v, m := verdictOf(t, prog, p.build()); v != verdict || m != macs {
		t.Errorf("forwarding after the failed start: %s to %s, was %s to %s", verdictNames[v], m, verdictNames[verdict], macs)
	}
}

// A start that found nothing pinned and fails removes all it made: XDP
// detached, no pins, no directory.
func TestFailedFreshStartLeavesNothing(t *testing.T) {
	requireRoot(t)
	ifindex := newDummyLink(t, "xlbt-life2")
	dir := testPinDir(t, "fresh")
	f := openOn(t, dir, "xlbt-life2", ifindex, loIfIndex)
	f.apply(standardDesired())
	if xdpProgID(t, ifindex) == 0 {
		t.Fatal("XDP not attached")
	}
	if pins := pinNames(t, dir); len(pins) != 0 {
		t.Errorf("pins before Commit: %v, want none", pins)
	}
	if err := f.dp.Close(true); err != nil {
		t.Fatal(err)
	}
	if id := xdpProgID(t, ifindex); id != 0 {
		t.Errorf("XDP program %d still attached after a failed fresh start", id)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left by a failed fresh start: %v %v", err, pinNames(t, dir))
	}
}

// One pin directory, one daemon: a second Open fails naming the holder's PID
// and touches nothing; once the first is closed the directory is free again.
func TestPinDirLocked(t *testing.T) {
	requireRoot(t)
	dir := testPinDir(t, "lock")
	first, err := Open(Options{PinDir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close(false)
	if err := first.Commit(); err != nil {
		t.Fatal(err)
	}
	pins := pinNames(t, dir)

	_, err = Open(Options{PinDir: dir, Logger: quietLogger()})
	if !errors.Is(err, ErrPinDirInUse) {
		t.Fatalf("second Open: %v, want ErrPinDirInUse", err)
	}
	if want := fmt.Sprintf("(pid %d)", os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("second Open: %q does not name the holder %s", err, want)
	}
	if got := pinNames(t, dir); !slices.Equal(got, pins) || len(pins) == 0 {
		t.Errorf("pins after the refused Open: %v, were %v", got, pins)
	}

	if err := first.Close(false); err != nil {
		t.Fatal(err)
	}
	again, err := Open(Options{PinDir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("Open after the holder closed: %v", err)
	}
	again.Close(false)
}

// Two daemons starting at once: A makes the directory, B (finding it made)
// locks it first, A's lock fails. A's failed start must leave B's directory
// alone, although A made it.
func TestPinDirLoserLeavesWinnersDir(t *testing.T) {
	requireRoot(t)
	dir := testPinDir(t, "race")
	createdA, err := mkdirOwned(dir)
	if err != nil || !createdA {
		t.Fatalf("A: created %v, %v", createdA, err)
	}
	lockB, createdB, err := claimPinDir(dir)
	if err != nil || createdB {
		t.Fatalf("B: created %v, %v", createdB, err)
	}
	defer lockB.Close()
	lockA, createdA, err := claimPinDir(dir)
	if !errors.Is(err, ErrPinDirInUse) || lockA != nil || createdA {
		t.Fatalf("A's claim: lock %v created %v err %v, want ErrPinDirInUse and nothing claimed", lockA, createdA, err)
	}
	// As Open closes A after preparePins failed, had A kept created.
	a := &Datapath{pinDir: dir, createdDir: true, log: quietLogger()}
	if err := a.Close(false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the loser removed the directory the winner holds: %v", err)
	}
}

// The host's bpffs outlives the process: KeepOnExit is accepted there (the
// refusal under a private mount namespace is an e2e test: `ip netns exec`).
func TestKeepOnExitOnHostBPFFS(t *testing.T) {
	requireRoot(t)
	dir := testPinDir(t, "keep")
	dp, err := Open(Options{PinDir: dir, KeepOnExit: true, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("Open with KeepOnExit on the host's bpffs: %v", err)
	}
	dp.Close(false)
	outlives, ok, err := bpffsOutlivesProcess(bpffsRoot, false)
	if !ok || !outlives {
		t.Errorf("bpffsOutlivesProcess(%s) = %v (known %v, %v), want true", bpffsRoot, outlives, ok, err)
	}
}

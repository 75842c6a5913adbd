package control

import (
	"context"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/loader"
)

// blockedWalk stands for a walk of a large connection table: it signals
// when it starts and returns once released.
type blockedWalk struct {
	started, release chan struct{}
}

func newBlockedWalk() *blockedWalk {
	return &blockedWalk{started: make(chan struct{}, 1), release: make(chan struct{})}
}

func (w *blockedWalk) wait() {
	select {
	case w.started <- struct{}{}:
	default:
	}
	<-w.release
}

// within fails unless fn returns within d: it must not wait for the walk.
func within(t *testing.T, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s waited for the connection table walk", what)
	}
}

// startWalkController is a controller over a real datapath with two L4
// backends, reconciled once.
func startWalkController(t *testing.T) (*Controller, *loader.Reconciler) {
	t.Helper()
	_, c := newL4ControllerSized(t, maxConfig(t, 8, "198.18.0.11", "198.18.0.12"), 8)
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c, c.rec
}

// A removal's walk of the connection table holds no lock: the admin API
// and listings go on meanwhile, and the removal completes after it.
func TestRemovalWalksFlowsOutsideLock(t *testing.T) {
	c, _ := startWalkController(t)
	w := newBlockedWalk()
	c.openFlows = func() (map[uint32]int, error) { w.wait(); return map[uint32]int{}, nil }
	if _, err := c.Remove("web@198.18.0.11"); err != nil {
		t.Fatal(err)
	}
	removed := make(chan bool)
	go func() { removed <- c.finishRemovals() }()
	<-w.started
	within(t, 2*time.Second, "SetAdminState", func() {
		if _, err := c.SetAdminState("web@198.18.0.12", AdminDraining); err != nil {
			t.Error(err)
		}
	})
	within(t, 2*time.Second, "Config", func() { c.Config() })
	close(w.release)
	if !<-removed {
		t.Fatal("removal with no open flow not finished")
	}
	if _, b, _ := c.find("web@198.18.0.11"); b != nil {
		t.Fatal("removed backend still listed")
	}
}

// The periodic sweep runs beside Run's loop: a reconcile asked for while a
// sweep walks the table is applied at once, and Run returns only once the
// sweep has ended.
func TestSweepDoesNotBlockRun(t *testing.T) {
	c, rec := startWalkController(t)
	defer func(d time.Duration) { flowSweep = d }(flowSweep)
	flowSweep = 10 * time.Millisecond
	w := newBlockedWalk()
	c.expireFlows = func() (loader.FlowSweep, error) { w.wait(); return loader.FlowSweep{}, nil }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error)
	go func() { ran <- c.Run(ctx) }()
	<-w.started

	if _, err := c.SetAdminState("web@198.18.0.12", AdminDraining); err != nil {
		t.Fatal(err)
	}
	sid, ok := rec.ServiceID(c.cfg.Services[0].VIP, 80, 6)
	if !ok {
		t.Fatal("service not in the datapath")
	}
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, st, _ := rec.BackendState(sid, c.cfg.Services[0].Backends[1].Address); st == loader.StateDraining {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("drain not applied while a sweep was running")
		}
	}
	cancel()
	select {
	case <-ran:
		t.Fatal("Run returned with its sweep still running")
	case <-time.After(50 * time.Millisecond):
	}
	close(w.release)
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
}

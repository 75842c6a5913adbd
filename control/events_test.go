package control

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/health"
)

// The ring keeps the latest events in order, Since resumes after a
// sequence number, and its channel is closed by the next Add.
func TestEventsRing(t *testing.T) {
	ev := NewEvents(4)
	if got, _ := ev.Since(0); len(got) != 0 || ev.Last() != 0 {
		t.Fatalf("empty ring: %v, last %d", got, ev.Last())
	}
	for i := 1; i <= 6; i++ {
		ev.Add(EventAdmin, "web", "web@198.18.0.11", "event %d", i)
	}
	got, wake := ev.Since(0)
	if len(got) != 4 || got[0].Seq != 3 || got[3].Seq != 6 || got[3].Message != "event 6" {
		t.Fatalf("Since(0) = %+v, want events 3..6", got)
	}
	if got, _ := ev.Since(5); len(got) != 1 || got[0].Seq != 6 {
		t.Errorf("Since(5) = %+v, want event 6", got)
	}
	if got, _ := ev.Since(6); len(got) != 0 {
		t.Errorf("Since(6) = %+v, want none", got)
	}
	select {
	case <-wake:
		t.Fatal("woken before an Add")
	default:
	}
	ev.Add(EventReload, "", "", "config reloaded")
	select {
	case <-wake:
	case <-time.After(5 * time.Second):
		t.Fatal("Add did not close the channel")
	}
	if ev.Last() != 7 {
		t.Errorf("Last = %d, want 7", ev.Last())
	}
}

// A health transition becomes one event per subject, named by backend id.
func TestHealthEvents(t *testing.T) {
	ev := NewEvents(0)
	at := time.Now()
	ev.healthEvent(health.Transition{
		Spec: health.Spec{Target: netip.MustParseAddrPort("198.18.0.11:80")}, From: health.Healthy, To: health.Unhealthy,
		Reason: "refused", At: at,
		Subjects: []health.Subject{{Service: "web", Backend: "198.18.0.11"}, {Service: "api", Backend: "198.18.0.11:80"}},
	})
	got, _ := ev.Since(0)
	if len(got) != 2 || got[0].Backend != "web@198.18.0.11" || got[1].Backend != "api@198.18.0.11:80" ||
		got[0].Kind != EventHealth || !got[0].Time.Equal(at) || !strings.Contains(got[0].Message, "healthy → unhealthy (refused)") {
		t.Errorf("events = %+v", got)
	}
}

// The controller records health transitions, admin changes, removals,
// reloads and its start, each naming its backend.
func TestControllerEvents(t *testing.T) {
	a, b := newFlipServer(t), newFlipServer(t)
	cfg := l7Config(t, "", a, b)
	c := startController(t, cfg)
	kinds := func() []string {
		evs, _ := c.Events().Since(0)
		var out []string
		for _, e := range evs {
			out = append(out, e.Kind+" "+e.Backend+" "+e.Message)
		}
		return out
	}
	has := func(want string) func() bool {
		return func() bool {
			for _, k := range kinds() {
				if strings.Contains(k, want) {
					return true
				}
			}
			return false
		}
	}
	eventually(t, "start event", has("start  started with 1 services"))
	a.ok.Store(false)
	eventually(t, "health event", has("health "+id(a)+" healthy → unhealthy (status 503)"))
	if _, err := c.SetAdminState(id(b), AdminDraining); err != nil {
		t.Fatal(err)
	}
	eventually(t, "drain event", has("admin "+id(b)+" admin ready → draining"))
	if _, err := c.Remove(id(b)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "removal events", func() bool { return has("removal started")() && has("admin "+id(b)+" removed: flows ended")() })
	if err := c.Reload(l7Config(t, "", a)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "reload event", has("reload  config reloaded: 1 services"))
	if _, err := c.SetNodeState(NodeDraining); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node drain event", has("admin  node ready → draining"))
}

package admin

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/xlb-dev/xlb/control"
)

// The node endpoints: drain and ready need the token as the backend ones
// do; /lb/node and /lb/health show the state.
func TestNodeDrainAndReady(t *testing.T) {
	srv, _ := newTestServer(t, "tok")
	for _, path := range []string{"/lb/admin/node/drain", "/lb/admin/node/ready"} {
		if code, _ := call(t, srv, http.MethodPost, path, "", ""); code != http.StatusUnauthorized {
			t.Errorf("POST %s without a token: %d, want 401", path, code)
		}
		if code, _ := call(t, srv, http.MethodPost, path, "wrong", ""); code != http.StatusForbidden {
			t.Errorf("POST %s with a wrong token: %d, want 403", path, code)
		}
	}
	code, body := call(t, srv, http.MethodPost, "/lb/admin/node/drain", "tok", "")
	var info control.NodeInfo
	if err := json.Unmarshal([]byte(body), &info); code != http.StatusOK || err != nil || info.State != control.NodeDraining {
		t.Fatalf("drain: %d %s (%v)", code, body, err)
	}
	node := func(path string) control.NodeInfo {
		t.Helper()
		_, body := call(t, srv, http.MethodGet, path, "", "")
		var v struct {
			control.NodeInfo
			Node *control.NodeInfo `json:"node"`
		}
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, body)
		}
		if v.Node != nil {
			return *v.Node
		}
		return v.NodeInfo
	}
	if got := node("/lb/node"); got.State != control.NodeDraining || got.BGP != nil {
		t.Errorf("/lb/node after drain: %+v", got)
	}
	if got := node("/lb/health"); got.State != control.NodeDraining {
		t.Errorf("/lb/health's node after drain: %+v", got)
	}
	if code, body := call(t, srv, http.MethodPost, "/lb/admin/node/ready", "tok", ""); code != http.StatusOK {
		t.Fatalf("ready: %d %s", code, body)
	}
	if got := node("/lb/node"); got.State != control.NodeReady {
		t.Errorf("/lb/node after ready: %+v", got)
	}
}

package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/bgp"
	"github.com/xlb-dev/xlb/control"
)

// TestNodeCmd: drain and ready POST to the admin API with the token, status
// GETs /lb/node, and each prints the node's state, its peers and what it
// announces; a bad subcommand or argument sends nothing and exits 2.
func TestNodeCmd(t *testing.T) {
	t.Setenv("XLB_ADMIN_TOKEN", "")
	since := time.Date(2026, 12, 6, 1, 2, 3, 0, time.UTC)
	var mu sync.Mutex
	var reqs []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reqs = append(reqs, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		info := control.NodeInfo{State: control.NodeReady, BGP: &bgp.Status{
			LocalASN: 64512, RouterID: "198.18.0.2", Announced: []netip.Prefix{netip.MustParsePrefix("198.19.0.10/32")},
			Peers: []bgp.PeerStatus{{Address: "198.18.0.1", ASN: 64500, State: bgp.StateEstablished, Up: true, Since: &since, LocalAddress: "198.18.0.2", Advertised: 1}},
		}}
		if strings.HasSuffix(r.URL.Path, "/drain") {
			info.State, info.BGP.Announced = control.NodeDraining, nil
			info.Withheld = []netip.Prefix{netip.MustParsePrefix("198.19.0.10/32")}
		}
		json.NewEncoder(w).Encode(info)
	}))
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, tc := range []struct {
		args     []string
		wantCode int
		wantReq  string
		wantOut  []string
	}{
		{[]string{"node", "drain", "--admin", "ADMIN", "--token", "tok"}, 0, "POST /lb/admin/node/drain Bearer tok",
			[]string{"node: draining", "announced: none; withheld: 198.19.0.10/32"}},
		{[]string{"node", "ready", "--token", "tok", "--admin", "ADMIN"}, 0, "POST /lb/admin/node/ready Bearer tok",
			[]string{"node: ready", "announced: 198.19.0.10/32; withheld: none"}},
		{[]string{"node", "status", "--admin", "ADMIN"}, 0, "GET /lb/node ",
			[]string{"bgp: asn 64512, router id 198.18.0.2", "198.18.0.1  64500  established  2026-12-06T01:02:03Z  198.18.0.2     1"}},
		{[]string{"node", "halt", "--admin", "ADMIN"}, 2, "", nil},
		{[]string{"node", "drain", "extra", "--admin", "ADMIN"}, 2, "", nil},
		{[]string{"node"}, 2, "", nil},
	} {
		mu.Lock()
		reqs = nil
		mu.Unlock()
		code, out, errOut := runArgs(tc.args, addr)
		if code != tc.wantCode {
			t.Errorf("%v: exit %d, want %d (%s)", tc.args, code, tc.wantCode, errOut)
		}
		mu.Lock()
		got := strings.Join(reqs, "; ")
		mu.Unlock()
		if got != tc.wantReq {
			t.Errorf("%v: requests %q, want %q", tc.args, got, tc.wantReq)
		}
		for _, w := range tc.wantOut {
			if !strings.Contains(out, w) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, out)
			}
		}
	}
}

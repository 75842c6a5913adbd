package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"

	"github.com/xlb-dev/xlb/control"
)

// adminRecorder is a stand-in admin API that records what reaches it.
type adminRecorder struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	method, path, query, auth string
	body                      map[string]any
}

func newAdminRecorder(t *testing.T) *adminRecorder {
	a := &adminRecorder{}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := recorded{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery, auth: r.Header.Get("Authorization")}
		if b, _ := io.ReadAll(r.Body); len(b) > 0 {
			if err := json.Unmarshal(b, &rec.body); err != nil {
				t.Errorf("request body %q: %v", b, err)
			}
		}
		a.mu.Lock()
		a.reqs = append(a.reqs, rec)
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodGet {
			json.NewEncoder(w).Encode([]control.BackendInfo{{ID: "web@198.18.0.12:8080", State: "up"}})
			return
		}
		json.NewEncoder(w).Encode(control.BackendInfo{ID: "web@198.18.0.12:8080", State: "up", Admin: "ready", Health: "healthy"})
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *adminRecorder) addr() string { return strings.TrimPrefix(a.srv.URL, "http://") }

func (a *adminRecorder) requests() []recorded {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]recorded(nil), a.reqs...)
}

// runArgs runs the command line with ADMIN replaced by addr.
func runArgs(args []string, addr string) (code int, stdout, stderr string) {
	args = append([]string(nil), args...)
	for i, s := range args {
		args[i] = strings.ReplaceAll(s, "ADMIN", addr)
	}
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestBackendCmd: every number is checked before anything is sent (a bad
// one exits 2 and the admin API sees no request), and flags work before and
// after the backend ID (the request reaches the server --admin names, with
// the --token given after the ID).
func TestBackendCmd(t *testing.T) {
	t.Setenv("XLB_ADMIN_TOKEN", "")
	add := []string{"backend", "add", "--admin", "ADMIN", "--service", "web", "--address", "198.18.0.12"}
	with := func(base []string, more ...string) []string { return append(append([]string(nil), base...), more...) }
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantReq  string         // "METHOD /path?query", "" for no request at all
		wantBody map[string]any // fields of the JSON body, if set
		wantAuth string
		wantErr  string // substring of stderr
		wantOut  string // substring of stdout
	}{
		// Numbers out of range: exit 2, nothing sent.
		{name: "port 99999 (wrapped to 34463)", args: with(add, "--port", "99999"), wantCode: 2, wantErr: "1..65535"},
		{name: "port 65536", args: with(add, "--port", "65536"), wantCode: 2, wantErr: "1..65535"},
		{name: "port 0", args: with(add, "--port", "0"), wantCode: 2, wantErr: "1..65535"},
		{name: "port -1", args: with(add, "--port", "-1"), wantCode: 2, wantErr: "1..65535"},
		{name: "port not a number", args: with(add, "--port", "http"), wantCode: 2, wantErr: "-port"},
		{name: "port hex", args: with(add, "--port=0x50"), wantCode: 2, wantErr: "-port"},
		{name: "port 2^64+80", args: with(add, "--port", "18446744073709551696"), wantCode: 2, wantErr: "1..65535"},
		{name: "weight 65536", args: with(add, "--weight", "65536"), wantCode: 2, wantErr: "0..65535"},
		{name: "weight -1", args: with(add, "--weight", "-1"), wantCode: 2, wantErr: "0..65535"},
		{name: "weight 1.5", args: with(add, "--weight", "1.5"), wantCode: 2, wantErr: "0..65535"},
		{name: "bad number after a good one", args: with(add, "--port", "80", "--weight", "70000"), wantCode: 2, wantErr: "-weight"},
		{name: "address not an IP", args: with(add[:6], "--address", "198.18.0.300"), wantCode: 2, wantErr: "not an IP address"},
		{name: "mac not a MAC", args: with(add, "--mac", "02:00:00:00:00:zz"), wantCode: 2, wantErr: "not an Ethernet address"},
		{name: "admin port out of range", args: []string{"backend", "drain", "web@198.18.0.12", "--admin", "127.0.0.1:99999"}, wantCode: 2, wantErr: "1..65535"},
		{name: "add without --service", args: []string{"backend", "add", "--admin", "ADMIN", "--address", "198.18.0.12"}, wantCode: 2, wantErr: "required"},
		{name: "add with a stray argument", args: with(add, "web@198.18.0.12"), wantCode: 2, wantErr: "unexpected argument"},
		{name: "drain with two ids", args: []string{"backend", "drain", "--admin", "ADMIN", "a", "b"}, wantCode: 2, wantErr: "exactly one backend ID"},
		{name: "drain without id", args: []string{"backend", "drain", "--admin", "ADMIN"}, wantCode: 2, wantErr: "exactly one backend ID"},
		{name: "unknown flag after the id", args: []string{"backend", "drain", "web@198.18.0.12", "--admin", "ADMIN", "--force"}, wantCode: 2, wantErr: "-force"},
		{name: "unknown subcommand", args: []string{"backend", "nuke", "--admin", "ADMIN"}, wantCode: 2, wantErr: "unknown backend command"},

		// Good numbers go through, as given.
		{name: "port 65535 weight 0", args: with(add, "--port", "65535", "--weight", "0"),
			wantReq: "POST /lb/admin/backends", wantBody: map[string]any{"service": "web", "address": "198.18.0.12", "port": 65535.0, "weight": 0.0}},
		{name: "port 1 weight 65535", args: with(add, "--port=1", "--weight=65535"),
			wantReq: "POST /lb/admin/backends", wantBody: map[string]any{"port": 1.0, "weight": 65535.0}},
		{name: "no port: L4, default weight", args: add,
			wantReq: "POST /lb/admin/backends", wantBody: map[string]any{"port": nil, "weight": 1.0}},

		// Flags before, between and after the id.
		{name: "drain, flags after the id", args: []string{"backend", "drain", "web@198.18.0.12:8080", "--admin", "ADMIN"},
			wantReq: "PUT /lb/admin/backends/web@198.18.0.12:8080/drain", wantOut: "state up"},
		{name: "ready, --token after the id", args: []string{"backend", "ready", "--admin", "ADMIN", "web@198.18.0.12:8080", "--token", "s3cret"},
			wantReq: "PUT /lb/admin/backends/web@198.18.0.12:8080/ready", wantAuth: "Bearer s3cret"},
		{name: "remove, all flags after the id", args: []string{"backend", "remove", "web@198.18.0.12:8080", "--token=t", "--admin=ADMIN"},
			wantReq: "DELETE /lb/admin/backends/web@198.18.0.12:8080", wantAuth: "Bearer t"},
		{name: "-- ends the flags", args: []string{"backend", "drain", "--admin", "ADMIN", "--", "-odd"},
			wantReq: "PUT /lb/admin/backends/-odd/drain"},
		{name: "list, flags in any order", args: []string{"backend", "list", "--service", "web", "--admin", "ADMIN"},
			wantReq: "GET /lb/backends?service=web", wantOut: "web@198.18.0.12:8080"},
		{name: "add, flags in any order", args: []string{"backend", "add", "--weight", "3", "--address", "198.18.0.12", "--admin", "ADMIN", "--service", "web"},
			wantReq: "POST /lb/admin/backends", wantBody: map[string]any{"weight": 3.0}},

		// Help: usage on stdout, exit 0, nothing sent.
		{name: "help after the id", args: []string{"backend", "drain", "web@198.18.0.12", "--admin", "ADMIN", "--help"}, wantOut: "usage: xlb backend drain ID"},
		{name: "help with a bad number", args: []string{"backend", "add", "--admin", "ADMIN", "-h", "--port", "99999"}, wantOut: "usage: xlb backend add"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAdminRecorder(t)
			code, stdout, stderr := runArgs(tt.args, a.addr())
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, stdout, stderr)
			}
			if !strings.Contains(stderr, tt.wantErr) || tt.wantErr == "" && stderr != "" {
				t.Errorf("stderr %q, want %q in it", stderr, tt.wantErr)
			}
			if !strings.Contains(stdout, tt.wantOut) {
				t.Errorf("stdout %q, want %q in it", stdout, tt.wantOut)
			}
			reqs := a.requests()
			if tt.wantReq == "" {
				if len(reqs) != 0 {
					t.Fatalf("sent %d requests, want none: %+v", len(reqs), reqs)
				}
				return
			}
			if len(reqs) != 1 {
				t.Fatalf("sent %d requests, want one %s: %+v", len(reqs), tt.wantReq, reqs)
			}
			r := reqs[0]
			got := r.method + " " + r.path
			if r.query != "" {
				got += "?" + r.query
			}
			if got != tt.wantReq {
				t.Errorf("request %s, want %s", got, tt.wantReq)
			}
			if r.auth != tt.wantAuth {
				t.Errorf("Authorization %q, want %q", r.auth, tt.wantAuth)
			}
			for k, want := range tt.wantBody {
				if got, ok := r.body[k]; got != want || (want == nil) == ok {
					t.Errorf("body %s = %v (present %v), want %v; body %v", k, got, ok, want, r.body)
				}
			}
		})
	}
}

// TestHelp: --help and -h on every command and subcommand, and xlb help
// COMMAND, print that command's usage on stdout and exit 0.
func TestHelp(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--help"}, "xlb version"},
		{[]string{"-h"}, "Exit codes"},
		{[]string{"help"}, "xlb backend add|drain"},
		{[]string{"run", "--help"}, "usage: xlb run -c FILE"},
		{[]string{"run", "-c", "x.toml", "-h"}, "-keep-datapath"},
		{[]string{"status", "-h"}, "usage: xlb status"},
		{[]string{"status", "--json", "--help"}, "-bpffs"},
		{[]string{"validate", "--help"}, "usage: xlb validate -c FILE"},
		{[]string{"sidecar", "--help"}, "usage: xlb sidecar --listen ADDR"},
		{[]string{"sidecar", "--listen", "127.0.0.1:1", "-h"}, "-header"},
		{[]string{"version", "--help"}, "usage: xlb version"},
		{[]string{"decap", "--help"}, "usage: xlb decap --interface IFACE --vip ADDR"},
		{[]string{"help", "decap"}, "-vip"},
		{[]string{"backend", "--help"}, "xlb backend remove ID"},
		{[]string{"backend", "-h"}, "xlb backend list"},
		{[]string{"backend", "help"}, "xlb backend add"},
		{[]string{"backend", "help", "ready"}, "usage: xlb backend ready ID"},
		{[]string{"backend", "add", "--help"}, "-weight"},
		{[]string{"backend", "drain", "-h"}, "usage: xlb backend drain ID"},
		{[]string{"backend", "ready", "--help"}, "usage: xlb backend ready ID"},
		{[]string{"backend", "remove", "x", "--help"}, "usage: xlb backend remove ID"},
		{[]string{"backend", "list", "-help"}, "usage: xlb backend list"},
		{[]string{"help", "status"}, "usage: xlb status"},
		{[]string{"help", "backend", "add"}, "usage: xlb backend add"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runArgs(tt.args, "")
			if code != 0 || stderr != "" {
				t.Errorf("exit code %d, stderr %q; want 0 and nothing", code, stderr)
			}
			if !strings.Contains(stdout, tt.want) {
				t.Errorf("stdout %q, want %q in it", stdout, tt.want)
			}
		})
	}
}

// TestUsageErrors: commands other than backend refuse stray arguments and
// bad values with exit 2 before doing anything.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string
	}{
		{nil, ""},
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"run", "now", "-c", "x.toml"}, `unexpected argument "now"`},
		{[]string{"run", "--bogus"}, "-bogus"},
		{[]string{"validate", "-c", "x.toml", "extra"}, `unexpected argument "extra"`},
		{[]string{"status", "now"}, `unexpected argument "now"`},
		{[]string{"version", "now"}, `unexpected argument "now"`},
		{[]string{"sidecar", "--listen", "127.0.0.1:1", "--backend", "http://127.0.0.1:2", "--grace", "-1s"}, "--grace"},
		{[]string{"decap", "--vip", "198.19.0.10"}, "--interface and at least one --vip are required"},
		{[]string{"decap", "--interface", "eth0"}, "--interface and at least one --vip are required"},
		{[]string{"decap", "--interface", "eth0", "--vip", "198.19.0.0/24"}, "want an IPv4 or IPv6 address"},
		{[]string{"decap", "--interface", "eth0", "--vip", "ff02::1"}, "want a unicast address"},
		{[]string{"decap", "--interface", "eth0", "--vip", "198.19.0.10", "extra"}, `unexpected argument "extra"`},
		{[]string{"sidecar", "--listen", "127.0.0.1:1", "--backend", "http://127.0.0.1:2", "--timeout", "0s"}, "--timeout"},
		{[]string{"sidecar", "--listen", "127.0.0.1:1", "--backend", "http://127.0.0.1:2", "--timeout", "soon"}, "-timeout"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, _, stderr := runArgs(tt.args, "")
			if code != 2 || !strings.Contains(stderr, tt.wantErr) {
				t.Errorf("exit code %d, stderr %q; want 2 and %q", code, stderr, tt.wantErr)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, stdout, stderr := runArgs(args, "")
		if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "xlb ") || !strings.Contains(stdout, runtime.Version()) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 0 and xlb ... %s", args, code, stdout, stderr, runtime.Version())
		}
	}
	platform := " " + runtime.GOOS + "/" + runtime.GOARCH
	tests := []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want string
	}{
		{"no build info", nil, false, "xlb (devel) " + runtime.Version() + platform},
		{"devel, no vcs", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}}, true,
			"xlb (devel) go1.26.0" + platform},
		{"tagged module", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v1.2.3"}}, true,
			"xlb v1.2.3 go1.26.0" + platform},
		{"checkout", &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "0604b8f0123456789abcdef0123456789abcdef0"},
			{Key: "vcs.time", Value: "2026-01-02T03:04:05Z"}, {Key: "vcs.modified", Value: "false"},
		}}, true, "xlb (devel) (revision 0604b8f0123456789abcdef0123456789abcdef0, 2026-01-02T03:04:05Z) go1.26.1" + platform},
		{"modified checkout", &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "v0.9.0-pre"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "true"},
		}}, true, "xlb v0.9.0-pre (revision abc, modified) go1.26.1" + platform},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := versionString(tt.bi, tt.ok); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

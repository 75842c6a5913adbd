package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func TestParseSources(t *testing.T) {
	file := filepath.Join(t.TempDir(), "sources")
	if err := os.WriteFile(file, []byte("# clients\n198.18.0.5\nrange:198.18.0.7-198.18.0.8 # two\n\n2001:db8::1,2001:db8::2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	badFile := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(badFile, []byte("198.18.0.1\nfile:"+file+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		spec    string
		want    []netip.Addr
		wantLen int // checked instead of want when want is nil
		wantErr error
	}{
		{name: "empty", spec: "", want: nil},
		{name: "single v4", spec: "198.18.0.100", want: addrs("198.18.0.100")},
		{name: "list with spaces", spec: " 198.18.0.100 , 2001:db8:18::100,", want: addrs("198.18.0.100", "2001:db8:18::100")},
		{name: "mapped v4 unmapped", spec: "::ffff:198.18.0.1", want: addrs("198.18.0.1")},
		{name: "v4 range", spec: "range:198.18.0.254-198.18.1.1", want: addrs("198.18.0.254", "198.18.0.255", "198.18.1.0", "198.18.1.1")},
		{name: "v4 range of one", spec: "range:198.18.0.7-198.18.0.7", want: addrs("198.18.0.7")},
		{name: "default client range", spec: "range:198.18.0.100-198.18.0.219", wantLen: 120},
		{name: "v6 range is hex", spec: "range:2001:db8:18::100-2001:db8:18::177", wantLen: 0x78},
		{name: "v6 range crossing a digit", spec: "range:2001:db8:18::ff-2001:db8:18::101", want: addrs("2001:db8:18::ff", "2001:db8:18::100", "2001:db8:18::101")},
		{name: "range then address", spec: "range:198.18.0.1-198.18.0.2,198.18.0.9", want: addrs("198.18.0.1", "198.18.0.2", "198.18.0.9")},
		{name: "v4 prefix", spec: "198.18.0.9/30", want: addrs("198.18.0.8", "198.18.0.9", "198.18.0.10", "198.18.0.11")},
		{name: "v6 prefix", spec: "2001:db8::/127", want: addrs("2001:db8::", "2001:db8::1")},
		{name: "top of v4 space", spec: "255.255.255.254/31", want: addrs("255.255.255.254", "255.255.255.255")},
		{name: "file", spec: "file:" + file, want: addrs("198.18.0.5", "198.18.0.7", "198.18.0.8", "2001:db8::1", "2001:db8::2")},
		{name: "largest prefix", spec: "2001:db8::/112", wantLen: maxSources},
		{name: "bad address", spec: "198.18.0.300", wantErr: ErrBadSource},
		{name: "range reversed", spec: "range:198.18.0.9-198.18.0.1", wantErr: ErrBadSource},
		{name: "range mixed families", spec: "range:198.18.0.1-2001:db8::1", wantErr: ErrBadSource},
		{name: "range without dash", spec: "range:198.18.0.1", wantErr: ErrBadSource},
		{name: "range with zone", spec: "range:fe80::1%eth0-fe80::2%eth0", wantErr: ErrBadSource},
		{name: "bad prefix", spec: "198.18.0.0/33", wantErr: ErrBadSource},
		{name: "prefix too large", spec: "2001:db8::/64", wantErr: ErrTooManySources},
		{name: "range too large", spec: "range:2001:db8::-2001:db8::1:0", wantErr: ErrTooManySources},
		{name: "list too large", spec: "2001:db8::/112,198.18.0.1", wantErr: ErrTooManySources},
		{name: "missing file", spec: "file:" + filepath.Join(t.TempDir(), "nope"), wantErr: ErrBadSource},
		{name: "file including file", spec: "file:" + badFile, wantErr: ErrBadSource},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSources(tt.spec)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("parseSources(%q) error = %v, want %v", tt.spec, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseSources(%q): %v", tt.spec, err)
			}
			if tt.want == nil && tt.wantLen > 0 {
				if len(got) != tt.wantLen {
					t.Fatalf("parseSources(%q) gave %d addresses, want %d", tt.spec, len(got), tt.wantLen)
				}
				return
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("parseSources(%q) = %v, want %v", tt.spec, got, tt.want)
			}
		})
	}
}

func TestReplyBody(t *testing.T) {
	for _, size := range []int{0, 1, 40, 60, 61, 62, 100, 1000, 65536} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			body := replyBody("b1", "198.18.0.100", size)
			var r reply
			if err := json.Unmarshal(body, &r); err != nil {
				t.Fatalf("reply %q is not JSON: %v", body, err)
			}
			if r.Bytes != len(body) {
				t.Errorf("bytes = %d, body is %d bytes: %q", r.Bytes, len(body), body)
			}
			unpadded := len(replyBody("b1", "198.18.0.100", 0))
			if size > unpadded+len(`,"pad":""`) && len(body) != size {
				t.Errorf("body is %d bytes, want %d", len(body), size)
			}
			if r.Backend != "b1" || r.Client != "198.18.0.100" {
				t.Errorf("reply = %+v", r)
			}
		})
	}
}

// startServe runs serve on 127.0.0.1 until the test ends and returns its address.
func startServe(t *testing.T, name string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	readyc := make(chan []string, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- serve(ctx, serveConfig{Name: name, Listen: []string{"127.0.0.1:0"}}, func(a []string) { readyc <- a })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("serve did not stop")
		}
	})
	select {
	case a := <-readyc:
		return a[0]
	case err := <-errc:
		t.Fatalf("serve: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("serve not ready")
	}
	return ""
}

func TestServeAndLoad(t *testing.T) {
	addr := startServe(t, "t1")
	target, _ := url.Parse("http://" + addr + "/")

	// 127.0.0.2 is local too: Linux routes all of 127/8 to lo.
	sum := runLoad(t.Context(), loadConfig{
		Target: target, Sources: addrs("127.0.0.1", "127.0.0.2"),
		Conns: 10, Timeout: 5 * time.Second, DurationMax: 30 * time.Second, Parallel: 3,
	})
	if sum.OK != 10 || sum.Failed != 0 || sum.Skipped != 0 {
		t.Fatalf("summary = %+v, want 10 ok", sum)
	}
	wantSeq := []string{"t1", "t1", "t1", "t1", "t1"}
	for _, src := range []string{"127.0.0.1", "127.0.0.2"} {
		if got := sum.BySource[src]; !slices.Equal(got, wantSeq) {
			t.Errorf("by_source[%s] = %v, want %v", src, got, wantSeq)
		}
	}
	if sum.ByBackend["t1"] != 10 {
		t.Errorf("by_backend = %v, want t1:10", sum.ByBackend)
	}

	// Each load connection is a new TCP connection, so /stats saw both sources.
	resp, err := http.Get("http://" + addr + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var stats map[string]int
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"127.0.0.1": 5, "127.0.0.2": 5}; !mapsEqual(stats, want) {
		t.Errorf("stats = %v, want %v", stats, want)
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestLoadCmdJSON(t *testing.T) {
	addr := startServe(t, "t2")
	var out bytes.Buffer
	code := run(t.Context(), []string{"load", "--target", "http://" + addr + "/x", "--conns", "3",
		"--sources", "range:127.0.0.1-127.0.0.3"}, &out, io.Discard)
	if code != exitOK {
		t.Fatalf("exit %d, output %s", code, out.String())
	}
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	for _, k := range []string{"ok", "failed", "skipped", "errors", "by_source", "failed_by_source", "by_backend", "elapsed_ms"} {
		if _, ok := got[k]; !ok {
			t.Errorf("output lacks %q: %s", k, out.String())
		}
	}
}

func TestLoadFailures(t *testing.T) {
	// A closed port: every connection is refused, quickly.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	target, _ := url.Parse("http://" + addr + "/")
	sum := runLoad(t.Context(), loadConfig{Target: target, Conns: 4, Timeout: time.Second,
		DurationMax: 10 * time.Second, Parallel: 2})
	if sum.OK != 0 || sum.Failed != 4 || sum.Errors["dial: connection refused"] != 4 {
		t.Fatalf("summary = %+v, want 4 refused", sum)
	}
	if sum.FailedBySource[defaultSourceKey] != 4 {
		t.Errorf("failed_by_source = %v", sum.FailedBySource)
	}

	// A source address that is not local.
	sum = runLoad(t.Context(), loadConfig{Target: target, Sources: addrs("198.18.0.1"), Conns: 1,
		Timeout: time.Second, DurationMax: 10 * time.Second, Parallel: 1})
	if sum.Errors["dial: source address not available"] != 1 {
		t.Fatalf("summary = %+v, want address not available", sum)
	}

	// A non-xlbtest server counts as failed.
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}))
	defer other.Close()
	target, _ = url.Parse(other.URL)
	sum = runLoad(t.Context(), loadConfig{Target: target, Conns: 1, Timeout: time.Second,
		DurationMax: 10 * time.Second, Parallel: 1})
	if sum.Errors["body: not an xlbtest reply"] != 1 {
		t.Fatalf("summary = %+v, want body error", sum)
	}
}

func TestLoadDurationMax(t *testing.T) {
	// A server that accepts and never answers: each connection takes Timeout.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 16)
	go func() {
		defer close(accepted)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	defer func() {
		l.Close()
		for c := range accepted {
			c.Close()
		}
	}()
	target, _ := url.Parse("http://" + l.Addr().String() + "/")
	start := time.Now()
	sum := runLoad(t.Context(), loadConfig{Target: target, Conns: 1000, Timeout: 300 * time.Millisecond,
		DurationMax: 100 * time.Millisecond, Parallel: 2})
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("load took %v, want about duration-max + timeout", elapsed)
	}
	if sum.Failed != 2 || sum.Skipped != 998 || sum.Errors["read: timeout"] != 2 {
		t.Errorf("summary = %+v, want 2 read timeouts and 998 skipped", sum)
	}
}

func TestHold(t *testing.T) {
	addr := startServe(t, "t3")
	target, _ := url.Parse("http://" + addr + "/")
	var lines []string
	err := hold(t.Context(), holdConfig{Target: target, Secs: 1, Source: netip.MustParseAddr("127.0.0.3"),
		Timeout: 2 * time.Second}, func(l string) { lines = append(lines, l) })
	if err != nil {
		t.Fatalf("hold: %v (lines %q)", err, lines)
	}
	want := []string{"tick 1/5 backend=t3", "tick 2/5 backend=t3", "tick 3/5 backend=t3",
		"tick 4/5 backend=t3", "tick 5/5 backend=t3", "done 5 backend=t3"}
	if !slices.Equal(lines, want) {
		t.Errorf("lines = %q, want %q", lines, want)
	}
}

func TestHoldBrokenStream(t *testing.T) {
	// The server stops after two ticks: hold must fail.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "tick 1/5 backend=x\ntick 2/5 backend=x\n")
	}))
	defer srv.Close()
	target, _ := url.Parse(srv.URL)
	err := hold(t.Context(), holdConfig{Target: target, Secs: 1, Timeout: time.Second}, func(string) {})
	if !errors.Is(err, ErrIncompleteStream) {
		t.Fatalf("hold error = %v, want %v", err, ErrIncompleteStream)
	}
}

func TestHoldCmdOutput(t *testing.T) {
	addr := startServe(t, "t4")
	var out bytes.Buffer
	if code := run(t.Context(), []string{"hold", "--target", "http://" + addr, "--secs", "0"}, &out, io.Discard); code != exitOK {
		t.Fatalf("exit %d, output %q", code, out.String())
	}
	ts, line, ok := strings.Cut(strings.TrimSpace(out.String()), " ")
	if !ok || line != "done 0 backend=t4" {
		t.Fatalf("output %q, want a timestamped done line", out.String())
	}
	if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
		t.Errorf("timestamp %q: %v", ts, err)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"nope"},
		{"serve", "--listen", "127.0.0.1:0"},
		{"serve", "--name", "x"},
		{"load", "--target", "https://198.19.0.10/"},
		{"load", "--target", "http://198.19.0.10/", "--sources", "range:1.2.3.4"},
		{"load", "--target", "http://198.19.0.10/", "--conns", "-1"},
		{"hold", "--target", "http://198.19.0.10/", "--secs", "-1"},
		{"hold", "--target", "http://198.19.0.10/", "--source", "x"},
	} {
		if code := run(t.Context(), args, io.Discard, io.Discard); code != exitUsage {
			t.Errorf("run(%q) = %d, want %d", args, code, exitUsage)
		}
	}
}

func TestServeHang(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	readyc := make(chan []string, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- serve(ctx, serveConfig{Name: "h", Listen: []string{"127.0.0.1:0"}, Hang: true},
			func(a []string) { readyc <- a })
	}()
	var addr string
	select {
	case a := <-readyc:
		addr = a[0]
	case err := <-errc:
		t.Fatalf("serve --hang: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("serve --hang not ready")
	}

	// The TCP connection completes; the request is never answered.
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 1)
	if n, err := c.Read(buf); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read = %d, %v; want nothing until the deadline", n, err)
	}

	// An HTTP client (like a health check) times out.
	hc := &http.Client{Timeout: 200 * time.Millisecond}
	start := time.Now()
	if _, err := hc.Get("http://" + addr + "/health"); err == nil {
		t.Fatal("GET answered by a hanging server")
	} else if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Errorf("GET failed after %v (%v), want at the 200ms timeout", d, err)
	}
	// The load tool counts it as a read timeout.
	target, _ := url.Parse("http://" + addr + "/")
	sum := runLoad(t.Context(), loadConfig{Target: target, Conns: 2, Timeout: 200 * time.Millisecond,
		DurationMax: 10 * time.Second, Parallel: 2})
	if sum.Failed != 2 || sum.Errors["read: timeout"] != 2 {
		t.Errorf("load against a hanging server: %+v, want 2 read timeouts", sum)
	}

	// Shutdown closes held connections and returns.
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("serve --hang: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve --hang did not stop")
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(buf); !errors.Is(err, io.EOF) {
		t.Errorf("held connection after shutdown: read error %v, want EOF", err)
	}
}

func TestLoadContinuous(t *testing.T) {
	addr := startServe(t, "c1")
	target, _ := url.Parse("http://" + addr + "/")
	srcs := addrs("127.0.0.1", "127.0.0.2", "127.0.0.3")
	var recs []connRecord
	start := time.Now()
	sum := runLoad(t.Context(), loadConfig{Target: target, Sources: srcs, Conns: 0,
		Timeout: time.Second, DurationMax: 500 * time.Millisecond, Parallel: 4, Rate: 40,
		OnConn: func(r connRecord) { recs = append(recs, r) }})
	elapsed := time.Since(start)
	// 40/s for 0.5 s: about 20, the first at once.
	if sum.OK < 12 || sum.OK > 24 || sum.Failed != 0 || sum.Skipped != 0 {
		t.Errorf("summary = %+v, want about 20 ok, none failed or skipped", sum)
	}
	if elapsed < 450*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("continuous load took %v, want about the 500ms of --duration-max", elapsed)
	}
	if len(recs) != sum.OK {
		t.Fatalf("%d records for %d connections", len(recs), sum.OK)
	}
	seen := map[int]bool{}
	for _, r := range recs {
		if seen[r.I] || r.I < 0 || r.I >= len(recs) {
			t.Errorf("record index %d repeated or out of range", r.I)
		}
		seen[r.I] = true
		if r.Backend != "c1" || r.Error != "" || r.End.Before(r.Start) || r.Start.Before(start) {
			t.Errorf("record %+v", r)
		}
		if want := srcs[r.I%len(srcs)].String(); r.Source != want {
			t.Errorf("record %d from %s, want %s", r.I, r.Source, want)
		}
		if r.Port == 0 {
			t.Errorf("record %d has no local port", r.I)
		}
	}
}

func TestLoadUnlimitedStopsOnCancel(t *testing.T) {
	addr := startServe(t, "c2")
	target, _ := url.Parse("http://" + addr + "/")
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	sum := runLoad(ctx, loadConfig{Target: target, Conns: 0, Timeout: time.Second,
		DurationMax: time.Hour, Parallel: 2, Rate: 100})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("load ran %v after its context ended at 300ms", d)
	}
	if sum.OK == 0 || sum.Failed != 0 || sum.Skipped != 0 {
		t.Errorf("summary = %+v, want some ok and nothing failed or skipped", sum)
	}
}

func TestLoadSourcePorts(t *testing.T) {
	// A server that records the client ports it sees.
	var mu sync.Mutex
	seen := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.RemoteAddr] = true
		mu.Unlock()
		// The server closes first, so the TIME_WAIT of each 4-tuple is on its
		// side: the client's connect from a port the range reuses within
		// the same second would otherwise get EADDRNOTAVAIL (tcp_tw_reuse
		// waits a second), as it did once in CI.
		w.Header().Set("Connection", "close")
		w.Write(replyBody("p", clientIP(r), 0))
	}))
	defer srv.Close()
	target, _ := url.Parse(srv.URL)
	srcs := addrs("127.0.0.5", "127.0.0.6")
	var recs []connRecord
	sum := runLoad(t.Context(), loadConfig{Target: target, Sources: srcs, Conns: 6, Timeout: 2 * time.Second,
		DurationMax: 10 * time.Second, Parallel: 1, SourcePorts: portRange{21400, 21401},
		OnConn: func(r connRecord) { recs = append(recs, r) }})
	if sum.OK != 6 {
		t.Fatalf("summary = %+v, want 6 ok (errors %v)", sum, sum.Errors)
	}
	// Connection i: source i%2, port 21400 + (i/2)%2 (the range wraps).
	for _, r := range recs {
		wantPort := 21400 + (r.I/2)%2
		if r.Port != wantPort || r.Source != srcs[r.I%2].String() {
			t.Errorf("connection %d from %s:%d, want %s:%d", r.I, r.Source, r.Port, srcs[r.I%2], wantPort)
		}
	}
	for _, want := range []string{"127.0.0.5:21400", "127.0.0.5:21401", "127.0.0.6:21400", "127.0.0.6:21401"} {
		if !seen[want] {
			t.Errorf("server never saw %s (saw %v)", want, seen)
		}
	}
	if got := (portRange{}).portFor(5, 2); got != 0 {
		t.Errorf("empty range gives port %d, want 0", got)
	}
}

func TestParsePortRange(t *testing.T) {
	if r, err := parsePortRange("20000-20999"); err != nil || r != (portRange{20000, 20999}) {
		t.Errorf("parsePortRange = %v, %v", r, err)
	}
	if r, err := parsePortRange("7-7"); err != nil || r != (portRange{7, 7}) {
		t.Errorf("parsePortRange = %v, %v", r, err)
	}
	for _, bad := range []string{"", "20000", "0-10", "10-9", "1-65536", "a-b", "-5"} {
		if _, err := parsePortRange(bad); err == nil {
			t.Errorf("parsePortRange(%q) accepted", bad)
		}
	}
}

func TestLoadCmdStream(t *testing.T) {
	addr := startServe(t, "s1")
	var out bytes.Buffer
	code := run(t.Context(), []string{"load", "--target", "http://" + addr + "/", "--conns", "3",
		"--sources", "127.0.0.1", "--stream"}, &out, io.Discard)
	if code != exitOK {
		t.Fatalf("exit %d, output %s", code, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 3 records and the report:\n%s", len(lines), out.String())
	}
	for _, l := range lines[:3] {
		var r connRecord
		if err := json.Unmarshal([]byte(l), &r); err != nil || r.Backend != "s1" || r.Source != "127.0.0.1" || r.Start.IsZero() {
			t.Errorf("record line %q: %+v %v", l, r, err)
		}
	}
	var sum loadSummary
	if err := json.Unmarshal([]byte(lines[3]), &sum); err != nil || sum.OK != 3 {
		t.Errorf("report line %q: %+v %v", lines[3], sum, err)
	}
}

func TestLoadUsageErrorsNew(t *testing.T) {
	addr := "127.0.0.1:9" // never dialled: every case is a usage error
	for _, args := range [][]string{
		{"load", "--target", "http://" + addr + "/", "--rate", "-1"},
		{"load", "--target", "http://" + addr + "/", "--rate", "1e9"},
		{"load", "--target", "http://" + addr + "/", "--source-ports", "20000-20010"},
		{"load", "--target", "http://" + addr + "/", "--sources", "127.0.0.1", "--source-ports", "5-3"},
		{"serve", "--name", "x", "--listen", "127.0.0.1:0", "--hang=maybe"},
	} {
		if code := run(t.Context(), args, io.Discard, io.Discard); code != exitUsage {
			t.Errorf("run(%q) = %d, want %d", args, code, exitUsage)
		}
	}
}

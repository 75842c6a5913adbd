package l7

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// accessEntries are the golden files' entries: an ordinary request, IPv6
// with a gateway error and no backend, and hostile bytes in every string.
func accessEntries() []AccessEntry {
	at := time.Date(2026, 12, 6, 2, 5, 12, 345678000, time.FixedZone("CET", 3600))
	return []AccessEntry{
		{Time: at, Service: "web", Client: netip.MustParseAddr("198.18.0.100"), Method: "GET", Host: "www.example.com",
			Path: "/index.html", Proto: "HTTP/1.1", Status: 200, Bytes: 1234, Duration: 1500 * time.Microsecond,
			Backend: "198.18.0.11:8080", ID: "0b9f1c2e-2f0d-4c5a-9b1e-6a7d8c9e0f12"},
		{Time: at.Add(time.Second), Service: "api", Client: netip.MustParseAddr("2001:db8:18::100"), Method: "POST", Host: "[2001:db8:19::10]:80",
			Path: "/v1/items", Proto: "HTTP/2.0", Status: 503, Bytes: 0, Duration: 37 * time.Millisecond,
			ID: "client-chosen id", Error: "no_backend"},
		{Time: at.Add(2 * time.Second), Service: "web", Method: "GET", Host: "a\"b\\c",
			Path: "/\"quoted\"\n\t\x01caf\xc3\xa9\xff", Proto: "HTTP/1.0", Status: 499, Duration: 2 * time.Second,
			Backend: "198.18.0.12:8080", Error: "timeout"},
	}
}

// TestAccessLogFormats writes the entries in both formats and compares
// them with testdata/accesslog.{json,common}.golden; every JSON line must
// parse back to the entry's values.
func TestAccessLogFormats(t *testing.T) {
	for _, format := range []string{AccessLogJSON, AccessLogCommon} {
		t.Run(format, func(t *testing.T) {
			var buf syncBuffer
			al, err := NewAccessLog(AccessLogOptions{Writer: &buf, Format: format})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range accessEntries() {
				al.Log(&e)
			}
			if err := al.Close(); err != nil {
				t.Fatal(err)
			}
			got := buf.Bytes()
			checkGolden(t, "accesslog."+format+".golden", got)
			if format != AccessLogJSON {
				return
			}
			for i, line := range bytes.Split(bytes.TrimSuffix(got, []byte("\n")), []byte("\n")) {
				var v struct {
					Time                          time.Time
					Service, Client, Method, Host string
					Path, Proto, Backend          string
					RequestID                     string `json:"request_id"`
					Error                         string
					Status                        int
					Bytes                         int64
					DurationMs                    float64 `json:"duration_ms"`
				}
				if err := json.Unmarshal(line, &v); err != nil {
					t.Fatalf("line %d is not JSON: %v: %s", i, err, line)
				}
				e := accessEntries()[i]
				if !v.Time.Equal(e.Time.Truncate(time.Millisecond)) || v.Method != e.Method || v.Host != e.Host ||
					v.Status != e.Status || v.Bytes != e.Bytes || v.Backend != e.Backend || v.RequestID != e.ID ||
					v.Error != e.Error || v.DurationMs != float64(e.Duration.Microseconds())/1e3 {
					t.Errorf("line %d parses to %+v, entry %+v", i, v, e)
				}
				if i < 2 && v.Path != e.Path { // the third has invalid UTF-8, replaced
					t.Errorf("line %d path %q, want %q", i, v.Path, e.Path)
				}
			}
		})
	}
}

// blockingWriter blocks every Write until released, and says when the
// first one started.
type blockingWriter struct {
	started chan struct{}
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.started) })
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// TestAccessLogDropsWhenBehind blocks the writer on its first line: the
// queue fills, every entry past it is dropped and counted (and exported as
// xlb_l7_access_log_dropped_total), and Log never blocks.
func TestAccessLogDropsWhenBehind(t *testing.T) {
	w := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	const queue = 4
	al, err := NewAccessLog(AccessLogOptions{Writer: w, Buffer: queue})
	if err != nil {
		t.Fatal(err)
	}
	e := accessEntries()[0]
	al.Log(&e)
	select {
	case <-w.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the writer never wrote")
	}
	const more = 100
	start := time.Now()
	for range more {
		al.Log(&e)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Log took %v for %d entries with the writer blocked", d, more)
	}
	if got := al.Dropped(); got != more-queue {
		t.Errorf("dropped %d, want %d (queue %d)", got, more-queue, queue)
	}
	h := newHarness(t, func(o *Options) { o.AccessLog = al })
	if got := promValue(t, h.reg, "xlb_l7_access_log_dropped_total", nil); got != more-queue {
		t.Errorf("xlb_l7_access_log_dropped_total = %v, want %d", got, more-queue)
	}
	close(w.release)
	if err := al.Close(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(w.buf.String(), "\n"); n != 1+queue {
		t.Errorf("%d lines written, want %d", n, 1+queue)
	}
}

// TestAccessLogReopen renames the log as logrotate does and reopens it:
// the lines before go to the renamed file, the lines after to a new one at
// the path.
func TestAccessLogReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	al, err := NewAccessLog(AccessLogOptions{Path: path, Format: AccessLogCommon})
	if err != nil {
		t.Fatal(err)
	}
	defer al.Close()
	es := accessEntries()
	al.Log(&es[0])
	waitFor(t, "the first line", func() bool { b, _ := os.ReadFile(path); return bytes.Count(b, []byte("\n")) == 1 })
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	al.Log(&es[1]) // before Reopen: still the old file
	if err := al.Reopen(); err != nil {
		t.Fatal(err)
	}
	al.Log(&es[2])
	if err := al.Close(); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(rotated)
	cur, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no new file after Reopen: %v", err)
	}
	if n := bytes.Count(old, []byte("\n")); n != 2 || !bytes.Contains(old, []byte("/index.html")) || !bytes.Contains(old, []byte("/v1/items")) {
		t.Errorf("rotated file has %d lines:\n%s", n, old)
	}
	if n := bytes.Count(cur, []byte("\n")); n != 1 || !bytes.Contains(cur, []byte("error=timeout")) {
		t.Errorf("new file has %d lines:\n%s", n, cur)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("new file mode: %v %v, want 0640", fi.Mode(), err)
	}
}

// TestAccessLogRequests proxies requests through a Server with an access
// log: each becomes one line with what the request was and how it ended.
func TestAccessLogRequests(t *testing.T) {
	var buf syncBuffer
	al, err := NewAccessLog(AccessLogOptions{Writer: &buf})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, func(o *Options) { o.AccessLog = al })
	b := startBackend(t, named("b1"))
	dead := deadAddr(t)
	h.update(svcConf("web", listenA, b), svcConf("gone", listenB, dead))
	c := testClient(t)
	req, _ := http.NewRequest(http.MethodGet, h.url(listenA, "/hello?secret=1"), nil)
	req.Host = "www.example.com"
	req.Header.Set("X-Request-Id", "req-1")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if code, _, _ := get(t, c, h.url(listenB, "/x")); code != http.StatusBadGateway {
		t.Fatalf("dead backend: %d", code)
	}
	waitFor(t, "two access log lines", func() bool { return strings.Count(buf.String(), "\n") == 2 })
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		lines = append(lines, m)
	}
	want := []map[string]any{
		{"service": "web", "client": "127.0.0.1", "method": "GET", "host": "www.example.com", "path": "/hello",
			"proto": "HTTP/1.1", "status": 200.0, "bytes": 2.0, "backend": b.String(), "request_id": "req-1", "error": ""},
		{"service": "gone", "method": "GET", "path": "/x", "status": 502.0, "backend": dead.String(), "error": "connect",
			"bytes": float64(len(gatewayResponses[errConnect].body))},
	}
	for i, w := range want {
		for k, v := range w {
			if lines[i][k] != v {
				t.Errorf("line %d: %s = %v, want %v (%v)", i, k, lines[i][k], v, lines[i])
			}
		}
	}
	if id, _ := lines[1]["request_id"].(string); len(id) != 36 {
		t.Errorf("generated request id %q", id)
	}
	if err := al.Close(); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a bytes.Buffer safe for the writer goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func (s *syncBuffer) String() string { return string(s.Bytes()) }

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/l7"
)

// The L7 tests run `xlb run` (no XDP interface: the L7 tier alone, no
// pins) and `xlb sidecar` in the host's network namespace against `xlbtest
// serve` backends, all on loopback. Each test gets a /24 of its own in
// 127.0.0.0/8 (Linux routes all of it to lo), so listeners of tests running
// in parallel never collide, and clients connect from 127.0.0.1 (the source
// the kernel picks for 127/8), so their ephemeral ports never take a test's
// listening port either.

// l7HC is the [health_check] of the loopback L7 tests: fast, so that a
// stopped backend is down within about half a second.
const l7HC = `
[health_check]
type = "http"
path = "/health"
interval = "200ms"
timeout = "150ms"
unhealthy_threshold = 2
healthy_threshold = 2
`

// l7Env is one L7 test's loopback network and processes.
type l7Env struct {
	t     *testing.T
	net   [3]byte    // 127.net[1].net[2].0/24
	procs *Topology  // process bookkeeping only: no namespaces, never torn down
	dir   string     // the test's temporary directory
	token string     // the admin token, in dir/admin.token
	admin string     // the admin API address, "" for none
	xlb   *exec.Cmd  // the running `xlb run`, if any
	cfg   string     // its config file
	mu    sync.Mutex // backends
	backs map[string]*exec.Cmd
}

// newL7Env picks a random loopback /24 for the test. It needs root only to
// match the rest of the suite (loopback needs none).
func newL7Env(t *testing.T) *l7Env {
	t.Helper()
	requireRoot(t)
	var b [2]byte
	rand.Read(b[:])
	e := &l7Env{
		t: t, net: [3]byte{127, 64 + b[0]%190, b[1]},
		procs: &Topology{Prefix: "lo"}, dir: t.TempDir(), backs: map[string]*exec.Cmd{},
	}
	tok := make([]byte, 16)
	rand.Read(tok)
	e.token = hex.EncodeToString(tok)
	if err := os.WriteFile(filepath.Join(e.dir, "admin.token"), []byte(e.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// ip is host n of the test's /24.
func (e *l7Env) ip(n int) string { return fmt.Sprintf("%d.%d.%d.%d", e.net[0], e.net[1], e.net[2], n) }

// addr is a free port on host n of the test's /24, as IP:PORT.
func (e *l7Env) addr(t *testing.T, n int) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(e.ip(n), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs a command in the host's namespace, stopped by PID (SIGTERM,
// then SIGKILL) when owner ends; its output is logged if owner failed.
func (e *l7Env) start(owner, t *testing.T, label string, args ...string) *exec.Cmd {
	t.Helper()
	return e.procs.startOwnedCmd(owner, t, label, exec.Command(args[0], args[1:]...), args)
}

// twoBackends starts backends b1 and b2 (xlbtest serve) on the env's second
// and third address and returns their addresses and one for the service.
func (e *l7Env) twoBackends(t *testing.T) (b1, b2, svc string) {
	t.Helper()
	b1, b2 = e.addr(t, 2), e.addr(t, 3)
	e.backend(t, "b1", b1)
	e.backend(t, "b2", b2)
	return b1, b2, e.addr(t, 1)
}

// backend starts `xlbtest serve --name name --listen addr` (owned by the
// whole test) and waits for it to be ready.
func (e *l7Env) backend(t *testing.T, name, addr string, extra ...string) *exec.Cmd {
	t.Helper()
	args := append([]string{Binary(t, "xlbtest"), "serve", "--name", name, "--listen", addr}, extra...)
	cmd := e.start(e.t, t, name, args...)
	e.procs.WaitOutput(t, cmd, "ready ", 10*time.Second)
	e.mu.Lock()
	e.backs[name] = cmd
	e.mu.Unlock()
	return cmd
}

// stopBackend stops backend name (SIGTERM: xlbtest finishes its open
// requests) and checks that it exited 0.
func (e *l7Env) stopBackend(t *testing.T, name string) {
	t.Helper()
	e.mu.Lock()
	cmd := e.backs[name]
	delete(e.backs, name)
	e.mu.Unlock()
	if cmd == nil {
		t.Fatalf("backend %s is not running", name)
	}
	if err := e.procs.Stop(cmd); err != nil {
		t.Errorf("backend %s after SIGTERM: %v, want exit 0", name, err)
	}
}

// writeConfig writes text as the test's xlb config and returns its path.
func (e *l7Env) writeConfig(t *testing.T, text string) string {
	t.Helper()
	e.cfg = filepath.Join(e.dir, "xlb.toml")
	if err := os.WriteFile(e.cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return e.cfg
}

// header is the [daemon] and [admin] part of a config: the L7 tier alone,
// shutdown_grace grace, the admin API on a free port of .1 with the test's
// token (admin false: no admin listener).
func (e *l7Env) header(t *testing.T, grace time.Duration, admin bool) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[daemon]\nshutdown_grace = %q\nlog_level = \"debug\"\n", grace.String())
	if admin {
		e.admin = e.addr(t, 1)
		fmt.Fprintf(&b, "\n[admin]\nlisten = %q\ntoken_file = %q\ndrain_timeout = \"20s\"\n", e.admin, filepath.Join(e.dir, "admin.token"))
	} else {
		e.admin = ""
		b.WriteString("\n[admin]\nlisten = \"\"\n")
	}
	return b.String()
}

// l7Service is the TOML of one L7 service listening on listen (IP:PORT):
// the service keys, then extra (more keys, then sub-tables), then one
// [[service.backend]] per backend address (IP:PORT).
func l7Service(name, listen, extra string, backends ...string) string {
	host, port, _ := net.SplitHostPort(listen)
	var b strings.Builder
	fmt.Fprintf(&b, "\n[[service]]\nname = %q\nvip = %q\nport = %s\nmode = \"l7\"\n", name, host, port)
	if extra != "" {
		b.WriteString(strings.TrimSpace(extra) + "\n")
	}
	for _, a := range backends {
		h, p, _ := net.SplitHostPort(a)
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n  port = %s\n", h, p)
	}
	return b.String()
}

// runXLB starts `xlb run -c config` and waits until it runs (its listeners
// are open by then).
func (e *l7Env) runXLB(t *testing.T, config string) *exec.Cmd {
	t.Helper()
	e.xlb = e.start(e.t, t, "xlb", Binary(t, "xlb"), "run", "-c", config)
	e.procs.WaitStderr(t, e.xlb, `msg="xlb running"`, 20*time.Second)
	return e.xlb
}

// stderr is what xlb has logged so far.
func (e *l7Env) stderr() string {
	_, s := e.procs.Output(e.xlb)
	return s
}

// logEvents are xlb's log lines with message msg and the attributes of match.
func (e *l7Env) logEvents(msg string, match map[string]string) []logEvent {
	return parseLogEvents(e.stderr(), msg, match)
}

// waitLog waits until xlb has logged msg (with match) n times in all.
func (e *l7Env) waitLog(t *testing.T, msg string, match map[string]string, n int, timeout time.Duration) logEvent {
	t.Helper()
	var ev logEvent
	waitFor(t, fmt.Sprintf("xlb log %q %v x%d", msg, match, n), timeout, 20*time.Millisecond, func() bool {
		evs := e.logEvents(msg, match)
		if len(evs) >= n {
			ev = evs[n-1]
			return true
		}
		return false
	})
	return ev
}

// ---------------------------------------------------------------------------
// HTTP clients.

// newClient is an HTTP/1.1 client whose connections come from src ("" for
// the kernel's choice), with keep-alive, no proxy and no compression.
func newClient(src string, timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy: nil, DialContext: d.DialContext, DisableCompression: true,
			MaxIdleConnsPerHost: 16, ResponseHeaderTimeout: timeout,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// countingDial is a DialContext that counts its connections in n.
func countingDial(n *atomic.Int64) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		n.Add(1)
		return d.DialContext(ctx, network, addr)
	}
}

// httpResult is one request's answer.
type httpResult struct {
	Code   int
	Header http.Header
	Body   []byte
	Proto  string
}

// do sends method url with headers hdr (in order: "Key: value" pairs may
// repeat a key) through c and reads the whole answer.
func do(t *testing.T, c *http.Client, method, url string, hdr ...string) httpResult {
	t.Helper()
	r, err := tryDo(c, method, url, hdr...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

func tryDo(c *http.Client, method, url string, hdr ...string) (httpResult, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return httpResult{}, err
	}
	for _, kv := range hdr {
		k, v, _ := strings.Cut(kv, ":")
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	if h := req.Header.Get("Host"); h != "" {
		req.Host = h
		req.Header.Del("Host")
	}
	resp, err := c.Do(req)
	if err != nil {
		return httpResult{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return httpResult{}, fmt.Errorf("reading the body: %w", err)
	}
	return httpResult{Code: resp.StatusCode, Header: resp.Header, Body: body, Proto: resp.Proto}, nil
}

// rawHTTP sends raw (a whole HTTP/1.1 request, CRLFs included) on a new
// connection from src to addr and reads one answer.
func rawHTTP(t *testing.T, src, addr, raw string) httpResult {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("raw request to %s: %v", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return httpResult{Code: resp.StatusCode, Header: resp.Header, Body: body, Proto: resp.Proto}
}

// seen is xlbtest's /headers answer: the request as the backend got it.
type seen struct {
	Backend string              `json:"backend"`
	Client  string              `json:"client"`
	Method  string              `json:"method"`
	Proto   string              `json:"proto"`
	Host    string              `json:"host"`
	URI     string              `json:"uri"`
	Headers map[string][]string `json:"headers"`
}

// get is the values of header k (canonical) the backend saw.
func (s seen) get(k string) []string { return s.Headers[http.CanonicalHeaderKey(k)] }

// one is the single value of header k, "" when absent; it fails the test
// when the header came more than once.
func (s seen) one(t *testing.T, k string) string {
	t.Helper()
	v := s.get(k)
	if len(v) > 1 {
		t.Errorf("backend saw %s %d times: %q", k, len(v), v)
	}
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func parseSeen(t *testing.T, r httpResult) seen {
	t.Helper()
	var s seen
	if r.Code != http.StatusOK || json.Unmarshal(r.Body, &s) != nil || s.Backend == "" {
		t.Fatalf("not a /headers answer: %d %v %q", r.Code, r.Header, r.Body)
	}
	return s
}

// backendOf is the backend that answered the standard reply (or /headers).
func backendOf(body []byte) string {
	var r struct {
		Backend string `json:"backend"`
	}
	json.Unmarshal(body, &r)
	return r.Backend
}

// lbMetrics is GET /lb/metrics (with ?service= when not "") at base.
func lbMetrics(t *testing.T, base, service string) l7.MetricsReport {
	t.Helper()
	return lbMetricsWith(t, pollClient, base, service)
}

// pollClient is for polling: no keep-alive, so it leaves no connection open.
var pollClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// lbMetricsWith is lbMetrics through client c.
func lbMetricsWith(t *testing.T, c *http.Client, base, service string) l7.MetricsReport {
	t.Helper()
	u := base + "/lb/metrics"
	if service != "" {
		u += "?service=" + service
	}
	r := do(t, c, http.MethodGet, u)
	var m l7.MetricsReport
	if r.Code != http.StatusOK || json.Unmarshal(r.Body, &m) != nil {
		t.Fatalf("GET %s: %d %s", u, r.Code, r.Body)
	}
	return m
}

// backendMetrics is the backend of m with address addr, or nil.
func backendMetrics(m l7.MetricsReport, addr string) *l7.BackendMetrics {
	for i := range m.Backends {
		if m.Backends[i].Address == addr {
			return &m.Backends[i]
		}
	}
	return nil
}

// adminCall sends method path to the admin API with the test's token.
func (e *l7Env) adminCall(t *testing.T, method, path string, jsonBody ...string) httpResult {
	t.Helper()
	if e.admin == "" {
		t.Fatal("no admin API configured")
	}
	var body io.Reader
	if len(jsonBody) > 0 {
		body = strings.NewReader(jsonBody[0])
	}
	req, err := http.NewRequest(method, "http://"+e.admin+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := pollClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	return httpResult{Code: resp.StatusCode, Header: resp.Header, Body: got}
}

// ---------------------------------------------------------------------------
// Continuous keep-alive load.

// loadResult is one request of an l7Load.
type loadResult struct {
	Worker     int
	Start, End time.Time
	Code       int
	Backend    string // X-Backend of the answer
	Note       string // what the load's note func made of the answer
	Err        string // transport error, or a body that is not the backend's
}

func (r loadResult) failed() bool { return r.Err != "" || r.Code != http.StatusOK }

// l7Load is a set of workers, each sending GET url again and again on its
// own keep-alive connection (at most one connection per worker): every
// connection the transport had to open again shows in Dials.
type l7Load struct {
	url     string
	workers int
	note    func(httpResult) string
	tr      *http.Transport
	dials   atomic.Int64
	stop    chan struct{}
	wg      sync.WaitGroup

	mu  sync.Mutex
	res []loadResult
}

// startLoad starts workers sending GET url, pausing pause between two
// requests of a worker. note, if not nil, records something of each answer.
func startLoad(t *testing.T, url string, workers int, pause time.Duration, note func(httpResult) string) *l7Load {
	t.Helper()
	l := &l7Load{url: url, workers: workers, note: note, stop: make(chan struct{})}
	d := &net.Dialer{Timeout: 5 * time.Second}
	l.tr = &http.Transport{
		Proxy: nil, DisableCompression: true,
		MaxIdleConnsPerHost: workers, MaxConnsPerHost: workers, IdleConnTimeout: time.Minute,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			l.dials.Add(1)
			return d.DialContext(ctx, network, addr)
		},
	}
	c := &http.Client{Transport: l.tr, Timeout: 10 * time.Second}
	for w := range workers {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				r := loadResult{Worker: w, Start: time.Now()}
				res, err := tryDo(c, http.MethodGet, url)
				r.End = time.Now()
				if err != nil {
					r.Err = err.Error()
				} else {
					r.Code, r.Backend = res.Code, res.Header.Get("X-Backend")
					if backendOf(res.Body) == "" && res.Code == http.StatusOK {
						r.Err = fmt.Sprintf("not a backend's answer: %q", res.Body)
					}
					if l.note != nil && res.Code == http.StatusOK {
						r.Note = l.note(res)
					}
				}
				l.mu.Lock()
				l.res = append(l.res, r)
				l.mu.Unlock()
				if pause > 0 {
					select {
					case <-l.stop:
						return
					case <-time.After(pause):
					}
				}
			}
		})
	}
	t.Cleanup(l.halt)
	return l
}

func (l *l7Load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
	l.tr.CloseIdleConnections()
}

// results is a copy of the requests finished so far.
func (l *l7Load) results() []loadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.res)
}

// waitOK waits until n more requests than now have succeeded.
func (l *l7Load) waitOK(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	count := func() int {
		ok := 0
		for _, r := range l.results() {
			if !r.failed() {
				ok++
			}
		}
		return ok
	}
	target := count() + n
	waitFor(t, fmt.Sprintf("%d more successful requests to %s", n, l.url), timeout, 10*time.Millisecond, func() bool {
		return count() >= target
	})
}

// finish stops the load and returns every request; it reports the failed
// ones as test errors (at most ten of them), except those excused says may
// fail.
func (l *l7Load) finish(t *testing.T, what string, excused ...func(loadResult) bool) []loadResult {
	t.Helper()
	l.halt()
	res := l.results()
	var failed []loadResult
next:
	for _, r := range res {
		if !r.failed() {
			continue
		}
		for _, ex := range excused {
			if ex(r) {
				continue next
			}
		}
		failed = append(failed, r)
	}
	if len(failed) > 0 {
		t.Errorf("%s: %d of %d requests failed", what, len(failed), len(res))
		for _, r := range failed[:min(len(failed), 10)] {
			t.Errorf("  worker %d from %s to %s: %d %s", r.Worker, r.Start.Format("15:04:05.000"), r.End.Format("15:04:05.000"), r.Code, r.Err)
		}
	}
	return res
}

// byBackend counts results per backend between from and to (started at or
// after from, ended before to; zero times are open).
func byBackend(res []loadResult, from, to time.Time) map[string]int {
	m := map[string]int{}
	for _, r := range res {
		if (!from.IsZero() && r.Start.Before(from)) || (!to.IsZero() && !r.End.Before(to)) || r.failed() {
			continue
		}
		m[r.Backend]++
	}
	return m
}

// ---------------------------------------------------------------------------
// A WebSocket client (RFC 6455), enough for an echo.

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// wsConn is a client WebSocket.
type wsConn struct {
	c  net.Conn
	br *bufio.Reader
	// Resp is the 101 answer of the handshake.
	Resp *http.Response
}

// wsDial opens a WebSocket to ws://addr/path with extra request headers.
func wsDial(t *testing.T, addr, path string, hdr ...string) *wsConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(15 * time.Second))
	k := make([]byte, 16)
	rand.Read(k)
	key := base64.StdEncoding.EncodeToString(k)
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", path, addr, key)
	for _, h := range hdr {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("WebSocket handshake: %v", err)
	}
	h := sha1Base64(key + wsGUID)
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != h ||
		!strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		t.Fatalf("WebSocket handshake: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	return &wsConn{c: c, br: br, Resp: resp}
}

// send writes one masked frame.
func (w *wsConn) send(op byte, payload []byte) error {
	b := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	var mask [4]byte
	rand.Read(mask[:])
	b = append(b, mask[:]...)
	for i, c := range payload {
		b = append(b, c^mask[i%4])
	}
	_, err := w.c.Write(b)
	return err
}

// recv reads one (unmasked) frame from the server.
func (w *wsConn) recv() (op byte, payload []byte, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(w.br, hdr[:]); err != nil {
		return 0, nil, err
	}
	if hdr[1]&0x80 != 0 {
		return 0, nil, errors.New("masked frame from the server")
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(w.br, ext[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(w.br, ext[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(ext[:])
	}
	if n > 16<<20 {
		return 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(w.br, payload)
	return hdr[0] & 0x0f, payload, err
}

// ---------------------------------------------------------------------------
// Network namespaces of one's own.

// newNetns makes a network namespace PREFIX-lb with lo up and no other
// interface, where fixed addresses and ports cannot collide with anything.
// It returns a Topology whose Start and Exec run in it as host "lb"; the
// namespace (and every process in it) goes away when the test ends, or on
// SIGINT/SIGTERM through TestMain's teardown of live topologies.
func newNetns(t *testing.T, prefix string) *Topology {
	t.Helper()
	requireRoot(t)
	prefix += randomPrefix()[len(prefix):]
	tp := &Topology{Prefix: prefix, script: filepath.Join(repoRoot(t), "scripts", "topology.sh")}
	liveTopologies.add(tp)
	t.Cleanup(func() {
		if err := tp.teardown(); err != nil {
			t.Errorf("namespace %s: %v", tp.Namespace("lb"), err)
		}
	})
	ns := tp.Namespace("lb")
	for _, args := range [][]string{{"netns", "add", ns}, {"-n", ns, "link", "set", "lo", "up"}} {
		if out, err := output(exec.Command("ip", args...)); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	return tp
}

// nsClient is an HTTP client whose connections are made in namespace ns.
func nsClient(ns string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy: nil, DisableCompression: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dialInNetns(ctx, ns, network, addr)
			},
		},
	}
}

// sha1Base64 is base64(SHA-1(s)): Sec-WebSocket-Accept of a key.
func sha1Base64(s string) string {
	h := sha1.Sum([]byte(s))
	return base64.StdEncoding.EncodeToString(h[:])
}

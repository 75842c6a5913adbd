package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// maxReplyBytes bounds how much of a reply load reads.
	maxReplyBytes = maxBodyBytes + 4096
	// defaultSourceKey is the by_source key when the kernel picks the source.
	defaultSourceKey = "default"
)

// errIncomplete reports a load run in which some connections failed or never ran.
var errIncomplete = errors.New("not every connection succeeded")

type loadConfig struct {
	Target      *url.URL
	Sources     []netip.Addr // empty: the kernel picks
	Conns       int
	Timeout     time.Duration
	DurationMax time.Duration
	Parallel    int
}

// loadSummary is load's JSON report.
type loadSummary struct {
	OK             int                 `json:"ok"`
	Failed         int                 `json:"failed"`
	Skipped        int                 `json:"skipped"`
	Errors         map[string]int      `json:"errors"`
	BySource       map[string][]string `json:"by_source"`
	FailedBySource map[string]int      `json:"failed_by_source"`
	ByBackend      map[string]int      `json:"by_backend"`
	ElapsedMS      int64               `json:"elapsed_ms"`
}

func loadCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	target := fs.String("target", "", "URL to GET, http only (required)")
	sources := fs.String("sources", "", "source addresses: a,b, range:A-B, PREFIX/N, file:PATH")
	conns := fs.Int("conns", 1, "number of connections, one request each")
	timeout := fs.Duration("timeout", 5*time.Second, "bound of one connection: connect, send, read")
	durationMax := fs.Duration("duration-max", 30*time.Second, "start no connection after this")
	parallel := fs.Int("parallel", 16, "connections in flight at once")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	u, err := parseTarget(*target)
	if err != nil {
		return err
	}
	srcs, err := parseSources(*sources)
	if err != nil {
		return fmt.Errorf("%w: load: --sources: %w", errUsage, err)
	}
	cfg := loadConfig{Target: u, Sources: srcs, Conns: *conns, Timeout: *timeout,
		DurationMax: *durationMax, Parallel: *parallel}
	switch {
	case cfg.Conns < 1 || cfg.Conns > 10_000_000:
		return fmt.Errorf("%w: load: --conns must be in 1..10000000", errUsage)
	case cfg.Timeout <= 0 || cfg.DurationMax <= 0:
		return fmt.Errorf("%w: load: --timeout and --duration-max must be positive", errUsage)
	case cfg.Parallel < 1 || cfg.Parallel > 4096:
		return fmt.Errorf("%w: load: --parallel must be in 1..4096", errUsage)
	}

	sum := runLoad(ctx, cfg)
	enc := json.NewEncoder(stdout)
	if err := enc.Encode(sum); err != nil {
		return err
	}
	if sum.Failed > 0 || sum.Skipped > 0 {
		return fmt.Errorf("load: %d failed, %d skipped: %w", sum.Failed, sum.Skipped, errIncomplete)
	}
	return nil
}

// parseTarget checks that s is an http URL with a host.
func parseTarget(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || s == "" {
		return nil, fmt.Errorf("%w: --target %q: want http://HOST[:PORT]/PATH", errUsage, s)
	}
	if u.Scheme != "http" || u.Hostname() == "" {
		return nil, fmt.Errorf("%w: --target %q: want http://HOST[:PORT]/PATH", errUsage, s)
	}
	return u, nil
}

// hostPort is the dial address of an http URL.
func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// connResult is the outcome of one connection.
type connResult struct {
	done    bool
	backend string
	err     string // classified, empty on success
}

// runLoad makes cfg.Conns connections, cfg.Parallel at a time, and summarizes them.
func runLoad(ctx context.Context, cfg loadConfig) loadSummary {
	start := time.Now()
	// Only the start of new connections is bounded by DurationMax; running ones end
	// on their own Timeout.
	startCtx, cancel := context.WithTimeout(ctx, cfg.DurationMax)
	defer cancel()

	results := make([]connResult, cfg.Conns)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(cfg.Parallel, cfg.Conns) {
		wg.Go(func() {
			for startCtx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= cfg.Conns {
					return
				}
				backend, err := fetchBackend(ctx, cfg.Target, sourceFor(cfg.Sources, i), cfg.Timeout)
				results[i] = connResult{done: true, backend: backend}
				if err != nil {
					results[i].err = err.Error()
				}
			}
		})
	}
	wg.Wait()

	sum := loadSummary{
		Errors:         map[string]int{},
		BySource:       map[string][]string{},
		FailedBySource: map[string]int{},
		ByBackend:      map[string]int{},
	}
	for i, r := range results {
		key := defaultSourceKey
		if src := sourceFor(cfg.Sources, i); src.IsValid() {
			key = src.String()
		}
		switch {
		case !r.done:
			sum.Skipped++
		case r.err != "":
			sum.Failed++
			sum.Errors[r.err]++
			sum.FailedBySource[key]++
		default:
			sum.OK++
			sum.BySource[key] = append(sum.BySource[key], r.backend)
			sum.ByBackend[r.backend]++
		}
	}
	sum.ElapsedMS = time.Since(start).Milliseconds()
	return sum
}

// sourceFor is the source address of connection i: round robin over sources, or
// the zero Addr (kernel's choice) when there are none.
func sourceFor(sources []netip.Addr, i int) netip.Addr {
	if len(sources) == 0 {
		return netip.Addr{}
	}
	return sources[i%len(sources)]
}

// dialFrom opens a TCP connection to u's host from src (if valid), bounded by ctx.
func dialFrom(ctx context.Context, u *url.URL, src netip.Addr) (net.Conn, error) {
	var d net.Dialer
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	return d.DialContext(ctx, "tcp", hostPort(u))
}

// fetchBackend GETs u on a fresh connection from src and returns the backend name
// from the reply. Errors are classified (see classify).
func fetchBackend(ctx context.Context, u *url.URL, src netip.Addr, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	conn, err := dialFrom(ctx, u, src)
	if err != nil {
		return "", classify("dial", err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)

	req, err := newGet(u)
	if err != nil {
		return "", err
	}
	if err := req.Write(conn); err != nil {
		return "", classify("write", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return "", classify("read", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return "", classify("read", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status: %d", resp.StatusCode)
	}
	var r reply
	if err := json.Unmarshal(body, &r); err != nil || r.Backend == "" {
		return "", errors.New("body: not an xlbtest reply")
	}
	return r.Backend, nil
}

// newGet is a GET for u that asks the server to close the connection afterwards.
func newGet(u *url.URL) (*http.Request, error) {
	req, err := http.NewRequest(http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	req.Close = true
	req.Header.Set("User-Agent", "xlbtest")
	return req, nil
}

// classify turns a network error into "PHASE: CLASS" without addresses or ports, so
// equal failures from different sources count together.
func classify(phase string, err error) error {
	var ne net.Error
	var class string
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		class = "timeout"
	case errors.Is(err, context.Canceled):
		class = "canceled"
	case errors.Is(err, syscall.ECONNREFUSED):
		class = "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		class = "connection reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		class = "source address not available"
	case errors.Is(err, syscall.EHOSTUNREACH):
		class = "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		class = "network unreachable"
	case errors.Is(err, syscall.EPIPE):
		class = "broken pipe"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		class = "unexpected EOF"
	default:
		// The innermost error rarely carries addresses; net.OpError (which does) wraps it.
		for u := errors.Unwrap(err); u != nil; u = errors.Unwrap(u) {
			err = u
		}
		class = err.Error()
	}
	return fmt.Errorf("%s: %s", phase, class)
}

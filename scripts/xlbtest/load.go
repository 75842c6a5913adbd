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
	"strconv"
	"strings"
	"sync"
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
	Target  *url.URL
	Sources []netip.Addr // empty: the kernel picks
	// Conns is the number of connections; 0 means no limit: connections are
	// made until DurationMax has passed or ctx ends.
	Conns       int
	Timeout     time.Duration
	DurationMax time.Duration
	Parallel    int
	// Rate bounds how many connections start per second; 0: as many as
	// Parallel allows.
	Rate float64
	// SourcePorts, when First is not 0, is the inclusive range of source ports
	// bound: connection i uses First + (i / len(Sources)) mod (Last-First+1), so
	// within a run no two connections from one address share a port while the
	// range lasts. Zero: the kernel picks.
	SourcePorts portRange
	// OnConn, if set, is called as each connection ends, one call at a time.
	OnConn func(connRecord)
}

// portRange is an inclusive range of ports; First 0 means none.
type portRange struct{ First, Last uint16 }

// portFor is the source port of connection i with nsources sources, or 0.
func (r portRange) portFor(i, nsources int) uint16 {
	if r.First == 0 {
		return 0
	}
	span := int(r.Last) - int(r.First) + 1
	return r.First + uint16((i/max(nsources, 1))%span)
}

// connRecord is one finished connection, as --stream prints it.
type connRecord struct {
	I       int       `json:"i"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Source  string    `json:"source"`         // the by_source key
	Port    int       `json:"port,omitempty"` // local port, when the connection got one
	Backend string    `json:"backend,omitempty"`
	Error   string    `json:"error,omitempty"`
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

// maxRate bounds --rate.
const maxRate = 100_000

func loadCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	target := fs.String("target", "", "URL to GET, http only (required)")
	sources := fs.String("sources", "", "source addresses: a,b, range:A-B, PREFIX/N, file:PATH")
	conns := fs.Int("conns", 1, "number of connections, one request each; 0: no limit, until --duration-max or a signal")
	timeout := fs.Duration("timeout", 5*time.Second, "bound of one connection: connect, send, read")
	durationMax := fs.Duration("duration-max", 30*time.Second, "start no connection after this")
	parallel := fs.Int("parallel", 16, "connections in flight at once")
	rate := fs.Float64("rate", 0, "start at most this many connections per second (0: no limit)")
	sourcePorts := fs.String("source-ports", "", "bind source ports from this range, FIRST-LAST (needs --sources)")
	stream := fs.Bool("stream", false, "print one JSON line per connection as it ends, before the summary")
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
		DurationMax: *durationMax, Parallel: *parallel, Rate: *rate}
	if *sourcePorts != "" {
		if cfg.SourcePorts, err = parsePortRange(*sourcePorts); err != nil {
			return fmt.Errorf("%w: load: --source-ports: %w", errUsage, err)
		}
		if len(srcs) == 0 {
			return fmt.Errorf("%w: load: --source-ports needs --sources", errUsage)
		}
	}
	switch {
	case cfg.Conns < 0 || cfg.Conns > 10_000_000:
		return fmt.Errorf("%w: load: --conns must be in 0..10000000", errUsage)
	case cfg.Timeout <= 0 || cfg.DurationMax <= 0:
		return fmt.Errorf("%w: load: --timeout and --duration-max must be positive", errUsage)
	case cfg.Parallel < 1 || cfg.Parallel > 4096:
		return fmt.Errorf("%w: load: --parallel must be in 1..4096", errUsage)
	case !(cfg.Rate >= 0 && cfg.Rate <= maxRate): // also refuses NaN
		return fmt.Errorf("%w: load: --rate must be in 0..%d", errUsage, maxRate)
	}
	enc := json.NewEncoder(stdout)
	if *stream {
		cfg.OnConn = func(r connRecord) { enc.Encode(r) }
	}
	sum := runLoad(ctx, cfg)
	if err := enc.Encode(sum); err != nil {
		return err
	}
	if sum.Failed > 0 || sum.Skipped > 0 {
		return fmt.Errorf("load: %d failed, %d skipped: %w", sum.Failed, sum.Skipped, errIncomplete)
	}
	return nil
}

// parsePortRange reads "FIRST-LAST", 1 <= FIRST <= LAST <= 65535.
func parsePortRange(s string) (portRange, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return portRange{}, fmt.Errorf("%q: want FIRST-LAST", s)
	}
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if err1 != nil || err2 != nil || first == 0 || last < first {
		return portRange{}, fmt.Errorf("%q: want FIRST-LAST with 1 <= FIRST <= LAST <= 65535", s)
	}
	return portRange{uint16(first), uint16(last)}, nil
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

// runLoad makes cfg.Conns connections (no limit if 0), cfg.Parallel at a time
// and at most cfg.Rate per second, and summarizes them.
func runLoad(ctx context.Context, cfg loadConfig) loadSummary {
	start := time.Now()
	// Only the start of new connections is bounded by DurationMax; running ones end
	// on their own Timeout.
	startCtx, cancel := context.WithTimeout(ctx, cfg.DurationMax)
	defer cancel()

	var mu sync.Mutex // guards results and serializes OnConn
	results := make([]connResult, cfg.Conns)
	workers := cfg.Parallel
	if cfg.Conns > 0 {
		workers = min(workers, cfg.Conns)
	}
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				src := sourceFor(cfg.Sources, i)
				rec := connRecord{I: i, Source: sourceKey(src), Start: time.Now()}
				backend, port, err := fetchBackend(ctx, cfg.Target, src, cfg.SourcePorts.portFor(i, len(cfg.Sources)), cfg.Timeout)
				rec.End, rec.Backend, rec.Port = time.Now(), backend, int(port)
				r := connResult{done: true, backend: backend}
				if err != nil {
					r.err = err.Error()
					rec.Error, rec.Backend = r.err, ""
				}
				mu.Lock()
				for len(results) <= i {
					results = append(results, connResult{})
				}
				results[i] = r
				if cfg.OnConn != nil {
					cfg.OnConn(rec)
				}
				mu.Unlock()
			}
		})
	}

	var tick <-chan time.Time
	if cfg.Rate > 0 {
		ticker := time.NewTicker(max(time.Duration(float64(time.Second)/cfg.Rate), time.Microsecond))
		defer ticker.Stop()
		tick = ticker.C
	}
dispatch:
	for i := 0; cfg.Conns == 0 || i < cfg.Conns; i++ {
		if tick != nil && i > 0 {
			select {
			case <-startCtx.Done():
				break dispatch
			case <-tick:
			}
		}
		if startCtx.Err() != nil {
			break
		}
		select {
		case <-startCtx.Done():
			break dispatch
		case jobs <- i:
		}
	}
	close(jobs)
	wg.Wait()

	sum := loadSummary{
		Errors:         map[string]int{},
		BySource:       map[string][]string{},
		FailedBySource: map[string]int{},
		ByBackend:      map[string]int{},
	}
	for i, r := range results {
		key := sourceKey(sourceFor(cfg.Sources, i))
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

// sourceKey is the by_source key of a source address.
func sourceKey(src netip.Addr) string {
	if src.IsValid() {
		return src.String()
	}
	return defaultSourceKey
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
	return dialFromPort(ctx, u, src, 0)
}

// dialFromPort is dialFrom binding source port port (0: the kernel picks). A
// bound port is set SO_REUSEADDR, so that one left in TIME_WAIT by an earlier
// connection can be bound again.
func dialFromPort(ctx context.Context, u *url.URL, src netip.Addr, port uint16) (net.Conn, error) {
	var d net.Dialer
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, port))
	}
	if port != 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return d.DialContext(ctx, "tcp", hostPort(u))
}

// fetchBackend GETs u on a fresh connection from src (and source port port, if
// not 0) and returns the backend name from the reply and the local port used.
// Errors are classified (see classify).
func fetchBackend(ctx context.Context, u *url.URL, src netip.Addr, port uint16, timeout time.Duration) (string, uint16, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	conn, err := dialFromPort(ctx, u, src, port)
	if err != nil {
		return "", port, classify("dial", err)
	}
	defer conn.Close()
	if ap, err := netip.ParseAddrPort(conn.LocalAddr().String()); err == nil {
		port = ap.Port()
	}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	req, err := newGet(u)
	if err != nil {
		return "", port, err
	}
	if err := req.Write(conn); err != nil {
		return "", port, classify("write", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return "", port, classify("read", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return "", port, classify("read", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", port, fmt.Errorf("status: %d", resp.StatusCode)
	}
	var r reply
	if err := json.Unmarshal(body, &r); err != nil || r.Backend == "" {
		return "", port, errors.New("body: not an xlbtest reply")
	}
	return r.Backend, port, nil
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

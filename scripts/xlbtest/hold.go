package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"
)

// ErrIncompleteStream reports a /hold stream that ended early or out of order.
var ErrIncompleteStream = errors.New("incomplete hold stream")

type holdConfig struct {
	Target  *url.URL
	Secs    int
	Source  netip.Addr // zero: the kernel picks
	Timeout time.Duration
}

func holdCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	target := fs.String("target", "", "server URL; the path is replaced by /hold (required)")
	secs := fs.Int("secs", 5, "stream length in seconds")
	source := fs.String("source", "", "source address to bind")
	timeout := fs.Duration("timeout", 5*time.Second, "bound of the connect and of every gap between lines")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	u, err := parseTarget(*target)
	if err != nil {
		return err
	}
	cfg := holdConfig{Target: u, Secs: *secs, Timeout: *timeout}
	if *source != "" {
		a, err := netip.ParseAddr(*source)
		if err != nil {
			return fmt.Errorf("%w: hold: --source: %w", errUsage, err)
		}
		cfg.Source = a.Unmap()
	}
	if cfg.Secs < 0 || cfg.Secs > maxHoldSecs {
		return fmt.Errorf("%w: hold: --secs must be in 0..%d", errUsage, maxHoldSecs)
	}
	if cfg.Timeout <= 0 {
		return fmt.Errorf("%w: hold: --timeout must be positive", errUsage)
	}
	return hold(ctx, cfg, func(line string) {
		fmt.Fprintf(stdout, "%s %s\n", time.Now().UTC().Format(time.RFC3339Nano), line)
	})
}

// hold reads a whole /hold stream on one connection, calling onLine for each line,
// and fails unless every tick and the final "done" line arrived in order.
func hold(ctx context.Context, cfg holdConfig, onLine func(string)) error {
	u := *cfg.Target
	u.Path, u.RawPath = "/hold", ""
	u.RawQuery = url.Values{"secs": {strconv.Itoa(cfg.Secs)}}.Encode()

	// Hard bound of the whole exchange, whatever the server does.
	total := time.Duration(cfg.Secs)*time.Second + 2*cfg.Timeout
	ctx, cancel := context.WithTimeout(ctx, total)
	defer cancel()

	dialCtx, dialCancel := context.WithTimeout(ctx, cfg.Timeout)
	conn, err := dialFrom(dialCtx, &u, cfg.Source)
	dialCancel()
	if err != nil {
		return classify("dial", err)
	}
	defer conn.Close()
	// A canceled ctx (signal, total bound) unblocks any read.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()

	req, err := newGet(&u)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(cfg.Timeout))
	if err := req.Write(conn); err != nil {
		return classify("write", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return classify("read", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status: %d", resp.StatusCode)
	}

	want := cfg.Secs * int(time.Second/holdTick)
	sc := bufio.NewScanner(resp.Body)
	seen := 0
	for {
		if ctx.Err() == nil {
			conn.SetReadDeadline(time.Now().Add(cfg.Timeout))
		}
		if !sc.Scan() {
			break
		}
		line := sc.Text()
		onLine(line)
		var i, n int
		var name string
		switch {
		case scanLine(line, "tick %d/%d backend=%s", &i, &n, &name):
			if i != seen+1 || n != want {
				return fmt.Errorf("%w: got %q after %d ticks of %d", ErrIncompleteStream, line, seen, want)
			}
			seen = i
		case scanLine(line, "done %d backend=%s", &n, &name):
			if seen != want || n != want {
				return fmt.Errorf("%w: done after %d ticks of %d", ErrIncompleteStream, seen, want)
			}
			return nil
		default:
			return fmt.Errorf("%w: unexpected line %q", ErrIncompleteStream, line)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: after %d ticks of %d: %w", ErrIncompleteStream, seen, want, classify("read", err))
	}
	return fmt.Errorf("%w: stream ended after %d ticks of %d", ErrIncompleteStream, seen, want)
}

// scanLine reports whether line matches format exactly.
func scanLine(line, format string, args ...any) bool {
	n, err := fmt.Sscanf(line, format, args...)
	return err == nil && n == len(args)
}

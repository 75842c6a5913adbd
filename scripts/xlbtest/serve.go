package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// holdTick is the gap between two lines of a /hold stream.
	holdTick = 200 * time.Millisecond
	// maxHoldSecs bounds a /hold stream.
	maxHoldSecs = 3600
	// maxBodyBytes bounds --body-bytes.
	maxBodyBytes = 64 << 20
	// shutdownGrace bounds the wait for running requests at exit.
	shutdownGrace = 3 * time.Second
)

type serveConfig struct {
	Name      string
	Listen    []string
	BodyBytes int
	// Hang accepts TCP connections and never answers: a backend whose
	// health checks time out.
	Hang bool
}

func serveCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	name := fs.String("name", "", "backend name reported in every reply (required)")
	listen := fs.String("listen", "", "comma-separated listen addresses, e.g. 198.19.0.10:80,[2001:db8:19::10]:80 (required)")
	bodyBytes := fs.Int("body-bytes", 0, "pad replies to this many bytes")
	hang := fs.Bool("hang", false, "accept TCP connections but never answer (hold them open)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg := serveConfig{Name: *name, BodyBytes: *bodyBytes, Hang: *hang}
	for a := range strings.SplitSeq(*listen, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.Listen = append(cfg.Listen, a)
		}
	}
	switch {
	case cfg.Name == "":
		return fmt.Errorf("%w: serve: --name is required", errUsage)
	case len(cfg.Listen) == 0:
		return fmt.Errorf("%w: serve: --listen is required", errUsage)
	case cfg.BodyBytes < 0 || cfg.BodyBytes > maxBodyBytes:
		return fmt.Errorf("%w: serve: --body-bytes must be in 0..%d", errUsage, maxBodyBytes)
	}
	return serve(ctx, cfg, func(addrs []string) {
		fmt.Fprintf(stdout, "ready backend=%s listen=%s\n", cfg.Name, strings.Join(addrs, ","))
	})
}

// serve runs the HTTP servers until ctx ends. ready is called with the bound
// addresses once every listener is open.
func serve(ctx context.Context, cfg serveConfig, ready func(addrs []string)) error {
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	var addrs []string
	for _, a := range cfg.Listen {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return err
		}
		listeners = append(listeners, l)
		addrs = append(addrs, l.Addr().String())
	}
	if cfg.Hang {
		return hangServe(ctx, listeners, func() { ready(addrs) })
	}

	// Handlers see a context that ends at shutdown, so /hold streams stop promptly.
	srv := &http.Server{
		Handler:           newBackend(cfg.Name, cfg.BodyBytes),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { errc <- srv.Serve(l) }()
	}
	ready(addrs)

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if serr := srv.Shutdown(shutdownCtx); serr != nil {
		srv.Close()
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// backend is the HTTP handler of one named backend.
type backend struct {
	name      string
	bodyBytes int
	mux       *http.ServeMux

	mu       sync.Mutex
	requests map[string]int // client address -> requests
}

func newBackend(name string, bodyBytes int) *backend {
	b := &backend{name: name, bodyBytes: bodyBytes, requests: map[string]int{}}
	b.mux = http.NewServeMux()
	b.mux.HandleFunc("GET /health", b.reply)
	b.mux.HandleFunc("GET /stats", b.stats)
	b.mux.HandleFunc("GET /hold", b.hold)
	b.mux.HandleFunc("/headers", b.headers)
	b.mux.HandleFunc("/slow", b.slow)
	b.mux.HandleFunc("/status", b.status)
	b.mux.HandleFunc("GET /sse", b.sse)
	b.mux.HandleFunc("GET /ws", b.ws)
	b.mux.HandleFunc("/", b.reply)
	return b
}

func (b *backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Backend", b.name)
	w.Header().Set("Server", "xlbtest")
	client := clientIP(r)
	if p := r.URL.Path; p != "/health" && p != "/stats" {
		b.mu.Lock()
		b.requests[client]++
		b.mu.Unlock()
	}
	b.mux.ServeHTTP(w, r)
}

// clientIP is the peer address of r without port and zone.
func clientIP(r *http.Request) string {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return ap.Addr().Unmap().WithZone("").String()
}

func (b *backend) reply(w http.ResponseWriter, r *http.Request) {
	body := replyBody(b.name, clientIP(r), b.bodyBytes)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Write(body)
}

// reply is the standard response body.
type reply struct {
	Backend string `json:"backend"`
	Client  string `json:"client"`
	Bytes   int    `json:"bytes"`
	Pad     string `json:"pad,omitempty"`
}

// replyBody renders the standard reply, newline-terminated, padded to size bytes
// when size is larger than the unpadded reply. Bytes is the body's own length.
func replyBody(name, client string, size int) []byte {
	render := func(r reply) []byte {
		b, _ := json.Marshal(r) // cannot fail: strings and an int
		return append(b, '\n')
	}
	const padField = len(`,"pad":""`)
	r := reply{Backend: name, Client: client, Bytes: size}
	if size > 0 {
		if padLen := size - len(render(r)) - padField; padLen > 0 {
			r.Pad = strings.Repeat("x", padLen)
			return render(r)
		}
	}
	// Unpadded: Bytes is the length, which depends on Bytes' own digits; this
	// converges in at most two more rounds.
	r.Bytes = 0
	for {
		body := render(r)
		if len(body) == r.Bytes {
			return body
		}
		r.Bytes = len(body)
	}
}

func (b *backend) stats(w http.ResponseWriter, _ *http.Request) {
	b.mu.Lock()
	body, _ := json.Marshal(b.requests)
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(body, '\n'))
}

// hold streams a line every holdTick for secs seconds, flushing each one, so a
// client can watch one connection stay alive across load balancer changes.
func (b *backend) hold(w http.ResponseWriter, r *http.Request) {
	secs := 5
	if s := r.URL.Query().Get("secs"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > maxHoldSecs {
			http.Error(w, fmt.Sprintf("secs must be an integer in 0..%d", maxHoldSecs), http.StatusBadRequest)
			return
		}
		secs = n
	}
	ticks := secs * int(time.Second/holdTick)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	if rc.Flush() != nil {
		return
	}
	t := time.NewTicker(holdTick)
	defer t.Stop()
	for i := 1; i <= ticks; i++ {
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
		fmt.Fprintf(w, "tick %d/%d backend=%s\n", i, ticks, b.name)
		if rc.Flush() != nil {
			return
		}
	}
	fmt.Fprintf(w, "done %d backend=%s\n", ticks, b.name)
}

// hangServe accepts connections on every listener and holds them open without
// reading a request or writing a byte, until the peer closes them or ctx ends
// (then every listener and held connection is closed).
func hangServe(ctx context.Context, listeners []net.Listener, ready func()) error {
	var mu sync.Mutex
	held := map[net.Conn]struct{}{}
	closed := false
	closeAll := func() {
		mu.Lock()
		defer mu.Unlock()
		closed = true
		for _, l := range listeners {
			l.Close()
		}
		for c := range held {
			c.Close()
		}
	}
	stop := context.AfterFunc(ctx, closeAll)
	defer stop()
	var wg sync.WaitGroup
	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					if ctx.Err() == nil {
						errc <- err
					}
					return
				}
				mu.Lock()
				if closed {
					mu.Unlock()
					c.Close()
					return
				}
				held[c] = struct{}{}
				mu.Unlock()
				wg.Go(func() {
					io.Copy(io.Discard, c) // until the peer closes, or shutdown closes c
					mu.Lock()
					delete(held, c)
					mu.Unlock()
					c.Close()
				})
			}
		})
	}
	ready()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		closeAll()
	}
	wg.Wait()
	return err
}

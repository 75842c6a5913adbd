package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/l7"
)

// headerFlags collects repeated --header K=V.
type headerFlags map[string]string

func (h headerFlags) String() string { return fmt.Sprint(map[string]string(h)) }

func (h headerFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	k = strings.TrimSpace(k)
	if !ok || k == "" {
		return fmt.Errorf("--header %q: want NAME=VALUE", v)
	}
	h[http.CanonicalHeaderKey(k)] = val
	return nil
}

// sidecarCmd is a one-backend L7 proxy for the sidecar pattern: no root, no
// config file, the same headers, gateway errors and /lb endpoints as an L7
// service.
const sidecarUsage = `usage: xlb sidecar --listen ADDR --backend URL [--timeout 30s] [--grace 30s] [--header K=V ...]
A one-backend L7 proxy for the sidecar pattern: no root, no config file, the
same headers, gateway errors and /lb endpoints as an L7 service.`

func sidecarCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to listen on, e.g. 127.0.0.1:8080 (required)")
	backend := fs.String("backend", "", "backend URL, e.g. http://127.0.0.1:3000 (required)")
	timeout := fs.Duration("timeout", 30*time.Second, "backend answer timeout: 504 after it")
	grace := fs.Duration("grace", 30*time.Second, "on SIGTERM, how long in-flight requests may finish")
	headers := headerFlags{}
	fs.Var(headers, "header", "set a request header K=V on the way to the backend (repeatable)")
	pos, err := parseArgs(fs, args, sidecarUsage, out)
	if err != nil {
		return err
	}
	if err := noArgs(fs, pos); err != nil {
		return err
	}
	if *grace < 0 {
		return usageError("sidecar: --grace must not be negative")
	}
	svc, err := sidecarService(*listen, *backend, *timeout, headers)
	if err != nil {
		return &exitError{2, err}
	}
	if err := keepSysmonAwake(); err != nil {
		slog.Warn("running with Go's default scheduler monitor", "err", err)
	}
	tuneRuntime(0)
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv := l7.NewServer(l7.Options{Logger: log})
	if err := srv.Update([]l7.ServiceConfig{svc}); err != nil {
		return err
	}
	log.Info("xlb sidecar running", "listen", svc.Listen, "backend", *backend, "timeout", timeout.String())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	return srv.Shutdown(sctx)
}

func sidecarService(listen, backend string, timeout time.Duration, headers map[string]string) (l7.ServiceConfig, error) {
	var svc l7.ServiceConfig
	if listen == "" || backend == "" {
		return svc, fmt.Errorf("sidecar: --listen and --backend are required")
	}
	if timeout <= 0 {
		return svc, fmt.Errorf("sidecar: --timeout must be positive")
	}
	la, err := net.ResolveTCPAddr("tcp", listen)
	if err != nil {
		return svc, fmt.Errorf("sidecar: --listen %q: %v", listen, err)
	}
	u, err := url.Parse(backend)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return svc, fmt.Errorf("sidecar: --backend %q: want http://host:port", backend)
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	ba, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return svc, fmt.Errorf("sidecar: --backend %q: %v", backend, err)
	}
	laddr := la.AddrPort()
	if !laddr.Addr().IsValid() {
		laddr = netip.AddrPortFrom(netip.IPv4Unspecified(), laddr.Port())
	}
	baddr := netip.AddrPortFrom(ba.AddrPort().Addr().Unmap(), ba.AddrPort().Port())
	h := config.DefaultHeaders()
	return l7.ServiceConfig{
		Name:                  "sidecar",
		Listen:                laddr,
		ConnectTimeout:        min(timeout, config.DefaultConnectTimeout),
		ResponseHeaderTimeout: timeout,
		LBEndpoints:           true,
		Headers: l7.HeaderRules{
			RequestSet: headers, ProxyHeader: h.ProxyHeader, ProxyHeaderValue: h.ProxyHeaderValue,
			ResponseTimeHeader: h.ResponseTimeHeader,
		},
		Backends: []l7.BackendConfig{{ID: "sidecar@" + baddr.String(), Addr: baddr, Weight: 1, State: l7.StateUp}},
	}, nil
}

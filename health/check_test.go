package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	dial := func(errno error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}
	}
	get := func(err error) error { return &url.Error{Op: "Get", URL: "http://127.0.0.1:1/", Err: err} }
	tests := []struct {
		name  string
		err   error
		want  string
		class error
	}{
		{"deadline", get(context.DeadlineExceeded), "timeout", ErrTimeout},
		{"os deadline", &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, "timeout", ErrTimeout},
		{"wrapped deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), "timeout", ErrTimeout},
		{"refused", get(dial(syscall.ECONNREFUSED)), "refused", ErrRefused},
		{"reset", get(&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}), "reset", ErrReset},
		{"host unreachable", dial(syscall.EHOSTUNREACH), "unreachable", ErrUnreachable},
		{"net unreachable", dial(syscall.ENETUNREACH), "unreachable", ErrUnreachable},
		{"eof", get(io.EOF), "closed", ErrConnClosed},
		{"unexpected eof", get(io.ErrUnexpectedEOF), "closed", ErrConnClosed},
		{"other", get(errors.New("malformed HTTP response \"x\"")), `malformed HTTP response "x"`, nil},
		{"long", errors.New(strings.Repeat("é", 100)), strings.Repeat("é", 40) + "...", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ce := classify(tt.err)
			if ce.Reason != tt.want {
				t.Errorf("reason %q, want %q", ce.Reason, tt.want)
			}
			if tt.class != nil && !errors.Is(ce, tt.class) {
				t.Errorf("%v does not match %v", ce, tt.class)
			}
			if !errors.Is(ce, tt.err) {
				t.Errorf("%v does not wrap the original error", ce)
			}
			for _, other := range []error{ErrTimeout, ErrRefused, ErrReset, ErrUnreachable, ErrConnClosed, ErrStatus} {
				if other != tt.class && errors.Is(ce, other) {
					t.Errorf("%v also matches %v", ce, other)
				}
			}
		})
	}
}

// statusHandler answers /status/NNN with NNN, /redirect with a 301, /host
// with 200 only for Host example.test.
func statusHandler(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, "/status/"):
		var code int
		fmt.Sscanf(strings.TrimPrefix(r.URL.Path, "/status/"), "%d", &code)
		w.WriteHeader(code)
	case r.URL.Path == "/redirect":
		http.Redirect(w, r, "/status/200", http.StatusMovedPermanently)
	case r.URL.Path == "/host":
		if r.Host != "example.test" {
			w.WriteHeader(http.StatusMisdirectedRequest)
		}
	case r.Header.Get("User-Agent") != userAgent:
		w.WriteHeader(http.StatusBadRequest)
	}
}

func TestCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(statusHandler))
	t.Cleanup(srv.Close)
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(statusHandler))
	t.Cleanup(tlsSrv.Close)
	httpAddr := netip.MustParseAddrPort(srv.Listener.Addr().String())
	httpsAddr := netip.MustParseAddrPort(tlsSrv.Listener.Addr().String())
	tcpAddr := tcpServer(t)
	closed := closedPort(t)
	eofAddr := rawServer(t, func(net.Conn) {}) // reads the request, hangs up
	resetAddr := rawServer(t, func(c net.Conn) {
		c.(*net.TCPConn).SetLinger(0)
	})

	tests := []struct {
		name string
		spec Spec
		want string // reason; "" for success
	}{
		{name: "http ok", spec: Spec{Kind: KindHTTP, Target: httpAddr}},
		{name: "http 204 in 2xx", spec: Spec{Kind: KindHTTP, Target: httpAddr, Path: "/status/204"}},
		{name: "http 503", spec: Spec{Kind: KindHTTP, Target: httpAddr, Path: "/status/503"}, want: "status 503"},
		{name: "http 503 expected", spec: Spec{Kind: KindHTTP, Target: httpAddr, Path: "/status/503", ExpectStatus: "200,503"}},
		{name: "http 200 not in set", spec: Spec{Kind: KindHTTP, Target: httpAddr, Path: "/status/200", ExpectStatus: "204"}, want: "status 200"},
		{name: "redirect not followed", spec: Spec{Kind: KindHTTP, Target: httpAddr, Path: "/redirect"}, want: "status 301"},
		{name: "redirect expected", spec: Spec{Kind: KindHTTP, Target: httpAddr, Path: "/redirect", ExpectStatus: "200-399"}},
		{name: "host header", spec: Spec{Kind: KindHTTP, Target: httpAddr, Path: "/host", Host: "example.test"}},
		{name: "no host header", spec: Spec{Kind: KindHTTP, Target: httpAddr, Path: "/host"}, want: "status 421"},
		{name: "https ok", spec: Spec{Kind: KindHTTPS, Target: httpsAddr, Host: "example.test"}},
		{name: "https 503", spec: Spec{Kind: KindHTTPS, Target: httpsAddr, Path: "/status/503"}, want: "status 503"},
		{name: "http refused", spec: Spec{Kind: KindHTTP, Target: closed}, want: "refused"},
		{name: "http closed without answer", spec: Spec{Kind: KindHTTP, Target: eofAddr}, want: "closed"},
		{name: "http reset", spec: Spec{Kind: KindHTTP, Target: resetAddr}, want: "reset"},
		{name: "tcp ok", spec: Spec{Kind: KindTCP, Target: tcpAddr}},
		{name: "tcp refused", spec: Spec{Kind: KindTCP, Target: closed}, want: "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.spec.Timeout = 2 * time.Second
			err := Check(t.Context(), tt.spec)
			if got := reasonOfErr(err); got != tt.want {
				t.Fatalf("Check: reason %q (%v), want %q", got, err, tt.want)
			}
			if strings.HasPrefix(tt.want, "status ") && !errors.Is(err, ErrStatus) {
				t.Errorf("%v does not match ErrStatus", err)
			}
		})
	}
}

func TestCheckIPv6(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(statusHandler))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	addr := netip.MustParseAddrPort(ln.Addr().String())
	for _, kind := range []Kind{KindHTTP, KindTCP} {
		if err := Check(t.Context(), Spec{Kind: kind, Target: addr}); err != nil {
			t.Errorf("%s [::1]: %v", kind, err)
		}
	}
}

// A server that accepts and never answers fails with "timeout" after Timeout,
// not later; so does a parent context's deadline.
func TestCheckTimeout(t *testing.T) {
	hang := hangServer(t)
	const timeout = 200 * time.Millisecond
	const margin = 150 * time.Millisecond
	tests := []struct {
		name    string
		timeout time.Duration // of the spec
		ctx     time.Duration // of the parent context; 0 for none
		want    time.Duration
	}{
		{name: "spec timeout", timeout: timeout, want: timeout},
		{name: "parent deadline first", timeout: 5 * time.Second, ctx: timeout, want: timeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			if tt.ctx > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.ctx)
				defer cancel()
			}
			start := time.Now()
			err := Check(ctx, Spec{Kind: KindHTTP, Target: hang, Timeout: tt.timeout})
			elapsed := time.Since(start)
			if !errors.Is(err, ErrTimeout) || reasonOfErr(err) != "timeout" {
				t.Fatalf("Check = %v, want a timeout", err)
			}
			if elapsed < tt.want || elapsed > tt.want+margin {
				t.Errorf("timed out after %v, want %v (+%v)", elapsed, tt.want, margin)
			}
		})
	}
}

func TestCheckInvalidSpec(t *testing.T) {
	err := Check(t.Context(), Spec{Kind: KindHTTP})
	if !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("Check(no target) = %v, want ErrInvalidSpec", err)
	}
}

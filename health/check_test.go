package health

import (
	"bufio"
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
	"strconv"
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
		if os.Getenv("CI") == "true" {
			t.Fatalf("no IPv6 loopback in CI: %v", err)
		}
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

// readHead and drain frame answers as net/http does: the status, whether the
// connection stays open, and where the body ends (the next answer, "NEXT",
// follows each one); answers net/http rejects fail.
func TestReadResponse(t *testing.T) {
	long := strings.Repeat("x", maxDrainBytes+1)
	tests := []struct {
		name   string
		raw    string
		status int
		keep   bool // the body was read to its end and the connection stays
		bad    bool // an error
		strict bool // which net/http accepts, on its own (without the limits of a client)
	}{
		{name: "length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc", status: 200, keep: true},
		{name: "no reason phrase", raw: "HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n", status: 503, keep: true},
		{name: "bare LF", raw: "HTTP/1.1 200 OK\ncontent-length:  2 \n\nab", status: 200, keep: true},
		{name: "same length twice", raw: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab", status: 200, keep: true},
		{name: "no content", raw: "HTTP/1.1 204 No Content\r\n\r\n", status: 204, keep: true},
		{name: "not modified with length", raw: "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", status: 304, keep: true},
		{name: "chunked", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n", status: 200, keep: true},
		{name: "chunked wins over length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: Chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", status: 200, keep: true},
		{name: "folded header", raw: "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 1\r\n\r\na", status: 200, keep: true},
		{name: "close", raw: "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n", status: 200},
		{name: "http/1.0", raw: "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", status: 200},
		{name: "http/1.0 keep-alive", raw: "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", status: 200, keep: true},
		{name: "until close", raw: "HTTP/1.1 200 OK\r\n\r\nabc", status: 200},
		{name: "long body", raw: "HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(len(long)) + "\r\n\r\n" + long, status: 200},
		{name: "long chunked body", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x", len(long)) + "\r\n" + long + "\r\n0\r\n\r\n", status: 200},
		{name: "bad chunk", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", status: 200},
		{name: "two lengths", raw: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", bad: true},
		{name: "bad length", raw: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", bad: true},
		{name: "gzip encoding", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", bad: true},
		{name: "no colon", raw: "HTTP/1.1 200 OK\r\nX-A b\r\n\r\n", bad: true},
		{name: "bad status", raw: "HTTP/1.1 2000 OK\r\n\r\n", bad: true},
		{name: "not http", raw: "SSH-2.0-OpenSSH_9.6\r\n", bad: true},
		{name: "cut short", raw: "HTTP/1.1 200 OK\r\nContent-", bad: true},
		{name: "long header line", raw: "HTTP/1.1 200 OK\r\nX-A: " + strings.Repeat("a", 5000) + "\r\nContent-Length: 0\r\n\r\n", status: 200, keep: true},
		{name: "long status line", raw: "HTTP/1.1 200 " + strings.Repeat("a", 5000) + "\r\n\r\n", bad: true, strict: true},
		{name: "header too large", raw: "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-A: "+strings.Repeat("a", 1000)+"\r\n", 20) + "\r\n", bad: true, strict: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := tt.raw + "NEXT"
			p := &httpProber{}
			p.lr = io.LimitedReader{R: strings.NewReader(raw), N: maxHeaderBytes}
			p.br = bufio.NewReaderSize(&p.lr, 4<<10)
			r, err := p.readHead()
			want, herr := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), nil)
			if tt.bad {
				if err == nil {
					t.Fatalf("readHead = %+v, want an error", r)
				}
				if herr == nil && !tt.strict {
					t.Errorf("net/http reads it: %d", want.StatusCode)
				}
				return
			}
			if err != nil || herr != nil {
				t.Fatalf("readHead: %v; net/http: %v", err, herr)
			}
			if r.status != tt.status || r.status != want.StatusCode {
				t.Errorf("status %d, want %d (net/http: %d)", r.status, tt.status, want.StatusCode)
			}
			if r.close != want.Close {
				t.Errorf("close %v, net/http says %v", r.close, want.Close)
			}
			keep := !r.close && p.drain(r)
			if keep != tt.keep {
				t.Fatalf("kept %v, want %v", keep, tt.keep)
			}
			if rest, _ := io.ReadAll(p.br); keep && string(rest) != "NEXT" {
				t.Errorf("after the answer: %q, want the next one", rest)
			}
		})
	}
	// Nothing allocated for an answer read to its end.
	raw := "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
	sr := strings.NewReader(raw)
	p := &httpProber{}
	p.br = bufio.NewReaderSize(&p.lr, 4<<10)
	allocs := testing.AllocsPerRun(100, func() {
		sr.Reset(raw)
		p.lr = io.LimitedReader{R: sr, N: maxHeaderBytes}
		p.br.Reset(&p.lr)
		r, err := p.readHead()
		if err != nil || !p.drain(r) {
			t.Fatalf("%+v %v", r, err)
		}
	})
	if allocs > 0 {
		t.Errorf("%v allocations per answer", allocs)
	}
}

// A check through a backend (Via) marks its socket before the connect, so
// that policy routing sees the SYN marked; SO_MARK needs CAP_NET_ADMIN,
// without which the check fails and says why.
func TestCheckMark(t *testing.T) {
	const mark = 0x786c0042
	target := tcpServer(t)
	for _, kind := range []Kind{KindTCP, KindHTTP} {
		spec, err := Spec{Kind: kind, Target: target, Via: netip.MustParseAddr("127.0.0.2"), Mark: mark}.Normalize()
		if err != nil {
			t.Fatal(err)
		}
		p, err := newProber(spec)
		if err != nil {
			t.Fatal(err)
		}
		var d *net.Dialer
		switch p := p.(type) {
		case *tcpProber:
			d = p.dialer
		case *httpProber:
			d = p.dialer
		}
		conn, err := d.DialContext(t.Context(), "tcp", target.String())
		if os.Geteuid() != 0 {
			if !errors.Is(err, syscall.EPERM) {
				t.Errorf("%s: dial with a mark as non-root = %v, want EPERM", kind, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: dial: %v", kind, err)
		}
		if got := socketMark(t, conn); got != mark {
			t.Errorf("%s: socket mark %#x, want %#x", kind, got, mark)
		}
		conn.Close()
	}
	if d := newDialer(0); d.Control != nil {
		t.Errorf("a dialer without a mark sets socket options")
	}
}

func socketMark(t *testing.T, conn net.Conn) int {
	t.Helper()
	rc, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		mark, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK)
	}); err != nil || serr != nil {
		t.Fatalf("SO_MARK: %v %v", err, serr)
	}
	return mark
}

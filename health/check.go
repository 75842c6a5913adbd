package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"unicode/utf8"
)

// userAgent is sent with every HTTP check.
const userAgent = "xlb-health/1"

// maxReasonLen bounds a Reason made from an unclassified error.
const maxReasonLen = 80

// Check runs one check of spec (normalized first) bounded by spec.Timeout and
// by ctx. It returns nil on success, a *CheckError when the target failed the
// check, or an error matching ErrInvalidSpec. It is what every Manager checker
// does once per interval, for tools and tests that want a single answer.
func Check(ctx context.Context, spec Spec) error {
	spec, err := spec.Normalize()
	if err != nil {
		return err
	}
	p, err := newProber(spec, sharedTransport())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	_, err = p.probe(ctx)
	return err
}

// A prober runs one check. probe returns a short description of the success
// ("status 200", "connected") or a *CheckError. The deadline is ctx's.
type prober interface {
	probe(ctx context.Context) (ok string, err error)
}

func newProber(spec Spec, plain *http.Transport) (prober, error) {
	switch spec.Kind {
	case KindTCP:
		return &tcpProber{addr: spec.Target.String(), dialer: newDialer()}, nil
	case KindHTTP, KindHTTPS:
		expect, err := spec.ExpectStatus.ranges()
		if err != nil {
			return nil, err
		}
		tr := plain
		scheme := "http://"
		if spec.Kind == KindHTTPS {
			scheme = "https://"
			// One transport per HTTPS checker: the TLS server name follows
			// the Host header. Without keep-alives it holds no connections.
			serverName := spec.Host
			if h, _, err := net.SplitHostPort(serverName); err == nil {
				serverName = h
			}
			tr = newTransport(&tls.Config{
				ServerName: serverName,
				// A health check asks whether the backend answers, not who
				// it is: backends are addressed by IP and often carry
				// certificates for the service name, or self-signed ones.
				InsecureSkipVerify: true, //nolint:gosec // see above
			})
		}
		return &httpProber{
			url:    scheme + spec.Target.String() + spec.Path,
			host:   spec.Host,
			expect: expect,
			client: &http.Client{
				Transport: tr,
				// A redirect is an answer: its status is checked, not followed.
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			},
		}, nil
	}
	return nil, fmt.Errorf("%w: unknown kind %q", ErrInvalidSpec, string(spec.Kind))
}

func newDialer() *net.Dialer {
	// No TCP keep-alive probes: every connection lives for one check.
	return &net.Dialer{KeepAlive: -1}
}

// newTransport is an HTTP/1.1 transport for checks: a new connection per
// check (a check must prove the backend still accepts connections, and a
// pool of idle connections to 1000 backends is no saving), no proxy from the
// environment, no compression, small header limit. Deadlines come from the
// request's context only.
func newTransport(tlsConf *tls.Config) *http.Transport {
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            newDialer().DialContext,
		TLSClientConfig:        tlsConf,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 16 << 10,
		ForceAttemptHTTP2:      false,
	}
}

var sharedTransport = sync.OnceValue(func() *http.Transport { return newTransport(nil) })

type httpProber struct {
	url    string
	host   string
	expect statusRanges
	client *http.Client
}

func (p *httpProber) probe(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return "", classify(err)
	}
	if p.host != "" {
		req.Host = p.host
	}
	req.Header.Set("User-Agent", userAgent)
	req.Close = true
	resp, err := p.client.Do(req)
	if err != nil {
		return "", classify(err)
	}
	// The body is not read: the connection is not reused.
	resp.Body.Close()
	reason := "status " + strconv.Itoa(resp.StatusCode)
	if !p.expect.contains(resp.StatusCode) {
		return "", &CheckError{Reason: reason, Status: resp.StatusCode, class: ErrStatus}
	}
	return reason, nil
}

type tcpProber struct {
	addr   string
	dialer *net.Dialer
}

func (p *tcpProber) probe(ctx context.Context) (string, error) {
	conn, err := p.dialer.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return "", classify(err)
	}
	conn.Close()
	return "connected", nil
}

// classify turns a dial or HTTP error into a *CheckError with a short reason.
func classify(err error) *CheckError {
	var class error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		class = ErrTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		class = ErrRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		class = ErrReset
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EHOSTDOWN), errors.Is(err, syscall.ENETDOWN):
		class = ErrUnreachable
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		class = ErrConnClosed
	}
	if class != nil {
		return &CheckError{Reason: class.Error(), class: class, err: err}
	}
	return &CheckError{Reason: shortReason(err), err: err}
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// shortReason is the message of the innermost error in err's chain (without
// the "Get http://...:" and "dial tcp ...:" prefixes of the outer ones),
// truncated.
func shortReason(err error) string {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			break
		}
		err = next
	}
	s := err.Error()
	if len(s) > maxReasonLen {
		s = s[:maxReasonLen]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "..."
	}
	return s
}

// Interface guards.
var (
	_ prober = (*httpProber)(nil)
	_ prober = (*tcpProber)(nil)
)

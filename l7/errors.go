package l7

import (
	"context"
	"errors"
	"net/http"
	"strconv"
)

// errKind classifies what went wrong between the proxy and a backend. The
// names are the kind label of xlb_l7_upstream_errors_total.
type errKind uint8

const (
	errNone       errKind = iota
	errConnect            // could not connect (refused, unreachable, connect timeout): 502
	errBroken             // the backend broke the connection: 502
	errTimeout            // no answer within the response-header or request timeout: 504
	errNoBackend          // no usable backend: 503
	errOverloaded         // every usable backend at its in-flight limit: 503
	numErrKinds
)

var errKindNames = [numErrKinds]string{"", "connect", "broken", "timeout", "no_backend", "overloaded"}

func (k errKind) String() string { return errKindNames[k] }

// gatewayResponse is the proxy's own answer for one errKind: status and a
// short plain-text body, prepared once.
type gatewayResponse struct {
	status int
	body   []byte
	length []string // Content-Length value
}

func newGatewayResponse(status int, msg string) gatewayResponse {
	body := []byte(strconv.Itoa(status) + " " + http.StatusText(status) + ": " + msg + "\n")
	return gatewayResponse{status: status, body: body, length: []string{strconv.Itoa(len(body))}}
}

var gatewayResponses = [numErrKinds]gatewayResponse{
	errConnect:    newGatewayResponse(http.StatusBadGateway, "the backend could not be reached"),
	errBroken:     newGatewayResponse(http.StatusBadGateway, "the backend closed the connection"),
	errTimeout:    newGatewayResponse(http.StatusGatewayTimeout, "the backend did not answer in time"),
	errNoBackend:  newGatewayResponse(http.StatusServiceUnavailable, "no backend available"),
	errOverloaded: newGatewayResponse(http.StatusServiceUnavailable, "all backends are at their in-flight limit"),
}

var (
	notFoundResponse  = newGatewayResponse(http.StatusNotFound, "no service for this host and path")
	connectNotAllowed = newGatewayResponse(http.StatusMethodNotAllowed, "CONNECT is not proxied")
)

// Static header values of the proxy's own answers. They are shared, never
// modified: anything that adds to a header copies the slice first.
var (
	textPlain = []string{"text/plain; charset=utf-8"}
	noSniff   = []string{"nosniff"}
)

// write sends g on w; h is w.Header() with the proxy's response headers
// already set.
func (g gatewayResponse) write(w http.ResponseWriter, h http.Header) {
	h["Content-Type"] = textPlain
	h["X-Content-Type-Options"] = noSniff
	h["Content-Length"] = g.length
	w.WriteHeader(g.status)
	w.Write(g.body)
}

// statusClientClosed is recorded (never sent) for requests whose client went
// away before the answer, as nginx's 499.
const statusClientClosed = 499

// dialError marks an error of the transport's dialer: nothing reached the
// backend, so an idempotent request may go to another one.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// errRequestTimeout: the request's timeout ran out while the fast path was
// still connecting to the backend.
var errRequestTimeout error = requestTimeoutError{}

type requestTimeoutError struct{}

func (requestTimeoutError) Error() string { return "request timeout while connecting to the backend" }
func (requestTimeoutError) Timeout() bool { return true }

// classify turns a RoundTrip (or response body) error into an errKind. ctx
// is the request's proxy context (with the request timeout), client the
// client's own. canceled reports that the client went away: nothing is sent
// and nothing is counted against the backend.
func classify(err error, ctx, client context.Context) (kind errKind, canceled bool) {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded) && client.Err() == nil:
		return errTimeout, false
	case client.Err() != nil:
		return errNone, true
	}
	var de *dialError
	if errors.As(err, &de) {
		return errConnect, false
	}
	if isTimeoutErr(err) {
		return errTimeout, false
	}
	return errBroken, false
}

func isTimeoutErr(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// result is the passive-health verdict for a request that ended with kind.
func (k errKind) result() Result {
	switch k {
	case errNone:
		return ResultOK
	case errConnect:
		return ResultConnectError
	}
	return ResultBroken
}

var _ error = (*dialError)(nil)

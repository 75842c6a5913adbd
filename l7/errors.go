package l7

import (
	"context"
	"errors"
	"github.com/xlb-dev/xlb/l7/h1"
	"net/http"
	"strconv"
)

// errKind classifies what went wrong between the proxy and a backend. The
// names are the kind label of xlb_l7_upstream_errors_total.
type errKind uint8

const (
	errNone        errKind = iota
	errConnect             // could not connect (refused, unreachable, connect timeout): 502
	errBroken              // the backend broke the connection: 502
	errTimeout             // no answer within the response-header or request timeout: 504
	errNoBackend           // no usable backend: 503
	errOverloaded          // every usable backend at its in-flight limit: 503
	errBadResponse         // the backend's answer broke HTTP/1.1 (framing, syntax): 502
	numErrKinds
)

var errKindNames = [numErrKinds]string{"", "connect", "broken", "timeout", "no_backend", "overloaded", "bad_response"}

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
	errConnect:     newGatewayResponse(http.StatusBadGateway, "the backend could not be reached"),
	errBroken:      newGatewayResponse(http.StatusBadGateway, "the backend closed the connection"),
	errTimeout:     newGatewayResponse(http.StatusGatewayTimeout, "the backend did not answer in time"),
	errNoBackend:   newGatewayResponse(http.StatusServiceUnavailable, "no backend available"),
	errOverloaded:  newGatewayResponse(http.StatusServiceUnavailable, "all backends are at their in-flight limit"),
	errBadResponse: newGatewayResponse(http.StatusBadGateway, "the backend sent a malformed answer"),
}

var (
	notFoundResponse  = newGatewayResponse(http.StatusNotFound, "no service for this host and path")
	connectNotAllowed = newGatewayResponse(http.StatusMethodNotAllowed, "CONNECT is not proxied")
	// The client's own faults: never counted against a backend, and the
	// client connection is closed after them.
	badRequestBody  = newGatewayResponse(http.StatusBadRequest, "the request body is malformed or cut short")
	slowRequestBody = newGatewayResponse(http.StatusRequestTimeout, "the request body did not arrive in time")
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
	var de *h1.DialError
	switch {
	case errors.As(err, &de):
		return errConnect, false
	case errors.Is(err, h1.ErrBadResponse):
		return errBadResponse, false
	case isTimeoutErr(err):
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

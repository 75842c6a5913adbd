package h1

import (
	"errors"
	"fmt"
)

// ErrBadResponse: the backend's answer broke HTTP/1.1 framing or syntax
// (both Content-Length and Transfer-Encoding, an unknown transfer coding,
// a bad header name, a body where none may be, a head too large, ...).
// The connection is closed; the proxy answers 502 and blames the backend.
var ErrBadResponse = errors.New("malformed answer from the backend")

func badResponse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadResponse, fmt.Sprintf(format, args...))
}

// DialError: the connection to the backend could not be made, so nothing
// reached it and an idempotent request may go elsewhere.
type DialError struct{ Err error }

func (e *DialError) Error() string { return e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

// ErrRequestTimeout: the request's deadline ran out while the Transport
// was still connecting to the backend.
var ErrRequestTimeout error = requestTimeoutError{}

type requestTimeoutError struct{}

func (requestTimeoutError) Error() string { return "request timeout while connecting to the backend" }
func (requestTimeoutError) Timeout() bool { return true }

// BodyError: reading the client's request body failed while the Transport
// was sending it (bad chunked framing, a body cut short, a client that
// stalled past its deadline). It is the client's fault, not the backend's;
// the backend connection is closed.
type BodyError struct{ Err error }

func (e *BodyError) Error() string { return "client request body: " + e.Err.Error() }
func (e *BodyError) Unwrap() error { return e.Err }

var (
	_ error = (*DialError)(nil)
	_ error = (*BodyError)(nil)
)

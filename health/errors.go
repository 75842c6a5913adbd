package health

import (
	"errors"
	"strconv"
)

// Errors about the configuration of checks. Set, Spec.Normalize and
// ParseStatusSet return errors that match these with errors.Is.
var (
	// ErrInvalidSpec: a Spec that cannot be checked (bad kind, address,
	// duration, threshold, jitter, path, host or status set).
	ErrInvalidSpec = errors.New("invalid health check")
	// ErrBadStatusSet: ParseStatusSet could not read the status set. It also
	// matches ErrInvalidSpec.
	ErrBadStatusSet = &wrapErr{msg: "bad status set", parent: ErrInvalidSpec}
	// ErrClosed: the Manager has been closed.
	ErrClosed = errors.New("health manager closed")
)

// Why a check failed. A *CheckError matches exactly one of these with
// errors.Is, or none when the failure is of another kind (its Reason is then
// a short form of the underlying error).
var (
	ErrTimeout     = errors.New("timeout")     // the check did not finish within Spec.Timeout
	ErrRefused     = errors.New("refused")     // connection refused (nothing listens on the port)
	ErrReset       = errors.New("reset")       // connection reset by the peer
	ErrUnreachable = errors.New("unreachable") // no route to the host or network
	ErrConnClosed  = errors.New("closed")      // the peer closed the connection without an answer
	ErrStatus      = errors.New("unexpected status")
)

// wrapErr is a sentinel that also matches a more general sentinel.
type wrapErr struct {
	msg    string
	parent error
}

func (e *wrapErr) Error() string { return e.msg }
func (e *wrapErr) Unwrap() error { return e.parent }

// CheckError is one failed check.
type CheckError struct {
	// Reason is short and stable enough for logs and status output:
	// "timeout", "refused", "reset", "unreachable", "closed", "status 503",
	// or a shortened error message.
	Reason string
	// Status is the HTTP status code when the check failed on it, else 0.
	Status int
	class  error // one of the Err* reasons above, or nil
	err    error // the underlying error; nil for a status mismatch
}

// Error is the reason followed by the underlying error, if any.
func (e *CheckError) Error() string {
	switch {
	case e.err == nil && e.Status != 0:
		return "health check failed: status " + strconv.Itoa(e.Status)
	case e.err == nil:
		return "health check failed: " + e.Reason
	}
	return "health check failed: " + e.Reason + ": " + e.err.Error()
}

// Unwrap exposes both the reason's sentinel (ErrTimeout, ErrRefused, ...)
// and the underlying error to errors.Is and errors.As.
func (e *CheckError) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.class != nil {
		errs = append(errs, e.class)
	}
	if e.err != nil {
		errs = append(errs, e.err)
	}
	return errs
}

// Interface guards.
var (
	_ error                         = (*CheckError)(nil)
	_ interface{ Unwrap() []error } = (*CheckError)(nil)
	_ interface{ Unwrap() error }   = (*wrapErr)(nil)
)

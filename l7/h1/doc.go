// Package h1 is xlb's HTTP/1.1 engine: the strict message parsers, the
// client side of a proxied exchange (Transport: keep-alive pools to
// backends, request writer, answer reader) and the lexical rules both
// share. It knows nothing of balancing: package l7 picks the backend and
// hands the engine a request whose URL.Host is that backend.
//
// Strict means: a message is read only when its framing is certain, the
// way RFC 9112 and net/http agree on it; anything else is an error that
// closes the connection (ErrBadResponse: the proxy answers 502). A
// backend connection is reused only when its answer ended exactly where
// its framing said and nothing more is readable, checked when the answer
// ends and again before the next request, so that bytes a backend sent
// out of turn can never become another client's answer.
package h1

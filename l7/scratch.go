package l7

import (
	"context"
	"github.com/xlb-dev/xlb/l7/h1"
	"net"
	"net/http"
)

// connScratch is what a client connection served by package h1 lends each
// of its requests in turn: the peer, parsed once, and storage reused from
// one request to the next. The requests are served one at a time, and
// nothing keeps a request's exchange or outgoing header after its
// ServeHTTP has returned; a request with a body, whose sender may outlive
// it, does not borrow them.
type connScratch struct {
	peer   peer
	header http.Header // the outgoing header's map; nil while lent or not given back
	ex     exchange
}

type connScratchKey struct{}

// scratchOf is the connScratch of an HTTP/1 request's context, or nil.
func scratchOf(ctx context.Context) *connScratch {
	sc, _ := ctx.Value(connScratchKey{}).(*connScratch)
	return sc
}

// withScratch is the h1.Server's ConnContext: a connScratch per connection.
// It also makes the connection an h1.Owner of backend connections.
func withScratch(ctx context.Context, nc net.Conn) context.Context {
	sc := &connScratch{peer: parsePeer(nc.RemoteAddr().String()), header: make(http.Header, 16)}
	return withOwner(context.WithValue(ctx, connScratchKey{}, sc))
}

// withOwner makes ctx, a client connection's context, an h1.Owner: the
// backend connections its requests use stay its own (see h1.Owner) until
// ctx ends with the connection.
func withOwner(ctx context.Context) context.Context {
	o := h1.NewOwner()
	context.AfterFunc(ctx, o.Close)
	return h1.WithOwner(ctx, o)
}

package h1

import (
	"context"
	"sync"
	"time"
)

// Owner is one client connection as the Transport sees it. A backend
// connection that served one of its requests is kept for its next ones,
// and passes to another client only after it has been idle for ShareAfter
// (and, like every reuse, only when nothing is readable on it). A backend
// that sends bytes out of turn can thus only ever mix up the answers of the
// client that caused it, never hand them to another client, unless it
// sends them more than ShareAfter late, exactly while another client's
// request is on its way.
type Owner struct {
	mu     sync.Mutex
	idle   map[*connPool][]*conn
	closed bool
}

// ShareAfter is how long a backend connection idles before another client
// connection may use it.
const ShareAfter = time.Second

// maxOwnedPerBackend bounds the idle connections an Owner keeps to one
// backend; more go to the shared pool. An HTTP/1 client has one request at
// a time; an HTTP/2 one runs up to l7's per-connection limit (32) side by
// side, and keeps that many.
const maxOwnedPerBackend = 32

// NewOwner returns the Owner of a new client connection.
func NewOwner() *Owner { return &Owner{} }

type ownerKey struct{}

// WithOwner returns ctx carrying o: the Transport keeps the backend
// connections of requests with this context for o.
func WithOwner(ctx context.Context, o *Owner) context.Context {
	return context.WithValue(ctx, ownerKey{}, o)
}

func ownerOf(ctx context.Context) *Owner {
	o, _ := ctx.Value(ownerKey{}).(*Owner)
	return o
}

// Close ends o (its client connection closed): its idle backend
// connections go to their shared pools, still counting their idle time
// from their last use.
func (o *Owner) Close() {
	o.mu.Lock()
	idle := o.idle
	o.idle, o.closed = nil, true
	o.mu.Unlock()
	for p, cs := range idle {
		for _, c := range cs {
			c.owner = nil
			p.add(c)
		}
	}
}

// take returns o's most recently used idle connection to p, or nil.
func (o *Owner) take(p *connPool) *conn {
	o.mu.Lock()
	defer o.mu.Unlock()
	cs := o.idle[p]
	if len(cs) == 0 {
		return nil
	}
	c := cs[len(cs)-1]
	cs[len(cs)-1] = nil
	o.idle[p] = cs[:len(cs)-1]
	return c
}

// keep holds c for o's next request to its backend; false if o is closed
// or holds enough.
func (o *Owner) keep(c *conn) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed || len(o.idle[c.pool]) >= maxOwnedPerBackend {
		return false
	}
	if o.idle == nil {
		o.idle = map[*connPool][]*conn{}
	}
	o.idle[c.pool] = append(o.idle[c.pool], c)
	return true
}

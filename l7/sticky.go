package l7

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"time"
)

// Cookie stickiness, on top of any policy (Pool.Sticky). Pool.Pick sends a
// request carrying the cookie to the upstream it names when that upstream is
// up, not ejected, not the retry's exclude and below its in-flight limit;
// weight 0 does not matter (as in HAProxy, weight 0 takes no new clients but
// keeps its sticky ones). Otherwise (no cookie, unknown value, or the pinned
// upstream down, draining, ejected, excluded or full) the policy picks and
// Pick returns a cookie naming the new upstream for the proxy to set: the
// client is pinned again. A valid cookie is not re-sent on every response,
// so its TTL runs from the (re)pin.
//
// The cookie value is the first 8 bytes, in hex, of SHA-256 over a fixed
// prefix and the upstream's ID: it reveals neither address nor port, and it
// is the same on every xlb host with the same config and across restarts, so
// ECMP scale-out and upgrades keep sessions.

// stickyCookieValue is u's opaque cookie value, computed once.
func (u *Upstream) stickyCookieValue() string {
	if v := u.stickyValue.Load(); v != nil {
		return *v
	}
	id := u.ID
	if id == "" {
		id = u.Addr.String()
	}
	sum := sha256.Sum256([]byte("xlb sticky v1\x00" + id))
	v := hex.EncodeToString(sum[:8])
	u.stickyValue.Store(&v)
	return v
}

func (s *StickyConfig) cookieName() string {
	if s.Cookie == "" {
		return DefaultStickyCookie
	}
	return s.Cookie
}

func (s *StickyConfig) ttl() time.Duration {
	switch {
	case s.TTL == 0:
		return DefaultStickyTTL
	case s.TTL < MinStickyTTL:
		return MinStickyTTL
	}
	return s.TTL
}

// pinned returns the upstream of p that r's sticky cookie names, or nil.
func (p *Pool) pinned(r *http.Request) *Upstream {
	ck, err := r.Cookie(p.Sticky.cookieName())
	if err != nil || ck.Value == "" {
		return nil
	}
	for _, u := range p.Upstreams {
		if u.stickyCookieValue() == ck.Value {
			return u
		}
	}
	return nil
}

// stickyOK reports whether a pinned upstream may take r: up (any weight),
// not ejected, not the retry's exclude. The in-flight limit is Pick's.
func stickyOK(u, exclude *Upstream, c *clock) bool {
	return u != exclude && u.State() == StateUp && u.notEjected(c)
}

// cookie is the Set-Cookie that pins r's client to u.
func (s *StickyConfig) cookie(r *http.Request, u *Upstream) *http.Cookie {
	ttl := s.ttl()
	return &http.Cookie{
		Name:     s.cookieName(),
		Value:    u.stickyCookieValue(),
		Path:     "/",
		MaxAge:   int(ttl / time.Second),
		Expires:  time.Now().Add(ttl).UTC(),
		HttpOnly: true,
		Secure:   r.TLS != nil,
		SameSite: http.SameSiteLaxMode,
	}
}

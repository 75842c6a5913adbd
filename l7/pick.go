package l7

import "net/http"

// Pick chooses the upstream for r and reserves a slot on it: the returned
// upstream's InFlight is already raised, and the caller must call its Done
// exactly once when the request ends (whatever happened). exclude (may be
// nil) is never returned: a retry passes the upstream it moves away from.
//
// Order: the sticky cookie's upstream if the pool is sticky and that one can
// take the request (see sticky.go); else the policy's choice; if that one is
// at MaxInFlight, the least loaded usable upstream below it. The cookie is
// non-nil when the client is (re)pinned: the proxy adds it to the response
// (http.SetCookie or resp.Header.Add("Set-Cookie", c.String())).
//
// Errors (both mean 503): ErrNoUpstream when no upstream other than exclude
// is usable (down, draining, ejected or weight 0); ErrOverloaded when every
// usable one is at its in-flight limit. A retry that gets ErrNoUpstream has
// nowhere else to go: answer with the first attempt's error (502).
func (p *Pool) Pick(r *http.Request, exclude *Upstream) (*Upstream, *http.Cookie, error) {
	if p == nil {
		return nil, nil, ErrNoUpstream
	}
	var c clock
	var pin *Upstream
	if p.Sticky != nil {
		pin = p.pinned(r)
		if pin != nil && stickyOK(pin, exclude, &c) && pin.acquire(p.MaxInFlight) {
			return pin, nil, nil
		}
	}
	u, err := p.pick(r, exclude, &c)
	if err != nil {
		return nil, nil, err
	}
	if p.Sticky != nil && u != pin {
		return u, p.Sticky.cookie(r, u), nil
	}
	return u, nil, nil
}

// pick is the policy, then the in-flight limit.
func (p *Pool) pick(r *http.Request, exclude *Upstream, c *clock) (*Upstream, error) {
	policy := p.Policy
	if policy == nil {
		policy = defaultPolicy
	}
	if u := policy.Select(p, r, exclude); u != nil && candidate(u, exclude, c) && u.acquire(p.MaxInFlight) {
		return u, nil
	}
	return p.overflow(exclude, c)
}

// overflow is the circuit breaker's way out when the policy's choice is full
// (or the policy found nothing): the least loaded usable upstream (in-flight
// per unit of weight) that is below the limit. A lost race for its last slot
// looks again, a bounded number of times.
func (p *Pool) overflow(exclude *Upstream, c *clock) (*Upstream, error) {
	limit := p.MaxInFlight
	for tries := 0; tries < 2*len(p.Upstreams)+2; tries++ {
		var best *Upstream
		var bestLoad int64
		usable := false
		for _, u := range p.Upstreams {
			if !candidate(u, exclude, c) {
				continue
			}
			usable = true
			load := u.InFlight.Load()
			if limit > 0 && load >= limit {
				continue
			}
			if best == nil || lighter(load, u.Weight, bestLoad, best.Weight) {
				best, bestLoad = u, load
			}
		}
		switch {
		case !usable:
			return nil, ErrNoUpstream
		case best == nil:
			return nil, ErrOverloaded
		case best.acquire(limit):
			return best, nil
		}
	}
	return nil, ErrOverloaded
}

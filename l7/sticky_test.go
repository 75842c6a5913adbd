package l7

import (
	"crypto/tls"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

func stickyPool(t testing.TB, policy string, ups []*Upstream) *Pool {
	t.Helper()
	p := testPool(t, policy, ups)
	p.Sticky = &StickyConfig{Cookie: "srv", TTL: 10 * time.Minute}
	return p
}

// withCookie is a request carrying ck, as a browser would send it back.
func withCookie(ip string, ck *http.Cookie) *http.Request {
	r := testRequest(ip)
	r.AddCookie(&http.Cookie{Name: ck.Name, Value: ck.Value})
	return r
}

func TestStickyPins(t *testing.T) {
	for _, policy := range allPolicies {
		t.Run(policy, func(t *testing.T) {
			ups := testUpstreams(1, 1, 1)
			p := stickyPool(t, policy, ups)
			first, ck, err := p.Pick(testRequest("203.0.113.7"), nil)
			if err != nil {
				t.Fatal(err)
			}
			first.Done(p, ResultOK, 0)
			if ck == nil {
				t.Fatal("first request: no cookie")
			}
			if ck.Name != "srv" || ck.MaxAge != 600 || ck.Path != "/" || !ck.HttpOnly || ck.Secure {
				t.Errorf("cookie %s", ck)
			}
			if d := time.Until(ck.Expires); d < 9*time.Minute || d > 11*time.Minute {
				t.Errorf("cookie expires in %v", d)
			}
			// With the cookie, from other addresses too (ip_hash would
			// otherwise move them), always the same upstream, no new cookie.
			for i, ip := range []string{"203.0.113.7", "198.51.100.1", "198.51.100.2", "2001:db8::5", "198.51.100.3", "198.51.100.4"} {
				u, again, err := p.Pick(withCookie(ip, ck), nil)
				if err != nil {
					t.Fatal(err)
				}
				if u != first {
					t.Fatalf("request %d with the cookie went to %s, pinned to %s", i, u.Addr, first.Addr)
				}
				if again != nil {
					t.Errorf("request %d: cookie re-sent", i)
				}
				u.Done(p, ResultOK, 0)
			}
		})
	}
}

// TestStickyRepins: when the pinned upstream cannot take the request, the
// policy picks another and the cookie names it.
func TestStickyRepins(t *testing.T) {
	tests := []struct {
		name   string
		spoil  func(p *Pool, pinned *Upstream) *Upstream // returns exclude
		repins bool
	}{
		{"healthy stays", func(*Pool, *Upstream) *Upstream { return nil }, false},
		{"down", func(_ *Pool, u *Upstream) *Upstream { u.SetState(StateDown); return nil }, true},
		{"draining", func(_ *Pool, u *Upstream) *Upstream { u.SetState(StateDraining); return nil }, true},
		{"ejected", func(_ *Pool, u *Upstream) *Upstream {
			u.ejectedUntil.Store(time.Now().Add(time.Minute).UnixNano())
			return nil
		}, true},
		{"ejection over", func(_ *Pool, u *Upstream) *Upstream {
			u.ejectedUntil.Store(time.Now().Add(-time.Second).UnixNano())
			return nil
		}, false},
		{"at its in-flight limit", func(p *Pool, u *Upstream) *Upstream {
			p.MaxInFlight = 2
			u.InFlight.Store(2)
			return nil
		}, true},
		{"below its limit", func(p *Pool, u *Upstream) *Upstream {
			p.MaxInFlight = 2
			u.InFlight.Store(1)
			return nil
		}, false},
		{"excluded by a retry", func(_ *Pool, u *Upstream) *Upstream { return u }, true},
		{"weight 0 keeps its sticky clients", func(_ *Pool, u *Upstream) *Upstream { u.Weight = 0; return nil }, false},
	}
	for _, tt := range tests {
		for _, policy := range allPolicies {
			t.Run(tt.name+"/"+policy, func(t *testing.T) {
				ups := testUpstreams(1, 1, 1)
				p := stickyPool(t, policy, ups)
				pinned, ck, err := p.Pick(testRequest("203.0.113.7"), nil)
				if err != nil {
					t.Fatal(err)
				}
				pinned.Done(p, ResultOK, 0)
				exclude := tt.spoil(p, pinned)

				u, ck2, err := p.Pick(withCookie("203.0.113.7", ck), exclude)
				if err != nil {
					t.Fatal(err)
				}
				if !tt.repins {
					if u != pinned || ck2 != nil {
						t.Fatalf("got %s (cookie %v), want the pinned %s and no cookie", u.Addr, ck2, pinned.Addr)
					}
					return
				}
				if u == pinned {
					t.Fatal("still sent to the pinned upstream")
				}
				if ck2 == nil || ck2.Name != ck.Name || ck2.Value == ck.Value {
					t.Fatalf("cookie not rewritten: %v", ck2)
				}
				if ck2.Value != u.stickyCookieValue() {
					t.Fatal("new cookie does not name the new upstream")
				}
				u.Done(p, ResultOK, 0)
				// The new pin holds.
				for range 5 {
					v, ck3, err := p.Pick(withCookie("203.0.113.7", ck2), nil)
					if err != nil || v != u || ck3 != nil {
						t.Fatalf("after re-pin: %v, %v, %v", v, ck3, err)
					}
					v.Done(p, ResultOK, 0)
				}
			})
		}
	}
}

func TestStickyUnknownOrAbsentCookie(t *testing.T) {
	ups := testUpstreams(1, 1)
	p := stickyPool(t, PolicyRoundRobin, ups)
	tests := []struct {
		name   string
		cookie *http.Cookie
	}{
		{"no cookie", nil},
		{"unknown value (upstream removed)", &http.Cookie{Name: "srv", Value: "0123456789abcdef"}},
		{"empty value", &http.Cookie{Name: "srv", Value: ""}},
		{"other cookie only", &http.Cookie{Name: "session", Value: ups[0].stickyCookieValue()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := testRequest("")
			if tt.cookie != nil {
				r.AddCookie(tt.cookie)
			}
			u, ck, err := p.Pick(r, nil)
			if err != nil {
				t.Fatal(err)
			}
			if ck == nil || ck.Value != u.stickyCookieValue() {
				t.Fatalf("cookie %v for %s", ck, u.Addr)
			}
			u.Done(p, ResultOK, 0)
		})
	}
}

func TestStickyAllUnusable(t *testing.T) {
	ups := testUpstreams(1, 1)
	p := stickyPool(t, PolicyRoundRobin, ups)
	u, ck, _ := p.Pick(testRequest(""), nil)
	u.Done(p, ResultOK, 0)
	for _, x := range ups {
		x.SetState(StateDraining)
	}
	if u, c, err := p.Pick(withCookie("", ck), nil); !errors.Is(err, ErrNoUpstream) || u != nil || c != nil {
		t.Fatalf("Pick = %v, %v, %v; want ErrNoUpstream", u, c, err)
	}
}

func TestStickyCookieOpaque(t *testing.T) {
	ups := testUpstreams(1, 1, 1)
	seen := map[string]bool{}
	hex16 := regexp.MustCompile(`^[0-9a-f]{16}$`)
	for _, u := range ups {
		v := u.stickyCookieValue()
		if !hex16.MatchString(v) {
			t.Errorf("value %q is not 16 hex digits", v)
		}
		for _, leak := range []string{u.Addr.String(), u.Addr.Addr().String(), "8080", "198", u.ID, u.Name} {
			if strings.Contains(v, leak) {
				t.Errorf("value %q reveals %q", v, leak)
			}
		}
		if seen[v] {
			t.Errorf("value %q shared by two upstreams", v)
		}
		seen[v] = true
	}
	// Deterministic: another process (or xlb host) with the same config
	// gives the same value.
	again := testUpstreams(1, 1, 1)
	for i := range ups {
		if again[i].stickyCookieValue() != ups[i].stickyCookieValue() {
			t.Error("value differs for the same ID")
		}
	}
	// The same address in another service is another value.
	other := &Upstream{ID: "api@" + ups[0].Addr.String(), Addr: ups[0].Addr, Weight: 1}
	if other.stickyCookieValue() == ups[0].stickyCookieValue() {
		t.Error("two services share a cookie value for one address")
	}
}

func TestStickyConfigDefaults(t *testing.T) {
	tests := []struct {
		cfg      StickyConfig
		wantName string
		wantTTL  time.Duration
	}{
		{StickyConfig{}, DefaultStickyCookie, DefaultStickyTTL},
		{StickyConfig{Cookie: "lb", TTL: 10 * time.Second}, "lb", 60 * time.Second},
		{StickyConfig{TTL: 59 * time.Second}, DefaultStickyCookie, 60 * time.Second},
		{StickyConfig{TTL: 2 * time.Hour}, DefaultStickyCookie, 2 * time.Hour},
	}
	for _, tt := range tests {
		ck := tt.cfg.cookie(testRequest(""), testUpstreams(1)[0])
		if ck.Name != tt.wantName || time.Duration(ck.MaxAge)*time.Second != tt.wantTTL {
			t.Errorf("%+v: cookie %s, want name %s TTL %v", tt.cfg, ck, tt.wantName, tt.wantTTL)
		}
	}
	// Over TLS the cookie is Secure.
	r := testRequest("")
	r.TLS = &tls.ConnectionState{}
	if ck := (&StickyConfig{}).cookie(r, testUpstreams(1)[0]); !ck.Secure {
		t.Error("cookie over TLS not Secure")
	}
}

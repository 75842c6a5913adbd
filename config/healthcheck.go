package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// hcKey is one key of a health_check table, as a bit of hcOverride.set.
type hcKey uint16

const (
	hcEnabled hcKey = 1 << iota
	hcType
	hcPath
	hcExpectStatus
	hcInterval
	hcTimeout
	hcUnhealthy
	hcHealthy
	hcInitialState
	hcPort
	hcCheckViaVIP
)

// hcOverride is one [health_check] or [service.health_check] table as
// written: the values of the keys it sets and which keys those are, so that
// an explicit false or 0 overrides the level below it.
type hcOverride struct {
	hc  HealthCheck
	set hcKey
	t   *table // nil when the table is absent
}

// decodeHealthCheck reads a health_check table; t may be nil. Values that
// must not be zero are range-checked here, because a zero left in a
// HealthCheck reads as "unset" to ApplyDefaults.
func decodeHealthCheck(t *table) hcOverride {
	o := hcOverride{t: t}
	if t == nil {
		return o
	}
	h := &o.hc
	o.mark(hcEnabled, t.boolean("enabled", &h.Enabled))
	o.mark(hcType, enum(t, "type", &h.Type))
	o.mark(hcPath, nonEmpty(t, "path", &h.Path))
	o.mark(hcExpectStatus, nonEmpty(t, "expect_status", &h.ExpectStatus))
	o.mark(hcInterval, t.duration("interval", MinDuration, MaxCheckDuration, &h.Interval))
	o.mark(hcTimeout, t.duration("timeout", MinDuration, MaxCheckDuration, &h.Timeout))
	o.mark(hcUnhealthy, t.threshold("unhealthy_threshold", &h.UnhealthyThreshold))
	o.mark(hcHealthy, t.threshold("healthy_threshold", &h.HealthyThreshold))
	o.mark(hcInitialState, enum(t, "initial_state", &h.InitialState))
	if n, ok := t.integer("port", 0, 65535); ok {
		h.Port = uint16(n)
		o.set |= hcPort
	}
	o.mark(hcCheckViaVIP, t.boolean("check_via_vip", &h.CheckViaVIP))
	t.finish()
	return o
}

func (o *hcOverride) mark(k hcKey, ok bool) {
	if ok {
		o.set |= k
	}
}

func (t *table) threshold(key string, dst *int) bool {
	n, ok := t.integer(key, 1, MaxCheckThreshold)
	if ok {
		*dst = int(n)
	}
	return ok
}

// resolve returns base with the overrides of o applied. The http-only keys
// are refused in a table whose resolved check is tcp; inherited ones are
// harmless and kept.
func (o hcOverride) resolve(base HealthCheck) HealthCheck {
	h := base
	v := o.hc
	for _, f := range []struct {
		k     hcKey
		apply func()
	}{
		{hcEnabled, func() { h.Enabled = v.Enabled }},
		{hcType, func() { h.Type = v.Type }},
		{hcPath, func() { h.Path = v.Path }},
		{hcExpectStatus, func() { h.ExpectStatus = v.ExpectStatus }},
		{hcInterval, func() { h.Interval = v.Interval }},
		{hcTimeout, func() { h.Timeout = v.Timeout }},
		{hcUnhealthy, func() { h.UnhealthyThreshold = v.UnhealthyThreshold }},
		{hcHealthy, func() { h.HealthyThreshold = v.HealthyThreshold }},
		{hcInitialState, func() { h.InitialState = v.InitialState }},
		{hcPort, func() { h.Port = v.Port }},
		{hcCheckViaVIP, func() { h.CheckViaVIP = v.CheckViaVIP }},
	} {
		if o.set&f.k != 0 {
			f.apply()
		}
	}
	if h.Type == CheckTCP && o.t != nil {
		if o.set&hcPath != 0 {
			o.t.errorf("path", "applies to http checks only (the check type here is %q)", h.Type)
		}
		if o.set&hcExpectStatus != 0 {
			o.t.errorf("expect_status", "applies to http checks only (the check type here is %q)", h.Type)
		}
	}
	return h
}

// StatusExpected reports whether an HTTP check that got status code passes,
// according to ExpectStatus.
func (h HealthCheck) StatusExpected(code int) bool {
	ranges, err := parseExpectStatus(h.ExpectStatus)
	if err != nil {
		return false
	}
	for _, r := range ranges {
		if code >= r.lo && code <= r.hi {
			return true
		}
	}
	return false
}

type statusRange struct{ lo, hi int }

// parseExpectStatus reads a comma-separated list whose items are a status
// ("200"), an inclusive range ("200-399") or a class ("2xx"). Spaces around
// items are allowed.
func parseExpectStatus(s string) ([]statusRange, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("no status given")
	}
	var out []statusRange
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		r, err := parseStatusItem(item)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func parseStatusItem(item string) (statusRange, error) {
	if item == "" {
		return statusRange{}, fmt.Errorf("empty item (want a comma-separated list like \"200,204\")")
	}
	if len(item) == 3 && item[0] >= '1' && item[0] <= '5' && strings.EqualFold(item[1:], "xx") {
		c := int(item[0]-'0') * 100
		return statusRange{c, c + 99}, nil
	}
	if lo, hi, isRange := strings.Cut(item, "-"); isRange {
		l, err := parseStatus(strings.TrimSpace(lo), item)
		if err != nil {
			return statusRange{}, err
		}
		h, err := parseStatus(strings.TrimSpace(hi), item)
		if err != nil {
			return statusRange{}, err
		}
		if l > h {
			return statusRange{}, fmt.Errorf("range %q ends before it starts", item)
		}
		return statusRange{l, h}, nil
	}
	c, err := parseStatus(item, item)
	return statusRange{c, c}, err
}

func parseStatus(s, item string) (int, error) {
	bad := fmt.Errorf("%q is not a status (200), a range (200-399) or a class (2xx)", item)
	if len(s) != 3 {
		return 0, bad
	}
	for i := 0; i < 3; i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, bad
		}
	}
	c, _ := strconv.Atoi(s)
	if c < 100 || c > 599 {
		return 0, fmt.Errorf("status %d is outside 100..599", c)
	}
	return c, nil
}

// validCheckPath accepts an absolute request path, with an optional query,
// and nothing that would break the request line.
func validCheckPath(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] <= ' ' || p[i] == 0x7f {
			return false
		}
	}
	return true
}

// healthCheck checks h, the check of the table at path p. For a service's
// check, global is the global one: a value equal to the global one is not
// reported again (it was, under health_check).
func (v *validator) healthCheck(p string, fallback int, h, global *HealthCheck) {
	line := v.lines.line(p, fallback)
	all := global == nil
	g := global
	if all {
		g = &HealthCheck{}
	}
	if all || h.Type != g.Type {
		checkEnum(v, p+".type", line, h.Type, checkTypes)
	}
	if (all || h.Path != g.Path) && !validCheckPath(h.Path) {
		v.errorf(p+".path", line, "must start with '/' and have no spaces or control characters, got %q", h.Path)
	}
	if all || h.ExpectStatus != g.ExpectStatus {
		if _, err := parseExpectStatus(h.ExpectStatus); err != nil {
			v.errorf(p+".expect_status", line, "invalid value %q: %v", h.ExpectStatus, err)
		}
	}
	durationsOK := true
	for _, d := range []struct {
		key       string
		val, prev time.Duration
	}{{"interval", h.Interval, g.Interval}, {"timeout", h.Timeout, g.Timeout}} {
		if msg := durationRange(d.val, MinDuration, MaxCheckDuration); msg != "" {
			durationsOK = false
			if all || d.val != d.prev {
				v.errorf(v.durationKey(p, d.key), line, "%s, got %s", msg, fmtDuration(d.val))
			}
		}
	}
	if durationsOK && h.Timeout > h.Interval && (all || h.Timeout != g.Timeout || h.Interval != g.Interval) {
		// Blame the key this table wrote: timeout if it did, else interval.
		key, inherited := v.durationKey(p, "timeout"), ""
		if _, ok := v.lines[v.name(key)]; !ok && !all {
			if ik := v.durationKey(p, "interval"); v.lines[v.name(ik)] > 0 {
				key, inherited = ik, " (the timeout comes from [health_check])"
			}
		}
		v.errorf(key, line, "timeout %s is longer than interval %s%s: a check must end before the next one starts",
			fmtDuration(h.Timeout), fmtDuration(h.Interval), inherited)
	}
	for _, t := range []struct {
		key       string
		val, prev int
	}{{"unhealthy_threshold", h.UnhealthyThreshold, g.UnhealthyThreshold}, {"healthy_threshold", h.HealthyThreshold, g.HealthyThreshold}} {
		if (all || t.val != t.prev) && (t.val < 1 || t.val > MaxCheckThreshold) {
			v.errorf(p+"."+t.key, line, "must be 1..%d, got %d", MaxCheckThreshold, t.val)
		}
	}
	if all || h.InitialState != g.InitialState {
		checkEnum(v, p+".initial_state", line, h.InitialState, initStates)
	}
}

// durationKey is the path of the duration key name under p as written:
// name_secs if only that form is in the file, else name.
func (v *validator) durationKey(p, name string) string {
	key := p + "." + name
	if _, ok := v.lines[v.name(key)]; !ok {
		if _, ok := v.lines[v.name(key+"_secs")]; ok {
			return key + "_secs"
		}
	}
	return key
}

// checkViaVIP reports check_via_vip = true where it cannot work: on a
// service that is not L4 with dsr forwarding (the check is sent as the dsr
// datapath sends packets), and on a VIP that xlb itself puts on this host's
// lo (add_vip), whose checks would never leave the host. The error names the
// key as written: the service's own, else the global one it inherits.
func (v *validator) checkViaVIP(c *Config, i int) {
	s := &c.Services[i]
	if !s.HealthCheck.CheckViaVIP {
		return
	}
	p := indexPath("service", i)
	key, who := p+".health_check.check_via_vip", "this service"
	if _, own := v.lines[v.name(key)]; !own {
		if _, global := v.lines["health_check.check_via_vip"]; global {
			key, who = "health_check.check_via_vip", v.where(c, i, true)
		}
	}
	line := v.lines.line(v.name(p+".health_check"), s.Line)
	const only = `applies to l4 services with forwarding = "dsr" only`
	switch {
	case s.Mode == ModeL7:
		v.errorf(key, line, "%s, and %s is l7%s", only, who, inheritHint(who))
	case s.Mode == ModeL4 && s.Forwarding != ForwardDSR && slices.Contains(forwardings, s.Forwarding):
		v.errorf(key, line, "%s, and %s forwards by %q%s", only, who, s.Forwarding, inheritHint(who))
	case s.Mode == ModeL4:
		for j := range c.Services {
			if o := &c.Services[j]; o.Mode == ModeL7 && o.AddVIP && o.VIP == s.VIP {
				v.errorf(key, line, "the vip %s of %s is also on this host's lo (%s has add_vip = true): checks through it would never leave the host",
					s.VIP, who, v.where(c, j, true))
				return
			}
		}
	}
}

// inheritHint says how to keep a global check_via_vip from a service.
func inheritHint(who string) string {
	if who == "this service" {
		return ""
	}
	return ": set check_via_vip = false in its [service.health_check], or set the key per service"
}

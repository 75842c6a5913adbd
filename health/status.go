package health

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// StatusSet is a set of HTTP status codes in canonical form, as
// ParseStatusSet returns it: sorted, merged ranges separated by commas, a
// whole class written "2xx" ("2xx", "200,204", "200-399", "2xx,301"). Being a
// string it keeps Spec comparable. The zero value stands for DefaultStatusSet.
type StatusSet string

// DefaultStatusSet is any 2xx.
const DefaultStatusSet StatusSet = "2xx"

// ParseStatusSet reads a comma-separated list of status codes ("200"),
// classes ("2xx", "2XX") and inclusive ranges ("200-399"), codes between 100
// and 599, and returns it in canonical form: "2xx,3xx" and "200-399" give
// "200-399", "204, 200" gives "200,204". The error matches ErrBadStatusSet
// and ErrInvalidSpec.
func ParseStatusSet(s string) (StatusSet, error) {
	rs, err := parseStatusRanges(s)
	if err != nil {
		return "", err
	}
	return formatStatusRanges(rs), nil
}

// Contains reports whether code is in the set. An invalid set contains
// nothing.
func (s StatusSet) Contains(code int) bool {
	rs, err := s.ranges()
	return err == nil && statusRanges(rs).contains(code)
}

// String is the set as written.
func (s StatusSet) String() string {
	if s == "" {
		return string(DefaultStatusSet)
	}
	return string(s)
}

func (s StatusSet) ranges() (statusRanges, error) {
	if s == "" {
		s = DefaultStatusSet
	}
	return parseStatusRanges(string(s))
}

type statusRange struct{ lo, hi int }

type statusRanges []statusRange

func (rs statusRanges) contains(code int) bool {
	for _, r := range rs {
		if r.lo <= code && code <= r.hi {
			return true
		}
	}
	return false
}

func parseStatusRanges(s string) (statusRanges, error) {
	fail := func(format string, args ...any) (statusRanges, error) {
		return nil, fmt.Errorf("%w %q: %s", ErrBadStatusSet, s, fmt.Sprintf(format, args...))
	}
	if strings.TrimSpace(s) == "" {
		return fail("empty")
	}
	var rs statusRanges
	for part := range strings.SplitSeq(s, ",") {
		p := strings.TrimSpace(part)
		if p == "" {
			return fail("empty element")
		}
		if a, b, ok := strings.Cut(p, "-"); ok {
			lo, err := statusCode(strings.TrimSpace(a))
			if err != nil {
				return fail("range %q: %v", p, err)
			}
			hi, err := statusCode(strings.TrimSpace(b))
			if err != nil {
				return fail("range %q: %v", p, err)
			}
			if lo > hi {
				return fail("range %q is backwards", p)
			}
			rs = append(rs, statusRange{lo, hi})
			continue
		}
		if len(p) == 3 && p[0] >= '1' && p[0] <= '5' && strings.EqualFold(p[1:], "xx") {
			lo := int(p[0]-'0') * 100
			rs = append(rs, statusRange{lo, lo + 99})
			continue
		}
		c, err := statusCode(p)
		if err != nil {
			return fail("%q is not a status code (200), class (2xx) or range (200-399)", p)
		}
		rs = append(rs, statusRange{c, c})
	}
	slices.SortFunc(rs, func(a, b statusRange) int { return a.lo - b.lo })
	merged := rs[:1]
	for _, r := range rs[1:] {
		last := &merged[len(merged)-1]
		if r.lo <= last.hi+1 {
			last.hi = max(last.hi, r.hi)
			continue
		}
		merged = append(merged, r)
	}
	return merged, nil
}

func statusCode(s string) (int, error) {
	if len(s) != 3 || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a 3-digit status code", s)
	}
	c, _ := strconv.Atoi(s)
	if c < 100 || c > 599 {
		return 0, fmt.Errorf("status %d is outside 100-599", c)
	}
	return c, nil
}

func formatStatusRanges(rs statusRanges) StatusSet {
	parts := make([]string, len(rs))
	for i, r := range rs {
		switch {
		case r.lo == r.hi:
			parts[i] = strconv.Itoa(r.lo)
		case r.lo%100 == 0 && r.hi == r.lo+99:
			parts[i] = strconv.Itoa(r.lo/100) + "xx"
		default:
			parts[i] = strconv.Itoa(r.lo) + "-" + strconv.Itoa(r.hi)
		}
	}
	return StatusSet(strings.Join(parts, ","))
}

var _ fmt.Stringer = StatusSet("")

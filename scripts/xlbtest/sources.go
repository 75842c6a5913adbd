package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// maxSources bounds an expanded source list, so a typo such as 2001:db8::/64 cannot
// eat the machine's memory.
const maxSources = 1 << 16

var (
	// ErrBadSource reports an item of a source list that cannot be parsed.
	ErrBadSource = errors.New("bad source")
	// ErrTooManySources reports a source list that expands beyond maxSources.
	ErrTooManySources = errors.New("too many source addresses")
)

// parseSources expands a source list (see doc.go) into addresses, in order.
func parseSources(spec string) ([]netip.Addr, error) {
	var out []netip.Addr
	if err := appendSources(&out, spec, true); err != nil {
		return nil, err
	}
	return out, nil
}

// appendSources appends the expansion of the comma-separated list spec to out.
// Files may list addresses, ranges and prefixes but not other files.
func appendSources(out *[]netip.Addr, spec string, allowFiles bool) error {
	for item := range strings.SplitSeq(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		var err error
		switch {
		case strings.HasPrefix(item, "file:"):
			if !allowFiles {
				return fmt.Errorf("%w: %q: files cannot include files", ErrBadSource, item)
			}
			err = appendFile(out, strings.TrimPrefix(item, "file:"))
		case strings.HasPrefix(item, "range:"):
			err = appendRange(out, strings.TrimPrefix(item, "range:"))
		case strings.Contains(item, "/"):
			err = appendPrefix(out, item)
		default:
			var a netip.Addr
			a, err = netip.ParseAddr(item)
			if err != nil {
				err = fmt.Errorf("%w: %q: %w", ErrBadSource, item, err)
				break
			}
			err = appendAddr(out, a.Unmap())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func appendAddr(out *[]netip.Addr, a netip.Addr) error {
	if len(*out) >= maxSources {
		return fmt.Errorf("%w: more than %d", ErrTooManySources, maxSources)
	}
	*out = append(*out, a)
	return nil
}

// appendRange expands "FIRST-LAST", both ends included.
func appendRange(out *[]netip.Addr, r string) error {
	// IPv6 addresses contain no '-', so the only '-' separates the two ends.
	lo, hi, ok := strings.Cut(r, "-")
	if !ok {
		return fmt.Errorf("%w: range %q: want FIRST-LAST", ErrBadSource, r)
	}
	first, err := netip.ParseAddr(strings.TrimSpace(lo))
	if err != nil {
		return fmt.Errorf("%w: range %q: %w", ErrBadSource, r, err)
	}
	last, err := netip.ParseAddr(strings.TrimSpace(hi))
	if err != nil {
		return fmt.Errorf("%w: range %q: %w", ErrBadSource, r, err)
	}
	first, last = first.Unmap(), last.Unmap()
	if first.Is4() != last.Is4() {
		return fmt.Errorf("%w: range %q: ends in different address families", ErrBadSource, r)
	}
	if first.Zone() != "" || last.Zone() != "" {
		return fmt.Errorf("%w: range %q: zones are not supported", ErrBadSource, r)
	}
	if last.Less(first) {
		return fmt.Errorf("%w: range %q: last address before first", ErrBadSource, r)
	}
	for a := first; ; a = a.Next() {
		if err := appendAddr(out, a); err != nil {
			return err
		}
		if a == last {
			return nil
		}
	}
}

// appendPrefix expands every address of a prefix.
func appendPrefix(out *[]netip.Addr, s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("%w: %q: %w", ErrBadSource, s, err)
	}
	p = p.Masked()
	if hostBits := p.Addr().BitLen() - p.Bits(); hostBits > 16 {
		return fmt.Errorf("%w: prefix %s has 2^%d addresses (max %d)", ErrTooManySources, p, hostBits, maxSources)
	}
	for a := p.Addr(); a.IsValid() && p.Contains(a); a = a.Next() {
		if err := appendAddr(out, a); err != nil {
			return err
		}
	}
	return nil
}

// appendFile expands the items listed in a file, one or more per line.
func appendFile(out *[]netip.Addr, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadSource, err)
	}
	for n, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		if err := appendSources(out, line, false); err != nil {
			return fmt.Errorf("%s:%d: %w", path, n+1, err)
		}
	}
	return nil
}

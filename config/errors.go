package config

import (
	"errors"
	"sort"
	"strconv"
	"strings"
)

// ErrInvalid is matched (errors.Is) by every error Parse, Load and Validate
// return because of the configuration's content. Load's I/O errors do not
// match it.
var ErrInvalid = errors.New("invalid config")

// Error is one problem in a configuration, located by file, line and field.
type Error struct {
	File  string // as given to Parse; "" for Validate
	Line  int    // 1-based; 0 when unknown
	Field string // path such as service[1].backend[0].address; "" for syntax errors
	Msg   string
}

// Error formats the problem as "FILE:LINE: FIELD: MSG", leaving out the parts
// that are unknown.
func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		b.WriteString(e.File + ":" + strconv.Itoa(e.Line) + ": ")
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		b.WriteString("line " + strconv.Itoa(e.Line) + ": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap makes every Error match ErrInvalid.
func (e *Error) Unwrap() error { return ErrInvalid }

// Errors is every problem found in one configuration, ordered by line.
// Parse, Load and Validate return either nil or a non-empty Errors.
type Errors []*Error

// Error puts one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Is reports whether target is ErrInvalid.
func (es Errors) Is(target error) bool { return target == ErrInvalid }

// Unwrap exposes the individual errors to errors.As.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// collector gathers errors from decoding and validation. It keeps only the
// first error per field, so that a value rejected while decoding is not
// reported again by validation (for example as "required").
type collector struct {
	file   string
	errs   Errors
	fields map[string]bool
}

func newCollector(file string) *collector {
	return &collector{file: file, fields: map[string]bool{}}
}

func (c *collector) add(line int, field, msg string) {
	if field != "" {
		if c.fields[field] {
			return
		}
		c.fields[field] = true
	}
	c.errs = append(c.errs, &Error{File: c.file, Line: line, Field: field, Msg: msg})
}

// err returns the collected errors sorted by line, or nil.
func (c *collector) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	sort.SliceStable(c.errs, func(i, j int) bool { return c.errs[i].Line < c.errs[j].Line })
	return c.errs
}

package health

import (
	"errors"
	"strings"
	"testing"
)

func TestParseStatusSet(t *testing.T) {
	tests := []struct {
		in      string
		want    StatusSet
		wantErr string // substring of the error; "" for none
	}{
		{in: "2xx", want: "2xx"},
		{in: "2XX", want: "2xx"},
		{in: "200", want: "200"},
		{in: "200,204", want: "200,204"},
		{in: " 204 , 200 ", want: "200,204"},
		{in: "200,200", want: "200"},
		{in: "200-399", want: "200-399"},
		{in: "200 - 399", want: "200-399"},
		{in: "2xx,3xx", want: "200-399"},
		{in: "200-299", want: "2xx"},
		{in: "2xx,301", want: "2xx,301"},
		{in: "301,2xx", want: "2xx,301"},
		{in: "2xx,250-310", want: "200-310"},
		{in: "200-204,205", want: "200-205"},
		{in: "100-599", want: "100-599"},
		{in: "5xx", want: "5xx"},

		{in: "", wantErr: "empty"},
		{in: "  ", wantErr: "empty"},
		{in: "abc", wantErr: `"abc" is not a status code (200), class (2xx) or range (200-399)`},
		{in: "200,,204", wantErr: "empty element"},
		{in: "200,", wantErr: "empty element"},
		{in: "99", wantErr: "not a status code"},
		{in: "0200", wantErr: "not a status code"},
		{in: "+20", wantErr: "not a status code"},
		{in: "600", wantErr: "not a status code"},
		{in: "2x", wantErr: "not a status code"},
		{in: "6xx", wantErr: "not a status code"},
		{in: "0xx", wantErr: "not a status code"},
		{in: "2xy", wantErr: "not a status code"},
		{in: "300-200", wantErr: "backwards"},
		{in: "200-", wantErr: `range "200-"`},
		{in: "-200", wantErr: `range "-200"`},
		{in: "2xx-3xx", wantErr: `range "2xx-3xx"`},
		{in: "200-700", wantErr: "status 700 is outside 100-599"},
		{in: "200-299-399", wantErr: `range "200-299-399"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseStatusSet(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseStatusSet(%q) = %q, want an error", tt.in, got)
				}
				if !errors.Is(err, ErrBadStatusSet) || !errors.Is(err, ErrInvalidSpec) {
					t.Errorf("error %v does not match ErrBadStatusSet and ErrInvalidSpec", err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseStatusSet(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseStatusSet(%q) = %q, want %q", tt.in, got, tt.want)
			}
			// Canonical form is a fixed point.
			if again, err := ParseStatusSet(string(got)); err != nil || again != got {
				t.Errorf("ParseStatusSet(%q) = %q, %v; want it unchanged", got, again, err)
			}
		})
	}
}

func TestStatusSetContains(t *testing.T) {
	tests := []struct {
		set  StatusSet
		in   []int
		out  []int
		name string
	}{
		{name: "default", set: "", in: []int{200, 204, 299}, out: []int{199, 300, 301, 503}},
		{name: "2xx", set: "2xx", in: []int{200, 299}, out: []int{199, 300}},
		{name: "list", set: "200,204", in: []int{200, 204}, out: []int{201, 203, 205}},
		{name: "range", set: "200-399", in: []int{200, 301, 399}, out: []int{400, 199}},
		{name: "mixed", set: "2xx,301", in: []int{200, 301}, out: []int{302, 300}},
		{name: "invalid", set: "garbage", out: []int{200, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, c := range tt.in {
				if !tt.set.Contains(c) {
					t.Errorf("%q does not contain %d", tt.set, c)
				}
			}
			for _, c := range tt.out {
				if tt.set.Contains(c) {
					t.Errorf("%q contains %d", tt.set, c)
				}
			}
		})
	}
}

package health

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestSpecNormalize(t *testing.T) {
	addr := netip.MustParseAddrPort("127.0.0.1:8080")
	tests := []struct {
		name    string
		in      Spec
		want    Spec
		wantErr []string // substrings of the error
	}{
		{
			name: "http defaults",
			in:   Spec{Kind: KindHTTP, Target: addr},
			want: Spec{Kind: KindHTTP, Target: addr, Path: "/", ExpectStatus: "2xx",
				Interval: 5 * time.Second, Timeout: 2 * time.Second,
				HealthyThreshold: 2, UnhealthyThreshold: 3, Jitter: 0.1,
				ChecksPerConnection: DefaultChecksPerConnection},
		},
		{
			name: "http explicit, status canonicalized",
			in: Spec{Kind: KindHTTPS, Target: addr, Path: "/healthz?full=1", Host: "api.example:8443",
				ExpectStatus: "204, 200", Interval: time.Second, Timeout: 500 * time.Millisecond,
				HealthyThreshold: 1, UnhealthyThreshold: 5, Jitter: 0.25, ChecksPerConnection: 1},
			want: Spec{Kind: KindHTTPS, Target: addr, Path: "/healthz?full=1", Host: "api.example:8443",
				ExpectStatus: "200,204", Interval: time.Second, Timeout: 500 * time.Millisecond,
				HealthyThreshold: 1, UnhealthyThreshold: 5, Jitter: 0.25, ChecksPerConnection: 1},
		},
		{
			name: "tcp clears http fields, negative jitter is none",
			in:   Spec{Kind: KindTCP, Target: addr, Path: "/x", Host: "h", ExpectStatus: "200", Jitter: -0.3, ChecksPerConnection: 7},
			want: Spec{Kind: KindTCP, Target: addr,
				Interval: 5 * time.Second, Timeout: 2 * time.Second,
				HealthyThreshold: 2, UnhealthyThreshold: 3, Jitter: NoJitter},
		},
		{name: "no kind", in: Spec{Target: addr}, wantErr: []string{"kind is required"}},
		{name: "bad kind", in: Spec{Kind: "udp", Target: addr}, wantErr: []string{`unknown kind "udp"`}},
		{name: "no target", in: Spec{Kind: KindTCP}, wantErr: []string{"target address is required"}},
		{name: "no port", in: Spec{Kind: KindTCP, Target: netip.AddrPortFrom(addr.Addr(), 0)}, wantErr: []string{"port is required"}},
		{
			name: "everything wrong at once",
			in: Spec{Kind: KindHTTP, Target: addr, Path: "health", Host: "a/b", ExpectStatus: "20x",
				Interval: -time.Second, Timeout: -1, HealthyThreshold: -1, UnhealthyThreshold: -2, Jitter: 1,
				ChecksPerConnection: -1},
			wantErr: []string{`path "health": must start with /`, `host "a/b"`, "expect_status", "interval -1s",
				"timeout -1ns", "healthy_threshold -1", "unhealthy_threshold -2", "jitter 1 must be below 1",
				"checks per connection -1"},
		},
		{name: "path with space", in: Spec{Kind: KindHTTP, Target: addr, Path: "/a b"}, wantErr: []string{"must not contain spaces"}},
		{
			name: "via a backend, mapped address unmapped",
			in:   Spec{Kind: KindTCP, Target: addr, Via: netip.MustParseAddr("::ffff:127.0.0.2"), Mark: 0x786c0001},
			want: Spec{Kind: KindTCP, Target: addr, Via: netip.MustParseAddr("127.0.0.2"), Mark: 0x786c0001,
				Interval: 5 * time.Second, Timeout: 2 * time.Second,
				HealthyThreshold: 2, UnhealthyThreshold: 3, Jitter: 0.1},
		},
		{name: "via without mark", in: Spec{Kind: KindTCP, Target: addr, Via: netip.MustParseAddr("127.0.0.2")},
			wantErr: []string{"via 127.0.0.2 needs a mark"}},
		{name: "mark without via", in: Spec{Kind: KindTCP, Target: addr, Mark: 7}, wantErr: []string{"mark 0x7 without via"}},
		{name: "via of another family", in: Spec{Kind: KindTCP, Target: addr, Via: netip.MustParseAddr("2001:db8::1"), Mark: 7},
			wantErr: []string{"differ in family"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.Normalize()
			if len(tt.wantErr) > 0 {
				if !errors.Is(err, ErrInvalidSpec) {
					t.Fatalf("Normalize() = %+v, %v; want an ErrInvalidSpec", got, err)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("Normalize() =\n%+v\nwant\n%+v", got, tt.want)
			}
			if again, err := got.Normalize(); err != nil || again != got {
				t.Errorf("Normalize is not idempotent: %+v, %v", again, err)
			}
		})
	}
}

func TestSpecString(t *testing.T) {
	addr := netip.MustParseAddrPort("198.19.0.10:80")
	via := netip.MustParseAddr("198.18.0.12")
	for _, tt := range []struct {
		in   Spec
		want string
	}{
		{Spec{Kind: KindTCP, Target: addr}, "tcp 198.19.0.10:80"},
		{Spec{Kind: KindHTTP, Target: addr, Path: "/health"}, "http 198.19.0.10:80/health"},
		{Spec{Kind: KindTCP, Target: addr, Via: via, Mark: 1}, "tcp 198.19.0.10:80 via 198.18.0.12"},
		{Spec{Kind: KindHTTP, Target: addr, Path: "/", Via: via, Mark: 1}, "http 198.19.0.10:80/ via 198.18.0.12"},
	} {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestParseState(t *testing.T) {
	tests := []struct {
		in      string
		want    State
		wantErr bool
	}{
		{in: "healthy", want: Healthy},
		{in: "UP", want: Healthy},
		{in: "unhealthy", want: Unhealthy},
		{in: " down ", want: Unhealthy},
		{in: "", wantErr: true},
		{in: "maybe", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseState(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseState(%q) = %v, %v", tt.in, got, err)
		}
	}
	if Healthy.String() != "healthy" || Unhealthy.String() != "unhealthy" || State(7).String() != "State(7)" {
		t.Errorf("String: %q %q %q", Healthy, Unhealthy, State(7))
	}
	var s State
	if err := s.UnmarshalText([]byte("unhealthy")); err != nil || s != Unhealthy {
		t.Errorf("UnmarshalText: %v %v", s, err)
	}
	if b, err := Unhealthy.MarshalText(); err != nil || string(b) != "unhealthy" {
		t.Errorf("MarshalText: %q %v", b, err)
	}
}

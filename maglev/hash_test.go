package maglev

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// Reference vectors of murmur3_x86_32 (SMHasher's MurmurHash3.cpp), also
// checked against an independent C implementation (Debian's libmurmurhash).
func TestMurmur3(t *testing.T) {
	tests := []struct {
		in   string
		seed uint32
		want uint32
	}{
		{"", 0, 0},
		{"", 1, 0x514e28b7},
		{"", 0xffffffff, 0x81f16f39},
		{"\x00", 0, 0x514e28b7},
		{"\x00\x00", 0, 0x30f4c306},
		{"\x00\x00\x00", 0, 0x85f0b427},
		{"\x00\x00\x00\x00", 0, 0x2362f9de},
		{"\xff\xff\xff\xff", 0, 0x76293b50},
		{"\x21", 0, 0x72661cf4},
		{"\x21\x43", 0, 0xa0f7b07a},
		{"\x21\x43\x65", 0, 0x7e4a8634},
		{"\x21\x43\x65\x87", 0, 0xf55b516b},
		{"\x21\x43\x65\x87", 0x5082edee, 0x2362f9de},
		{"a", 0x9747b28c, 0x7fa09ea6},
		{"ab", 0x9747b28c, 0x74875592},
		{"abc", 0x9747b28c, 0xc84a62dd},
		{"abcd", 0x9747b28c, 0xf0478627},
		{"aaaa", 0x9747b28c, 0x5a97808a},
		{"Hello, world!", 0x9747b28c, 0x24884cba},
		{"The quick brown fox jumps over the lazy dog", 0x9747b28c, 0x2fa826cd},
		{"hello", 0, 0x248bfa47},
		{"hello, world", 0, 0x149bbb7f},
		{"The quick brown fox jumps over the lazy dog", 0, 0x2e4ff723},
	}
	for _, tt := range tests {
		if got := Murmur3([]byte(tt.in), tt.seed); got != tt.want {
			t.Errorf("Murmur3(%q, %#x) = %#08x, want %#08x", tt.in, tt.seed, got, tt.want)
		}
		if got := murmur3(tt.in, tt.seed); got != tt.want {
			t.Errorf("murmur3[string](%q, %#x) = %#08x, want %#08x", tt.in, tt.seed, got, tt.want)
		}
	}
}

func TestSourceHashInput(t *testing.T) {
	tests := []struct {
		name string
		addr string
		want []byte
	}{
		{"ipv4", "198.18.0.100", []byte{198, 18, 0, 100}},
		{"ipv4-mapped is hashed as ipv4", "::ffff:198.18.0.100", []byte{198, 18, 0, 100}},
		{"ipv6", "2001:db8:18::100", []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00}},
		{"zone is ignored", "fe80::1%eth0", []byte{0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SourceHash(netip.MustParseAddr(tt.addr))
			if want := Murmur3(tt.want, HashSeed); got != want {
				t.Errorf("SourceHash(%s) = %#08x, want murmur3(% x) = %#08x", tt.addr, got, tt.want, want)
			}
		})
	}
	if got, want := SourceHash(netip.Addr{}), Murmur3(nil, HashSeed); got != want {
		t.Errorf("SourceHash(zero Addr) = %#08x, want hash of empty input %#08x", got, want)
	}
}

func TestFlowHashInput(t *testing.T) {
	tests := []struct {
		name         string
		src, dst     string
		sport, dport uint16
		proto        uint8
		want         []byte
	}{
		{
			"ipv4 tcp", "198.18.0.100", "198.19.0.10", 0x1234, 80, 6,
			[]byte{198, 18, 0, 100, 198, 19, 0, 10, 0x12, 0x34, 0, 80, 6, 0, 0, 0},
		},
		{
			"ipv4-mapped udp", "::ffff:198.18.0.100", "::ffff:198.19.0.10", 53, 0xabcd, 17,
			[]byte{198, 18, 0, 100, 198, 19, 0, 10, 0, 53, 0xab, 0xcd, 17, 0, 0, 0},
		},
		{
			"ipv6 tcp", "2001:db8:18::100", "2001:db8:19::10", 40000, 443, 6,
			[]byte{
				0x20, 0x01, 0x0d, 0xb8, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
				0x20, 0x01, 0x0d, 0xb8, 0, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
				0x9c, 0x40, 0x01, 0xbb, 6, 0, 0, 0,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := FlowHash(netip.MustParseAddr(tt.src), netip.MustParseAddr(tt.dst), tt.sport, tt.dport, tt.proto)
			if want := Murmur3(tt.want, HashSeed); got != want {
				t.Errorf("FlowHash = %#08x, want murmur3(% x) = %#08x", got, tt.want, want)
			}
		})
	}
}

func TestHashAllocs(t *testing.T) {
	src, dst := netip.MustParseAddr("2001:db8:18::100"), netip.MustParseAddr("2001:db8:19::10")
	if n := testing.AllocsPerRun(100, func() { SourceHash(src) }); n != 0 {
		t.Errorf("SourceHash allocates %v times, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { FlowHash(src, dst, 1, 2, 6) }); n != 0 {
		t.Errorf("FlowHash allocates %v times, want 0", n)
	}
}

// hashVector is one entry of testdata/hash_vectors.json, the vectors the C
// datapath tests share. For kind "ip" only src enters the hash; the other
// fields are those of a plausible packet so a C test can feed whole packets.
type hashVector struct {
	Kind  string `json:"kind"` // "ip" (SourceHash) or "flow" (FlowHash)
	Src   string `json:"src"`
	Dst   string `json:"dst"`
	Sport uint16 `json:"sport"`
	Dport uint16 `json:"dport"`
	Proto uint8  `json:"proto"`
	Hash  uint32 `json:"hash"`
}

func (v hashVector) compute() (uint32, error) {
	src, err := netip.ParseAddr(v.Src)
	if err != nil {
		return 0, err
	}
	dst, err := netip.ParseAddr(v.Dst)
	if err != nil {
		return 0, err
	}
	switch v.Kind {
	case "ip":
		return SourceHash(src), nil
	case "flow":
		return FlowHash(src, dst, v.Sport, v.Dport, v.Proto), nil
	}
	return 0, fmt.Errorf("unknown kind %q", v.Kind)
}

var hashVectorInputs = []hashVector{
	{Kind: "ip", Src: "198.18.0.100", Dst: "198.19.0.10", Sport: 40000, Dport: 80, Proto: 6},
	{Kind: "ip", Src: "198.18.0.101", Dst: "198.19.0.10", Sport: 40001, Dport: 80, Proto: 6},
	{Kind: "ip", Src: "198.18.255.254", Dst: "198.19.0.10", Sport: 5353, Dport: 53, Proto: 17},
	{Kind: "ip", Src: "2001:db8:18::100", Dst: "2001:db8:19::10", Sport: 40000, Dport: 80, Proto: 6},
	{Kind: "ip", Src: "2001:db8:18::101", Dst: "2001:db8:19::10", Sport: 40001, Dport: 80, Proto: 6},
	{Kind: "ip", Src: "2001:db8:18:ffff:ffff:ffff:ffff:fffe", Dst: "2001:db8:19::10", Sport: 5353, Dport: 53, Proto: 17},
	{Kind: "flow", Src: "198.18.0.100", Dst: "198.19.0.10", Sport: 40000, Dport: 80, Proto: 6},
	{Kind: "flow", Src: "198.18.0.100", Dst: "198.19.0.10", Sport: 40001, Dport: 80, Proto: 6},
	{Kind: "flow", Src: "198.18.0.100", Dst: "198.19.0.10", Sport: 40000, Dport: 80, Proto: 17},
	{Kind: "flow", Src: "2001:db8:18::100", Dst: "2001:db8:19::10", Sport: 40000, Dport: 443, Proto: 6},
	{Kind: "flow", Src: "2001:db8:18::100", Dst: "2001:db8:19::10", Sport: 65535, Dport: 443, Proto: 6},
	{Kind: "flow", Src: "2001:db8:18::101", Dst: "2001:db8:19::10", Sport: 1, Dport: 53, Proto: 17},
}

// renderHashVectors writes one JSON object per line, easy to read from C.
func renderHashVectors(vs []hashVector) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("[\n")
	for i, v := range vs {
		line, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		buf.Write(line)
		if i < len(vs)-1 {
			buf.WriteByte(',')
		}
		buf.WriteByte('\n')
	}
	buf.WriteString("]\n")
	return buf.Bytes(), nil
}

func TestHashVectorsGolden(t *testing.T) {
	path := filepath.Join("testdata", "hash_vectors.json")
	vs := slices.Clone(hashVectorInputs)
	for i := range vs {
		h, err := vs[i].compute()
		if err != nil {
			t.Fatalf("vector %d: %v", i, err)
		}
		vs[i].Hash = h
	}
	want, err := renderHashVectors(vs)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./maglev -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the hash vectors the code computes now; the hash is a contract with bpf/: "+
			"if the change is intended, run go test ./maglev -update\ngot:\n%s\nwant:\n%s", path, got, want)
	}

	// The file on its own: every hash recomputes from its fields.
	var parsed []hashVector
	if err := json.Unmarshal(got, &parsed); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for i, v := range parsed {
		h, err := v.compute()
		if err != nil {
			t.Errorf("%s[%d]: %v", path, i, err)
			continue
		}
		if h != v.Hash {
			t.Errorf("%s[%d] %+v: computed %d", path, i, v, h)
		}
	}
}

func BenchmarkFlowHash(b *testing.B) {
	src, dst := netip.MustParseAddr("198.18.0.100"), netip.MustParseAddr("198.19.0.10")
	for i := 0; b.Loop(); i++ {
		FlowHash(src, dst, uint16(i), 80, 6)
	}
}

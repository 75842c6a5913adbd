package maglev

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// HashSeed is the murmur3 seed of "xlb hash v1" ("xlb1" in ASCII). The C
// datapath uses the same constant; changing it changes every table lookup.
const HashSeed uint32 = 0x786c6231

const (
	murmurC1 = 0xcc9e2d51
	murmurC2 = 0x1b873593
)

// Murmur3 returns murmur3_x86_32 of b with the given seed, 4-byte blocks read
// little-endian as the reference implementation does on x86.
func Murmur3(b []byte, seed uint32) uint32 {
	return murmur3(b, seed)
}

// murmur3 is generic so backend names (strings) hash without a copy.
func murmur3[T string | []byte](b T, seed uint32) uint32 {
	h := seed
	n := len(b)
	i := 0
	for ; i+4 <= n; i += 4 {
		k := uint32(b[i]) | uint32(b[i+1])<<8 | uint32(b[i+2])<<16 | uint32(b[i+3])<<24
		k *= murmurC1
		k = bits.RotateLeft32(k, 15)
		k *= murmurC2
		h ^= k
		h = bits.RotateLeft32(h, 13)
		h = h*5 + 0xe6546b64
	}
	var k uint32
	switch n - i {
	case 3:
		k ^= uint32(b[i+2]) << 16
		fallthrough
	case 2:
		k ^= uint32(b[i+1]) << 8
		fallthrough
	case 1:
		k ^= uint32(b[i])
		k *= murmurC1
		k = bits.RotateLeft32(k, 15)
		k *= murmurC2
		h ^= k
	}
	h ^= uint32(n)
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// appendAddr appends the address as it appears on the wire: 4 bytes for IPv4
// (including IPv4-mapped IPv6, which the datapath only ever sees as IPv4),
// 16 for IPv6, nothing for the zero Addr. Zones are not part of a packet and
// are ignored.
func appendAddr(b []byte, a netip.Addr) []byte {
	a = a.Unmap()
	switch {
	case a.Is4():
		v := a.As4()
		return append(b, v[:]...)
	case a.Is6():
		v := a.As16()
		return append(b, v[:]...)
	}
	return b
}

// SourceHash is the ip_hash of a client: murmur3 of its source address.
func SourceHash(src netip.Addr) uint32 {
	var buf [16]byte
	return murmur3(appendAddr(buf[:0], src), HashSeed)
}

// FlowHash is the flow_hash of a packet: murmur3 of src, dst, sport, dport
// (network order) and proto padded with three zero bytes, so the input is a
// multiple of 4 bytes long (16 for IPv4, 40 for IPv6) and the C side hashes
// whole words only.
func FlowHash(src, dst netip.Addr, sport, dport uint16, proto uint8) uint32 {
	var buf [40]byte
	b := appendAddr(buf[:0], src)
	b = appendAddr(b, dst)
	b = binary.BigEndian.AppendUint16(b, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	b = append(b, proto, 0, 0, 0)
	return murmur3(b, HashSeed)
}

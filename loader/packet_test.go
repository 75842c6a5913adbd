package loader

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// pkt describes a test packet; build() renders it to wire bytes with valid
// IPv4 header checksums (the datapath never touches checksums, but real
// packets carry them, so the fixtures do too).
type pkt struct {
	srcMAC, dstMAC net.HardwareAddr
	vlan           uint16 // 0: untagged
	src, dst       netip.Addr
	proto          uint8
	sport, dport   uint16
	ipOptions      int    // 4-byte words of IPv4 options
	fragOffset     uint16 // in 8-byte units
	moreFragments  bool
	df             bool  // IPv4 don't fragment
	tos            uint8 // IPv4 TOS, IPv6 traffic class: DSCP and ECN
	tcpFlags       uint8
	payload        int
	etherType      uint16 // overrides the L3 type (e.g. ARP)
	proto6Ext      []uint8
	// checksum: a real TCP/UDP checksum (else TCP carries a dummy and UDP
	// none); noUDPChecksum keeps UDP's 0 even then.
	checksum, noUDPChecksum bool
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

var (
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x64}
	lbMAC     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
)

func (p pkt) build() []byte {
	var b []byte
	src, dst := p.srcMAC, p.dstMAC
	if src == nil {
		src = clientMAC
	}
	if dst == nil {
		dst = lbMAC
	}
	b = append(b, dst...)
	b = append(b, src...)
	if p.vlan != 0 {
		b = binary.BigEndian.AppendUint16(b, 0x8100)
		b = binary.BigEndian.AppendUint16(b, p.vlan)
	}
	if p.etherType != 0 {
		b = binary.BigEndian.AppendUint16(b, p.etherType)
		return append(b, make([]byte, 28)...)
	}
	l4 := p.l4()
	if p.src.Is4() {
		b = binary.BigEndian.AppendUint16(b, 0x0800)
		hl := 20 + 4*p.ipOptions
		ip := make([]byte, hl)
		ip[0] = 0x40 | byte(hl/4)
		binary.BigEndian.PutUint16(ip[2:], uint16(hl+len(l4)))
		binary.BigEndian.PutUint16(ip[4:], 0x1234)
		frag := p.fragOffset & 0x1fff
		if p.moreFragments {
			frag |= 0x2000
		}
		if p.df {
			frag |= 0x4000
		}
		ip[1] = p.tos
		binary.BigEndian.PutUint16(ip[6:], frag)
		ip[8] = 64
		ip[9] = p.proto
		s, d := p.src.As4(), p.dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		for i := 20; i < hl; i++ {
			ip[i] = 1 // NOP options
		}
		binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
		p.fillChecksum(l4)
		b = append(b, ip...)
		return append(b, l4...)
	}
	b = binary.BigEndian.AppendUint16(b, 0x86dd)
	var ext []byte
	next := p.proto
	if p.fragOffset != 0 || p.moreFragments {
		fh := make([]byte, 8)
		fh[0] = next
		off := p.fragOffset << 3
		if p.moreFragments {
			off |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], off)
		binary.BigEndian.PutUint32(fh[4:], 0xabcd)
		ext = append(fh, ext...)
		next = 44
	}
	for i := len(p.proto6Ext) - 1; i >= 0; i-- {
		oh := make([]byte, 8)
		oh[0] = next
		ext = append(oh, ext...)
		next = p.proto6Ext[i]
	}
	ip := make([]byte, 40)
	ip[0] = 0x60 | p.tos>>4
	ip[1] = p.tos << 4
	binary.BigEndian.PutUint16(ip[4:], uint16(len(ext)+len(l4)))
	ip[6] = next
	ip[7] = 64
	s, d := p.src.As16(), p.dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	p.fillChecksum(l4)
	b = append(b, ip...)
	b = append(b, ext...)
	return append(b, l4...)
}

// fillChecksum writes l4's real transport checksum when p asks for one.
func (p pkt) fillChecksum(l4 []byte) {
	if !p.checksum || p.fragOffset != 0 || p.moreFragments {
		return
	}
	switch {
	case p.proto == 6:
		binary.BigEndian.PutUint16(l4[16:], 0)
		binary.BigEndian.PutUint16(l4[16:], transportChecksum(p.src, p.dst, p.proto, l4))
	case p.proto == 17 && !p.noUDPChecksum:
		c := transportChecksum(p.src, p.dst, p.proto, l4)
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(l4[6:], c)
	}
}

// transportChecksum is the RFC 1071 checksum of seg (its checksum field
// zero, or included to verify: then 0 means valid) with the pseudo-header
// of src, dst and proto, computed from scratch.
func transportChecksum(src, dst netip.Addr, proto uint8, seg []byte) uint16 {
	var pseudo []byte
	pseudo = append(pseudo, src.AsSlice()...)
	pseudo = append(pseudo, dst.AsSlice()...)
	if src.Is4() {
		pseudo = append(pseudo, 0, proto)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(seg)))
	} else {
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(seg)))
		pseudo = append(pseudo, 0, 0, 0, proto)
	}
	return ipChecksum(append(pseudo, seg...))
}

// l4 is the transport header and payload (or just payload for later fragments).
func (p pkt) l4() []byte {
	payload := make([]byte, p.payload)
	for i := range payload {
		payload[i] = byte(i)
	}
	if p.fragOffset != 0 {
		return payload
	}
	switch p.proto {
	case 6:
		h := make([]byte, 20)
		binary.BigEndian.PutUint16(h[0:], p.sport)
		binary.BigEndian.PutUint16(h[2:], p.dport)
		binary.BigEndian.PutUint32(h[4:], 1000)
		h[12] = 5 << 4
		h[13] = p.tcpFlags
		binary.BigEndian.PutUint16(h[14:], 65535)
		binary.BigEndian.PutUint16(h[16:], 0xbeef) // not a real checksum: nothing checks it
		return append(h, payload...)
	case 17:
		h := make([]byte, 8)
		binary.BigEndian.PutUint16(h[0:], p.sport)
		binary.BigEndian.PutUint16(h[2:], p.dport)
		binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload)))
		return append(h, payload...)
	}
	return payload
}

// l3Offset is where the IP header starts in build()'s output.
func (p pkt) l3Offset() int {
	if p.vlan != 0 {
		return 18
	}
	return 14
}

// setIPLength writes n as b's IP length, b being p's frame or a prefix of it:
// the total length for IPv4 (header checksum updated), the payload length
// plus the 40-byte header for IPv6. It returns b.
func (p pkt) setIPLength(b []byte, n int) []byte {
	ip := b[p.l3Offset():]
	if p.src.Is4() {
		binary.BigEndian.PutUint16(ip[2:], uint16(n))
		hl := 20 + 4*p.ipOptions
		binary.BigEndian.PutUint16(ip[10:], 0)
		binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip[:hl]))
		return b
	}
	binary.BigEndian.PutUint16(ip[4:], uint16(n-40))
	return b
}

// l4Offset is where the transport header starts in build()'s output.
func (p pkt) l4Offset() int {
	off := p.l3Offset()
	if p.src.Is4() {
		return off + 20 + 4*p.ipOptions
	}
	off += 40 + 8*len(p.proto6Ext)
	if p.fragOffset != 0 || p.moreFragments {
		off += 8
	}
	return off
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	if len(h)%2 == 1 {
		sum += uint32(h[len(h)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

package loader

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

// What the NAT fixtures expect of a frame, computed here from the packet
// the test sent and never read back from the program: rewritten fields
// written in, every checksum recomputed from scratch.

// ipEnd is where the IP packet at l3 ends in frame (its header's length).
func ipEnd(frame []byte, l3 int) int {
	ip := frame[l3:]
	if ip[0]>>4 == 4 {
		return l3 + int(binary.BigEndian.Uint16(ip[2:]))
	}
	return l3 + 40 + int(binary.BigEndian.Uint16(ip[4:]))
}

// ipAddrs are the source and destination of the IP header at l3.
func ipAddrs(frame []byte, l3 int) (src, dst netip.Addr) {
	if frame[l3]>>4 == 4 {
		return netip.AddrFrom4([4]byte(frame[l3+12 : l3+16])), netip.AddrFrom4([4]byte(frame[l3+16 : l3+20]))
	}
	return netip.AddrFrom16([16]byte(frame[l3+8 : l3+24])), netip.AddrFrom16([16]byte(frame[l3+24 : l3+40]))
}

// setAddrs writes src and dst into the IP header at l3 (no checksum).
func setAddrs(frame []byte, l3 int, src, dst netip.Addr) {
	if src.Is4() {
		copy(frame[l3+12:], src.AsSlice())
		copy(frame[l3+16:], dst.AsSlice())
		return
	}
	copy(frame[l3+8:], src.AsSlice())
	copy(frame[l3+24:], dst.AsSlice())
}

// reChecksum recomputes, from scratch, the IPv4 header checksum of p's frame
// and its TCP or UDP checksum. A UDP checksum of 0 (none sent) stays 0; a
// computed 0 is written as 0xffff (RFC 768).
func reChecksum(frame []byte, p pkt) {
	l3, l4 := p.l3Offset(), p.l4Offset()
	if frame[l3]>>4 == 4 {
		hl := int(frame[l3]&0xf) * 4
		binary.BigEndian.PutUint16(frame[l3+10:], 0)
		binary.BigEndian.PutUint16(frame[l3+10:], ipChecksum(frame[l3:l3+hl]))
	}
	src, dst := ipAddrs(frame, l3)
	seg := frame[l4:ipEnd(frame, l3)]
	switch p.proto {
	case protoTCP:
		binary.BigEndian.PutUint16(seg[16:], 0)
		binary.BigEndian.PutUint16(seg[16:], transportChecksum(src, dst, protoTCP, seg))
	case protoUDP:
		if binary.BigEndian.Uint16(seg[6:]) == 0 {
			return
		}
		binary.BigEndian.PutUint16(seg[6:], 0)
		c := transportChecksum(src, dst, protoUDP, seg)
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(seg[6:], c)
	}
}

// translated is in (a frame laid out as p's) as NAT must send it on: the
// MACs, addresses and ports given, the rest as it came, checksums anew.
func translated(in []byte, p pkt, dmac, smac net.HardwareAddr, src, dst netip.Addr, sport, dport uint16) []byte {
	out := bytes.Clone(in)
	copy(out[0:], dmac)
	copy(out[6:], smac)
	setAddrs(out, p.l3Offset(), src, dst)
	binary.BigEndian.PutUint16(out[p.l4Offset():], sport)
	binary.BigEndian.PutUint16(out[p.l4Offset()+2:], dport)
	reChecksum(out, p)
	return out
}

// checkTranslated checks frame (p translated) byte for byte against an
// independent computation (translated), and that its checksums verify.
func checkTranslated(t *testing.T, p pkt, frame []byte, dmac, smac net.HardwareAddr, src, dst netip.Addr, sport, dport uint16) {
	t.Helper()
	checkTranslatedFrom(t, p.build(), p, frame, dmac, smac, src, dst, sport, dport)
}

// checkTranslatedFrom is checkTranslated for a frame in laid out as p's
// but not p.build() (a payload changed, a checksum chosen).
func checkTranslatedFrom(t *testing.T, in []byte, p pkt, frame []byte, dmac, smac net.HardwareAddr, src, dst netip.Addr, sport, dport uint16) {
	t.Helper()
	want := translated(in, p, dmac, smac, src, dst, sport, dport)
	if len(frame) < len(want) || !bytes.Equal(frame[:len(want)], want) {
		t.Fatalf("frame\n got %x\nwant %x", frame[:min(len(frame), len(want))], want)
	}
	frame = frame[:len(want)]
	l3, l4 := p.l3Offset(), p.l4Offset()
	if src.Is4() && ipChecksum(frame[l3:l4]) != 0 {
		t.Fatalf("IPv4 header checksum does not verify")
	}
	seg := frame[l4:ipEnd(frame, l3)]
	if p.proto == protoUDP && binary.BigEndian.Uint16(seg[6:]) == 0 {
		return // none sent, none sent on
	}
	if c := transportChecksum(src, dst, p.proto, seg); c != 0 {
		t.Fatalf("transport checksum does not verify (residue %#04x)", c)
	}
}

// icmpError is an ICMP (IPv4) or ICMPv6 error frame from src to dst of
// type typ and code, rest its second word (unused, MTU), quoting quote; its
// IP header as Linux writes errors (TOS 0xc0 for IPv4, TTL 64), its
// checksums computed here.
func icmpError(dmac, smac net.HardwareAddr, src, dst netip.Addr, typ, code uint8, rest uint32, quote []byte) []byte {
	msg := binary.BigEndian.AppendUint32([]byte{typ, code, 0, 0}, rest)
	msg = append(msg, quote...)
	if src.Is4() {
		binary.BigEndian.PutUint16(msg[2:], ipChecksum(msg))
		ip := make([]byte, 20)
		ip[0], ip[1], ip[8], ip[9] = 0x45, 0xc0, 64, 1
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(msg)))
		setAddrs(ip, 0, src, dst)
		binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
		return frame(dmac, smac, 0x0800, ip, msg)
	}
	binary.BigEndian.PutUint16(msg[2:], icmp6Checksum(src, dst, msg))
	ip := make([]byte, 40)
	ip[0], ip[6], ip[7] = 0x60, 58, 64
	binary.BigEndian.PutUint16(ip[4:], uint16(len(msg)))
	setAddrs(ip, 0, src, dst)
	return frame(dmac, smac, 0x86dd, ip, msg)
}

// checkICMPChecksums verifies an ICMP error frame's checksums one by one:
// the outer IPv4 header, the ICMP (IPv4) or ICMPv6 (with its pseudo-header)
// message, the quoted IPv4 header and, when the quote holds all of it, the
// quoted TCP or UDP segment.
func checkICMPChecksums(t *testing.T, frame []byte) {
	t.Helper()
	src, dst := ipAddrs(frame, 14)
	var msg []byte
	if src.Is4() {
		if ipChecksum(frame[14:34]) != 0 {
			t.Fatal("outer IPv4 header checksum does not verify")
		}
		msg = frame[34:ipEnd(frame, 14)]
		if ipChecksum(msg) != 0 {
			t.Fatal("ICMP checksum does not verify")
		}
	} else {
		msg = frame[54:ipEnd(frame, 14)]
		if icmp6Checksum(src, dst, msg) != 0 {
			t.Fatal("ICMPv6 checksum (pseudo-header included) does not verify")
		}
	}
	quote := msg[8:]
	qsrc, qdst := ipAddrs(quote, 0)
	hl, proto := 40, quote[6]
	if qsrc.Is4() {
		hl, proto = int(quote[0]&0xf)*4, quote[9]
		if ipChecksum(quote[:hl]) != 0 {
			t.Fatal("quoted IPv4 header checksum does not verify")
		}
	}
	if end := ipEnd(quote, 0); end <= len(quote) {
		if c := transportChecksum(qsrc, qdst, proto, quote[hl:end]); c != 0 {
			t.Fatalf("quoted transport checksum does not verify (residue %#04x)", c)
		}
	}
}

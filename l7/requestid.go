package l7

import (
	"crypto/rand"
	"sync"
)

// Request IDs are random (version 4) UUIDs, 36 characters. The randomness
// comes from crypto/rand, read 4 KiB at a time into per-P buffers so that a
// request does not pay for a getrandom call; a buffer's bytes are used once.

const randBatch = 4096

type randBuf struct {
	b   [randBatch]byte
	off int
}

var randPool = sync.Pool{New: func() any { return &randBuf{off: randBatch} }}

// newRequestID returns a new UUID v4 in its canonical text form.
func newRequestID() string {
	rb := randPool.Get().(*randBuf)
	if rb.off+16 > randBatch {
		rand.Read(rb.b[:]) // never fails (crypto/rand crashes the program instead)
		rb.off = 0
	}
	var u [16]byte
	copy(u[:], rb.b[rb.off:rb.off+16])
	rb.off += 16
	randPool.Put(rb)
	return formatUUID(u)
}

// formatUUID sets the version (4) and variant (RFC 9562) bits of u and
// formats it as xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx.
func formatUUID(u [16]byte) string {
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	const hex = "0123456789abcdef"
	var s [36]byte
	j := 0
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			s[j] = '-'
			j++
		}
		s[j] = hex[c>>4]
		s[j+1] = hex[c&0x0f]
		j += 2
	}
	return string(s[:])
}

package main

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// A minimal WebSocket (RFC 6455) echo server for /ws: enough to prove that a
// proxy passes an upgrade through and then copies bytes both ways.

// WebSocket opcodes.
const (
	wsContinuation = 0x0
	wsText         = 0x1
	wsBinary       = 0x2
	wsClose        = 0x8
	wsPing         = 0x9
	wsPong         = 0xa
)

const (
	// wsGUID is RFC 6455's magic string for Sec-WebSocket-Accept.
	wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
	// wsMaxPayload bounds one frame's payload.
	wsMaxPayload = 1 << 20
	// wsIdle closes a WebSocket that has been silent this long.
	wsIdle = 60 * time.Second
)

// wsAccept is the Sec-WebSocket-Accept value for a Sec-WebSocket-Key.
func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// wsFrame is one WebSocket frame.
type wsFrame struct {
	Fin     bool
	Op      byte
	Payload []byte
}

// readWSFrame reads one frame, unmasking the payload if it is masked.
// requireMask refuses unmasked frames (a server reading a client).
func readWSFrame(r *bufio.Reader, requireMask bool) (wsFrame, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return wsFrame{}, err
	}
	f := wsFrame{Fin: hdr[0]&0x80 != 0, Op: hdr[0] & 0x0f}
	if hdr[0]&0x70 != 0 {
		return f, errors.New("websocket: reserved bits set")
	}
	masked := hdr[1]&0x80 != 0
	if requireMask && !masked {
		return f, errors.New("websocket: unmasked client frame")
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(r, ext[:]); err != nil {
			return f, err
		}
		n = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(r, ext[:]); err != nil {
			return f, err
		}
		n = binary.BigEndian.Uint64(ext[:])
	}
	if n > wsMaxPayload {
		return f, fmt.Errorf("websocket: frame of %d bytes is too large", n)
	}
	var mask [4]byte
	if masked {
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return f, err
		}
	}
	f.Payload = make([]byte, n)
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		return f, err
	}
	if masked {
		for i := range f.Payload {
			f.Payload[i] ^= mask[i%4]
		}
	}
	return f, nil
}

// appendWSFrame appends f to b, masked with mask when mask is not nil (a
// client's frames).
func appendWSFrame(b []byte, f wsFrame, mask *[4]byte) []byte {
	b0 := f.Op & 0x0f
	if f.Fin {
		b0 |= 0x80
	}
	b = append(b, b0)
	var m byte
	if mask != nil {
		m = 0x80
	}
	switch n := len(f.Payload); {
	case n < 126:
		b = append(b, m|byte(n))
	case n <= 0xffff:
		b = append(b, m|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, m|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if mask == nil {
		return append(b, f.Payload...)
	}
	b = append(b, mask[:]...)
	for i, c := range f.Payload {
		b = append(b, c^mask[i%4])
	}
	return b
}

// ws upgrades to a WebSocket and echoes every text and binary frame back as
// it came (opcode and FIN kept), answers pings, and answers a close with a
// close carrying the same status.
func (b *backend) ws(w http.ResponseWriter, r *http.Request) {
	if !headerHasToken(r.Header, "Connection", "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "want a WebSocket upgrade", http.StatusBadRequest)
		return
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	if key == "" || r.Header.Get("Sec-WebSocket-Version") != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		http.Error(w, "want Sec-WebSocket-Key and Sec-WebSocket-Version: 13", http.StatusBadRequest)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "cannot hijack: "+err.Error(), http.StatusInternalServerError)
		return
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: %s\r\nX-Backend: %s\r\n\r\n", wsAccept(key), b.name)
	if brw.Flush() != nil {
		return
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the server's shutdown does not track hijacked connections
		select {
		case <-r.Context().Done():
			conn.Close()
		case <-stop:
		}
	}()
	for {
		conn.SetReadDeadline(time.Now().Add(wsIdle))
		f, err := readWSFrame(brw.Reader, true)
		if err != nil {
			return
		}
		var out []byte
		switch f.Op {
		case wsText, wsBinary, wsContinuation:
			out = appendWSFrame(nil, f, nil)
		case wsPing:
			out = appendWSFrame(nil, wsFrame{Fin: true, Op: wsPong, Payload: f.Payload}, nil)
		case wsPong:
			continue
		case wsClose:
			conn.Write(appendWSFrame(nil, wsFrame{Fin: true, Op: wsClose, Payload: f.Payload}, nil))
			return
		default:
			return
		}
		if _, err := conn.Write(out); err != nil {
			return
		}
	}
}

// headerHasToken reports whether the comma-separated header name has token
// (any case).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), token) {
				return true
			}
		}
	}
	return false
}

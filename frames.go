package wstotcp

import (
	"encoding/binary"
	"unicode/utf8"
)

// The hot path reads and writes WebSocket frames (RFC 6455 §5) itself;
// gorilla/websocket does the handshake only. Gorilla allocates per message
// and copies each payload twice through its own buffers; here the client's
// payload is unmasked in place in the one read buffer and upstream bytes
// are framed in place in theirs, so a message costs no allocation and no
// copy beyond unmasking.

// Frame opcodes.
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

const (
	// maxHeader is the longest server frame header: 2 bytes and a 64-bit
	// length. Buffers keep this much room in front of a payload.
	maxHeader = 10
	// maxClientHeader adds the 4-byte mask key.
	maxClientHeader = 14
	// maxControlPayload is RFC 6455's limit for control frames.
	maxControlPayload = 125
)

// frameHeader is the parsed header of one client frame.
type frameHeader struct {
	fin    bool
	opcode byte
	length int64
	mask   [4]byte
}

// parseHeader parses the client frame header at the start of p. It returns
// the header's size, or 0 when p does not hold the whole header yet; err is
// a protocol error (close 1002).
func parseHeader(p []byte) (h frameHeader, size int, err *closeError) {
	if len(p) < 2 {
		return h, 0, nil
	}
	b0, b1 := p[0], p[1]
	h.fin = b0&0x80 != 0
	h.opcode = b0 & 0x0F
	if b0&0x70 != 0 {
		return h, 0, protocolError("reserved bits set without a negotiated extension")
	}
	if b1&0x80 == 0 {
		return h, 0, protocolError("client frame not masked")
	}
	size = 2
	switch n := b1 & 0x7F; n {
	case 126:
		size += 2
		if len(p) < size {
			return h, 0, nil
		}
		h.length = int64(binary.BigEndian.Uint16(p[2:]))
	case 127:
		size += 8
		if len(p) < size {
			return h, 0, nil
		}
		l := binary.BigEndian.Uint64(p[2:])
		if l>>63 != 0 {
			return h, 0, protocolError("frame length has the most significant bit set")
		}
		h.length = int64(l)
	default:
		h.length = int64(n)
	}
	if len(p) < size+4 {
		return h, 0, nil
	}
	copy(h.mask[:], p[size:size+4])
	size += 4
	switch h.opcode {
	case opContinuation, opText, opBinary:
	case opClose, opPing, opPong:
		if !h.fin {
			return h, 0, protocolError("fragmented control frame")
		}
		if h.length > maxControlPayload {
			return h, 0, protocolError("control frame longer than 125 bytes")
		}
	default:
		return h, 0, protocolError("unknown opcode")
	}
	return h, size, nil
}

// unmask XORs src with the mask key, starting at key position pos, into
// dst, and returns the position after src. dst may overlap src if it starts
// at or before it (the relay gathers payload towards the buffer's front).
// Eight bytes at a time: this is the one pass the relay makes over client
// data.
func unmask(dst, src []byte, key [4]byte, pos int) int {
	dst = dst[:len(src)]
	if len(src) >= 8 {
		k32 := uint32(key[pos&3]) | uint32(key[(pos+1)&3])<<8 | uint32(key[(pos+2)&3])<<16 | uint32(key[(pos+3)&3])<<24
		k64 := uint64(k32) | uint64(k32)<<32
		// 64 bytes a round: the fixed-size slices drop the bounds checks,
		// and this runs three times as fast as 8 bytes a round.
		for len(src) >= 64 && len(dst) >= 64 {
			s, d := src[:64:64], dst[:64:64]
			binary.LittleEndian.PutUint64(d[0:], binary.LittleEndian.Uint64(s[0:])^k64)
			binary.LittleEndian.PutUint64(d[8:], binary.LittleEndian.Uint64(s[8:])^k64)
			binary.LittleEndian.PutUint64(d[16:], binary.LittleEndian.Uint64(s[16:])^k64)
			binary.LittleEndian.PutUint64(d[24:], binary.LittleEndian.Uint64(s[24:])^k64)
			binary.LittleEndian.PutUint64(d[32:], binary.LittleEndian.Uint64(s[32:])^k64)
			binary.LittleEndian.PutUint64(d[40:], binary.LittleEndian.Uint64(s[40:])^k64)
			binary.LittleEndian.PutUint64(d[48:], binary.LittleEndian.Uint64(s[48:])^k64)
			binary.LittleEndian.PutUint64(d[56:], binary.LittleEndian.Uint64(s[56:])^k64)
			src, dst = src[64:], dst[64:]
		}
		for len(src) >= 8 {
			binary.LittleEndian.PutUint64(dst, binary.LittleEndian.Uint64(src)^k64)
			src, dst = src[8:], dst[8:]
		}
	}
	for i := range src {
		dst[i] = src[i] ^ key[pos&3]
		pos++
	}
	return pos & 3
}

// putHeader writes the header of an unmasked, final server frame of
// payloadLen bytes so that it ends at buf[end], and returns where it starts.
// end must be at least maxHeader.
func putHeader(buf []byte, end int, opcode byte, payloadLen int) int {
	switch {
	case payloadLen < 126:
		buf[end-2] = 0x80 | opcode
		buf[end-1] = byte(payloadLen)
		return end - 2
	case payloadLen < 1<<16:
		buf[end-4] = 0x80 | opcode
		buf[end-3] = 126
		binary.BigEndian.PutUint16(buf[end-2:], uint16(payloadLen))
		return end - 4
	default:
		buf[end-10] = 0x80 | opcode
		buf[end-9] = 127
		binary.BigEndian.PutUint64(buf[end-8:], uint64(payloadLen))
		return end - 10
	}
}

// closeError is how a tunnel ends on the WebSocket side: the close code
// sent (or received) and its reason.
type closeError struct {
	code   int
	reason string
}

func (e *closeError) Error() string { return e.reason }

func protocolError(reason string) *closeError {
	return &closeError{code: closeProtocolError, reason: reason}
}

// Close codes (RFC 6455 §7.4.1).
const (
	closeNormal          = 1000
	closeGoingAway       = 1001
	closeProtocolError   = 1002
	closeNoStatus        = 1005
	closeAbnormal        = 1006
	closeInvalidPayload  = 1007
	closePolicyViolation = 1008
	closeMessageTooBig   = 1009
	closeInternalError   = 1011
	closeBadGateway      = 1014
)

// parseClosePayload reads a Close frame's payload: a code and a UTF-8
// reason, or nothing (1005).
func parseClosePayload(p []byte) (int, string, *closeError) {
	if len(p) == 0 {
		return closeNoStatus, "", nil
	}
	if len(p) == 1 {
		return 0, "", protocolError("Close frame with a 1-byte payload")
	}
	code := int(binary.BigEndian.Uint16(p))
	if !validReceivedCloseCode(code) {
		return 0, "", protocolError("invalid close code")
	}
	if !utf8.Valid(p[2:]) {
		return 0, "", &closeError{code: closeInvalidPayload, reason: "close reason is not UTF-8"}
	}
	return code, string(p[2:]), nil
}

func validReceivedCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// closePayload formats a Close frame's payload into buf.
func closePayload(buf []byte, code int, reason string) []byte {
	if code == closeNoStatus {
		return buf[:0] // echo an empty Close as an empty Close
	}
	if len(reason) > maxControlPayload-2 {
		reason = reason[:maxControlPayload-2]
	}
	buf = binary.BigEndian.AppendUint16(buf[:0], uint16(code))
	return append(buf, reason...)
}

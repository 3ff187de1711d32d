// Package wsframe reads and writes RFC 6455 frames for a server that relays
// them: a frame parser fed bytes (no I/O), unmasking, server frame headers
// written in place, close codes and payloads, and the incremental UTF-8 and
// base64 codecs the relay needs. It allocates nothing per frame: payload is
// unmasked in place in the caller's buffer and headers are written into the
// room the caller keeps in front of its payload.
package wsframe

import (
	"encoding/binary"
)

// Frame opcodes (RFC 6455 §5.2).
const (
	OpContinuation = 0x0
	OpText         = 0x1
	OpBinary       = 0x2
	OpClose        = 0x8
	OpPing         = 0x9
	OpPong         = 0xA
)

const (
	// MaxHeader is the longest server frame header: 2 bytes and a 64-bit
	// length. Buffers keep this much room in front of a payload.
	MaxHeader = 10
	// MaxMaskedHeader is the longest client frame header: MaxHeader and
	// the 4-byte mask key.
	MaxMaskedHeader = MaxHeader + 4
	// MaxControlPayload is RFC 6455's limit for control frames.
	MaxControlPayload = 125
)

// header is the parsed header of one client frame.
type header struct {
	fin    bool
	opcode byte
	length int64
	mask   [4]byte
}

// parseHeader parses the client frame header at the start of p. It returns
// the header's size, or 0 when p does not hold the whole header yet; err is
// a protocol error (close 1002).
//
// fromServer parses a server's frame instead (the client end of a
// WebSocket, caddy tcp-to-ws): it must not be masked (RFC 6455 §5.1).
func parseHeader(p []byte, fromServer bool) (h header, size int, err *CloseError) {
	if len(p) < 2 {
		return h, 0, nil
	}
	b0, b1 := p[0], p[1]
	h.fin = b0&0x80 != 0
	h.opcode = b0 & 0x0F
	if b0&0x70 != 0 {
		return h, 0, protocolError("reserved bits set without a negotiated extension")
	}
	masked := b1&0x80 != 0
	switch {
	case fromServer && masked:
		return h, 0, protocolError("server frame masked")
	case !fromServer && !masked:
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
	if masked {
		if len(p) < size+4 {
			return h, 0, nil
		}
		copy(h.mask[:], p[size:size+4])
		size += 4
	}
	switch h.opcode {
	case OpContinuation, OpText, OpBinary:
	case OpClose, OpPing, OpPong:
		if !h.fin {
			return h, 0, protocolError("fragmented control frame")
		}
		if h.length > MaxControlPayload {
			return h, 0, protocolError("control frame longer than 125 bytes")
		}
	default:
		return h, 0, protocolError("unknown opcode")
	}
	return h, size, nil
}

// PutHeader writes the header of an unmasked, final server frame of
// payloadLen bytes so that it ends at buf[end], and returns where it starts.
// end must be at least MaxHeader.
func PutHeader(buf []byte, end int, opcode byte, payloadLen int) int {
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

// Prepare returns payload framed as one final, unmasked server message of
// type op, built once to be written whole to any number of clients.
func Prepare(op byte, payload []byte) []byte {
	buf := make([]byte, MaxHeader+len(payload))
	copy(buf[MaxHeader:], payload)
	return buf[PutHeader(buf, MaxHeader, op, len(payload)):]
}

// PutMaskedHeader is PutHeader for a client's frame (caddy tcp-to-ws): the
// header and mask key end at buf[end], where the payload starts, and the
// payload buf[end:end+payloadLen] is masked in place. A client must mask
// every frame with a fresh key (RFC 6455 §5.3). end must be at least
// MaxMaskedHeader.
func PutMaskedHeader(buf []byte, end int, opcode byte, payloadLen int, key [4]byte) int {
	copy(buf[end-4:end], key[:])
	start := PutHeader(buf, end-4, opcode, payloadLen)
	buf[start+1] |= 0x80
	Unmask(buf[end:end+payloadLen], buf[end:end+payloadLen], key, 0)
	return start
}

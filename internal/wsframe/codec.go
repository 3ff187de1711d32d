package wsframe

import (
	"encoding/base64"
	"unicode/utf8"
)

// IncompleteTail returns the length of the UTF-8 sequence that p ends in the
// middle of: the bytes to carry over to the next chunk. It is 0 when p ends
// on a rune boundary or in bytes that can never become valid UTF-8.
func IncompleteTail(p []byte) int {
	for i := len(p) - 1; i >= 0 && i >= len(p)-utf8.UTFMax+1; i-- {
		if utf8.RuneStart(p[i]) {
			if utf8.FullRune(p[i:]) {
				return 0
			}
			return len(p) - i
		}
	}
	return 0
}

// AppendValidUTF8 appends p to dst with each byte that is not part of a
// valid UTF-8 sequence replaced by U+FFFD.
func AppendValidUTF8(dst, p []byte) []byte {
	for len(p) > 0 {
		r, size := utf8.DecodeRune(p)
		if r == utf8.RuneError && size == 1 {
			dst = utf8.AppendRune(dst, utf8.RuneError)
		} else {
			dst = append(dst, p[:size]...)
		}
		p = p[size:]
	}
	return dst
}

// UTF8Stream validates a text message chunk by chunk, carrying a sequence
// split between chunks (or fragments) over to the next.
type UTF8Stream struct {
	carry [utf8.UTFMax]byte
	n     int
}

// valid reports whether p, following the chunks before it, is still UTF-8.
func (v *UTF8Stream) Valid(p []byte) bool {
	if v.n > 0 {
		take := copy(v.carry[v.n:], p)
		seq := v.carry[:v.n+take]
		if !utf8.FullRune(seq) {
			v.n += take // still incomplete, and p is used up
			return true
		}
		r, size := utf8.DecodeRune(seq)
		if r == utf8.RuneError && size == 1 {
			return false
		}
		p = p[size-v.n:]
		v.n = 0
	}
	tail := IncompleteTail(p)
	if !utf8.Valid(p[:len(p)-tail]) {
		return false
	}
	v.n = copy(v.carry[:], p[len(p)-tail:])
	return true
}

// complete reports whether the message ended on a rune boundary, and resets
// the stream for the next message.
func (v *UTF8Stream) Complete() bool {
	ok := v.n == 0
	v.n = 0
	return ok
}

// ErrBadBase64 ends a base64 text message that is not base64 (close 1007).
var ErrBadBase64 = &CloseError{CloseInvalidPayload, "invalid base64 in text message"}

// Base64Stream decodes a base64 text message chunk by chunk (websockify's
// base64 subprotocol), carrying an incomplete 4-character group over.
type Base64Stream struct {
	carry [3]byte
	n     int
}

// Decode decodes src into dst and returns the bytes written. dst needs room
// for len(src)*3/4+3 bytes (what src and the carried group decode to); it
// may overlap src if it starts at or before it and reaches past its end:
// src is copied out in small pieces before the output can reach them.
func (s *Base64Stream) Decode(dst, src []byte) (int, error) {
	var piece [64]byte
	written := 0
	for len(src) > 0 {
		copy(piece[:], s.carry[:s.n])
		k := copy(piece[s.n:], src)
		src = src[k:]
		have := s.n + k
		whole := have / 4 * 4
		m, err := base64.StdEncoding.Decode(dst[written:], piece[:whole])
		if err != nil {
			s.n = 0
			return written, ErrBadBase64
		}
		written += m
		s.n = copy(s.carry[:], piece[whole:have])
	}
	return written, nil
}

// complete reports an error when the message ended inside a group, and
// resets the stream for the next message.
func (s *Base64Stream) Complete() error {
	n := s.n
	s.n = 0
	if n != 0 {
		return ErrBadBase64
	}
	return nil
}

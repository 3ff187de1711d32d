package wstotcp

import (
	"encoding/base64"
	"unicode/utf8"
)

// incompleteTail returns the length of the UTF-8 sequence that p ends in the
// middle of: the bytes to carry over to the next chunk. It is 0 when p ends
// on a rune boundary or in bytes that can never become valid UTF-8.
func incompleteTail(p []byte) int {
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

// appendValidUTF8 appends p to dst with each byte that is not part of a
// valid UTF-8 sequence replaced by U+FFFD.
func appendValidUTF8(dst, p []byte) []byte {
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

// utf8Stream validates a text message chunk by chunk, carrying a sequence
// split between chunks (or fragments) over to the next.
type utf8Stream struct {
	carry [utf8.UTFMax]byte
	n     int
}

// valid reports whether p, following the chunks before it, is still UTF-8.
func (v *utf8Stream) valid(p []byte) bool {
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
	tail := incompleteTail(p)
	if !utf8.Valid(p[:len(p)-tail]) {
		return false
	}
	v.n = copy(v.carry[:], p[len(p)-tail:])
	return true
}

// complete reports whether the message ended on a rune boundary, and resets
// the stream for the next message.
func (v *utf8Stream) complete() bool {
	ok := v.n == 0
	v.n = 0
	return ok
}

var errBadBase64 = &closeError{closeInvalidPayload, "invalid base64 in text message"}

// errBase64NoRoom cannot happen in the relay, whose output starts before
// its input in a buffer of 512 bytes or more.
var errBase64NoRoom = &closeError{closeInternalError, "no room to decode base64"}

// base64Stream decodes a base64 text message chunk by chunk (websockify's
// base64 subprotocol), carrying an incomplete 4-character group over.
type base64Stream struct {
	carry [3]byte
	n     int
}

// decode decodes src into dst and returns the bytes written. dst may
// overlap src if it starts at or before it and reaches past its end: src
// is copied out in small pieces before the output can reach them.
func (s *base64Stream) decode(dst, src []byte) (int, error) {
	var piece [64]byte
	written := 0
	for len(src) > 0 {
		copy(piece[:], s.carry[:s.n])
		k := copy(piece[s.n:], src)
		src = src[k:]
		have := s.n + k
		whole := have / 4 * 4
		if base64.StdEncoding.DecodedLen(whole) > len(dst)-written {
			return written, errBase64NoRoom
		}
		m, err := base64.StdEncoding.Decode(dst[written:], piece[:whole])
		if err != nil {
			s.n = 0
			return written, errBadBase64
		}
		written += m
		s.n = copy(s.carry[:], piece[whole:have])
	}
	return written, nil
}

// complete reports an error when the message ended inside a group, and
// resets the stream for the next message.
func (s *base64Stream) complete() error {
	n := s.n
	s.n = 0
	if n != 0 {
		return errBadBase64
	}
	return nil
}

package wstotcp

import (
	"encoding/base64"
	"errors"
	"io"
	"unicode/utf8"

	"github.com/gorilla/websocket"
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

// appendValidUTF8 appends p to dst with each invalid byte replaced by
// U+FFFD, as browsers' TextDecoder does.
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

var errBadBase64 = &policyError{websocket.CloseInvalidFramePayloadData, "invalid base64 in text message"}

// base64Stream decodes a base64 text message chunk by chunk (websockify's
// base64 subprotocol), carrying an incomplete 4-character group over.
type base64Stream struct {
	raw   []byte // read buffer for the encoded text
	carry int    // encoded bytes at raw[:carry] not yet decoded
}

// read reads encoded text from r and decodes what it can into dst, which
// must hold at least 6 bytes. At the end of the message it returns io.EOF;
// a message that is not whole base64 gives errBadBase64.
func (s *base64Stream) read(r io.Reader, dst []byte) (int, error) {
	max := len(dst)/3*4 - s.carry // whole groups that fit dst, with the carry
	if max > len(s.raw)-s.carry {
		max = len(s.raw) - s.carry
	}
	n, err := r.Read(s.raw[s.carry : s.carry+max])
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	have := s.carry + n
	whole := have / 4 * 4
	if err == io.EOF && whole != have {
		s.carry = 0
		return 0, errBadBase64
	}
	m, derr := base64.StdEncoding.Decode(dst, s.raw[:whole])
	if derr != nil {
		s.carry = 0
		return 0, errBadBase64
	}
	s.carry = copy(s.raw, s.raw[whole:have])
	return m, err
}

package wsframe

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"
)

func TestIncompleteTail(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int
	}{
		{"empty", "", 0},
		{"ASCII", "hello", 0},
		{"one ASCII byte", "a", 0},

		{"2-byte whole", "é", 0},
		{"2-byte 1 of 2", "\xC3", 1},
		{"2-byte 1 of 2 after ASCII", "ab\xC3", 1},

		{"3-byte whole", "€", 0},
		{"3-byte 1 of 3", "\xE2", 1},
		{"3-byte 2 of 3", "\xE2\x82", 2},
		{"3-byte 2 of 3 after 2-byte", "é\xE2\x82", 2},

		{"4-byte whole", "😀", 0},
		{"4-byte 1 of 4", "\xF0", 1},
		{"4-byte 2 of 4", "\xF0\x9F", 2},
		{"4-byte 3 of 4", "\xF0\x9F\x98", 3},
		{"4-byte 3 of 4 after 4-byte", "😀\xF0\x9F\x98", 3},
		{"4-byte whole after ASCII", "x😀", 0},

		// Bytes that can never become valid UTF-8 are not carried over.
		{"lone continuation", "\x80", 0},
		{"three continuations", "a\x80\x80\x80", 0},
		{"invalid byte FF", "ab\xFF", 0},
		{"invalid lead C0", "\xC0", 0},
		{"invalid lead F5", "\xF5", 0},
		{"overlong 3-byte prefix E0 80", "\xE0\x80", 0},
		{"surrogate prefix ED A0", "\xED\xA0", 0},
		{"above U+10FFFF prefix F4 90", "\xF4\x90", 0},
		{"lead then ASCII", "\xE2A", 0},
		{"stray continuation after ASCII", "A\x82", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IncompleteTail([]byte(tt.in)); got != tt.want {
				t.Errorf("IncompleteTail(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}

	// Every proper prefix of a multi-byte rune is carried whole, after any
	// preceding text.
	for _, r := range []rune{'é', '€', '😀', utf8.MaxRune, 0x80, 0x800, 0x10000} {
		enc := string(r)
		for cut := 1; cut < len(enc); cut++ {
			in := "ab" + enc[:cut]
			if got := IncompleteTail([]byte(in)); got != cut {
				t.Errorf("IncompleteTail(%q) = %d, want %d", in, got, cut)
			}
		}
	}
}

func TestCodecAppendValidUTF8(t *testing.T) {
	tests := []struct {
		name string
		dst  string
		in   string
		want string
	}{
		{"empty", "", "", ""},
		{"ASCII", "", "hello", "hello"},
		{"multi-byte kept", "", "aé€😀z", "aé€😀z"},
		{"U+FFFD itself kept", "", "\uFFFD", "\uFFFD"},
		{"appends to dst", "pre:", "é", "pre:é"},
		{"invalid byte", "", "a\xFFb", "a\uFFFDb"},
		{"lone continuation", "", "\x80", "\uFFFD"},
		{"each invalid byte replaced", "", "\xFF\xFE", "\uFFFD\uFFFD"},
		{"truncated 3-byte, byte by byte", "", "\xE2\x82", "\uFFFD\uFFFD"},
		{"truncated 4-byte before ASCII", "", "\xF0\x9F\x98A", "\uFFFD\uFFFD\uFFFDA"},
		{"surrogate", "", "\xED\xA0\x80", "\uFFFD\uFFFD\uFFFD"},
		{"overlong slash", "", "\xC0\xAF", "\uFFFD\uFFFD"},
		{"invalid then valid", "", "\xC3(é", "\uFFFD(é"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := AppendValidUTF8([]byte(tt.dst), []byte(tt.in))
			if string(got) != tt.want {
				t.Errorf("AppendValidUTF8(%q, %q) = %q, want %q", tt.dst, tt.in, got, tt.want)
			}
			if !utf8.Valid(got) {
				t.Errorf("AppendValidUTF8(%q, %q) = %q is not valid UTF-8", tt.dst, tt.in, got)
			}
		})
	}
}

// streamUTF8 feeds chunks to a UTF8Stream as one message. It reports
// whether every chunk was accepted, the index of the first refused chunk,
// and whether the message then ended on a rune boundary.
func streamUTF8(v *UTF8Stream, chunks [][]byte) (allValid bool, refused int, complete bool) {
	for i, c := range chunks {
		if !v.Valid(c) {
			v.Complete() // reset for the next message
			return false, i, false
		}
	}
	return true, -1, v.Complete()
}

// splits calls f with every way of cutting s into 1..len(s) non-empty
// chunks: each of the len(s)-1 gaps is cut or not.
func splits(s []byte, f func(chunks [][]byte)) {
	if len(s) == 0 {
		f([][]byte{{}})
		return
	}
	gaps := len(s) - 1
	for mask := 0; mask < 1<<gaps; mask++ {
		var chunks [][]byte
		start := 0
		for g := 0; g < gaps; g++ {
			if mask&(1<<g) != 0 {
				chunks = append(chunks, s[start:g+1])
				start = g + 1
			}
		}
		chunks = append(chunks, s[start:])
		f(chunks)
	}
}

func TestUTF8StreamEverySplit(t *testing.T) {
	tests := []struct {
		name string
		in   string
		// What the stream must say, at every split.
		valid    bool // every chunk accepted
		complete bool // and the message ends on a rune boundary
	}{
		{"empty", "", true, true},
		{"ASCII", "hello", true, true},
		{"2-, 3- and 4-byte runes", "aé€😀z", true, true},
		{"4-byte runes back to back", "😀😀🙂", true, true},
		{"edges of the ranges", "\u0080\u07FF\u0800\uFFFF\U00010000\U0010FFFF", true, true},
		{"U+FFFD itself", "x\uFFFDy", true, true},

		{"ends inside a 2-byte rune", "ab\xC3", true, false},
		{"ends inside a 3-byte rune", "é\xE2\x82", true, false},
		{"ends inside a 4-byte rune", "€\xF0\x9F\x98", true, false},

		{"lone continuation", "a\x80b", false, false},
		{"invalid byte FF", "é\xFF", false, false},
		{"lead then ASCII", "a\xE2\x82Ab", false, false},
		{"4-byte lead then 2-byte rune", "\xF0\x9Fé", false, false},
		{"overlong 2-byte slash", "a\xC0\xAFb", false, false},
		{"overlong 2-byte NUL", "\xC1\x80", false, false},
		{"overlong 3-byte", "a\xE0\x80\xAFb", false, false},
		{"overlong 4-byte", "\xF0\x80\x80\xAF", false, false},
		{"surrogate ED A0 80", "a\xED\xA0\x80b", false, false},
		{"surrogate ED BF BF", "\xED\xBF\xBF", false, false},
		{"above U+10FFFF", "\xF4\x90\x80\x80", false, false},
		{"lead F5", "x\xF5\x80\x80\x80", false, false},
		{"valid then surrogate at the end", "😀\xED\xA0\x80", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if utf8.ValidString(tt.in) != (tt.valid && tt.complete) {
				t.Fatalf("bad test case: utf8.ValidString(%q) = %v", tt.in, utf8.ValidString(tt.in))
			}
			var v UTF8Stream // one stream for all splits: complete() resets it
			n := 0
			splits([]byte(tt.in), func(chunks [][]byte) {
				n++
				valid, _, complete := streamUTF8(&v, chunks)
				if valid != tt.valid || complete != tt.complete {
					t.Errorf("chunks %q: valid %v, complete %v; want %v, %v",
						chunks, valid, complete, tt.valid, tt.complete)
				}
			})
			if want := 1 << max(len(tt.in)-1, 0); n != want {
				t.Fatalf("tried %d splits, want %d", n, want)
			}
		})
	}
}

func TestUTF8StreamEmptyChunksAndReset(t *testing.T) {
	var v UTF8Stream
	// Empty chunks (an empty fragment, a zero-length read) anywhere.
	chunks := [][]byte{{}, []byte("a\xF0"), {}, []byte("\x9F"), {}, {}, []byte("\x98"), []byte("\x80é"), {}}
	if valid, i, complete := streamUTF8(&v, chunks); !valid || !complete {
		t.Fatalf("valid %v (refused chunk %d), complete %v; want true, true", valid, i, complete)
	}

	// A message that ends mid-rune fails complete() and leaves nothing
	// behind for the next message.
	if !v.Valid([]byte("ok\xE2\x82")) {
		t.Fatal("a message ending in a rune's first two bytes was refused before its end")
	}
	if v.Complete() {
		t.Fatal("complete() = true for a message ending inside a rune")
	}
	// The carried E2 82 must be gone: AC alone is a stray continuation.
	if v.Valid([]byte("\xACnext")) {
		t.Fatal(`the next message's "\xACnext" was accepted: the previous message's carry survived complete()`)
	}
	v.Complete()
	if !v.Valid([]byte("fresh")) || !v.Complete() {
		t.Fatal("a plain ASCII message after a failed one was refused")
	}

	// The first refused chunk is the one that makes the text invalid.
	if valid, i, _ := streamUTF8(&v, [][]byte{[]byte("a\xED"), []byte("\xA0"), []byte("\x80")}); valid || i != 1 {
		t.Fatalf("surrogate split 1|2: valid %v, refused chunk %d; want false, 1", valid, i)
	}
}

// chunkReader returns data in chunks of random length from 0 to maxChunk
// (a zero-length read with a nil error is allowed by io.Reader), then io.EOF.
type chunkReader struct {
	data     []byte
	rng      *rand.Rand
	maxChunk int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := min(r.rng.Intn(r.maxChunk+1), len(p), len(r.data))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

// b64Reader feeds a Base64Stream from a reader in rawSize chunks, decoding
// each chunk in place, as the relay does in its read buffer. The relay's
// buffers are 512 bytes or more; in place decoding needs 12.
type b64Reader struct {
	s   Base64Stream
	raw []byte
}

// decodeBase64 reads one message from r through s until io.EOF or an
// error; no decode may write more than dstSize bytes per chunk of 4/3 of it.
func decodeBase64(s *b64Reader, r io.Reader, dstSize int) ([]byte, error) {
	var out []byte
	stalls := 0
	for {
		limit := min(len(s.raw), max(dstSize/3*4, 1))
		n, err := r.Read(s.raw[:limit])
		chunk := s.raw[:n]
		m, derr := s.s.Decode(s.raw, chunk) // in place, as in the relay's buffer
		if m > len(s.raw) {
			return out, fmt.Errorf("decode wrote %d bytes into %d", m, len(s.raw))
		}
		out = append(out, s.raw[:m]...)
		if derr != nil {
			return out, derr
		}
		if errors.Is(err, io.EOF) {
			return out, s.s.Complete()
		}
		if err != nil {
			return out, err
		}
		if n == 0 {
			if stalls++; stalls > 1000 {
				return out, errors.New("no progress after 1000 reads")
			}
		} else {
			stalls = 0
		}
	}
}

// base64Cases are messages of many lengths, so that every padding and
// every group boundary is met.
func base64Cases() [][]byte {
	rng := rand.New(rand.NewSource(1))
	var cases [][]byte
	for n := 0; n <= 40; n++ {
		b := make([]byte, n)
		rng.Read(b)
		cases = append(cases, b)
	}
	big := make([]byte, 10000)
	rng.Read(big)
	return append(cases, []byte("hello, world"), big)
}

func TestBase64StreamOneByteReader(t *testing.T) {
	for _, rawSize := range []int{12, 13, 512} {
		for _, dstSize := range []int{6, 7, 8, 4096} {
			s := &b64Reader{raw: make([]byte, rawSize)}
			for _, msg := range base64Cases() {
				enc := base64.StdEncoding.EncodeToString(msg)
				got, err := decodeBase64(s, iotest.OneByteReader(strings.NewReader(enc)), dstSize)
				if err != nil {
					t.Fatalf("raw %d, dst %d, %d-byte message: %v", rawSize, dstSize, len(msg), err)
				}
				if !bytes.Equal(got, msg) {
					t.Fatalf("raw %d, dst %d: decoded %x, want %x", rawSize, dstSize, got, msg)
				}
			}
		}
	}
}

func TestBase64StreamRandomChunks(t *testing.T) {
	rng := rand.New(rand.NewSource(42))
	for _, rawSize := range []int{12, 15, 64, 32 * 1024} {
		for _, dstSize := range []int{6, 9, 100, 32 * 1024} {
			s := &b64Reader{raw: make([]byte, rawSize)}
			for _, msg := range base64Cases() {
				enc := base64.StdEncoding.EncodeToString(msg)
				for _, maxChunk := range []int{1, 3, 5, 17, 1000} {
					r := &chunkReader{data: []byte(enc), rng: rng, maxChunk: maxChunk}
					got, err := decodeBase64(s, r, dstSize)
					if err != nil {
						t.Fatalf("raw %d, dst %d, chunks up to %d, %d-byte message: %v",
							rawSize, dstSize, maxChunk, len(msg), err)
					}
					if !bytes.Equal(got, msg) {
						t.Fatalf("raw %d, dst %d, chunks up to %d: decoded %x, want %x",
							rawSize, dstSize, maxChunk, got, msg)
					}
				}
			}
		}
	}
}

// TestBase64StreamDataWithEOF covers a reader that returns its last bytes
// together with io.EOF.
func TestBase64StreamDataWithEOF(t *testing.T) {
	for _, msg := range base64Cases() {
		enc := base64.StdEncoding.EncodeToString(msg)
		s := &b64Reader{raw: make([]byte, 512)}
		got, err := decodeBase64(s, iotest.DataErrReader(strings.NewReader(enc)), 4096)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("%d-byte message: decoded %x, %v; want %x", len(msg), got, err, msg)
		}
	}
}

// TestBase64StreamOverlap decodes each chunk from a later part of a buffer
// to a dst that starts at or before it (the relay decodes in its read
// buffer, behind the bytes still to parse), and to a separate dst.
func TestBase64StreamOverlap(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	for _, msg := range base64Cases() {
		enc := []byte(base64.StdEncoding.EncodeToString(msg))
		for _, srcOff := range []int{0, 1, 3, 4, 9, 64, 200} {
			for _, back := range []int{0, 1, 3, -1} { // how far dst starts before src; -1: separate dst
				if back > srcOff {
					continue
				}
				var s Base64Stream
				var got []byte
				rest := enc
				for len(rest) > 0 {
					k := min(1+rng.Intn(150), len(rest))
					buf := make([]byte, srcOff+k+3)
					copy(buf[srcOff:], rest[:k])
					rest = rest[k:]
					src := buf[srcOff : srcOff+k]
					dst := make([]byte, k+3)
					if back >= 0 {
						dst = buf[srcOff-back:]
					}
					m, err := s.Decode(dst, src)
					if err != nil {
						t.Fatalf("src at %d, dst %d before it, %d-byte message: %v", srcOff, back, len(msg), err)
					}
					got = append(got, dst[:m]...)
				}
				if err := s.Complete(); err != nil {
					t.Fatalf("src at %d, dst %d before it, %d-byte message: complete: %v", srcOff, back, len(msg), err)
				}
				if !bytes.Equal(got, msg) {
					t.Fatalf("src at %d, dst %d before it: decoded %x, want %x", srcOff, back, got, msg)
				}
			}
		}
	}
}

func TestBase64StreamInvalid(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"not the alphabet", "!!!!"},
		{"bad char after a good group", "QUJD!!!!"},
		{"URL alphabet", "-_-_"},
		{"space", "QUJD QUJD"},
		{"truncated to 1 char", "Q"},
		{"truncated to 3 chars", "QUJ"},
		{"truncated after a group", "QUJDQQ"},
		{"padding short", "QQ="},
		{"padding too long", "Q==="},
		{"padding first", "=QUJ"},
		{"char after padding in a group", "QQ=A"},
		{"trailing newline", "QUJD\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			readers := map[string]func() io.Reader{
				"whole":    func() io.Reader { return strings.NewReader(tt.in) },
				"one byte": func() io.Reader { return iotest.OneByteReader(strings.NewReader(tt.in)) },
				"random": func() io.Reader {
					return &chunkReader{data: []byte(tt.in), rng: rand.New(rand.NewSource(7)), maxChunk: 3}
				},
			}
			for how, mk := range readers {
				s := &b64Reader{raw: make([]byte, 512)}
				_, err := decodeBase64(s, mk(), 64)
				var pe *CloseError
				if !errors.As(err, &pe) {
					t.Fatalf("%s: decoding %q gave %v, want a *CloseError", how, tt.in, err)
				}
				if pe.Code != 1007 {
					t.Errorf("%s: close code %d, want 1007", how, pe.Code)
				}
				// The stream is reset: the next message decodes.
				got, err := decodeBase64(s, strings.NewReader("QUJD"), 64)
				if err != nil || string(got) != "ABC" {
					t.Errorf("%s: the message after a bad one gave %q, %v; want ABC", how, got, err)
				}
			}
		})
	}
}

// FuzzUTF8Stream checks that, for any bytes cut at any points, the stream
// says valid and complete exactly when the whole is valid UTF-8. Each byte
// of cuts is the length of the next chunk, modulo 8; the rest of data is
// the last chunk.
func FuzzUTF8Stream(f *testing.F) {
	f.Add([]byte("aé€😀z"), []byte{1, 2, 3})
	f.Add([]byte("a\xED\xA0\x80b"), []byte{2, 1})
	f.Add([]byte("ok\xE2\x82"), []byte{3})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		var chunks [][]byte
		rest := data
		for _, c := range cuts {
			n := min(int(c%8), len(rest))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		chunks = append(chunks, rest)

		var v UTF8Stream
		valid, _, complete := streamUTF8(&v, chunks)
		if want := utf8.Valid(data); (valid && complete) != want {
			t.Fatalf("chunks %q: valid %v, complete %v; utf8.Valid = %v", chunks, valid, complete, want)
		}
		// The stream is reusable after any message.
		if !v.Valid([]byte("é")) || !v.Complete() {
			t.Fatalf("after chunks %q, a fresh message was refused", chunks)
		}
	})
}

// FuzzBase64Stream checks that the std base64 encoding of any bytes,
// read in chunks of random size (from seed), decodes to those bytes.
func FuzzBase64Stream(f *testing.F) {
	f.Add([]byte("hello, world"), int64(1))
	f.Add([]byte{0, 0xFF, 0x10}, int64(-3))
	f.Add([]byte{}, int64(0))
	f.Fuzz(func(t *testing.T, data []byte, seed int64) {
		rng := rand.New(rand.NewSource(seed))
		rawSize := 12 + rng.Intn(600)
		dstSize := 6 + rng.Intn(600)
		enc := base64.StdEncoding.EncodeToString(data)
		s := &b64Reader{raw: make([]byte, rawSize)}
		r := &chunkReader{data: []byte(enc), rng: rng, maxChunk: 1 + rng.Intn(64)}
		got, err := decodeBase64(s, r, dstSize)
		if err != nil {
			t.Fatalf("raw %d, dst %d: %v", rawSize, dstSize, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("raw %d, dst %d: decoded %x, want %x", rawSize, dstSize, got, data)
		}
	})
}

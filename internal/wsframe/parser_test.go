package wsframe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand"
	"testing"
	"unsafe"
)

// maskedFrame returns a client frame: masked with key, final or not.
func maskedFrame(op byte, fin bool, payload []byte, key [4]byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	var f []byte
	switch n := len(payload); {
	case n < 126:
		f = []byte{b0, 0x80 | byte(n)}
	case n < 1<<16:
		f = []byte{b0, 0x80 | 126, byte(n >> 8), byte(n)}
	default:
		f = binary.BigEndian.AppendUint64([]byte{b0, 0x80 | 127}, uint64(n))
	}
	f = append(f, key[:]...)
	start := len(f)
	f = append(f, payload...)
	Unmask(f[start:], f[start:], key, 0)
	return f
}

// message is what a parse yields: a data message, or a control frame.
type message struct {
	op      byte
	payload []byte
}

// parseSplit feeds stream to a Parser in the chunks that cuts gives, as the
// relay does: unconsumed bytes are kept and the next chunk appended. It
// returns the messages, the control frames among them, and the error.
func parseSplit(t testing.TB, p *Parser, stream []byte, cuts []int) ([]message, error) {
	var out []message
	var cur *message
	buf := make([]byte, 0, len(stream))
	pos := 0
	for _, c := range append(cuts, len(stream)) {
		c = min(max(c, pos), len(stream))
		buf = append(buf, stream[pos:c]...)
		pos = c
		for {
			ev, n, err := p.Next(buf)
			if n < 0 || n > len(buf) {
				t.Fatalf("consumed %d of %d bytes", n, len(buf))
			}
			if err != nil {
				return out, err
			}
			if ev.Kind == More {
				if n != 0 {
					t.Fatalf("More consumed %d bytes", n)
				}
				break
			}
			if len(ev.Payload) > 0 && !overlaps(buf[:n], ev.Payload) {
				t.Fatalf("payload outside the consumed input")
			}
			switch ev.Kind {
			case Control:
				out = append(out, message{ev.Op, bytes.Clone(ev.Payload)})
			case Data:
				if ev.First {
					if cur != nil {
						t.Fatalf("message started inside a message")
					}
					cur = &message{op: ev.Op}
				}
				if cur == nil {
					t.Fatalf("data outside a message")
				}
				cur.payload = append(cur.payload, ev.Payload...)
				if ev.Last {
					out = append(out, *cur)
					cur = nil
				}
			}
			buf = buf[n:]
			if n == 0 {
				t.Fatalf("an event that consumed nothing: %+v", ev)
			}
		}
		buf = append(buf[:0:0], buf...) // a fresh read buffer, like the relay's moved tail
	}
	return out, nil
}

// overlaps reports whether b lies inside a.
func overlaps(a, b []byte) bool {
	pa, pb := uintptr(unsafe.Pointer(unsafe.SliceData(a))), uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return pb >= pa && pb+uintptr(len(b)) <= pa+uintptr(len(a))
}

func TestParserMessagesWhateverTheSplit(t *testing.T) {
	t.Parallel()
	key := [4]byte{0x11, 0x22, 0x33, 0x44}
	big := bytes.Repeat([]byte("0123456789"), 7000) // 64-bit length
	var stream []byte
	stream = append(stream, maskedFrame(OpBinary, true, []byte("hello"), key)...)
	stream = append(stream, maskedFrame(OpText, false, []byte("frag"), key)...)
	stream = append(stream, maskedFrame(OpPing, true, []byte("p"), key)...) // between fragments
	stream = append(stream, maskedFrame(OpContinuation, true, []byte("mented"), key)...)
	stream = append(stream, maskedFrame(OpBinary, true, nil, key)...)
	stream = append(stream, maskedFrame(OpBinary, true, big[:300], key)...)
	stream = append(stream, maskedFrame(OpBinary, true, big, key)...)
	stream = append(stream, maskedFrame(OpClose, true, []byte{0x03, 0xE8}, key)...)
	want := []message{
		{OpBinary, []byte("hello")},
		{OpPing, []byte("p")},
		{OpText, []byte("fragmented")},
		{OpBinary, nil},
		{OpBinary, big[:300]},
		{OpBinary, big},
		{OpClose, []byte{0x03, 0xE8}},
	}
	rng := rand.New(rand.NewSource(1))
	for range 200 {
		var cuts []int
		for c := 0; c < len(stream); c += 1 + rng.Intn(40) {
			cuts = append(cuts, c)
		}
		got, err := parseSplit(t, &Parser{}, stream, cuts)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%d messages, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i].op != want[i].op || !bytes.Equal(got[i].payload, want[i].payload) {
				t.Fatalf("message %d: op %d %d bytes, want op %d %d bytes", i, got[i].op, len(got[i].payload), want[i].op, len(want[i].payload))
			}
		}
	}
}

func TestParserRefusals(t *testing.T) {
	t.Parallel()
	key := [4]byte{1, 2, 3, 4}
	cat := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	huge := []byte{0x00, 0x80 | 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}
	cases := []struct {
		name string
		max  int64
		in   []byte
		code int
	}{
		{"continuation first", 0, maskedFrame(OpContinuation, true, []byte("x"), key), CloseProtocolError},
		{"message inside a message", 0, cat(maskedFrame(OpText, false, []byte("a"), key), maskedFrame(OpBinary, true, nil, key)), CloseProtocolError},
		{"over max in one frame", 10, maskedFrame(OpBinary, true, make([]byte, 11), key), CloseMessageTooBig},
		{"over max in fragments", 10, cat(maskedFrame(OpBinary, false, make([]byte, 6), key), maskedFrame(OpContinuation, true, make([]byte, 5), key)), CloseMessageTooBig},
		// A continuation declaring 2^63-1 bytes after 1 byte must not wrap
		// the running length negative and slip under the limit.
		{"length that wraps the sum", 1024, cat(maskedFrame(OpBinary, false, []byte{1}, key), huge), CloseMessageTooBig},
		{"unmasked", 0, []byte{0x82, 0x01, 'x'}, CloseProtocolError},
		{"long ping", 0, maskedFrame(OpPing, true, make([]byte, 126), key), CloseProtocolError},
	}
	for _, c := range cases {
		_, err := parseSplit(t, &Parser{MaxMessage: c.max}, c.in, nil)
		var ce *CloseError
		if !errors.As(err, &ce) || ce.Code != c.code {
			t.Errorf("%s: error %v, want close %d", c.name, err, c.code)
		}
	}
	// At the limit exactly is fine.
	if _, err := parseSplit(t, &Parser{MaxMessage: 11}, cat(maskedFrame(OpBinary, false, make([]byte, 6), key), maskedFrame(OpContinuation, true, make([]byte, 5), key)), nil); err != nil {
		t.Errorf("a message of max_message_size bytes: %v", err)
	}
}

// FuzzFrameParser: whatever the bytes and however they are split, the
// parser never panics and never claims bytes it was not given; and for a
// valid masked stream built from the fuzzer's messages it yields exactly
// their payloads, whatever way the stream is split into reads.
func FuzzFrameParser(f *testing.F) {
	f.Add([]byte{0x82, 0x85, 1, 2, 3, 4, 'h' ^ 1, 'e' ^ 2, 'l' ^ 3, 'l' ^ 4, 'o' ^ 1}, []byte("hello\x00world"), uint64(7))
	f.Add([]byte{0x01, 0x81, 0, 0, 0, 0, 'a', 0x80, 0x81, 0, 0, 0, 0, 'b'}, bytes.Repeat([]byte{0xAB}, 70000), uint64(3))
	f.Add([]byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8}, []byte{}, uint64(0))
	f.Fuzz(func(t *testing.T, raw, payloads []byte, seed uint64) {
		rng := rand.New(rand.NewSource(int64(seed)))
		cuts := func(n int) []int {
			var c []int
			for i := 0; i < n; i += 1 + rng.Intn(64) {
				c = append(c, i)
			}
			return c
		}
		// Arbitrary bytes: no panic, no overread (parseSplit checks).
		parseSplit(t, &Parser{MaxMessage: int64(seed % 100000)}, bytes.Clone(raw), cuts(len(raw)))

		// A valid stream: payloads cut into messages and fragments by
		// the seed, with pings between fragments.
		var stream []byte
		var want [][]byte
		for rest := payloads; len(rest) > 0 || len(want) == 0; {
			n := min(len(rest), rng.Intn(300))
			msg := rest[:n]
			rest = rest[n:]
			want = append(want, msg)
			op := byte(OpBinary)
			for first := true; first || len(msg) > 0; first = false {
				k := min(len(msg), rng.Intn(100)+1)
				key := [4]byte{byte(rng.Intn(256)), byte(rng.Intn(256)), byte(rng.Intn(256)), byte(rng.Intn(256))}
				fin := k == len(msg)
				stream = append(stream, maskedFrame(op, fin, msg[:k], key)...)
				if !fin && rng.Intn(4) == 0 {
					stream = append(stream, maskedFrame(OpPing, true, []byte("hb"), key)...)
				}
				msg, op = msg[k:], OpContinuation
			}
			if len(rest) == 0 {
				break
			}
		}
		got, err := parseSplit(t, &Parser{}, stream, cuts(len(stream)))
		if err != nil {
			t.Fatalf("valid stream refused: %v", err)
		}
		var data [][]byte
		for _, m := range got {
			if m.op == OpBinary {
				data = append(data, m.payload)
			} else if m.op != OpPing || string(m.payload) != "hb" {
				t.Fatalf("unexpected frame op %d %q", m.op, m.payload)
			}
		}
		if len(data) != len(want) {
			t.Fatalf("%d messages, want %d", len(data), len(want))
		}
		for i := range want {
			if !bytes.Equal(data[i], want[i]) {
				t.Fatalf("message %d differs: %d bytes, want %d", i, len(data[i]), len(want[i]))
			}
		}
	})
}

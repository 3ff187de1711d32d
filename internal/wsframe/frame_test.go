package wsframe

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestParseHeader(t *testing.T) {
	key := []byte{1, 2, 3, 4}
	hdr := func(b0, b1 byte, ext ...byte) []byte {
		return append(append([]byte{b0, b1}, ext...), key...)
	}
	long := make([]byte, 8)
	binary.BigEndian.PutUint64(long, 70000)
	cases := []struct {
		name   string
		in     []byte
		size   int
		length int64
		op     byte
		fin    bool
		code   int // protocol error's close code, 0 for none
	}{
		{"short binary", hdr(0x82, 0x85), 6, 5, OpBinary, true, 0},
		{"text not final", hdr(0x01, 0x80), 6, 0, OpText, false, 0},
		{"16-bit length", hdr(0x82, 0xFE, 0x01, 0x00), 8, 256, OpBinary, true, 0},
		{"64-bit length", hdr(0x82, 0xFF, long...), 14, 70000, OpBinary, true, 0},
		{"continuation", hdr(0x80, 0x81), 6, 1, OpContinuation, true, 0},
		{"ping", hdr(0x89, 0x80|125), 6, 125, OpPing, true, 0},
		{"incomplete: 1 byte", []byte{0x82}, 0, 0, 0, false, 0},
		{"incomplete: no mask", []byte{0x82, 0x85, 1, 2}, 0, 0, 0, false, 0},
		{"incomplete: extended length", []byte{0x82, 0xFF, 0, 0}, 0, 0, 0, false, 0},
		{"unmasked", []byte{0x82, 0x05, 1, 2, 3, 4, 5}, 0, 0, 0, false, 1002},
		{"reserved bit", hdr(0xC2, 0x85), 0, 0, 0, false, 1002},
		{"unknown opcode", hdr(0x83, 0x80), 0, 0, 0, false, 1002},
		{"fragmented ping", hdr(0x09, 0x80), 0, 0, 0, false, 1002},
		{"long control frame", hdr(0x88, 0xFE, 0x00, 0x7E), 0, 0, 0, false, 1002},
		{"64-bit length with the top bit", hdr(0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0), 0, 0, 0, false, 1002},
	}
	for _, c := range cases {
		h, size, err := parseHeader(c.in, false)
		if c.code != 0 {
			if err == nil || err.Code != c.code {
				t.Errorf("%s: error %v, want close %d", c.name, err, c.code)
			}
			continue
		}
		if err != nil || size != c.size {
			t.Errorf("%s: size %d err %v, want size %d", c.name, size, err, c.size)
			continue
		}
		if size > 0 && (h.length != c.length || h.opcode != c.op || h.fin != c.fin || !bytes.Equal(h.mask[:], key)) {
			t.Errorf("%s: got %+v", c.name, h)
		}
	}
}

func TestUnmaskAnyOffsetAndLength(t *testing.T) {
	key := [4]byte{0xA1, 0xB2, 0xC3, 0xD4}
	for n := 0; n < 200; n += 1 + n/40 {
		for split := 0; split <= n; split += 1 + split/16 {
			orig := make([]byte, n)
			for i := range orig {
				orig[i] = byte(i * 13)
			}
			p := append([]byte(nil), orig...)
			pos := Unmask(p[:split], p[:split], key, 0)
			Unmask(p[split:], p[split:], key, pos)
			for i := range p {
				if p[i] != orig[i]^key[i%4] {
					t.Fatalf("n %d split %d: byte %d wrong", n, split, i)
				}
			}
			// into a destination before the source, overlapping it
			for shift := 1; shift <= 9; shift++ {
				q := append(make([]byte, shift), orig...)
				pos := Unmask(q[:split], q[shift:shift+split], key, 0)
				Unmask(q[split:], q[shift+split:], key, pos)
				for i := 0; i < n; i++ {
					if q[i] != orig[i]^key[i%4] {
						t.Fatalf("n %d split %d shift %d: byte %d wrong", n, split, shift, i)
					}
				}
			}
		}
	}
}

func TestPutHeader(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536, 1 << 20} {
		buf := make([]byte, MaxHeader+4)
		start := PutHeader(buf, MaxHeader, OpBinary, n)
		h := buf[start:MaxHeader]
		// a server frame parses as a client frame once the mask bit and
		// key are added
		client := append([]byte{h[0], h[1] | 0x80}, h[2:]...)
		client = append(client, 0, 0, 0, 0)
		ph, size, err := parseHeader(client, false)
		if err != nil || size != len(client) || ph.length != int64(n) || !ph.fin || ph.opcode != OpBinary {
			t.Errorf("length %d: header %x parses as %+v, %d, %v", n, h, ph, size, err)
		}
	}
}

func TestClosePayload(t *testing.T) {
	p := ClosePayload(make([]byte, 0, 125), 1001, "going away")
	code, reason, err := ParseClosePayload(p)
	if err != nil || code != 1001 || reason != "going away" {
		t.Fatalf("round trip: %d %q %v", code, reason, err)
	}
	if p := ClosePayload(nil, CloseNoStatus, ""); len(p) != 0 {
		t.Fatalf("1005 is echoed as an empty Close, got %x", p)
	}
	for _, bad := range [][]byte{{0x03}, {0x03, 0xED}, {0x03, 0xE8, 0xFF}, {0x13, 0x88}} {
		if _, _, err := ParseClosePayload(bad); err == nil {
			t.Errorf("%x accepted", bad)
		}
	}
	if code, _, err := ParseClosePayload(nil); err != nil || code != CloseNoStatus {
		t.Errorf("empty Close: %d %v", code, err)
	}
}

// FuzzParseHeader: whatever the bytes, parsing neither panics nor claims
// more bytes than it was given, and a parsed header re-encodes to them.
func FuzzParseHeader(f *testing.F) {
	f.Add([]byte{0x82, 0x85, 1, 2, 3, 4})
	f.Add([]byte{0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4})
	f.Add([]byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8})
	f.Fuzz(func(t *testing.T, p []byte) {
		h, size, err := parseHeader(p, false)
		if err != nil || size == 0 {
			return
		}
		if size > len(p) || size < 6 || size > 14 {
			t.Fatalf("size %d of %d bytes", size, len(p))
		}
		if h.opcode >= OpClose && (h.length > MaxControlPayload || !h.fin) {
			t.Fatalf("control frame accepted: %+v", h)
		}
		if h.length < 0 {
			t.Fatalf("negative length %d", h.length)
		}
	})
}

// Prepare makes a final, unmasked frame with the shortest length
// encoding.
func TestPrepare(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 1 << 20} {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i)
		}
		f := Prepare(OpText, p)
		if f[0] != 0x80|OpText || f[1]&0x80 != 0 {
			t.Fatalf("%d: header % x", n, f[:2])
		}
		var length, hs int
		switch l := int(f[1]); {
		case l < 126:
			length, hs = l, 2
		case l == 126:
			length, hs = int(binary.BigEndian.Uint16(f[2:])), 4
		default:
			length, hs = int(binary.BigEndian.Uint64(f[2:])), 10
		}
		wantHS := 2
		if n >= 126 {
			wantHS = 4
		}
		if n >= 1<<16 {
			wantHS = 10
		}
		if length != n || hs != wantHS || len(f) != hs+n || string(f[hs:]) != string(p) {
			t.Fatalf("%d: length %d, header %d bytes, frame %d bytes", n, length, hs, len(f))
		}
	}
}

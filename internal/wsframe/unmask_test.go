package wsframe

import (
	"bytes"
	"crypto/subtle"
	"fmt"
	"math/rand"
	"testing"
	"unsafe"
)

// unmaskRef is the byte-by-byte definition the fast paths are held to
// (RFC 6455 §5.3): dst[i] = src[i] ^ key[(pos+i)%4].
func unmaskRef(dst, src []byte, key [4]byte, pos int) int {
	for i := range src {
		dst[i] = src[i] ^ key[pos&3]
		pos++
	}
	return pos & 3
}

type unmaskImpl struct {
	name string
	fn   func(dst, src []byte, key [4]byte, pos int) int
}

// unmaskImpls are Unmask as callers get it and each path on its own, the
// SIMD one only where this CPU has it, at every length (not only from
// simdMin up).
func unmaskImpls() []unmaskImpl {
	impls := []unmaskImpl{{"Unmask", Unmask}, {"words", unmaskWords}}
	if useSIMD {
		impls = append(impls, unmaskImpl{simdName, func(dst, src []byte, key [4]byte, pos int) int {
			unmaskSIMD(dst[:len(src)], src, keyWord(key, pos))
			return (pos + len(src)) & 3
		}})
	}
	return impls
}

// aligned64 returns a buffer of n bytes whose first byte is 64-byte
// aligned.
func aligned64(n int) []byte {
	b := make([]byte, n+64)
	off := int(-uintptr(unsafe.Pointer(&b[0])) & 63)
	return b[off : off+n]
}

const guard = 0x5a

// guards is a run of guard bytes, as long as any buffer checkUnmask
// guards: filling and checking with copy and bytes.Equal keeps the
// exhaustive test quick under -race, which instruments every byte a Go
// loop touches.
var guards = bytes.Repeat([]byte{guard}, 1<<17+256)

// keyStream is the key repeated from key phase pos, n bytes long: the
// reference of checkUnmask is then one XOR of whole slices (crypto/subtle's,
// not a path of this package).
func keyStream(key [4]byte, pos, n int) []byte {
	ks := make([]byte, n+4)
	for i := range 4 {
		ks[i] = key[(pos+i)&3]
	}
	for i := 4; i < len(ks); i *= 2 {
		copy(ks[i:], ks[:i])
	}
	return ks[:n]
}

// unguarded returns the first byte of b[from:to] that is not a guard
// byte, or -1.
func unguarded(b []byte, from, to int) int {
	if from >= to || bytes.Equal(b[from:to], guards[:to-from]) {
		return -1
	}
	for i := from; i < to; i++ {
		if b[i] != guard {
			return i
		}
	}
	panic("unreachable")
}

// checkUnmask runs fn on src placed at alignment align of a guarded
// buffer, into dst at dstAlign (in place when dstAlign is -1, or shift
// bytes before src when shift > 0), and compares the result, the returned
// key position and every byte around it with the reference.
func checkUnmask(t testing.TB, impl unmaskImpl, data []byte, key [4]byte, pos, align, dstAlign, shift int) {
	t.Helper()
	n := len(data)
	want := make([]byte, n)
	subtle.XORBytes(want, data, keyStream(key, pos, n))
	wantPos := (pos + n) & 3

	buf := aligned64(64 + 64 + n + 64)
	copy(buf, guards)
	s := 64 + align
	copy(buf[s:], data)
	var d int
	switch {
	case shift > 0:
		d = s - shift
	case dstAlign < 0:
		d = s
	default:
		d = -1
	}
	var out []byte
	var other []byte // the separate destination's buffer, guarded too
	if d >= 0 {
		out = buf[d : d+n]
		gotPos := impl.fn(out, buf[s:s+n], key, pos)
		if gotPos != wantPos {
			t.Fatalf("%s n %d align %d pos %d shift %d: returned %d, want %d", impl.name, n, align, pos, shift, gotPos, wantPos)
		}
	} else {
		other = aligned64(64 + 64 + n + 64)
		copy(other, guards)
		d = 64 + dstAlign
		out = other[d : d+n]
		// room past len(src) in dst: only len(src) bytes may be written
		gotPos := impl.fn(other[d:], buf[s:s+n], key, pos)
		if gotPos != wantPos {
			t.Fatalf("%s n %d align %d dst %d pos %d: returned %d, want %d", impl.name, n, align, dstAlign, pos, gotPos, wantPos)
		}
		if !bytes.Equal(buf[s:s+n], data) {
			t.Fatalf("%s n %d align %d dst %d pos %d: src changed", impl.name, n, align, dstAlign, pos)
		}
	}
	if !bytes.Equal(out, want) {
		for i := range out {
			if out[i] != want[i] {
				t.Fatalf("%s n %d align %d dst %d shift %d pos %d: byte %d is %#x, want %#x",
					impl.name, n, align, dstAlign, shift, pos, i, out[i], want[i])
			}
		}
	}
	// Every byte outside dst (and, in place or overlapping, outside what
	// is left of src) keeps its guard: [0, lo) and [hi, len) around one
	// written span, or the gap too when dst ends before src starts.
	outer, lo, hi, gapFrom, gapTo := buf, d, d+n, 0, 0
	if other != nil {
		outer = other
	} else {
		lo, hi = min(d, s), max(d+n, s+n)
		if d+n < s {
			gapFrom, gapTo = d+n, s
		}
	}
	for _, r := range [][2]int{{0, lo}, {gapFrom, gapTo}, {hi, len(outer)}} {
		if i := unguarded(outer, r[0], r[1]); i >= 0 {
			t.Fatalf("%s n %d align %d dst %d shift %d pos %d: byte %d outside dst written",
				impl.name, n, align, dstAlign, shift, pos, i-d)
		}
	}
}

// TestUnmaskExhaustive holds every path to the reference at every length
// up to 300, every alignment of src within a cache line, every key phase,
// and three placements of dst: in place, elsewhere (at another alignment),
// and overlapping, just before src.
func TestUnmaskExhaustive(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	data := make([]byte, 300)
	rng.Read(data)
	key := [4]byte{0x9e, 0x37, 0x79, 0xb9}
	for _, impl := range unmaskImpls() {
		for n := 0; n <= 300; n++ {
			for align := 0; align < 64; align++ {
				for pos := 0; pos < 4; pos++ {
					checkUnmask(t, impl, data[:n], key, pos, align, -1, 0)
					checkUnmask(t, impl, data[:n], key, pos, align, (align*7+pos+n)&63, 0)
					checkUnmask(t, impl, data[:n], key, pos, align, -1, 1+(align+n)%33)
				}
			}
		}
	}
}

// TestUnmaskLong covers the main loops over many rounds, with lengths
// around their block sizes, and a payload unmasked in pieces whose
// returned key positions chain.
func TestUnmaskLong(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	data := make([]byte, 70000)
	rng.Read(data)
	key := [4]byte{1, 0x80, 0xff, 0x42}
	for _, impl := range unmaskImpls() {
		for _, n := range []int{511, 512, 513, 4095, 4096, 4097, 65535, 65536, 65537, 70000} {
			for _, align := range []int{0, 1, 3, 31, 32, 33, 63} {
				checkUnmask(t, impl, data[:n], key, align&3, align, -1, 0)
				checkUnmask(t, impl, data[:n], key, 3, align, 17, 0)
				checkUnmask(t, impl, data[:n], key, 1, align, -1, 14)
			}
		}
		want := make([]byte, len(data))
		unmaskRef(want, data, key, 2)
		got := append([]byte(nil), data...)
		pos := 2
		for off := 0; off < len(got); {
			k := min(1+rng.Intn(3000), len(got)-off)
			pos = impl.fn(got[off:off+k], got[off:off+k], key, pos)
			off += k
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: unmasking in pieces differs from the reference", impl.name)
		}
	}
}

// FuzzUnmask: random data, key, key phase, alignment of src and placement
// of dst (in place, separate, or overlapping before src), every path
// against the reference.
func FuzzUnmask(f *testing.F) {
	f.Add([]byte("hello, world"), uint32(0x01020304), uint8(0), uint8(0), uint8(0))
	f.Add(bytes.Repeat([]byte{0xff}, 200), uint32(0xdeadbeef), uint8(3), uint8(61), uint8(5))
	f.Fuzz(func(t *testing.T, data []byte, k uint32, phase, align, place uint8) {
		if len(data) > 1<<16 {
			data = data[:1<<16]
		}
		key := [4]byte{byte(k), byte(k >> 8), byte(k >> 16), byte(k >> 24)}
		a := int(align & 63)
		for _, impl := range unmaskImpls() {
			switch {
			case place == 0:
				checkUnmask(t, impl, data, key, int(phase&3), a, -1, 0)
			case place < 64:
				checkUnmask(t, impl, data, key, int(phase&3), a, int(place), 0)
			default:
				checkUnmask(t, impl, data, key, int(phase&3), a, -1, 1+int(place-64)%64)
			}
		}
	})
}

// BenchmarkUnmask: each path at each size, in place at a cache-line
// aligned buffer plus 2 (where a small frame's payload starts), in MB/s.
func BenchmarkUnmask(b *testing.B) {
	key := [4]byte{0x9e, 0x37, 0x79, 0xb9}
	for _, impl := range unmaskImpls() {
		for _, n := range []int{16, 128, 1 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("%s/%d", impl.name, n), func(b *testing.B) {
				buf := aligned64(n + 64)[2 : 2+n]
				b.SetBytes(int64(n))
				for b.Loop() {
					impl.fn(buf, buf, key, 1)
				}
			})
		}
	}
}

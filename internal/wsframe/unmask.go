package wsframe

import "encoding/binary"

// Unmask XORs src with the mask key, starting at key position pos, into
// dst, and returns the position after src. dst may overlap src if it starts
// at or before it. This is the one pass the relay makes over client data:
// on amd64 with AVX2 it runs 32 bytes an instruction (unmask_amd64.s), and
// elsewhere 8 bytes at a time (unmaskWords).
func Unmask(dst, src []byte, key [4]byte, pos int) int {
	dst = dst[:len(src)]
	if useSIMD && len(src) >= simdMin {
		unmaskSIMD(dst, src, keyWord(key, pos))
		return (pos + len(src)) & 3
	}
	return unmaskWords(dst, src, key, pos)
}

// simdMin is the shortest payload given to the SIMD path: below it, the
// word loop is as fast (BenchmarkUnmask).
const simdMin = 32

// keyWord is the key as a little-endian word whose first byte is the key
// byte at position pos, so that XORing the word at any multiple of four
// bytes from the start continues the mask.
func keyWord(key [4]byte, pos int) uint32 {
	return uint32(key[pos&3]) | uint32(key[(pos+1)&3])<<8 | uint32(key[(pos+2)&3])<<16 | uint32(key[(pos+3)&3])<<24
}

// unmaskWords is Unmask eight bytes at a time, in portable Go: the
// fallback where there is no SIMD path, and the path for short payloads.
func unmaskWords(dst, src []byte, key [4]byte, pos int) int {
	dst = dst[:len(src)]
	if len(src) >= 8 {
		k32 := keyWord(key, pos)
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

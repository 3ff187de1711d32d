//go:build !purego

package wsframe

import "golang.org/x/sys/cpu"

// useSIMD is decided once, at start-up: AVX2 is there (and the OS saves
// the YMM registers) or the word loop is used.
var useSIMD = cpu.X86.HasAVX2

// simdName names the SIMD path in tests and benchmarks.
const simdName = "avx2"

// unmaskSIMD XORs src with key, a little-endian word whose low byte is the
// key byte due at src[0], into dst[:len(src)]. dst may overlap src if it
// starts at or before it. Any length and alignment; it needs AVX2.
//
//go:noescape
func unmaskSIMD(dst, src []byte, key uint32)

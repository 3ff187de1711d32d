//go:build !amd64 || purego

package wsframe

// No SIMD path on this architecture (or with -tags purego): Unmask always
// takes unmaskWords.
const useSIMD = false

const simdName = ""

// unmaskSIMD is never called: useSIMD is false.
func unmaskSIMD(dst, src []byte, key uint32) {
	panic("wsframe: no SIMD unmask on this platform")
}

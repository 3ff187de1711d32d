package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
)

// Every tunnel carries its own byte stream, known to both ends without
// being sent: byte i of tunnel seed s is patternBlock[(s+i) mod 1 MiB] XOR
// byte(i>>20). The upstream checks each byte it receives against it and
// echoes it; the client checks each echoed byte. A lost, duplicated,
// reordered or altered byte shifts or changes what follows, and the random
// block makes that show at the first wrong byte (the XOR term makes the
// stream repeat only every 256 MiB, so a whole lost mebibyte shows too).

const patternSize = 1 << 20

var patternBlock = func() []byte {
	b := make([]byte, patternSize)
	r := rand.New(rand.NewPCG(0x50a4, 0x7e57))
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}()

// fillPattern writes bytes off.. of stream seed into dst.
func fillPattern(dst []byte, seed uint64, off int64) {
	for len(dst) > 0 {
		pos := int((uint64(off) + seed) % patternSize)
		n := copy(dst, patternBlock[pos:])
		// Stay within one mebibyte of the stream: the XOR byte is constant there.
		n = min(n, int(patternSize-off%patternSize))
		if x := byte(off >> 20); x != 0 {
			for i := range n {
				dst[i] ^= x
			}
		}
		dst, off = dst[n:], off+int64(n)
	}
}

// checker verifies a received stream chunk by chunk.
type checker struct {
	seed    uint64
	off     int64 // bytes verified so far
	scratch []byte
	bad     string // the first mismatch; nothing is verified after it
}

// check verifies p as the next bytes of the stream and reports whether they
// (and all before them) were right.
func (c *checker) check(p []byte) bool {
	if c.bad != "" {
		return false
	}
	if cap(c.scratch) < len(p) {
		c.scratch = make([]byte, len(p))
	}
	want := c.scratch[:len(p)]
	fillPattern(want, c.seed, c.off)
	if !bytes.Equal(p, want) {
		i := 0
		for i < len(p) && p[i] == want[i] {
			i++
		}
		c.bad = fmt.Sprintf("byte %d is %#02x, want %#02x", c.off+int64(i), p[i], want[i])
		return false
	}
	c.off += int64(len(p))
	return true
}

// seedOf derives a tunnel's stream from its number (splitmix64).
func seedOf(n uint64) uint64 {
	z := n + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

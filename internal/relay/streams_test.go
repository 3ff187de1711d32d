package relay

import (
	"crypto/sha256"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Long streams through the socket fast path, and backpressure.

// patternReader yields a stream whose every byte depends on its position
// only, so both ends can recompute it whatever the read sizes. It repeats
// a table whose length is prime: a lost, doubled or reordered piece of
// the stream shows, unless its length is a multiple of that prime.
type patternReader struct{ pos int }

var patternTable = func() []byte {
	b := make([]byte, 65521)
	for x := range b {
		b[x] = byte(x ^ x>>9 ^ x>>17)
	}
	return b
}()

func (p *patternReader) Read(b []byte) (int, error) {
	for n := 0; n < len(b); {
		k := copy(b[n:], patternTable[p.pos%len(patternTable):])
		n += k
		p.pos += k
	}
	return len(b), nil
}

func patternSum(n int64) [sha256.Size]byte {
	h := sha256.New()
	io.CopyBuffer(h, io.LimitReader(&patternReader{}, n), make([]byte, 1<<20))
	return [sha256.Size]byte(h.Sum(nil))
}

const longStream = 16 << 20

// 16 MiB from the client in messages of varied sizes (1 byte to 1 MiB):
// the upstream gets every byte in order, then EOF when the client closes,
// and the client gets its Close back.
func TestLongUploadThenClientClose(t *testing.T) {
	t.Parallel()
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	_, ended := started(testConfig(nil), clientSide, upSide, false)

	type result struct {
		n   int64
		sum [sha256.Size]byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		h := sha256.New()
		upstream.SetReadDeadline(time.Now().Add(2 * time.Minute))
		n, err := io.Copy(h, upstream) // ends at EOF: the FIN sent after the client's Close
		upstream.Close()
		got <- result{n, [sha256.Size]byte(h.Sum(nil)), err}
	}()
	go func() {
		src := &patternReader{}
		sizes := []int{1, 100, 4096, 65536, 1 << 20, 7}
		msg := make([]byte, 1<<20)
		for sent, i := 0, 0; sent < longStream; i++ {
			k := min(sizes[i%len(sizes)], longStream-sent)
			src.Read(msg[:k])
			if _, err := client.Write(maskedFrame(0x82, msg[:k])); err != nil {
				return
			}
			sent += k
		}
		client.Write(maskedFrame(0x88, []byte{0x03, 0xE8})) // Close 1000
	}()
	r := <-got
	if r.err != nil || r.n != longStream || r.sum != patternSum(longStream) {
		t.Fatalf("upstream got %d bytes (%v), hash match %v", r.n, r.err, r.sum == patternSum(longStream))
	}
	client.SetReadDeadline(time.Now().Add(ioTimeout))
	if p := untilClose(t, &frameReader{c: client}, nil); closeCode(p) != wsframe.CloseNormal {
		t.Fatalf("Close echo %d", closeCode(p))
	}
	client.Close()
	if e := <-ended; e.Code != wsframe.CloseNormal || e.By != ByClient {
		t.Fatalf("ended %+v", e)
	}
}

// 16 MiB from the upstream, which then closes: the client gets every byte
// in binary messages no larger than the buffer, then Close 1000.
func TestLongDownloadThenUpstreamClose(t *testing.T) {
	t.Parallel()
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	cfg := testConfig(nil)
	_, ended := started(cfg, clientSide, upSide, false)
	go func() {
		io.CopyN(upstream, &patternReader{}, longStream)
		upstream.Close()
	}()
	client.SetReadDeadline(time.Now().Add(2 * time.Minute))
	fr := &frameReader{c: client}
	h := sha256.New()
	var n int64
	for {
		op, p := fr.next(t)
		if op == wsframe.OpClose {
			if closeCode(p) != wsframe.CloseNormal {
				t.Fatalf("after %d bytes: Close %d, want 1000", n, closeCode(p))
			}
			break
		}
		if op != wsframe.OpBinary || len(p) > cfg.BufferSize {
			t.Fatalf("op %d, a message of %d bytes", op, len(p))
		}
		h.Write(p)
		n += int64(len(p))
	}
	if n != longStream || [sha256.Size]byte(h.Sum(nil)) != patternSum(longStream) {
		t.Fatalf("client got %d of %d bytes; hash match %v", n, longStream, [sha256.Size]byte(h.Sum(nil)) == patternSum(longStream))
	}
	client.Close()
	if e := <-ended; e.Code != wsframe.CloseNormal || e.By != ByUpstream {
		t.Fatalf("ended %+v", e)
	}
}

// A client that stops reading: the upstream is slowed by TCP flow control
// and the relay's heap does not grow with what the upstream tries to
// send; once the client reads again, everything arrives. Not parallel:
// it measures the heap, which other tests would grow.
func TestSlowClientBackpressureBoundsMemory(t *testing.T) {
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	_, ended := started(testConfig(nil), clientSide, upSide, false)

	heapBefore := heapInUse()
	const total = 256 << 20
	chunk := make([]byte, 64<<10)
	src := &patternReader{}
	var written int64
	// Write until the pipe is full: a write that cannot finish in a second
	// means every buffer on the way is full (on a machine too busy for
	// that, the test only checks less).
	for written < total {
		src.Read(chunk)
		upstream.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := upstream.Write(chunk)
		written += int64(n)
		if err != nil {
			break
		}
	}
	growth := heapInUse() - heapBefore
	t.Logf("upstream wrote %d MiB before stalling; heap grew by %d KiB", written>>20, growth>>10)
	if written >= total {
		t.Fatalf("the upstream wrote all %d MiB to a client that reads nothing: no backpressure", total>>20)
	}
	if growth > 4<<20 {
		t.Fatalf("heap grew by %d KiB while the client did not read; want < 4 MiB", growth>>10)
	}

	// The client reads again: everything arrives, nothing lost.
	upstream.SetWriteDeadline(time.Time{})
	go func() {
		// finish the chunk cut by the deadline, then close
		if rest := written % int64(len(chunk)); rest > 0 {
			upstream.Write(chunk[rest:])
		}
		upstream.Close()
	}()
	client.SetReadDeadline(time.Now().Add(2 * time.Minute))
	fr := &frameReader{c: client}
	h := sha256.New()
	var n int64
	untilCloseHashing(t, fr, func(p []byte) { h.Write(p); n += int64(len(p)) })
	if n%int64(len(chunk)) != 0 || [sha256.Size]byte(h.Sum(nil)) != patternSum(n) {
		t.Fatalf("after backpressure the client got %d bytes, not the upstream's stream", n)
	}
	client.Close()
	<-ended
}

func untilCloseHashing(t *testing.T, fr *frameReader, data func([]byte)) {
	t.Helper()
	for {
		op, p := fr.next(t)
		if op == wsframe.OpClose {
			return
		}
		data(p)
	}
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

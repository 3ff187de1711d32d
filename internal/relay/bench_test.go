package relay

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
)

// The pumps' microbenchmarks: a tunnel between two loopback TCP pairs,
// with no Caddy in front, next to a plain relay (a goroutine pair with a
// 32 KiB buffer each way) over the same sockets. Run with
//
//	go test -run XXX -bench Pump -benchmem ./internal/relay
//
// allocs/op is per message: 0 in the steady state.

// benchTunnel starts a tunnel and returns the client's and the upstream's
// ends of it.
func benchTunnel(b *testing.B) (client, upstream net.Conn) {
	client, clientSide := tcpPair(b)
	upSide, upstream := tcpPair(b)
	started(testConfig(nil), clientSide, upSide, false)
	return client, upstream
}

// benchPlainRelay relays like bench/relay does.
func benchPlainRelay(b *testing.B) (client, upstream net.Conn) {
	client, clientSide := tcpPair(b)
	upSide, upstream := tcpPair(b)
	relay := func(dst, src net.Conn) {
		io.CopyBuffer(dst, struct{ io.Reader }{src}, make([]byte, 32<<10))
	}
	go relay(upSide, clientSide)
	go relay(clientSide, upSide)
	return client, upstream
}

// maskedFrames returns count client frames of size bytes each, back to back.
func maskedFrames(size, count int) []byte {
	var out []byte
	for range count {
		out = append(out, maskedFrame(0x82, make([]byte, size))...)
	}
	return out
}

func BenchmarkPumpClientToUpstream(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10} {
		for _, kind := range []string{"ws_to_tcp", "plain_relay"} {
			b.Run(fmt.Sprintf("%s/%dKiB", kind, size>>10), func(b *testing.B) {
				var client, upstream net.Conn
				var payload []byte
				if kind == "plain_relay" {
					client, upstream = benchPlainRelay(b)
					payload = make([]byte, size)
				} else {
					client, upstream = benchTunnel(b)
					payload = maskedFrames(size, 1)
				}
				batch := max(1, (256<<10)/size)
				frames := make([]byte, 0, batch*len(payload))
				for range batch {
					frames = append(frames, payload...)
				}
				done := make(chan error, 1)
				total := int64(b.N) * int64(size)
				go func() {
					_, err := io.CopyN(io.Discard, upstream, total)
					done <- err
				}()
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				for sent := 0; sent < b.N; sent += batch {
					n := min(batch, b.N-sent)
					if _, err := client.Write(frames[:n*len(payload)]); err != nil {
						b.Fatal(err)
					}
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

func BenchmarkPumpUpstreamToClient(b *testing.B) {
	for _, size := range []int{1 << 10, 32 << 10} {
		for _, kind := range []string{"ws_to_tcp", "plain_relay"} {
			b.Run(fmt.Sprintf("%s/%dKiB", kind, size>>10), func(b *testing.B) {
				var client, upstream net.Conn
				count := countPayload
				if kind == "plain_relay" {
					client, upstream = benchPlainRelay(b)
					count = countRaw
				} else {
					client, upstream = benchTunnel(b)
				}
				chunk := make([]byte, size)
				done := make(chan error, 1)
				total := int64(b.N) * int64(size)
				go func() { done <- count(client, total) }()
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					if _, err := upstream.Write(chunk); err != nil {
						b.Fatal(err)
					}
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

func countRaw(c net.Conn, total int64) error {
	_, err := io.CopyN(io.Discard, c, total)
	return err
}

// countPayload reads server frames until total payload bytes have come.
func countPayload(c net.Conn, total int64) error {
	buf := make([]byte, 64<<10)
	var got, remaining int64
	var hdr []byte // a header split across reads
	for got < total {
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		p := buf[:n]
		for len(p) > 0 {
			if remaining > 0 {
				k := min(remaining, int64(len(p)))
				got += k
				remaining -= k
				p = p[k:]
				continue
			}
			hdr = append(hdr, p[0])
			p = p[1:]
			if len(hdr) < 2 {
				continue
			}
			need := 2
			switch hdr[1] & 0x7F {
			case 126:
				need = 4
			case 127:
				need = 10
			}
			if len(hdr) < need {
				continue
			}
			switch need {
			case 2:
				remaining = int64(hdr[1] & 0x7F)
			case 4:
				remaining = int64(binary.BigEndian.Uint16(hdr[2:]))
			default:
				remaining = int64(binary.BigEndian.Uint64(hdr[2:]))
			}
			hdr = hdr[:0]
		}
	}
	return nil
}

// BenchmarkPumpRoundTrip: one 64-byte message to an echo upstream and back,
// one at a time (latency, not throughput).
func BenchmarkPumpRoundTrip(b *testing.B) {
	for _, kind := range []string{"ws_to_tcp", "plain_relay"} {
		b.Run(kind, func(b *testing.B) {
			var client, upstream net.Conn
			msg := make([]byte, 64)
			reply := 64
			if kind == "plain_relay" {
				client, upstream = benchPlainRelay(b)
			} else {
				client, upstream = benchTunnel(b)
				msg = maskedFrame(0x82, msg)
				reply = 2 + 64
			}
			go io.Copy(upstream, upstream)
			buf := make([]byte, reply)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := client.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(client, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package relay

import (
	"io"
	"testing"
	"testing/synctest"
	"time"
)

// The limiter paces exactly (virtual time): the burst at once, the rest at
// the rate; it stops waiting when the tunnel ends.
func TestLimiterPacesAndStops(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(1000, 100, 32<<10) // 1000 B/s, burst 100
		done := make(chan struct{})
		start := time.Now()
		for i := range 3 { // 300 bytes: the first 100 at once, then 100 every 0.1 s
			if !l.wait(100, done) {
				t.Fatal("wait refused")
			}
			if el, want := time.Since(start), time.Duration(i)*100*time.Millisecond; el != want {
				t.Fatalf("wait %d returned at %v, want %v", i, el, want)
			}
		}
		go func() {
			time.Sleep(50 * time.Millisecond) // virtual time: the test runs in a synctest bubble
			close(done)
		}()
		if l.wait(100, done) {
			t.Fatal("wait did not stop when the tunnel ended")
		}
		if el := time.Since(start); el != 250*time.Millisecond {
			t.Fatalf("the ended wait returned at %v, want 250ms", el)
		}
	})
	if newLimiter(0, 0, 1024) != nil {
		t.Fatal("a zero rate must mean no limiter")
	}
	if d := newLimiter(1<<30, 0, 1024); d.burst != 1024 {
		t.Fatalf("default burst %d, want buffer_size 1024", d.burst)
	}
	if d := newLimiter(100, 0, 32<<10); d.burst != 512 {
		t.Fatalf("default burst %d, want the 512-byte floor", d.burst)
	}
}

// BenchmarkThrottle measures the rate a throttled tunnel keeps, the figure
// the README quotes for `throttle` (over 10 s: -benchtime 10s): read at
// 1 Mbps (client to upstream) and write at 100 Mbps (upstream to client),
// each with its peer sending as fast as it can. It reports Mbps.
func BenchmarkThrottle(b *testing.B) {
	for _, c := range []struct {
		name string
		mbps int64
		read bool
	}{{"read/1Mbps", 1, true}, {"write/100Mbps", 100, false}} {
		b.Run(c.name, func(b *testing.B) {
			rate := c.mbps * 1e6 / 8
			client, clientSide := tcpPair(b)
			upSide, upstream := tcpPair(b)
			cfg := testConfig(func(cfg *Config) {
				if c.read {
					cfg.ReadRate = rate
				} else {
					cfg.WriteRate = rate
				}
			})
			started(cfg, clientSide, upSide, false)
			sender, receiver := io.Writer(client), io.Reader(upstream)
			chunk := maskedFrame(0x82, make([]byte, 16<<10))
			if !c.read {
				sender, receiver = upstream, client
				chunk = make([]byte, 64<<10)
			}
			go func() {
				for {
					if _, err := sender.Write(chunk); err != nil {
						return
					}
				}
			}()
			// Count what arrives (frame headers too, downstream: 4 bytes in
			// 32 KiB) once the first burst is through: each op is half a
			// second's worth.
			buf := make([]byte, 64<<10)
			per := rate / 2
			readPer := func() int64 {
				got := int64(0)
				for got < per {
					k, err := receiver.Read(buf)
					if err != nil {
						b.Fatal(err)
					}
					got += int64(k)
				}
				return got
			}
			readPer()
			var n int64
			start := time.Now()
			for b.Loop() {
				n += readPer()
			}
			b.ReportMetric(float64(n*8)/time.Since(start).Seconds()/1e6, "Mbps")
		})
	}
}

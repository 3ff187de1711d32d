package relay

import (
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
			time.Sleep(50 * time.Millisecond)
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

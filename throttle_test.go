package wstotcp

import (
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	good := map[string]int64{
		"512kbps": 64000, "10Mbps": 1250000, "1Gbps": 125000000, "8bps": 1, "1mbps": 125000,
		"2MiB/s": 2 << 20, "64KiB/s": 64 << 10, "1GiB/s": 1 << 30, "1000B/s": 1000, "1.5MB/s": 1500000,
	}
	for in, want := range good {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "100", "Mbps", "-1Mbps", "0kbps", "1bps", "1e400Gbps", "NaNMbps", "1 furlong/s"} {
		if got, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) = %d, want an error", bad, got)
		}
	}
}

func TestLimiterPacesAndStops(t *testing.T) {
	l := newLimiter(1000, 100, 32<<10) // 1000 B/s, burst 100
	done := make(chan struct{})
	start := time.Now()
	for range 3 { // 300 bytes: the first 100 at once, 200 more take 0.2 s
		if !l.wait(100, done) {
			t.Fatal("wait refused")
		}
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Fatalf("300 bytes at 1000 B/s with burst 100 passed in %v", el)
	}
	close(done)
	if l.wait(100, done) && l.wait(100, done) {
		t.Fatal("wait did not stop when the tunnel ended")
	}
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

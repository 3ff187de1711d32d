package wstotcp

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"
)

// Throttle caps a tunnel's bandwidth, each way. Rates are in bytes per
// second; the Caddyfile also takes bits per second (`512kbps`, `10Mbps`,
// `1Gbps`) and bytes per second with units (`2MiB/s`).
type Throttle struct {
	// Client to upstream, in bytes per second. Default: 0, no cap.
	Read int64 `json:"read,omitempty"`

	// Upstream to client, in bytes per second. Default: 0, no cap.
	Write int64 `json:"write,omitempty"`

	// The most bytes sent at once after a pause, in bytes. Default: a
	// quarter of a second at the rate, at least 512 bytes and at most
	// buffer_size.
	Burst int64 `json:"burst,omitempty"`
}

// limiter paces one direction of one tunnel. Waiting keeps backpressure:
// the pump does not read on while it waits, so nothing piles up.
type limiter struct {
	lim   *rate.Limiter
	burst int
	timer *time.Timer // reused: a wait allocates nothing
}

func newLimiter(bytesPerSec, burst int64, bufferSize int) *limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = min(max(bytesPerSec/4, 512), int64(bufferSize))
	}
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &limiter{lim: rate.NewLimiter(rate.Limit(bytesPerSec), int(burst)), burst: int(burst), timer: t}
}

// wait blocks until n bytes (at most burst) may pass, or done is closed.
func (l *limiter) wait(n int, done <-chan struct{}) bool {
	now := time.Now()
	d := l.lim.ReserveN(now, n).DelayFrom(now)
	if d <= 0 {
		return true
	}
	l.timer.Reset(d)
	select {
	case <-l.timer.C:
		return true
	case <-done:
		l.timer.Stop()
		return false
	}
}

// parseRate reads a bandwidth: bits per second with bps, kbps, Mbps or Gbps
// (powers of 1000), or bytes per second with B/s, KB/s, MB/s, GB/s (powers
// of 1000) or KiB/s, MiB/s, GiB/s (powers of 1024). It returns bytes per
// second.
func parseRate(s string) (int64, error) {
	units := []struct {
		suffix string
		bytes  float64 // bytes per second per unit
	}{
		{"kbps", 1e3 / 8}, {"mbps", 1e6 / 8}, {"gbps", 1e9 / 8}, {"bps", 1.0 / 8},
		{"kib/s", 1 << 10}, {"mib/s", 1 << 20}, {"gib/s", 1 << 30},
		{"kb/s", 1e3}, {"mb/s", 1e6}, {"gb/s", 1e9}, {"b/s", 1},
	}
	lower := strings.ToLower(strings.TrimSpace(s))
	for _, u := range units {
		num, ok := strings.CutSuffix(lower, u.suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			return 0, fmt.Errorf("invalid rate %q: want a positive number before %s", s, u.suffix)
		}
		b := v * u.bytes
		if b < 1 || b > math.MaxInt64/2 {
			return 0, fmt.Errorf("rate %q is out of range", s)
		}
		return int64(b), nil
	}
	return 0, fmt.Errorf("invalid rate %q: use bits per second (512kbps, 10Mbps, 1Gbps) or bytes per second (64KiB/s, 2MiB/s)", s)
}

package wstotcp

import (
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

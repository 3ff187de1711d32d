package relay

import (
	"time"

	"golang.org/x/time/rate"
)

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

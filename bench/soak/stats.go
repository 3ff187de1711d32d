package main

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// stats is what the soak's clients count as they go: tunnels live by
// transport and route, handshakes (when and how long), bytes, broadcasts.
type stats struct {
	mu       sync.Mutex
	byTr     map[string]int // by transport, tunnels launched and not ended
	onRoute  map[string]int // by route
	hs       []handshake
	opens    int
	refusals map[int]int // by HTTP status
	failures int         // handshakes that failed without a status

	bytes atomic.Int64 // sent plus echoed, all tunnels
	texts atomic.Int64 // broadcasts received
}

type handshake struct {
	at      time.Time
	d       time.Duration // the WebSocket handshake: request to answer
	connect time.Duration // with the connection's setup when it needed one
	tr      string
}

func newStats() *stats {
	return &stats{byTr: map[string]int{}, onRoute: map[string]int{}, refusals: map[int]int{}}
}

func (s *stats) launching(t *tunnel) {
	s.mu.Lock()
	s.byTr[t.transport]++
	s.onRoute[t.route]++
	s.mu.Unlock()
}

func (s *stats) opened(t *tunnel) {
	s.mu.Lock()
	s.opens++
	s.hs = append(s.hs, handshake{t.start, t.handshake, t.connect, t.transport})
	s.mu.Unlock()
}

func (s *stats) refused(t *tunnel) {
	s.mu.Lock()
	if t.status != 0 {
		s.refusals[t.status]++
	} else {
		s.failures++
	}
	s.mu.Unlock()
	s.closed(t)
}

func (s *stats) closed(t *tunnel) {
	s.mu.Lock()
	s.byTr[t.transport]--
	s.onRoute[t.route]--
	s.mu.Unlock()
}

func (s *stats) live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, k := range s.byTr {
		n += k
	}
	return n - s.onRoute["/limited"]
}

func (s *stats) liveOn(route string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.onRoute[route]
}

// handshakesFrom returns the handshakes recorded from index i on, and the
// index to continue from.
func (s *stats) handshakesFrom(i int) ([]handshake, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]handshake(nil), s.hs[i:]...), len(s.hs)
}

// handshakesIn returns the handshakes that started in [from, to).
func (s *stats) handshakesIn(from, to time.Time) []handshake {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []handshake
	for _, h := range s.hs {
		if !h.at.Before(from) && h.at.Before(to) {
			out = append(out, h)
		}
	}
	return out
}

// p99 of the handshakes' durations (0 for none).
func percentile(hs []handshake, q float64) time.Duration {
	return percentileOf(hs, q, func(h handshake) time.Duration { return h.d })
}

func percentileOf(hs []handshake, q float64, f func(handshake) time.Duration) time.Duration {
	if len(hs) == 0 {
		return 0
	}
	d := make([]time.Duration, len(hs))
	for i, h := range hs {
		d[i] = f(h)
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(q*float64(len(d))))]
}

package main

import (
	"context"
	"time"
)

// sample is one second of the run, as the report tables and draws it.
type sample struct {
	t          float64 // seconds since the soak began
	phase      string  // baseline, run, drain
	tunnels    int     // Caddy's open tunnels (caddy_ws_to_tcp_connections_active)
	clients    int     // the soak's live tunnels
	rssKiB     int64
	fds        int
	goroutines int
	heapBytes  float64 // go_memstats_heap_alloc_bytes (not collected first)
	hsPerSec   float64
	hsP99      time.Duration
	bytesPerS  float64 // sent plus echoed, at the clients
}

// sampler reads Caddy's figures every second until ctx ends. A figure
// that cannot be read is a violation: the admin endpoint must answer
// through everything.
func (s *soak) sampler(ctx context.Context) {
	defer s.bg.Done()
	tk := time.NewTicker(time.Second)
	defer tk.Stop()
	hsIdx := 0
	lastBytes := s.stats.bytes.Load()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tk.C:
			sm := sample{t: now.Sub(s.began).Seconds(), phase: s.phase.Load().(string), clients: s.stats.live()}
			var err error
			if sm.rssKiB, sm.fds, err = procStats(s.caddy.pid); err != nil {
				s.v.add("sample", "/proc of Caddy: %v", err)
			}
			if sm.goroutines, err = s.admin.goroutines(); err != nil {
				s.v.add("sample", "goroutines: %v", err)
			}
			m, err := s.admin.metrics("caddy_ws_to_tcp_connections_active", "go_memstats_heap_alloc_bytes")
			if err != nil {
				s.v.add("sample", "metrics: %v", err)
			}
			sm.tunnels = int(m["caddy_ws_to_tcp_connections_active"])
			sm.heapBytes = m["go_memstats_heap_alloc_bytes"]
			var hs []handshake
			hs, hsIdx = s.stats.handshakesFrom(hsIdx)
			el := now.Sub(last).Seconds()
			sm.hsPerSec = float64(len(hs)) / el
			sm.hsP99 = percentile(hs, 0.99)
			b := s.stats.bytes.Load()
			sm.bytesPerS = float64(b-lastBytes) / el
			lastBytes, last = b, now
			s.smu.Lock()
			s.samples = append(s.samples, sm)
			s.smu.Unlock()
		}
	}
}

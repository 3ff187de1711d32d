package main

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// The load and the faults: an opener keeps the tunnels at the target at a
// steady rate, each tunnel with its plan (plan.go); tickers reload the
// configuration, restart an upstream, broadcast and ping through the admin
// API, and keep the connection-limited route over its limit.

// span is one reload or upstream restart, for the verdict and the picture.
type span struct {
	start, end time.Time
	tag        string
}

type events struct {
	mu         sync.Mutex
	reloads    []span
	restarts   []span
	broadcasts []sentFailed
	pings      []sentFailed
}

func (e *events) add(list *[]span, s span) {
	e.mu.Lock()
	*list = append(*list, s)
	e.mu.Unlock()
}

// every runs f every d until ctx ends, on a goroutine of s.bg.
func (s *soak) every(ctx context.Context, d time.Duration, f func()) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		tk := time.NewTicker(d)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
				f()
			}
		}
	}()
}

// startLoad starts the opener and the fault tickers; they stop with ctx.
func (s *soak) startLoad(ctx context.Context) {
	s.every(ctx, time.Second/time.Duration(s.openRate), func() {
		if s.stats.live() < s.tunnels {
			s.launch(s.newTunnel())
		}
	})
	tag := "A"
	s.every(ctx, s.reloadEvery, func() {
		if tag == "A" {
			tag = "B"
		} else {
			tag = "A"
		}
		s.reload(tag)
	})
	s.every(ctx, s.restartEvery, func() {
		start, err := s.restartUp.restart(300 * time.Millisecond)
		if err != nil {
			s.v.add("upstream", "restart: %v", err)
		}
		s.ev.add(&s.ev.restarts, span{start: start, end: time.Now()})
	})
	var seq int64
	s.every(ctx, 3*time.Second, func() {
		seq++
		r, err := s.admin.broadcast(broadcastMessage(seq))
		if err != nil {
			s.v.add("admin", "broadcast: %v", err)
		}
		s.ev.mu.Lock()
		s.ev.broadcasts = append(s.ev.broadcasts, r)
		s.ev.mu.Unlock()
	})
	s.every(ctx, 2*time.Second, func() {
		r, err := s.admin.ping("soak")
		if err != nil {
			s.v.add("admin", "ping: %v", err)
		}
		s.ev.mu.Lock()
		s.ev.pings = append(s.ev.pings, r)
		s.ev.mu.Unlock()
	})
	s.every(ctx, 200*time.Millisecond, func() {
		if s.stats.liveOn("/limited") < s.cfg.limit+2 {
			t := &tunnel{transport: pick(allTransports), route: "/limited", kind: kindNormal,
				class: classInteractive, life: time.Duration(1000+rand.IntN(2000)) * time.Millisecond}
			s.launch(t)
		}
	})
}

// reload loads configuration tag and records when it ran.
func (s *soak) reload(tag string) {
	sp := span{start: time.Now(), tag: tag}
	if err := s.admin.load(s.caddyfile(tag)); err != nil {
		s.v.add("reload", "loading configuration %s: %v", tag, err)
	}
	sp.end = time.Now()
	s.ev.add(&s.ev.reloads, sp)
	for _, p := range s.pools {
		p.retireAll()
	}
	for _, p := range s.quietPools {
		p.retireAll()
	}
	for _, p := range s.stallPools {
		p.retireAll()
	}
	s.curTag.Store(tag)
}

// launch registers t and runs its client.
func (s *soak) launch(t *tunnel) {
	s.reg.add(t)
	s.stats.launching(t)
	s.clients.Add(1)
	go func() {
		defer s.clients.Done()
		s.runTunnel(t)
	}()
}

// newTunnel plans a tunnel: transport, route, traffic, life, fault.
func (s *soak) newTunnel() *tunnel {
	t := &tunnel{transport: pickWeighted(allTransports, []int{35, 25, 20, 20})}
	if rand.Float64() < s.faultShare {
		t.kind = kind(1 + rand.IntN(int(numKinds)-1))
	}
	t.class = classIdle
	switch x := rand.IntN(100); {
	case x < s.bulkShare:
		t.class = classBulk
	case x < 30:
		t.class = classInteractive
	}
	t.life = s.lifeMin + time.Duration(rand.Int64N(int64(s.lifeMax-s.lifeMin)+1))
	t.route = pickWeighted([]string{"/soak", "/rca", "/restart", "/hb"}, []int{65, 15, 10, 10})
	if t.kind == kindNormal {
		return t
	}
	// A fault strikes within a few seconds, on a route where nothing else
	// ends the tunnel first (the upstream restart, the heartbeat).
	t.life = time.Duration(1000+rand.IntN(5000)) * time.Millisecond
	t.route = pick([]string{"/soak", "/rca"})
	switch {
	case t.kind == kindFreeze:
		t.route, t.class = "/hb", classInteractive
	case t.info().atBytes:
		// The upstream strikes after a few KiB; the life is only a cap.
		t.class = classInteractive
		t.faultAt = 1 + rand.Int64N(4<<10)
		t.life = 30 * time.Second
	}
	return t
}

func pick[T any](list []T) T { return list[rand.IntN(len(list))] }

func pickWeighted[T any](list []T, weights []int) T {
	sum := 0
	for _, w := range weights {
		sum += w
	}
	x := rand.IntN(sum)
	for i, w := range weights {
		if x < w {
			return list[i]
		}
		x -= w
	}
	return list[len(list)-1]
}

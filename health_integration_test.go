package wstotcp

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// upstreamsOf returns GET /ws_to_tcp/upstreams by address.
func (s *testServer) upstreamsOf() map[string]upstreamInfo {
	s.t.Helper()
	var infos []upstreamInfo
	s.adminOK("GET", "/ws_to_tcp/upstreams", "", nil, &infos)
	m := map[string]upstreamInfo{}
	for _, u := range infos {
		m[u.Address] = u
	}
	return m
}

// Active health: a dead upstream is marked down by the checks (one
// upstream_down event, however many checks fail after), new connections
// avoid it (those that raced the checks were retried on the others), and
// when it listens again a passing check brings it back (one upstream_up
// event), and it takes its share again.
func TestHealthActiveRecovery(t *testing.T) {
	a, b, _, addrs := threeTags(t)
	s := startWithGlobals(t, recordUpstreamEvents, "INFO", `{HTTP} {
	ws_to_tcp `+addrs+` {
		lb_policy round_robin
		lb_retries 2
		health_interval 50ms
		health_timeout 1s
	}
}`)
	drainEvents()
	if got := countTags(spread(t, s, "/", 30, 1, nil)); got["A"] != 10 || got["B"] != 10 || got["C"] != 10 {
		t.Fatalf("all healthy: %v", got)
	}

	b.kill()
	// Before the checks notice, lb_retries covers the dead one.
	if got := countTags(spread(t, s, "/", 30, 1, nil)); got["B"] != 0 || got["A"] < 10 || got["C"] < 10 {
		t.Fatalf("B dead, not yet noticed: %v", got)
	}
	e := nextEvent(t, eventUpstreamDown, ioTimeout)
	wantData(t, eventUpstreamDown, e, map[string]any{"upstream": b.addr})
	if r, _ := e["reason"].(string); !strings.Contains(r, "health check") {
		t.Errorf("reason %q", r)
	}
	// Three more rounds of checks (A is checked every round): B stays
	// down, with no second event.
	a.waitAccepts(a.accepts.Load(), 3)
	noMoreEvents(t)
	if u := s.upstreamsOf()[b.addr]; u.Healthy || u.Fails < 3 {
		t.Fatalf("B while dead: %+v", u)
	}
	if m := s.metrics(); m[mHealthy(b.addr)] != 0 || m[mHealthy(a.addr)] != 1 {
		t.Fatalf("upstream_healthy while B is dead: B %v A %v", m[mHealthy(b.addr)], m[mHealthy(a.addr)])
	}
	if got := countTags(spread(t, s, "/", 30, 1, nil)); got["A"] != 15 || got["C"] != 15 {
		t.Fatalf("B down: %v", got)
	}

	b.relisten()
	e = nextEvent(t, eventUpstreamUp, ioTimeout)
	wantData(t, eventUpstreamUp, e, map[string]any{"upstream": b.addr})
	a.waitAccepts(a.accepts.Load(), 3)
	noMoreEvents(t)
	if u := s.upstreamsOf()[b.addr]; !u.Healthy || u.Fails != 0 {
		t.Fatalf("B back: %+v", u)
	}
	if m := s.metrics(); m[mHealthy(b.addr)] != 1 {
		t.Fatalf("upstream_healthy of B back: %v", m[mHealthy(b.addr)])
	}
	if got := countTags(spread(t, s, "/", 30, 1, nil)); got["A"] != 10 || got["B"] != 10 || got["C"] != 10 {
		t.Fatalf("B back: %v", got)
	}
}

// pingServer answers each line "PING" with reply (a Redis-like check).
func pingServer(t *testing.T, reply string) (addr string, kill func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if strings.TrimSuffix(sc.Text(), "\r") == "PING" {
						c.Write([]byte(reply))
					}
				}
			})
		}
	})
	var once sync.Once
	kill = func() {
		once.Do(func() {
			ln.Close()
			mu.Lock()
			for c := range conns {
				c.Close()
			}
			mu.Unlock()
		})
	}
	t.Cleanup(func() { kill(); wg.Wait() })
	return ln.Addr().String(), kill
}

// health_send and health_expect: an upstream that answers otherwise is
// down, and every connection goes to the one that answers right. When
// that one dies too, every upstream is down: 502, before any upgrade.
func TestHealthSendExpect(t *testing.T) {
	good, killGood := pingServer(t, "+PONG\r\n")
	bad, _ := pingServer(t, "-ERR unknown command\r\n")
	s := startWithGlobals(t, recordUpstreamEvents, "INFO", `{HTTP} {
	ws_to_tcp `+good+` `+bad+` {
		health_interval 50ms
		health_timeout 500ms
		health_send "PING\r\n"
		health_expect +PONG
		health_fails 2
	}
}`)
	drainEvents()
	e := nextEvent(t, eventUpstreamDown, ioTimeout)
	wantData(t, eventUpstreamDown, e, map[string]any{"upstream": bad})
	if r, _ := e["reason"].(string); !strings.Contains(r, `-ERR unknown command`) || !strings.Contains(r, "2 health checks failed") {
		t.Errorf("reason %q", r)
	}
	ups := s.upstreamsOf()
	if !ups[good].Healthy || ups[bad].Healthy {
		t.Fatalf("upstreams %+v", ups)
	}
	for k := range 20 {
		c := s.dial("/", nil)
		c.WriteMessage(websocket.BinaryMessage, []byte("PING\r\n"))
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		_, msg, err := c.ReadMessage()
		c.Close()
		if err != nil || string(msg) != "+PONG\r\n" {
			t.Fatalf("connection %d: %q %v", k, msg, err)
		}
	}
	noMoreEvents(t)

	killGood()
	e = nextEvent(t, eventUpstreamDown, ioTimeout)
	wantData(t, eventUpstreamDown, e, map[string]any{"upstream": good})
	_, resp, err := s.tryDial("/", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("all down: %v %+v", err, resp)
	}
}

// Health and open-tunnel counts live per upstream address, not per
// configuration: a reload keeps them (Caddy's UsagePool), in the admin API
// and the metric; a reload that drops the health checks forgets them.
func TestHealthStateAcrossReload(t *testing.T) {
	a := newTagServer(t, "A")
	dead := newTagServer(t, "B")
	dead.kill()
	version := 0
	site := func(extra string) string {
		version++
		return `{HTTP} {
	header X-Config ` + fmt.Sprint(version) + `
	ws_to_tcp ` + dead.addr + ` ` + a.addr + ` {
		lb_policy first
		lb_retries 1
		` + extra + `
	}
}`
	}
	s := startCaddy(t, site("fail_duration 1m"))
	var held []*websocket.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	open := func() {
		t.Helper()
		tag, c, err := tagOf(s, "/", nil)
		if err != nil || tag != "A" {
			t.Fatalf("%q %v", tag, err)
		}
		held = append(held, c)
	}
	open() // B refused (now down), retried on A
	open() // B skipped
	want := []upstreamInfo{{Address: a.addr, Healthy: true, Active: 2}, {Address: dead.addr, Healthy: false, Fails: 1}}
	slices.SortFunc(want, func(x, y upstreamInfo) int { return strings.Compare(x.Address, y.Address) })
	check := func(when string, want []upstreamInfo, healthyB float64) {
		t.Helper()
		var got []upstreamInfo
		s.adminOK("GET", "/ws_to_tcp/upstreams", "", nil, &got)
		if !slices.Equal(got, want) {
			t.Fatalf("%s: upstreams %+v, want %+v", when, got, want)
		}
		m := s.metrics()
		if m[mHealthy(a.addr)] != 1 || m[mHealthy(dead.addr)] != healthyB {
			t.Fatalf("%s: upstream_healthy A %v B %v", when, m[mHealthy(a.addr)], m[mHealthy(dead.addr)])
		}
	}
	check("before the reload", want, 0)

	s.load(site("fail_duration 1m\n\t\tmax_fails 1"))
	check("after the reload", want, 0)
	open() // B still skipped: its failure is still counted
	want[slices.IndexFunc(want, func(u upstreamInfo) bool { return u.Address == a.addr })].Active = 3
	check("after the reload and a connection", want, 0)

	for _, c := range held {
		c.Close()
	}
	held = nil
	waitActive(t, a.addr, 0)

	// Without passive checks the failure no longer counts against B.
	s.load(site(""))
	for i := range want {
		want[i].Healthy, want[i].Active = true, 0
	}
	check("after a reload without health checks", want, 1)
}

// The health checker stops with its configuration: Cleanup waits for it,
// so once a reload to a configuration without active checks returns, no
// checker runs.
func TestHealthCheckerStopsOnReload(t *testing.T) {
	// Handlers that unit tests provisioned stop their checkers when their
	// context ends, a moment later: count from none.
	eventually(t, "no health checker of earlier tests", func() bool { return healthCheckers() == 0 })
	a := newTagServer(t, "A")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+a.addr+` {
		health_interval 20ms
	}
}`)
	a.waitAccepts(0, 3)
	if n := healthCheckers(); n != 1 {
		t.Fatalf("%d health checkers running, want 1", n)
	}
	s.load(`{HTTP} {
	ws_to_tcp ` + a.addr + `
}`)
	if n := healthCheckers(); n != 0 {
		t.Fatalf("%d health checkers still running after the reload", n)
	}
}

// healthCheckers counts the handlers' health loops that have not ended.
func healthCheckers() int { return int(healthLoops.Load()) }

package wstotcp

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// anyTunnelHandler returns the handler of some open tunnel.
func anyTunnelHandler() *Handler {
	tunnels.Lock()
	defer tunnels.Unlock()
	for _, t := range tunnels.m {
		return t.h
	}
	return nil
}

// dialerFrom returns a WebSocket dialer whose connections come from the
// loopback address src.
func dialerFrom(src string) *websocket.Dialer {
	nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 30 * time.Second}
	return &websocket.Dialer{HandshakeTimeout: time.Minute, NetDialContext: nd.DialContext}
}

// loopbackSources returns the client addresses the test can use: 127.0.0.1,
// and 127.0.0.2 where the loopback interface answers for the whole /8
// (Linux does).
func loopbackSources(t testing.TB, s *testServer) []string {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	c, err := d.DialContext(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", s.httpPort))
	if err != nil {
		t.Logf("no second loopback source address (%v): one client IP only", err)
		return []string{"127.0.0.1"}
	}
	c.Close()
	return []string{"127.0.0.1", "127.0.0.2"}
}

type burstResult struct {
	src        string
	c          *websocket.Conn
	status     int
	retryAfter string
	err        error
}

// burst releases n handshakes at once (goroutines waiting on one channel)
// from the given sources, holds the admitted tunnels open, and returns the
// results and the largest size of the tunnel registry seen meanwhile.
func burst(t *testing.T, s *testServer, path string, n int, sources []string) ([]burstResult, int) {
	t.Helper()
	start := make(chan struct{})
	results := make(chan burstResult, n)
	for i := 0; i < n; i++ {
		src := sources[i%len(sources)]
		d := dialerFrom(src)
		go func() {
			<-start
			c, resp, err := d.Dial(s.wsURL(path), nil)
			r := burstResult{src: src, c: c, err: err}
			if err == nil {
				r.status = http.StatusSwitchingProtocols
			} else if resp != nil {
				r.status = resp.StatusCode
				r.retryAfter = resp.Header.Get("Retry-After")
				r.err = nil
			}
			results <- r
		}()
	}
	var maxOpen atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if k := int64(openTunnels()); k > maxOpen.Load() {
				maxOpen.Store(k)
			}
			runtime.Gosched()
		}
	}()
	close(start)
	out := make([]burstResult, 0, n)
	timeout := time.After(3 * time.Minute)
	for len(out) < n {
		select {
		case r := <-results:
			if r.c != nil {
				t.Cleanup(func() { r.c.Close() })
			}
			out = append(out, r)
		case <-timeout:
			t.Fatalf("only %d of %d handshakes ended within 3 minutes", len(out), n)
		}
	}
	close(stop)
	<-sampled
	if k := int64(openTunnels()); k > maxOpen.Load() {
		maxOpen.Store(k)
	}
	return out, int(maxOpen.Load())
}

// checkBurst counts the outcomes: exactly total admitted, and perSource
// from each source listed there (they are all still open, so no slot was
// freed), every other handshake 503 with Retry-After.
func checkBurst(t *testing.T, results []burstResult, total int, perSource map[string]int) []*websocket.Conn {
	t.Helper()
	admitted := map[string]int{}
	var conns []*websocket.Conn
	refused, other := 0, 0
	for _, r := range results {
		switch {
		case r.status == http.StatusSwitchingProtocols:
			admitted[r.src]++
			conns = append(conns, r.c)
		case r.status == http.StatusServiceUnavailable && r.retryAfter == "1":
			refused++
		default:
			if other < 5 {
				t.Errorf("from %s: status %d, Retry-After %q, error %v", r.src, r.status, r.retryAfter, r.err)
			}
			other++
		}
	}
	for src, want := range perSource {
		if admitted[src] != want {
			t.Errorf("from %s: %d admitted, want exactly %d", src, admitted[src], want)
		}
	}
	if len(conns) != total {
		t.Errorf("%d admitted (%v), want exactly %d", len(conns), admitted, total)
	}
	if refused != len(results)-total || other != 0 {
		t.Errorf("%d refused with 503 and Retry-After: 1, %d otherwise; want %d and 0", refused, other, len(results)-total)
	}
	for _, c := range conns {
		echoCheck(t, c)
	}
	return conns
}

// TestConnectionLimitBurst: 200 simultaneous handshakes (20 times the
// limit) never get more tunnels than the limit; the rest get 503 with
// Retry-After; the slots come back when the tunnels end.
func TestConnectionLimitBurst(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	route /total {
		ws_to_tcp `+up.addr+` {
			max_connections 10
		}
	}
	route /per-ip {
		ws_to_tcp `+up.addr+` {
			max_connections_per_ip 5
		}
	}
}`)
	const n = 200
	sources := loopbackSources(t, s)

	t.Run("max_connections", func(t *testing.T) {
		results, maxOpen := burst(t, s, "/total", n, sources)
		conns := checkBurst(t, results, 10, nil) // the split between sources is free
		if maxOpen > 10 {
			t.Errorf("the tunnel registry held %d tunnels at once, limit 10", maxOpen)
		}
		if h := anyTunnelHandler(); h == nil || h.limits == nil {
			t.Fatal("no open tunnel, or no limits on its handler")
		} else if total, _, _ := h.limits.counts("", ""); total != 10 {
			t.Errorf("%d slots taken, want 10", total)
		}
		// closing the tunnels frees the slots
		for _, c := range conns {
			c.Close()
		}
		waitNoTunnels(t)
		again := make([]*websocket.Conn, 0, 10)
		for i := 0; i < 10; i++ {
			c, _ := expectHandshake(t, s, "/total", nil, 101)
			again = append(again, c)
		}
		_, resp := expectHandshake(t, s, "/total", nil, 503)
		if resp.Header.Get("Retry-After") != "1" {
			t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
		}
		for _, c := range again {
			c.Close()
		}
		waitNoTunnels(t)
	})

	t.Run("max_connections_per_ip", func(t *testing.T) {
		results, maxOpen := burst(t, s, "/per-ip", n, sources)
		want := map[string]int{}
		for _, src := range sources {
			want[src] = 5
		}
		conns := checkBurst(t, results, 5*len(sources), want)
		if maxOpen > 5*len(sources) {
			t.Errorf("the tunnel registry held %d tunnels at once, limit %d", maxOpen, 5*len(sources))
		}
		for _, c := range conns {
			c.Close()
		}
		waitNoTunnels(t)
		for _, src := range sources {
			d := dialerFrom(src)
			for i := 0; i < 5; i++ {
				c, _, err := d.Dial(s.wsURL("/per-ip"), nil)
				if err != nil {
					t.Fatalf("from %s after the slots were freed: %v", src, err)
				}
				defer c.Close()
			}
			if _, resp, err := d.Dial(s.wsURL("/per-ip"), nil); err == nil || resp == nil || resp.StatusCode != 503 {
				t.Fatalf("from %s, sixth: %v %v, want 503", src, resp, err)
			}
		}
	})
	s.waitRejection(rejectLimit, 503)
}

// TestPerUserLimit: max_connections_per_user counts per authenticated
// user, after authentication.
func TestPerUserLimit(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		max_connections_per_user 2
		auth {
			bearer token-a token-b
		}
	}
}`)
	a := headerOf("Authorization", "Bearer token-a")
	b := headerOf("Authorization", "Bearer token-b")
	a1, _ := expectHandshake(t, s, "/", a, 101)
	expectHandshake(t, s, "/", a, 101)
	_, resp := expectHandshake(t, s, "/", a, 503)
	if resp.Header.Get("Retry-After") != "1" {
		t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	if m := s.waitRejection(rejectLimit, 503); m["user"] != "bearer#1" {
		t.Errorf("rejection line: %v", m)
	}
	expectHandshake(t, s, "/", headerOf("Authorization", "Bearer wrong"), 401) // authentication first
	expectHandshake(t, s, "/", b, 101)
	expectHandshake(t, s, "/", b, 101)
	expectHandshake(t, s, "/", b, 503)
	a1.Close()
	eventually(t, "3 open tunnels", func() bool { return openTunnels() == 3 })
	expectHandshake(t, s, "/", a, 101)
}

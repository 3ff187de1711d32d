package wstotcp

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// counts returns the slots taken.
func (l *connLimits) counts(ip, user string) (total, perIP, perUser int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.perIP[ip], l.perUser[user]
}

func TestSlotsWithoutLimits(t *testing.T) {
	if l := newConnLimits(0, 0, 0); l != nil {
		t.Fatalf("no limits: got %+v, want nil", l)
	}
	var l *connLimits
	s, err := l.take("1.2.3.4")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.takeUser("alice"); err != nil {
		t.Fatal(err)
	}
	st := &upstreamState{}
	if !s.takeUpstream(st, 0) || st.active.Load() != 1 {
		t.Fatalf("upstream slot not taken: %d", st.active.Load())
	}
	s.release()
	s.release()
	if st.active.Load() != 0 {
		t.Fatalf("upstream slot after two releases: %d, want 0", st.active.Load())
	}
}

func TestSlotsCounts(t *testing.T) {
	l := newConnLimits(3, 2, 1)
	take := func(ip string) *slots {
		t.Helper()
		s, err := l.take(ip)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a1, a2 := take("a"), take("a")
	if _, err := l.take("a"); err == nil || !strings.Contains(err.Error(), "max_connections_per_ip 2") {
		t.Fatalf("third from a: %v, want the per-IP limit", err)
	}
	b1 := take("b")
	if _, err := l.take("c"); err == nil || !strings.Contains(err.Error(), "max_connections 3") {
		t.Fatalf("fourth: %v, want the total limit", err)
	}
	// a refused take takes nothing
	if total, perIP, _ := l.counts("a", ""); total != 3 || perIP != 2 {
		t.Fatalf("counts %d %d, want 3 2", total, perIP)
	}
	a1.release()
	a1.release() // idempotent
	if total, perIP, _ := l.counts("a", ""); total != 2 || perIP != 1 {
		t.Fatalf("after one release: %d %d, want 2 1", total, perIP)
	}
	a2.release()
	b1.release()
	if total, _, _ := l.counts("", ""); total != 0 || len(l.perIP) != 0 {
		t.Fatalf("after all releases: total %d, perIP %v", total, l.perIP)
	}

	u1, u2 := take("a"), take("a")
	if err := u1.takeUser("alice"); err != nil {
		t.Fatal(err)
	}
	if err := u2.takeUser("alice"); err == nil || !strings.Contains(err.Error(), "max_connections_per_user 1") {
		t.Fatalf("second for alice: %v", err)
	}
	if err := u2.takeUser(""); err != nil {
		t.Fatalf("anonymous: %v", err)
	}
	u2.release() // holds no user slot: alice's stays
	if _, _, perUser := l.counts("", "alice"); perUser != 1 {
		t.Fatalf("alice after the refused one's release: %d, want 1", perUser)
	}
	u1.release()
	u1.release()
	if total, _, perUser := l.counts("", "alice"); total != 0 || perUser != 0 || len(l.perUser) != 0 {
		t.Fatalf("after release: %d %d %v", total, perUser, l.perUser)
	}
}

// The upstream slot: dropped after a failed dial, released with the rest,
// never twice; a handed-over set is the tunnel's to release.
func TestSlotsUpstreamAndHandOver(t *testing.T) {
	l := newConnLimits(1, 0, 0)
	s, err := l.take("a")
	if err != nil {
		t.Fatal(err)
	}
	full, free := &upstreamState{}, &upstreamState{}
	full.active.Store(2)
	if s.takeUpstream(full, 2) {
		t.Fatal("took a slot of a full upstream")
	}
	if !s.takeUpstream(free, 2) {
		t.Fatal("no slot of a free upstream")
	}
	s.dropUpstream() // the dial failed
	s.dropUpstream()
	if free.active.Load() != 0 || full.active.Load() != 2 {
		t.Fatalf("after the failed dial: %d %d", free.active.Load(), full.active.Load())
	}
	if !s.takeUpstream(free, 2) {
		t.Fatal("no slot of a free upstream")
	}
	release := s.handOver()
	s.releaseUnlessHandedOver() // the handshake returns: the tunnel has them
	if total, _, _ := l.counts("", ""); total != 1 || free.active.Load() != 1 {
		t.Fatalf("released by the handshake after the handover: total %d, upstream %d", total, free.active.Load())
	}
	release()
	release()
	if total, _, _ := l.counts("", ""); total != 0 || free.active.Load() != 0 {
		t.Fatalf("after the tunnel's release: total %d, upstream %d", total, free.active.Load())
	}
}

// TestConnLimitsConcurrent: goroutines hammering take and release never
// hold more slots than the limits.
func TestConnLimitsConcurrent(t *testing.T) {
	const total, perIP = 10, 4
	l := newConnLimits(total, perIP, 0)
	var held atomic.Int32
	var heldIP [3]atomic.Int32
	var maxHeld, maxIP atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	raise := func(m *atomic.Int32, n int32) {
		for {
			v := m.Load()
			if n <= v || m.CompareAndSwap(v, n) {
				return
			}
		}
	}
	for g := 0; g < 60; g++ {
		wg.Go(func() {
			<-start
			ip := []string{"a", "b", "c"}[g%3]
			for i := 0; i < 200; i++ {
				s, err := l.take(ip)
				if err != nil {
					continue
				}
				raise(&maxHeld, held.Add(1))
				raise(&maxIP, heldIP[g%3].Add(1))
				heldIP[g%3].Add(-1)
				held.Add(-1)
				s.release()
			}
		})
	}
	close(start)
	wg.Wait()
	if maxHeld.Load() > total || maxIP.Load() > perIP {
		t.Fatalf("held at most %d (limit %d), per IP %d (limit %d)", maxHeld.Load(), total, maxIP.Load(), perIP)
	}
	if maxHeld.Load() == 0 {
		t.Fatal("nothing was ever admitted")
	}
	if tot, _, _ := l.counts("", ""); tot != 0 {
		t.Fatalf("%d slots left taken", tot)
	}
}

// serveSlotsHandler serves h as Caddy would, without booting Caddy: each
// request prepared as the HTTP app prepares it, a handler error answered
// with its status (and the headers the handler set).
func serveSlotsHandler(t testing.TB, h *Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		serveOnce(h, w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// serveOnce runs h.ServeHTTP on r and writes its error's status; it
// returns that status, 0 when there was no error.
func serveOnce(h *Handler, w http.ResponseWriter, r *http.Request) int {
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(http.StatusTeapot)
		return nil
	})
	status := handlerErrorStatus(h.ServeHTTP(w, r, next))
	if status != 0 {
		w.WriteHeader(status)
	}
	return status
}

// wsDial opens a WebSocket to srv with the bearer token (none if empty),
// the subprotocols and the extra headers; it returns the connection (nil
// when refused) and the status.
func wsDial(t testing.TB, srv *httptest.Server, path, token string, protocols []string, hdr http.Header) (*websocket.Conn, int) {
	t.Helper()
	if hdr == nil {
		hdr = http.Header{}
	}
	if token != "" {
		hdr.Set("Authorization", "Bearer "+token)
	}
	d := websocket.Dialer{Subprotocols: protocols, HandshakeTimeout: 30 * time.Second}
	c, resp, err := d.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+path, hdr)
	if err == nil {
		// a failing test ends its tunnels, which the upstreams' cleanup
		// waits for
		t.Cleanup(func() { c.Close() })
		return c, http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Fatalf("%s: %v", path, err)
	}
	return nil, resp.StatusCode
}

// wsRequest is a well-formed WebSocket handshake for a direct ServeHTTP
// call, from 127.0.0.1 (the clients' IP in TestSlotsEveryExitPath).
func wsRequest(ctx context.Context, token string) *http.Request {
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
	r.RemoteAddr = "127.0.0.1:40000"
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	r.Header.Set("Sec-WebSocket-Protocol", "binary")
	r.Header.Set("Authorization", "Bearer "+token)
	return r
}

// TestSlotsEveryExitPath drives every way out of a handshake, and the end
// of a tunnel, through ServeHTTP, and checks after each that the slots
// (max_connections, per IP, per user, per upstream) are back where they
// were: none leaked, none given back twice. Tunnels held open all along
// keep every count above zero, so that a second release of a slot shows
// (a count of one would just be deleted from its map).
func TestSlotsEveryExitPath(t *testing.T) {
	const ip = "127.0.0.1"
	alice, bob := "tok-alice", "tok-bob" // users bearer#1, bearer#2

	t.Run("configured upstreams", func(t *testing.T) {
		echo := echoUpstream(t)
		r1, r2 := refusedAddr(t), refusedAddr(t)
		h := provisioned(t, `{
			"upstreams": [{"dial": "`+r1+`"}, {"dial": "`+r2+`"}, {"dial": "`+echo.addr+`"}],
			"load_balancing": {"selection_policy": "first", "retries": 2},
			"max_connections": 4, "max_connections_per_ip": 4, "max_connections_per_user": 2,
			"auth": {"bearer": ["`+alice+`", "`+bob+`"]},
			"subprotocols": ["binary"],
			"preamble": "{http.request.header.X-Login}"
		}`)
		srv := serveSlotsHandler(t, h)
		refused1, refused2, up := h.lb.states[0], h.lb.states[1], h.lb.states[2]

		// want checks the counts: total (and per IP), alice's, bob's, the
		// echo upstream's; the refusing upstreams hold none.
		want := func(step string, total, aliceN, bobN, upN int) {
			t.Helper()
			gotTotal, gotIP, gotAlice := h.limits.counts(ip, "bearer#1")
			_, _, gotBob := h.limits.counts(ip, "bearer#2")
			got := fmt.Sprint(gotTotal, gotIP, gotAlice, gotBob, up.active.Load(), refused1.active.Load(), refused2.active.Load())
			if exp := fmt.Sprint(total, total, aliceN, bobN, upN, 0, 0); got != exp {
				t.Fatalf("%s: slots (total, per IP, alice, bob, upstream, refusing upstreams) %s, want %s", step, got, exp)
			}
		}
		// settled waits for tunnels to end and give their slots back.
		settled := func(step string, total, aliceN, bobN, upN int) {
			t.Helper()
			eventually(t, step, func() bool {
				gotTotal, _, _ := h.limits.counts(ip, "")
				return gotTotal == total && up.active.Load() == int64(upN)
			})
			want(step, total, aliceN, bobN, upN)
		}
		binary := []string{"binary"}

		var held []*websocket.Conn
		for _, tok := range []string{alice, alice, bob} {
			c, status := wsDial(t, srv, "/", tok, binary, nil)
			if status != 101 {
				t.Fatalf("baseline tunnel: status %d", status)
			}
			held = append(held, c)
		}
		want("baseline", 3, 2, 1, 3)

		for _, tt := range []struct {
			name     string
			token    string
			protocol []string
			hdr      http.Header
			status   int
		}{
			{"origin refused", bob, binary, http.Header{"Origin": {"http://evil.test"}}, 403},
			{"no credentials", "", binary, nil, 401},
			{"wrong token", "tok-eve", binary, nil, 401},
			{"per-user limit", alice, binary, nil, 503},
			{"no acceptable subprotocol", bob, []string{"text"}, nil, 400},
			{"preamble too long", bob, binary, http.Header{"X-Login": {strings.Repeat("x", maxPreamble+1)}}, 400},
		} {
			if c, status := wsDial(t, srv, "/", tt.token, tt.protocol, tt.hdr); status != tt.status {
				if c != nil {
					c.Close()
				}
				t.Fatalf("%s: status %d, want %d", tt.name, status, tt.status)
			}
			want(tt.name, 3, 2, 1, 3)
		}

		// malformed handshake: refused before any slot is taken
		r := wsRequest(context.Background(), bob)
		r.Header.Set("Sec-WebSocket-Version", "12")
		if status := serveOnce(h, httptest.NewRecorder(), r); status != 400 {
			t.Fatalf("malformed handshake: status %d, want 400", status)
		}
		want("malformed handshake", 3, 2, 1, 3)

		// the client goes away while the upstreams are dialled
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if status := serveOnce(h, httptest.NewRecorder(), wsRequest(ctx, bob)); status != statusClientClosedRequest {
			t.Fatalf("client gone: status %d, want %d", status, statusClientClosedRequest)
		}
		want("client gone", 3, 2, 1, 3)

		// the upgrade fails after a successful dial: a response writer that
		// cannot be hijacked, which gorilla answers with 500
		rec := httptest.NewRecorder()
		if status := serveOnce(h, rec, wsRequest(context.Background(), bob)); status != 0 || rec.Code != 500 {
			t.Fatalf("upgrade failure: status %d, response %d; want no error and gorilla's 500", status, rec.Code)
		}
		want("upgrade failure", 3, 2, 1, 3)

		// a fourth tunnel (after two refused dials, retried), then the
		// handler's limit, then its end
		c, status := wsDial(t, srv, "/", bob, binary, nil)
		if status != 101 {
			t.Fatalf("fourth tunnel: status %d", status)
		}
		if err := c.WriteMessage(websocket.BinaryMessage, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "ping" {
			t.Fatalf("fourth tunnel: echo %q %v", msg, err)
		}
		want("fourth tunnel", 4, 2, 2, 4)
		if _, status := wsDial(t, srv, "/", bob, binary, nil); status != 503 {
			t.Fatalf("max_connections: status %d, want 503", status)
		}
		want("max_connections", 4, 2, 2, 4)
		c.Close()
		settled("fourth tunnel ended by the client", 3, 2, 1, 3)

		// every upstream refuses: three dials, then 502
		echo.ln.Close()
		if _, status := wsDial(t, srv, "/", bob, binary, nil); status != 502 {
			t.Fatalf("all upstreams refusing: status %d, want 502", status)
		}
		want("all upstreams refusing", 3, 2, 1, 3)

		for _, c := range held {
			c.Close()
		}
		settled("every tunnel ended", 0, 0, 0, 0)
		if len(h.limits.perIP) != 0 || len(h.limits.perUser) != 0 {
			t.Fatalf("counts left: per IP %v, per user %v", h.limits.perIP, h.limits.perUser)
		}
	})

	t.Run("upstream full", func(t *testing.T) {
		echo := echoUpstream(t)
		h := provisioned(t, `{"upstreams": [{"dial": "`+echo.addr+`"}],
			"max_connections_per_upstream": 1, "max_connections": 5}`)
		srv := serveSlotsHandler(t, h)
		up := h.lb.states[0]
		c, status := wsDial(t, srv, "/", "", nil, nil)
		if status != 101 {
			t.Fatalf("first tunnel: status %d", status)
		}
		if _, status := wsDial(t, srv, "/", "", nil, nil); status != 503 {
			t.Fatalf("upstream full: status %d, want 503", status)
		}
		if total, _, _ := h.limits.counts(ip, ""); total != 1 || up.active.Load() != 1 {
			t.Fatalf("after the refusal: total %d, upstream %d; want 1 1", total, up.active.Load())
		}
		c.Close()
		eventually(t, "the tunnel's slots", func() bool {
			total, _, _ := h.limits.counts(ip, "")
			return total == 0 && up.active.Load() == 0
		})
	})

	t.Run("dynamic targets", func(t *testing.T) {
		echo := echoUpstream(t)
		refused := refusedAddr(t)
		_, port, _ := net.SplitHostPort(echo.addr)
		h := provisioned(t, `{
			"targets": {"map": {"ok": "`+echo.addr+`", "refused": "`+refused+`",
				"far": "192.0.2.1:5900", "unresolved": "nohost.test:`+port+`"}},
			"allow_targets": ["127.0.0.1", "nohost.test"],
			"max_connections": 4, "max_connections_per_ip": 4
		}`)
		h.targets.allow.lookup = fakeDNS(nil)
		srv := serveSlotsHandler(t, h)
		want := func(step string, n int) {
			t.Helper()
			if total, perIP, _ := h.limits.counts(ip, ""); total != n || perIP != n {
				t.Fatalf("%s: slots %d, per IP %d; want %d", step, total, perIP, n)
			}
		}
		held, status := wsDial(t, srv, "/?token=ok", "", nil, nil)
		if status != 101 {
			t.Fatalf("baseline tunnel: status %d", status)
		}
		want("baseline", 1)
		for _, tt := range []struct {
			path   string
			status int
		}{
			{"/", 404},
			{"/?token=unknown", 404},
			{"/?token=far", 403},
			{"/?token=unresolved", 502},
			{"/?token=refused", 502},
		} {
			if c, status := wsDial(t, srv, tt.path, "", nil, nil); status != tt.status {
				if c != nil {
					c.Close()
				}
				t.Fatalf("%s: status %d, want %d", tt.path, status, tt.status)
			}
			want(tt.path, 1)
		}
		c, status := wsDial(t, srv, "/?token=ok", "", nil, nil)
		if status != 101 {
			t.Fatalf("second tunnel: status %d", status)
		}
		want("second tunnel", 2)
		c.Close()
		held.Close()
		eventually(t, "the tunnels' slots", func() bool {
			total, _, _ := h.limits.counts(ip, "")
			return total == 0
		})
		want("every tunnel ended", 0)
	})
}

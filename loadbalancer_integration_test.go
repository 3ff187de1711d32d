package wstotcp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// tagServer is an upstream that names itself: it writes its name and a
// newline on every connection, then echoes. It counts the connections it
// accepts (health checks included), and can die (close its listener, the
// open connections going on) and come back on the same port.
type tagServer struct {
	t       testing.TB
	name    string
	addr    string
	accepts atomic.Int64

	mu      sync.Mutex
	ln      net.Listener
	release func() // the port, held while killed
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
}

func newTagServer(t testing.TB, name string) *tagServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &tagServer{t: t, name: name, addr: ln.Addr().String(), conns: make(map[net.Conn]bool)}
	ts.serve(ln)
	t.Cleanup(func() {
		ts.mu.Lock()
		if ts.ln != nil {
			ts.ln.Close()
		}
		for c := range ts.conns {
			c.Close()
		}
		ts.mu.Unlock()
		ts.wg.Wait()
	})
	return ts
}

func (ts *tagServer) serve(ln net.Listener) {
	ts.mu.Lock()
	ts.ln = ln
	ts.mu.Unlock()
	ts.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ts.accepts.Add(1)
			ts.mu.Lock()
			ts.conns[c] = true
			ts.mu.Unlock()
			ts.wg.Go(func() {
				defer func() {
					ts.mu.Lock()
					delete(ts.conns, c)
					ts.mu.Unlock()
					c.Close()
				}()
				if _, err := c.Write([]byte(ts.name + "\n")); err != nil {
					return
				}
				io.Copy(c, c)
			})
		}
	})
}

// kill closes the listener: new dials are refused, open connections go on.
// The port stays held (holdPort) until relisten.
func (ts *tagServer) kill() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.ln.Close()
	ts.ln = nil
	_, port, _ := net.SplitHostPort(ts.addr)
	p, _ := strconv.Atoi(port)
	_, ts.release = holdPort(ts.t, p)
	ts.t.Cleanup(ts.release)
}

// relisten listens on the same address again.
func (ts *tagServer) relisten() {
	ts.t.Helper()
	ts.release()
	eventually(ts.t, "listening on "+ts.addr+" again", func() bool {
		ln, err := net.Listen("tcp", ts.addr)
		if err != nil && !errors.Is(err, syscall.EADDRINUSE) {
			ts.t.Fatalf("listening on %s again: %v", ts.addr, err)
		}
		if err == nil {
			ts.serve(ln)
		}
		return err == nil
	})
}

// waitAccepts waits until the server has accepted n more connections than
// from (the health checker's, when nothing else dials it): it proves that
// checks ran.
func (ts *tagServer) waitAccepts(from int64, n int64) {
	ts.t.Helper()
	eventually(ts.t, fmt.Sprintf("%d connections accepted by %s", n, ts.name), func() bool { return ts.accepts.Load() >= from+n })
}

// readTag reads the upstream's name, sent as its first line.
func readTag(c *websocket.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	defer c.SetReadDeadline(time.Time{})
	var got []byte
	for !bytes.HasSuffix(got, []byte("\n")) {
		_, b, err := c.ReadMessage()
		if err != nil {
			return string(got), err
		}
		got = append(got, b...)
	}
	return strings.TrimSuffix(string(got), "\n"), nil
}

// tagOf opens a WebSocket and returns the name of the upstream it reached,
// and the open connection.
func tagOf(s endpoint, path string, hdr http.Header) (string, *websocket.Conn, error) {
	c, resp, err := s.tryDial(path, hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		return "", nil, fmt.Errorf("handshake: %v (status %d)", err, status)
	}
	tag, err := readTag(c)
	if err != nil {
		c.Close()
		return "", nil, fmt.Errorf("after the 101: %v", err)
	}
	return tag, c, nil
}

// spread opens n WebSockets, workers at a time, each closed once it has
// read its upstream's name, and returns the names by connection index.
// hdr gives connection k's request headers (nil for none).
func spread(t *testing.T, s endpoint, path string, n, workers int, hdr func(k int) http.Header) []string {
	t.Helper()
	tags := make([]string, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for {
				k := int(next.Add(1) - 1)
				if k >= n {
					return
				}
				var h http.Header
				if hdr != nil {
					h = hdr(k)
				}
				tag, c, err := tagOf(s, path, h)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %v", k, err)
					return
				}
				c.Close()
				tags[k] = tag
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return tags
}

func countTags(tags []string) map[string]int {
	m := map[string]int{}
	for _, tag := range tags {
		m[tag]++
	}
	return m
}

// threeTags starts three tag servers A, B, C.
func threeTags(t *testing.T) (a, b, c *tagServer, addrs string) {
	a, b, c = newTagServer(t, "A"), newTagServer(t, "B"), newTagServer(t, "C")
	return a, b, c, a.addr + " " + b.addr + " " + c.addr
}

// serveTags serves a handler over the three tag servers with the policy,
// without Caddy (the policies' arithmetic has unit tests: here, real
// tunnels choose).
func serveTags(t *testing.T, policy string) (*handlerServer, *tagServer) {
	a, b, c, _ := threeTags(t)
	return serveJSON(t, fmt.Sprintf(`{"upstreams": [{"dial": %q}, {"dial": %q}, {"dial": %q}],
		"load_balancing": {"selection_policy": %q}}`, a.addr, b.addr, c.addr, policy)), a
}

// random (the default): each of three upstreams gets about a third.
func TestLBRandomDistribution(t *testing.T) {
	t.Parallel()
	s, _ := serveTags(t, "random")
	got := countTags(spread(t, s, "/", 300, 8, nil))
	t.Logf("random: %v", got)
	for _, name := range []string{"A", "B", "C"} {
		// expected 100, standard deviation 8: 5 of them either way
		if got[name] < 59 || got[name] > 141 {
			t.Fatalf("random over 300 connections: %v", got)
		}
	}
}

// round_robin: in turn, exactly, also under concurrency.
func TestLBRoundRobinExact(t *testing.T) {
	t.Parallel()
	s, _ := serveTags(t, "round_robin")
	first := spread(t, s, "/", 6, 1, nil)
	if strings.Join(first, "") != "ABCABC" {
		t.Fatalf("the first six, one after the other: %v", first)
	}
	got := countTags(spread(t, s, "/", 294, 8, nil))
	if got["A"] != 98 || got["B"] != 98 || got["C"] != 98 {
		t.Fatalf("round_robin over 294 concurrent connections: %v", got)
	}
}

// first: always the first available upstream.
func TestLBFirst(t *testing.T) {
	t.Parallel()
	s, _ := serveTags(t, "first")
	if got := countTags(spread(t, s, "/", 100, 8, nil)); got["A"] != 100 {
		t.Fatalf("first over 100 connections: %v", got)
	}
}

// activeOf is the open-tunnel count of an upstream, from the shared state.
func activeOf(addr string) int {
	for _, u := range upstreamInfos() {
		if u.Address == addr {
			return u.Active
		}
	}
	return -1
}

func waitActive(t *testing.T, addr string, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d open tunnels to %s", n, addr), func() bool { return activeOf(addr) == n })
}

// least_conn follows the open tunnels: held connections spread evenly, and
// when one upstream's tunnels close, the next connections all go there.
func TestLBLeastConnFollowsActive(t *testing.T) {
	t.Parallel()
	s, a := serveTags(t, "least_conn")
	held := map[string][]*websocket.Conn{}
	defer func() {
		for _, list := range held {
			for _, c := range list {
				c.Close()
			}
		}
	}()
	open := func(k int) string {
		tag, c, err := tagOf(s, "/", nil)
		if err != nil {
			t.Fatalf("connection %d: %v", k, err)
		}
		held[tag] = append(held[tag], c)
		return tag
	}
	for k := range 150 {
		open(k)
		n := []int{len(held["A"]), len(held["B"]), len(held["C"])}
		if slices.Max(n)-slices.Min(n) > 1 {
			t.Fatalf("after %d held connections: %v", k+1, n)
		}
	}
	for _, c := range held["A"] {
		c.Close()
	}
	held["A"] = nil
	waitActive(t, a.addr, 0)
	for k := range 50 {
		if tag := open(150 + k); tag != "A" {
			t.Fatalf("connection %d went to %s while A had %d tunnels and B, C 50", 150+k, tag, k)
		}
	}
}

// ip_hash: Caddy's client IP (here from X-Forwarded-For, trusted from
// 127.0.0.1) keeps its upstream, and the IPs spread over all upstreams.
func TestLBIPHash(t *testing.T) {
	_, _, _, addrs := threeTags(t)
	s := startWithGlobals(t, `	servers {
		trusted_proxies static 127.0.0.1/32
	}`, "INFO", `{HTTP} {
	ws_to_tcp `+addrs+` {
		lb_policy ip_hash
	}
}`)
	ip := func(k int) string { return fmt.Sprintf("10.7.%d.%d", k%100/10, k%10) }
	tags := spread(t, s, "/", 200, 8, func(k int) http.Header {
		return http.Header{"X-Forwarded-For": {ip(k)}}
	})
	byIP := map[string]string{}
	for k, tag := range tags {
		if was, ok := byIP[ip(k)]; ok && was != tag {
			t.Fatalf("%s went to %s, then to %s", ip(k), was, tag)
		}
		byIP[ip(k)] = tag
	}
	perUpstream := countTags(slices.Collect(func(yield func(string) bool) {
		for _, tag := range byIP {
			yield(tag)
		}
	}))
	t.Logf("100 client IPs over the upstreams: %v", perUpstream)
	for _, name := range []string{"A", "B", "C"} {
		if perUpstream[name] < 15 {
			t.Fatalf("100 client IPs over the upstreams: %v", perUpstream)
		}
	}
	// Without the header every connection is 127.0.0.1's: one upstream.
	if got := countTags(spread(t, s, "/", 20, 4, nil)); len(got) != 1 {
		t.Fatalf("one client IP spread over %v", got)
	}
}

// user_hash: each user keeps its upstream (users from basic_auth); without
// a user, connections are placed at random.
func TestLBUserHash(t *testing.T) {
	_, _, _, addrs := threeTags(t)
	var users strings.Builder
	hash := bcryptHash(t, "pw")
	for u := range 60 {
		fmt.Fprintf(&users, "\t\t\tuser%d %s\n", u, hash)
	}
	s := startCaddy(t, `{HTTP} {
	handle /anon {
		ws_to_tcp `+addrs+` {
			lb_policy user_hash
		}
	}
	handle {
		basic_auth {
`+users.String()+`		}
		ws_to_tcp `+addrs+` {
			lb_policy user_hash
		}
	}
}`)
	user := func(k int) string { return fmt.Sprintf("user%d", k%60) }
	tags := spread(t, s, "/", 120, 8, func(k int) http.Header {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(user(k), "pw")
		return r.Header
	})
	byUser := map[string]string{}
	perUpstream := map[string]int{}
	for k, tag := range tags {
		if was, ok := byUser[user(k)]; ok && was != tag {
			t.Fatalf("%s went to %s, then to %s", user(k), was, tag)
		}
		if _, ok := byUser[user(k)]; !ok {
			perUpstream[tag]++
		}
		byUser[user(k)] = tag
	}
	t.Logf("60 users over the upstreams: %v", perUpstream)
	if len(perUpstream) != 3 {
		t.Fatalf("60 users over the upstreams: %v", perUpstream)
	}
	anon := countTags(spread(t, s, "/anon", 150, 8, nil))
	t.Logf("anonymous: %v", anon)
	for _, name := range []string{"A", "B", "C"} {
		if anon[name] < 20 { // expected 50, standard deviation 5.8
			t.Fatalf("150 anonymous connections: %v", anon)
		}
	}
}

// max_connections_per_upstream: an upstream at its limit is skipped; all
// at their limit is 503 with Retry-After, before any upgrade.
func TestLBPerUpstreamLimit(t *testing.T) {
	a, _, _, addrs := threeTags(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+addrs+` {
		lb_policy first
		max_connections_per_upstream 2
	}
}`)
	var held []*websocket.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	var order []string
	for k := range 6 {
		tag, c, err := tagOf(s, "/", nil)
		if err != nil {
			t.Fatalf("connection %d: %v", k, err)
		}
		held = append(held, c)
		order = append(order, tag)
	}
	if strings.Join(order, "") != "AABBCC" {
		t.Fatalf("six held connections went to %v", order)
	}
	_, resp, err := s.tryDial("/", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("seventh connection: %v %+v", err, resp)
	}
	held[0].Close()
	waitActive(t, a.addr, 1)
	tag, c, err := tagOf(s, "/", nil)
	if err != nil || tag != "A" {
		t.Fatalf("after one of A's closed: %q %v", tag, err)
	}
	held = append(held, c)
	var infos []upstreamInfo
	s.adminOK("GET", "/ws_to_tcp/upstreams", "", nil, &infos)
	for _, u := range infos {
		if u.Active != 2 || !u.Healthy {
			t.Fatalf("upstreams %+v", infos)
		}
	}
}

const recordUpstreamEvents = `	events {
		on ws_to_tcp.upstream_down ws_to_tcp_test_recorder
		on ws_to_tcp.upstream_up ws_to_tcp_test_recorder
	}`

// Failover: one of three upstreams dies (its listener closes) while six
// clients keep connecting, 300 connections in all. With lb_retries every
// connection started after the death gets through: its failed dial is
// retried before the upgrade, so no client sees a 101 and then a close.
// With passive health the dead upstream is skipped after the dials under
// way when it died: one upstream_down event, then no more failed dials,
// and the admin API and the metric say it is down.
func TestLBFailoverPassive(t *testing.T) {
	a, b, c, addrs := threeTags(t)
	s := startWithGlobals(t, recordUpstreamEvents, "INFO", `{HTTP} {
	ws_to_tcp `+addrs+` {
		lb_policy round_robin
		lb_retries 2
		fail_duration 1m
		max_fails 1
	}
}`)
	drainEvents()
	const total = 300
	var done, next atomic.Int64
	var killed atomic.Bool
	var mu sync.Mutex
	var failures, raced []string
	counts := map[string]int{}
	afterKill := map[string]int{}
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			for {
				k := next.Add(1) - 1
				if k >= total {
					return
				}
				wasKilled := killed.Load()
				tag, conn, err := tagOf(s, "/", nil)
				if err == nil {
					msg := fmt.Sprintf("ping %d", k)
					conn.WriteMessage(websocket.TextMessage, []byte(msg))
					var got []byte
					conn.SetReadDeadline(time.Now().Add(ioTimeout))
					for len(got) < len(msg) && err == nil {
						var b []byte
						_, b, err = conn.ReadMessage()
						got = append(got, b...)
					}
					if err == nil && string(got) != msg {
						err = fmt.Errorf("echo %q, want %q", got, msg)
					}
					if err != nil {
						err = fmt.Errorf("after the 101 (upstream %s): %v", tag, err)
					}
					conn.Close()
				}
				mu.Lock()
				switch {
				case err != nil && !wasKilled:
					// Dialled while B died: a connection the kernel had
					// accepted into B's backlog is reset when the listener
					// closes, after the dial succeeded. Nothing can tell
					// before the upgrade; at most one per client.
					raced = append(raced, fmt.Sprintf("connection %d: %v", k, err))
				case err != nil:
					failures = append(failures, fmt.Sprintf("connection %d: %v", k, err))
				default:
					counts[tag]++
					if wasKilled {
						afterKill[tag]++
					}
				}
				mu.Unlock()
				done.Add(1)
			}
		})
	}
	eventually(t, "100 connections before B dies", func() bool { return done.Load() >= 100 })
	b.kill()
	killed.Store(true)
	wg.Wait()

	if len(failures) > 0 {
		t.Fatalf("%d of the connections started after B died failed, e.g.:\n%s", len(failures), strings.Join(failures[:min(5, len(failures))], "\n"))
	}
	if len(raced) > 6 {
		t.Fatalf("%d connections under way when B died failed:\n%s", len(raced), strings.Join(raced, "\n"))
	}
	if len(raced) > 0 {
		t.Logf("under way when B died: %s", strings.Join(raced, "; "))
	}
	t.Logf("all: %v; started after B died: %v", counts, afterKill)
	if afterKill["B"] != 0 || afterKill["A"] < 50 || afterKill["C"] < 50 {
		t.Fatalf("connections started after B died went to %v", afterKill)
	}
	e := nextEvent(t, eventUpstreamDown, ioTimeout)
	wantData(t, eventUpstreamDown, e, map[string]any{"upstream": b.addr})
	if r, _ := e["reason"].(string); !strings.Contains(r, "failed dials") || !strings.Contains(r, b.addr) {
		t.Errorf("reason %q", r)
	}
	noMoreEvents(t)

	// Dials already under way when B went down failed too (6 clients at
	// once); after that B is skipped: more connections add no failure.
	failsOfB := func() int {
		var infos []upstreamInfo
		s.adminOK("GET", "/ws_to_tcp/upstreams", "", nil, &infos)
		for _, u := range infos {
			if u.Address == b.addr {
				if u.Healthy || u.Active != 0 {
					t.Fatalf("B: %+v", u)
				}
				return u.Fails
			}
		}
		t.Fatalf("B not listed in %+v", infos)
		return 0
	}
	f := failsOfB()
	if f < 1 || f > 6 {
		t.Fatalf("B failed %d dials", f)
	}
	if got := countTags(spread(t, s, "/", 30, 1, nil)); got["A"] != 15 || got["C"] != 15 {
		t.Fatalf("30 connections after the failover: %v", got)
	}
	if f2 := failsOfB(); f2 != f {
		t.Fatalf("B's failures went from %d to %d: it was dialled while down", f, f2)
	}
	waitActive(t, a.addr, 0)
	waitActive(t, c.addr, 0)
	var infos []upstreamInfo
	s.adminOK("GET", "/ws_to_tcp/upstreams", "", nil, &infos)
	want := []upstreamInfo{
		{Address: a.addr, Healthy: true}, {Address: b.addr, Healthy: false, Fails: f}, {Address: c.addr, Healthy: true},
	}
	slices.SortFunc(want, func(x, y upstreamInfo) int { return strings.Compare(x.Address, y.Address) })
	if !slices.Equal(infos, want) {
		t.Fatalf("upstreams %+v, want %+v", infos, want)
	}
	m := s.metrics()
	if m[mHealthy(a.addr)] != 1 || m[mHealthy(b.addr)] != 0 || m[mHealthy(c.addr)] != 1 {
		t.Fatalf("upstream_healthy: A %v B %v C %v", m[mHealthy(a.addr)], m[mHealthy(b.addr)], m[mHealthy(c.addr)])
	}
}

// Without lb_retries a dead upstream's connection fails with 502 before
// any upgrade; with every upstream down, 502 too.
func TestLBNoRetries502(t *testing.T) {
	a := newTagServer(t, "A")
	a.kill()
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+a.addr+` {
		fail_duration 1m
	}
}`)
	for k := range 2 { // refused, then down
		_, resp, err := s.tryDial("/", nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("attempt %d: %v %+v", k, err, resp)
		}
	}
	var infos []upstreamInfo
	s.adminOK("GET", "/ws_to_tcp/upstreams", "", nil, &infos)
	if len(infos) != 1 || infos[0].Healthy || infos[0].Fails != 1 {
		t.Fatalf("upstreams %+v", infos)
	}
}

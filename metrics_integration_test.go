package wstotcp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// scrape reads a Prometheus text exposition and returns the samples by
// name{labels}, as written.
func scrape(t testing.TB, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	m := make(map[string]float64)
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}

func (s *testServer) metrics() map[string]float64 {
	s.t.Helper()
	return scrape(s.t, fmt.Sprintf("http://127.0.0.1:%d/metrics", s.adminPort))
}

const (
	mActive   = `caddy_ws_to_tcp_connections_active{transport="http/1.1"}`
	mBytesIn  = `caddy_ws_to_tcp_bytes_total{direction="in"}`
	mBytesOut = `caddy_ws_to_tcp_bytes_total{direction="out"}`
	mMsgsIn   = `caddy_ws_to_tcp_messages_total{direction="in"}`
	mMsgsOut  = `caddy_ws_to_tcp_messages_total{direction="out"}`
	mDials    = "caddy_ws_to_tcp_upstream_dial_seconds_count"
)

func mTotal(outcome string) string {
	return fmt.Sprintf(`caddy_ws_to_tcp_connections_total{outcome=%q,transport="http/1.1"}`, outcome)
}

func mHealthy(upstream string) string {
	return fmt.Sprintf(`caddy_ws_to_tcp_upstream_healthy{upstream=%q}`, upstream)
}

func mRejections(reason string) string {
	return fmt.Sprintf(`caddy_ws_to_tcp_rejections_total{reason=%q}`, reason)
}

// wantDelta checks that each metric moved by exactly delta since base.
func wantDelta(t testing.TB, when string, base, now map[string]float64, deltas map[string]float64) {
	t.Helper()
	for name, d := range deltas {
		if _, ok := now[name]; !ok {
			t.Errorf("%s: no %s", when, name)
			continue
		}
		if got := now[name] - base[name]; got != d {
			t.Errorf("%s: %s moved by %v (from %v to %v), want %v", when, name, got, base[name], now[name], d)
		}
	}
}

// waitMetrics scrapes until ok accepts the samples, and returns them.
func (s *testServer) waitMetrics(what string, ok func(map[string]float64) bool) map[string]float64 {
	s.t.Helper()
	var m map[string]float64
	eventually(s.t, "metrics "+what, func() bool {
		m = s.metrics()
		return ok(m)
	})
	return m
}

// The metrics count across a config reload: a tunnel opened before it is
// still counted once after it, and its traffic and end are counted when it
// closes under the new configuration.
func TestMetricsAcrossReload(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	gone := newUpstream(t, "tcp", "127.0.0.1:0") // configured before the reload only
	added := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	handle /old {
		ws_to_tcp `+gone.addr+`
	}
	handle /metrics {
		metrics
	}
	ws_to_tcp `+up.addr+`
}`)
	base := s.metrics()
	for _, name := range []string{mActive, mBytesIn, mBytesOut, mMsgsIn, mMsgsOut, mDials,
		mTotal("client"), mTotal("upstream"), mTotal("server"), mTotal("error")} {
		if _, ok := base[name]; !ok {
			t.Errorf("no %s before any tunnel", name)
		}
	}
	if base[mHealthy(up.addr)] != 1 || base[mHealthy(gone.addr)] != 1 {
		t.Errorf("upstream_healthy: %v %v", base[mHealthy(up.addr)], base[mHealthy(gone.addr)])
	}

	// A tunnel: 2 messages (7 bytes) in, 1 read (5 bytes) out.
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	c.WriteMessage(websocket.BinaryMessage, []byte("abc"))
	c.WriteMessage(websocket.BinaryMessage, []byte("defg"))
	readFull(t, uc, 7)
	uc.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, b, err := c.ReadMessage(); err != nil || string(b) != "hello" {
		t.Fatalf("client read %q %v", b, err)
	}
	// Open tunnels' traffic shows at scrape time (counted just after the
	// writes, hence the wait).
	open := s.waitMetrics("of the open tunnel", func(m map[string]float64) bool {
		return m[mBytesIn]-base[mBytesIn] == 7 && m[mBytesOut]-base[mBytesOut] == 5
	})
	wantDelta(t, "tunnel open", base, open, map[string]float64{mActive: 1, mDials: 1,
		mBytesIn: 7, mBytesOut: 5, mMsgsIn: 2, mMsgsOut: 1, mTotal("client"): 0})

	// The site's metrics handler serves the same registry.
	site := scrape(t, s.httpURL("/metrics"))
	if site[mActive] != open[mActive] || site[mBytesIn] != open[mBytesIn] {
		t.Errorf("site /metrics: active %v bytes in %v; admin: %v %v", site[mActive], site[mBytesIn], open[mActive], open[mBytesIn])
	}

	// Reload: nothing reset, nothing doubled.
	s.load(`{HTTP} {
	header X-Config 2
	handle /new {
		ws_to_tcp ` + added.addr + `
	}
	ws_to_tcp ` + up.addr + `
}`)
	reloaded := s.metrics()
	wantDelta(t, "after the reload", base, reloaded, map[string]float64{mActive: 1, mDials: 1,
		mBytesIn: 7, mBytesOut: 5, mMsgsIn: 2, mMsgsOut: 1})
	if reloaded[mHealthy(up.addr)] != 1 || reloaded[mHealthy(added.addr)] != 1 {
		t.Errorf("upstream_healthy after the reload: %v %v", reloaded[mHealthy(up.addr)], reloaded[mHealthy(added.addr)])
	}
	if _, ok := reloaded[mHealthy(gone.addr)]; ok {
		t.Errorf("upstream_healthy still reports %s, no longer configured", gone.addr)
	}

	// The old tunnel keeps counting, and ends under the new configuration.
	c.WriteMessage(websocket.BinaryMessage, []byte("xyz"))
	readFull(t, uc, 3)
	c2 := s.dial("/new", nil)
	defer c2.Close()
	added.accept(t)
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	readEOF(t, uc, ioTimeout) // a half-close: the Close echo waits for the upstream's end
	uc.Close()
	expectClose(t, c, ioTimeout)
	closed := s.waitMetrics("after the close", func(m map[string]float64) bool {
		return m[mActive]-base[mActive] == 1 && m[mTotal("client")] > base[mTotal("client")]
	})
	wantDelta(t, "after the close", base, closed, map[string]float64{mActive: 1, mDials: 2,
		mBytesIn: 10, mBytesOut: 5, mMsgsIn: 3, mMsgsOut: 1,
		mTotal("client"): 1, mTotal("upstream"): 0, mTotal("server"): 0, mTotal("error"): 0})

	// A refused handshake counts by reason.
	if _, resp, err := s.tryDial("/", http.Header{"Origin": {"http://evil.example"}}); err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("cross-origin: want 403, got %v %v", resp, err)
	}
	wantDelta(t, "after a rejection", base, s.metrics(), map[string]float64{mRejections("origin"): 1})

	// The new configuration's tunnel ends by the admin API: outcome server.
	var res closedResult
	s.adminOK("DELETE", "/ws_to_tcp/connections", "", nil, &res)
	expectClose(t, c2, ioTimeout)
	c2.Close()
	end := s.waitMetrics("with all closed", func(m map[string]float64) bool { return m[mActive] == base[mActive] })
	wantDelta(t, "all closed", base, end, map[string]float64{mActive: 0, mTotal("client"): 1, mTotal("server"): 1})
}

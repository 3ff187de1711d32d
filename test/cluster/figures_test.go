package cluster

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestClusterFigures measures what the cluster adds to a handshake, for
// docs/cluster.md: the handshake latency (p50, p99) with cluster limits on
// and off, side by side in the same Caddy, and the Redis commands per
// handshake (INFO commandstats). It runs only when asked:
//
//	WS_TO_TCP_CLUSTER_FIGURES=1 go test -count=1 -run TestClusterFigures -v ./test/cluster
func TestClusterFigures(t *testing.T) {
	if os.Getenv("WS_TO_TCP_CLUSTER_FIGURES") == "" {
		t.Skip("set WS_TO_TCP_CLUSTER_FIGURES=1 to measure")
	}
	const n = 2000
	rs := startRedis(t)
	up := startEcho(t, "")
	auth := "auth {\n\t\t\t\tjwt {\n\t\t\t\t\tsecret {env.CLUSTER_TEST_JWT}\n\t\t\t\t}\n\t\t\t}"
	siteBlock := fmt.Sprintf(`	route /plain {
		ws_to_tcp %[1]s {
			%[2]s
		}
	}
	route /local {
		ws_to_tcp %[1]s {
			%[2]s
			max_connections 100000
			max_connections_per_user 1000
		}
	}
	route /cluster {
		ws_to_tcp %[1]s {
			%[2]s
			max_connections 100000
			max_connections_per_user 1000
			cluster %[3]s fig:
		}
	}`, up.addr, auth, rs.url())
	in := startInstance(t, "fig", siteBlock, true)

	handshake := func(path string) time.Duration {
		u := fmt.Sprintf("ws://127.0.0.1:%d%s?access_token=%s", in.httpPort, path, token(t, "alice"))
		start := time.Now()
		c, _, err := websocket.DefaultDialer.Dial(u, nil)
		d := time.Since(start)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		c.Close()
		return d
	}
	paths := []string{"/plain", "/local", "/cluster"}
	for _, p := range paths { // warm up
		for range 50 {
			handshake(p)
		}
	}
	drained := func() bool {
		n, err := rs.client.Exists(context.Background(), "fig:limit:conns", "fig:limit:user:alice").Result()
		return err == nil && n == 0
	}
	eventually(t, "the warm-up's slots to be given back", drained)

	// Latency: the three interleaved, so that they share the machine's
	// state.
	lat := map[string][]time.Duration{}
	for range n {
		for _, p := range paths {
			lat[p] = append(lat[p], handshake(p))
		}
	}
	for _, p := range paths {
		l := lat[p]
		slices.Sort(l)
		t.Logf("%-9s handshakes %d: p50 %v, p99 %v", p, len(l), l[len(l)/2].Round(time.Microsecond), l[len(l)*99/100].Round(time.Microsecond))
	}

	// Commands: cluster handshakes only, their slots given back.
	eventually(t, "the slots to be given back", drained)
	before := rs.commandCalls(t)
	const m = 500
	for range m {
		handshake("/cluster")
	}
	eventually(t, "the slots to be given back", drained)
	after := rs.commandCalls(t)
	total := 0
	for cmd, calls := range after {
		if d := calls - before[cmd]; d > 0 && cmd != "info" {
			t.Logf("%-14s %6d  (%.2f per handshake)", cmd, d, float64(d)/m)
			if cmd == "evalsha" || cmd == "eval" || cmd == "publish" || cmd == "ping" {
				total += d
			}
		}
	}
	t.Logf("round trips (EVALSHA, PUBLISH, PING) per handshake: %.2f", float64(total)/m)
}

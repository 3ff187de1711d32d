package wstotcp

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Unit tests of the cluster's settings and of the admin API's scope; the
// cluster itself (three Caddy processes and a redis-server) is tested in
// test/cluster.

func TestClusterCaddyfileErrors(t *testing.T) {
	const to = "to 127.0.0.1:5900\n"
	checkCaddyfileErrors(t, []caddyfileErrorCase{
		{"cluster without URL", to + "cluster", 4, []string{"cluster: expected <redis-url> [<prefix>]"}},
		{"cluster with three args", to + "cluster redis://x p extra", 4, []string{"cluster: expected <redis-url> [<prefix>]"}},
		{"cluster twice", to + "cluster redis://x\ncluster redis://y", 5, []string{"cluster: already specified"}},
		{"cluster_fail bad", to + "cluster redis://x\ncluster_fail maybe", 5, []string{"cluster_fail: expected open or closed"}},
		{"cluster_fail without arg", to + "cluster redis://x\ncluster_fail", 5, []string{"cluster_fail: expected open or closed"}},
		{"cluster_name two args", to + "cluster redis://x\ncluster_name a b", 5, []string{"cluster_name: expected one name"}},
		{"cluster_lease zero", to + "cluster redis://x\ncluster_lease 0", 5, []string{"cluster_lease:", "more than 0"}},
		{"cluster_lease bad", to + "cluster redis://x\ncluster_lease soon", 5, []string{"cluster_lease:", "invalid duration"}},
	})
}

func TestClusterJSONConfigErrors(t *testing.T) {
	const to = `"upstreams": [{"dial": "127.0.0.1:1"}]`
	for _, tt := range []struct {
		js, name, want string
	}{
		{to + `, "cluster": {"fail": "closed"}`, "cluster.redis (cluster)", "a Redis URL is required"},
		{to + `, "cluster": {"redis": "http://u:s3cret@127.0.0.1:1"}`, "cluster.redis (cluster)", "not a redis://"},
		{to + `, "cluster": {"redis": "redis://127.0.0.1:1", "fail": "half"}`, "cluster.fail (cluster_fail)", `"half" is neither open nor closed`},
		{to + `, "cluster": {"redis": "redis://127.0.0.1:1", "lease": "500ms"}`, "cluster.lease (cluster_lease)", "shorter than 1s"},
		{to + `, "cluster": {"redis": "redis://127.0.0.1:1", "name": "a b"}`, "cluster.name (cluster_name)", "spaces"},
		{to + `, "cluster": {"redis": "redis://127.0.0.1:1", "name": "` + strings.Repeat("n", 65) + `"}`, "cluster.name (cluster_name)", "longer than 64"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := new(Handler)
			if err := json.Unmarshal([]byte("{"+tt.js+"}"), h); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
			defer cancel()
			err := h.Provision(ctx)
			h.Cleanup()
			if err == nil {
				t.Fatalf("Provision accepted %s", tt.js)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tt.name+": ") || !strings.Contains(msg, tt.want) {
				t.Errorf("error %q, want %q then %q", msg, tt.name, tt.want)
			}
			if strings.Contains(msg, "s3cret") {
				t.Errorf("error %q shows the password", msg)
			}
		})
	}
}

// Handlers with the same cluster settings share one node, which a handler
// of a configuration that does not run never connects with, and which
// stops when the last one is cleaned up.
func TestClusterNodeSharedAndReleased(t *testing.T) {
	addr := refusedAddr(t)
	js := `{"upstreams": [{"dial": "127.0.0.1:1"}], "max_connections": 5, "cluster": {"redis": "redis://` + addr + `", "prefix": "unit-shared:"}}`
	var hs []*Handler
	for range 2 {
		h := new(Handler)
		if err := json.Unmarshal([]byte(js), h); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
		defer cancel()
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	n := hs[0].cluster.node
	if hs[1].cluster.node != n || hs[0].limits.cluster.node != n {
		t.Fatal("two handlers with the same cluster settings have two nodes")
	}
	if n.name == "" || !strings.HasPrefix(n.session, n.name+"/") {
		t.Fatalf("instance %q, session %q", n.name, n.session)
	}
	if n.started.Load() || n.up.Load() {
		t.Fatal("the node of a configuration that does not run has connected")
	}
	hs[0].Cleanup()
	clusterNodes.Lock()
	alive := clusterNodes.m[n.key] == n
	clusterNodes.Unlock()
	if !alive {
		t.Fatal("the node stopped while a handler still has it")
	}
	hs[1].Cleanup()
	select {
	case <-n.ctx.Done():
	default:
		t.Fatal("the node still runs after its last handler's Cleanup")
	}
	clusterNodes.Lock()
	defer clusterNodes.Unlock()
	if clusterNodes.m[n.key] != nil {
		t.Fatal("the stopped node is still registered")
	}
}

// With cluster_fail closed and Redis not reached yet, a handshake that a
// limit concerns is refused; open, the local limit applies.
func TestClusterLimitsFailMode(t *testing.T) {
	addr := refusedAddr(t)
	for _, tt := range []struct {
		fail    string
		wantErr bool
	}{{"open", false}, {"closed", true}} {
		t.Run(tt.fail, func(t *testing.T) {
			h := new(Handler)
			js := `{"upstreams": [{"dial": "127.0.0.1:1"}], "max_connections": 1, "cluster": {"redis": "redis://` + addr + `", "prefix": "unit-fail-` + tt.fail + `:", "fail": "` + tt.fail + `"}}`
			if err := json.Unmarshal([]byte(js), h); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
			defer cancel()
			if err := h.Provision(ctx); err != nil {
				t.Fatal(err)
			}
			defer h.Cleanup()
			s, err := h.limits.take("192.0.2.1")
			if (err != nil) != tt.wantErr {
				t.Fatalf("take: %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "cluster_fail is closed") {
					t.Errorf("error %q does not name cluster_fail", err)
				}
				return
			}
			if _, err := h.limits.take("192.0.2.2"); err == nil || !strings.Contains(err.Error(), "max_connections 1") {
				t.Errorf("second take: %v, want the local limit", err)
			}
			if n := h.cluster.node; n.counts[n.connsKey()] != 1 || !n.dirty {
				t.Errorf("the slot is not held for Redis: counts %v, dirty %v", n.counts, n.dirty)
			}
			s.release()
			if n := h.cluster.node; len(n.counts) != 0 {
				t.Errorf("released, counts %v", n.counts)
			}
		})
	}
}

func TestTakeScope(t *testing.T) {
	for _, tt := range []struct {
		query     string
		cluster   bool
		timeout   time.Duration
		rest, err string
	}{
		{"user=a", false, 0, "user=a", ""},
		{"scope=local&user=a", false, 0, "user=a", ""},
		{"user=a&scope=cluster&channel=r", true, defaultClusterAdminTimeout, "user=a&channel=r", ""},
		{"scope=cluster&timeout=300ms", true, 300 * time.Millisecond, "", ""},
		{"scope=everywhere", false, 0, "", `scope "everywhere": expected local or cluster`},
		{"timeout=1s", false, 0, "", "timeout is for scope=cluster only"},
		{"scope=cluster&timeout=1h", false, 0, "", "up to 30s"},
		{"scope=cluster&timeout=-1s", false, 0, "", "up to 30s"},
	} {
		r := &http.Request{URL: &url.URL{Path: "/ws_to_tcp/connections", RawQuery: tt.query}}
		cluster, timeout, err := takeScope(r)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: error %v, want %q", tt.query, err, tt.err)
			}
			continue
		}
		if err != nil || cluster != tt.cluster || timeout != tt.timeout || r.URL.RawQuery != tt.rest {
			t.Errorf("%q: %v %v %q %v; want %v %v %q", tt.query, cluster, timeout, r.URL.RawQuery, err, tt.cluster, tt.timeout, tt.rest)
		}
	}
}

// Without a cluster, ?scope=cluster is refused, saying why.
func TestClusterScopeWithoutCluster(t *testing.T) {
	clusterNodes.Lock()
	none := len(clusterNodes.m) == 0
	clusterNodes.Unlock()
	if !none {
		t.Fatal("a cluster node is still registered: a handler with a cluster was not cleaned up, or its node did not stop")
	}
	status, body := runLocal(clusterRequest{Method: "GET", Path: "/ws_to_tcp/nothing"})
	if status != http.StatusNotFound || !strings.Contains(string(body), "no such endpoint") {
		t.Errorf("runLocal of an unknown path: %d %s", status, body)
	}
	r := &http.Request{Method: "GET", URL: &url.URL{Path: "/ws_to_tcp/connections"}}
	err := clusterAdmin(nil, r, adminEndpoints[0], time.Second)
	if err == nil || !strings.Contains(err.Error(), "no ws_to_tcp handler of this instance has a cluster") {
		t.Errorf("scope=cluster without a cluster: %v", err)
	}
}

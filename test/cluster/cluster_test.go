package cluster

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/gorilla/websocket"
)

// site is the site block of a cluster instance: /echo relays to up, with
// JWT users, a channel from ?room= and the cluster settings (a 2 s lease
// unless extra has one), plus extra lines.
func site(rs *redisServer, up, name, extra string) string {
	lease := "cluster_lease 2s"
	if strings.Contains(extra, "cluster_lease") {
		lease = ""
	}
	return fmt.Sprintf(`	route /echo {
		ws_to_tcp %s {
			auth {
				jwt {
					secret {env.CLUSTER_TEST_JWT}
				}
			}
			channel {http.request.uri.query.room}
			cluster %s wstest:
			cluster_name %s
			%s
%s
		}
	}`, up, rs.url(), name, lease, extra)
}

const limit = "max_connections_per_user 3"

// startCluster starts three instances named a, b and c, extra[i] added to
// the handler of the i-th, and waits until they see each other.
func startCluster(t *testing.T, rs *redisServer, up string, extra ...string) []*instance {
	t.Helper()
	var all []*instance
	for i, name := range []string{"a", "b", "c"} {
		var x string
		if i < len(extra) {
			x = extra[i]
		}
		all = append(all, startInstance(t, name, site(rs, up, name, x), true))
	}
	waitMembers(t, all...)
	return all
}

// A user's tunnels spread over three instances are listed from one and
// disconnected from one; another user's stay. An instance that cannot
// answer (stopped) is named as missing.
func TestClusterListAndDisconnect(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	up := startEcho(t, "")
	// c's lease is long, so that, stopped, it stays a member that does
	// not answer for the whole test.
	all := startCluster(t, rs, up.addr, "", "", "cluster_lease 1m")
	a, b, c := all[0], all[1], all[2]

	var alice, bob []*websocket.Conn
	for _, in := range all {
		for range 2 {
			alice = append(alice, in.mustDial(t, "/echo", "alice"))
		}
		bob = append(bob, in.mustDial(t, "/echo", "bob"))
		in.waitOpen(t, 3)
	}

	var list clusterAnswer
	if st := a.admin(t, "GET", "/ws_to_tcp/connections?scope=cluster&user=alice", "", "", &list); st != http.StatusOK {
		t.Fatalf("list: status %d", st)
	}
	if list.Scope != "cluster" || len(list.Missing) != 0 {
		t.Fatalf("list: scope %q, missing %v", list.Scope, list.Missing)
	}
	perInstance := map[string]int{}
	for _, cn := range list.Connections {
		if cn.User != "alice" {
			t.Errorf("listed a connection of %q", cn.User)
		}
		perInstance[cn.Instance]++
	}
	if want := map[string]int{"a": 2, "b": 2, "c": 2}; fmt.Sprint(perInstance) != fmt.Sprint(want) {
		t.Fatalf("alice's connections per instance: %v, want %v", perInstance, want)
	}
	if got := list.instanceNames(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("instances answering: %v", got)
	}

	// The local scope (the default) lists this instance's only, with its
	// instance id.
	var local []struct{ Instance string }
	b.admin(t, "GET", "/ws_to_tcp/connections?user=alice", "", "", &local)
	if len(local) != 2 || local[0].Instance != "b" {
		t.Fatalf("local list on b: %+v", local)
	}

	var closed clusterAnswer
	if st := b.admin(t, "DELETE", "/ws_to_tcp/connections?scope=cluster&user=alice", "", "", &closed); st != http.StatusOK {
		t.Fatalf("disconnect: status %d", st)
	}
	if closed.Closed != 6 || len(closed.Instances) != 3 {
		t.Fatalf("disconnect: closed %d on %v, want 6 on 3 instances", closed.Closed, closed.Instances)
	}
	for _, i := range closed.Instances {
		if i["closed"] != float64(2) {
			t.Errorf("disconnect: %v, want 2 closed on each", i)
		}
	}
	for _, conn := range alice {
		if code := closeCode(t, conn); code != websocket.CloseGoingAway {
			t.Errorf("alice's tunnel closed with %d, want 1001", code)
		}
	}
	for _, conn := range bob {
		echo(t, conn, "still here")
	}

	// c stopped: it is still a member (its lease is a minute) but cannot
	// answer; the answer names it.
	c.proc.cmd.Process.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { c.proc.cmd.Process.Signal(syscall.SIGCONT) })
	var partial clusterAnswer
	// bob's only: alice's disconnected tunnels may still be listed as
	// closing for a moment on a loaded machine.
	a.admin(t, "GET", "/ws_to_tcp/connections?scope=cluster&user=bob&timeout=1s", "", "", &partial)
	if !slices.Equal(partial.Missing, []string{"c"}) || len(partial.Connections) != 2 {
		t.Fatalf("with c stopped: missing %v, %d connections (want [c], bob's 2 on a and b)", partial.Missing, len(partial.Connections))
	}
	c.proc.cmd.Process.Signal(syscall.SIGCONT)
}

// A broadcast to a channel with ?scope=cluster reaches every member of the
// channel on every instance exactly once, through one publish (and one
// answer per other instance).
func TestClusterBroadcastOnce(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	up := startEcho(t, "")
	all := startCluster(t, rs, up.addr)

	var room, others []*websocket.Conn
	for _, in := range all {
		for range 2 {
			room = append(room, in.mustDial(t, "/echo?room=r1", "u-"+in.name))
		}
		others = append(others, in.mustDial(t, "/echo?room=r2", "v-"+in.name))
		in.waitOpen(t, 3)
	}

	before := rs.commandCalls(t)
	var ans clusterAnswer
	if st := all[2].admin(t, "POST", "/ws_to_tcp/broadcast?scope=cluster&channel=r1", "text/plain", "hello", &ans); st != http.StatusOK {
		t.Fatalf("broadcast: status %d", st)
	}
	after := rs.commandCalls(t)
	if ans.Sent != 6 || ans.Failed != 0 || len(ans.Missing) != 0 {
		t.Fatalf("broadcast: %+v, want 6 sent", ans)
	}
	// One publish of the request, one answer from each other instance.
	if n := after["publish"] - before["publish"]; n != 3 {
		t.Errorf("PUBLISH calls for one broadcast: %d, want 3 (the request and 2 answers)", n)
	}

	// A second broadcast: each member's next message after "hello" is
	// "again", so "hello" came exactly once.
	if st := all[0].admin(t, "POST", "/ws_to_tcp/broadcast?scope=cluster&channel=r1", "text/plain", "again", &ans); st != http.StatusOK || ans.Sent != 6 {
		t.Fatalf("second broadcast: status %d, %+v", st, ans)
	}
	for i, c := range room {
		if got := readText(t, c); got != "hello" {
			t.Fatalf("member %d: first message %q, want hello", i, got)
		}
		if got := readText(t, c); got != "again" {
			t.Fatalf("member %d: second message %q, want again (hello only once)", i, got)
		}
	}
	// The other channel got neither.
	all[1].admin(t, "POST", "/ws_to_tcp/broadcast?scope=cluster&channel=r2", "text/plain", "r2 only", &ans)
	for _, c := range others {
		if got := readText(t, c); got != "r2 only" {
			t.Fatalf("r2 member: first message %q, want \"r2 only\"", got)
		}
	}
}

// max_connections_per_user 3 holds across the cluster under a burst of
// 100 concurrent handshakes spread over the three instances; a slot given
// back by a closed tunnel can be taken on another instance.
func TestClusterUserLimitBurst(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	up := startEcho(t, "")
	all := startCluster(t, rs, up.addr, limit, limit, limit)

	const n = 100
	start := make(chan struct{})
	type result struct {
		c      *websocket.Conn
		status int
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		in := all[i%len(all)]
		tok := token(t, "alice")
		wg.Go(func() {
			<-start
			u := fmt.Sprintf("ws://127.0.0.1:%d/echo?access_token=%s", in.httpPort, tok)
			d := websocket.Dialer{HandshakeTimeout: ioTimeout}
			c, resp, err := d.Dial(u, nil)
			switch {
			case err == nil:
				results[i] = result{c: c, status: http.StatusSwitchingProtocols}
			case resp != nil:
				results[i] = result{status: resp.StatusCode}
			}
		})
	}
	close(start)
	wg.Wait()
	var admitted []*websocket.Conn
	statuses := map[int]int{}
	for _, r := range results {
		statuses[r.status]++
		if r.c != nil {
			admitted = append(admitted, r.c)
			t.Cleanup(func() { r.c.Close() })
		}
	}
	if len(admitted) != 3 || statuses[http.StatusServiceUnavailable] != n-3 {
		t.Fatalf("burst of %d: statuses %v, want 3 admitted and %d refused with 503", n, statuses, n-3)
	}
	for _, c := range admitted {
		echo(t, c, "ok")
	}
	if _, st := all[0].dial(t, "/echo", "alice"); st != http.StatusServiceUnavailable {
		t.Fatalf("a 4th tunnel: status %d, want 503", st)
	}
	admitted[0].Close()
	var again *websocket.Conn
	eventually(t, "the closed tunnel's slot to be given back", func() bool {
		c, _ := all[1].dial(t, "/echo", "alice")
		again = c
		return c != nil
	})
	echo(t, again, "again")
}

// max_connections and max_connections_per_ip count across the cluster too.
// Clients come from 127.0.0.1 and 127.0.0.2 (Linux answers for the whole
// loopback /8).
func TestClusterTotalAndPerIPLimits(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	up := startEcho(t, "")
	limits := "max_connections 3\n\t\t\tmax_connections_per_ip 2"
	all := startCluster(t, rs, up.addr, limits, limits, limits)
	a, b, c := all[0], all[1], all[2]
	for _, tc := range []struct {
		in     *instance
		src    string
		status int
	}{
		{a, "127.0.0.1", http.StatusSwitchingProtocols},
		{b, "127.0.0.1", http.StatusSwitchingProtocols},
		{c, "127.0.0.1", http.StatusServiceUnavailable}, // 2 from this address in the cluster
		{c, "127.0.0.2", http.StatusSwitchingProtocols},
		{a, "127.0.0.2", http.StatusServiceUnavailable}, // 3 in the cluster
	} {
		if _, st := tc.in.dialFrom(t, tc.src, "/echo", "u"); st != tc.status {
			t.Fatalf("from %s on %s: status %d, want %d", tc.src, tc.in.name, st, tc.status)
		}
	}
}

// The slots of an instance killed with SIGKILL count until its lease runs
// out (2 s here), then no more: the others admit again.
func TestClusterKilledInstanceGivesSlotsBack(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	up := startEcho(t, "")
	all := startCluster(t, rs, up.addr, limit, limit, limit)
	a, b, victim := all[0], all[1], all[2]

	for range 3 {
		victim.mustDial(t, "/echo", "alice")
	}
	if _, st := a.dial(t, "/echo", "alice"); st != http.StatusServiceUnavailable {
		t.Fatalf("alice's 4th tunnel on a: status %d, want 503", st)
	}
	victim.proc.cmd.Process.Kill()
	<-victim.proc.done

	var got []*websocket.Conn
	eventually(t, "the killed instance's slots to run out", func() bool {
		c, _ := a.dial(t, "/echo", "alice")
		if c != nil {
			got = append(got, c)
		}
		return c != nil
	})
	// All three of its slots are back: three tunnels in all, on a and b.
	got = append(got, b.mustDial(t, "/echo", "alice"), a.mustDial(t, "/echo", "alice"))
	if _, st := b.dial(t, "/echo", "alice"); st != http.StatusServiceUnavailable {
		t.Fatalf("a 4th tunnel after the lease: status %d, want 503", st)
	}
	var list clusterAnswer
	a.admin(t, "GET", "/ws_to_tcp/connections?scope=cluster", "", "", &list)
	if names := list.instanceNames(); !slices.Equal(names, []string{"a", "b"}) || len(list.Missing) != 0 || len(list.Connections) != 3 {
		t.Fatalf("after the kill: instances %v, missing %v, %d connections", names, list.Missing, len(list.Connections))
	}
}

// redis-server stopped mid-run: tunnels keep relaying; admission follows
// cluster_fail (open on a and c: their local limit; closed on b: 503); the
// admin API answers for its own instance and says so; the metric says
// 0. Started again on the same port: everything comes back, and the
// tunnels opened meanwhile count.
func TestClusterRedisOutage(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	up := startEcho(t, "")
	all := startCluster(t, rs, up.addr, limit, limit+"\n\t\t\tcluster_fail closed", limit)
	a, b, c := all[0], all[1], all[2]

	var tunnels []*websocket.Conn
	for _, in := range all {
		tunnels = append(tunnels, in.mustDial(t, "/echo", "alice"))
	}
	if _, st := a.dial(t, "/echo", "alice"); st != http.StatusServiceUnavailable {
		t.Fatalf("alice's 4th tunnel: status %d, want 503", st)
	}

	rs.stop()
	for _, in := range all {
		eventually(t, in.name+" to see Redis down (caddy_ws_to_tcp_cluster_up 0)", func() bool {
			return in.metric("caddy_ws_to_tcp_cluster_up") == 0
		})
	}
	for i, tn := range tunnels {
		echo(t, tn, fmt.Sprintf("during the outage %d", i))
	}
	// open: the local limit (3 per instance) applies
	tunnels = append(tunnels, a.mustDial(t, "/echo", "alice"))
	// closed: refused
	if _, st := b.dial(t, "/echo", "alice"); st != http.StatusServiceUnavailable {
		t.Fatalf("cluster_fail closed during the outage: status %d, want 503", st)
	}
	var ans clusterAnswer
	c.admin(t, "GET", "/ws_to_tcp/connections?scope=cluster", "", "", &ans)
	if ans.Scope != "local" || ans.Error == "" || len(ans.Connections) != 1 {
		t.Fatalf("admin during the outage: scope %q, error %q, %d connections; want local, a reason, c's 1", ans.Scope, ans.Error, len(ans.Connections))
	}
	if out := a.proc.out.String(); strings.Count(out, "Redis unreachable") != 1 {
		t.Errorf("a's log has %d WARN lines for the outage, want 1:\n%s", strings.Count(out, "Redis unreachable"), out)
	}

	rs.start() // same port, empty
	for _, in := range all {
		eventually(t, in.name+" to see Redis back", func() bool { return in.metric("caddy_ws_to_tcp_cluster_up") == 1 })
	}
	waitMembers(t, all...)
	// Every instance writes its slots again: alice's 4 tunnels count.
	eventually(t, "alice's 4 slots to be in Redis again", func() bool {
		vals, err := rs.client.HGetAll(context.Background(), "wstest:limit:user:alice").Result()
		if err != nil {
			return false
		}
		sum := 0
		for _, v := range vals {
			var n int
			fmt.Sscan(v, &n)
			sum += n
		}
		return sum == 4
	})
	for _, in := range all {
		if _, st := in.dial(t, "/echo", "alice"); st != http.StatusServiceUnavailable {
			t.Fatalf("alice at 4 of 3 after the outage, on %s: status %d, want 503", in.name, st)
		}
	}
	for i, tn := range tunnels {
		echo(t, tn, fmt.Sprintf("after the outage %d", i))
	}
	tunnels[0].Close()
	tunnels[1].Close()
	var back *websocket.Conn
	eventually(t, "alice to be admitted again at 2 of 3", func() bool {
		back, _ = b.dial(t, "/echo", "alice")
		return back != nil
	})
	echo(t, back, "back")
}

// An upstream that one instance's active checks find down is skipped by
// the others, which have no checks of their own; back up, it is used
// again. Each instance's view shows in the cluster's upstream list.
func TestClusterSharedHealth(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	x := startEcho(t, "X")
	y := startEcho(t, "OK Y")
	ups := x.addr + " " + y.addr
	checks := "lb_policy first\n\t\t\tlb_retries 1\n"
	all := startCluster(t, rs, ups,
		checks+"\t\t\thealth_interval 100ms\n\t\t\thealth_timeout 300ms\n\t\t\thealth_expect OK",
		checks, checks)
	b, c := all[1], all[2]

	first := func(in *instance) string {
		conn := in.mustDial(t, "/echo", "u")
		defer conn.Close()
		return readText(t, conn)
	}
	for _, in := range []*instance{b, c} {
		eventually(t, in.name+" to skip X, down at a", func() bool { return first(in) == "OK Y" })
	}
	var view struct {
		Scope     string
		Missing   []string
		Instances []struct {
			Instance  string
			Upstreams []struct {
				Address string
				Healthy bool
			}
		}
	}
	b.admin(t, "GET", "/ws_to_tcp/upstreams?scope=cluster", "", "", &view)
	if len(view.Instances) != 3 || view.Scope != "cluster" || len(view.Missing) != 0 {
		t.Fatalf("upstreams: scope %q, %d instances answered, missing %v; want cluster, 3, none", view.Scope, len(view.Instances), view.Missing)
	}
	for _, i := range view.Instances {
		for _, u := range i.Upstreams {
			if u.Address == x.addr && u.Healthy {
				t.Errorf("%s sees X healthy", i.Instance)
			}
		}
	}

	x.setGreeting("OK X") // a's checks pass again
	for _, in := range []*instance{b, c} {
		eventually(t, in.name+" to use X again", func() bool { return first(in) == "OK X" })
	}
}

// A config reload that keeps the cluster settings keeps the instance's
// membership and its slots: the tunnels opened before it still count and
// are still listed, under the same instance, once.
func TestClusterReloadKeepsSlots(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	up := startEcho(t, "")
	all := startCluster(t, rs, up.addr, limit, limit, limit)
	a, b := all[0], all[1]
	var kept []*websocket.Conn
	for range 3 {
		kept = append(kept, a.mustDial(t, "/echo", "alice"))
	}
	sessions := func() []string {
		m, err := rs.client.ZRange(context.Background(), "wstest:members", 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(m)
		return m
	}
	before := sessions()

	// The same Caddyfile with one more route: a new configuration.
	cfg := strings.Replace(a.config, "\troute /echo {", "\troute /other {\n\t\trespond 204\n\t}\n\troute /echo {", 1)
	if st := a.admin(t, "POST", "/load", "text/caddyfile", cfg, nil); st != http.StatusOK {
		t.Fatalf("reload: status %d", st)
	}
	eventually(t, "the new configuration to serve", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/other", a.httpPort))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusNoContent
	})
	for _, c := range kept {
		echo(t, c, "after the reload")
	}
	if _, st := b.dial(t, "/echo", "alice"); st != http.StatusServiceUnavailable {
		t.Fatalf("alice's 4th tunnel after a's reload: status %d, want 503", st)
	}
	// One heartbeat of a's membership after the reload: a node the new
	// configuration made for itself would have joined by then (its first
	// heartbeat comes as its configuration starts).
	var aSession string
	for _, m := range before {
		if strings.HasPrefix(m, "a/") {
			aSession = m
		}
	}
	renewed, err := rs.client.ZScore(context.Background(), "wstest:members", aSession).Result()
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a's membership to be renewed after the reload", func() bool {
		s, err := rs.client.ZScore(context.Background(), "wstest:members", aSession).Result()
		return err == nil && s > renewed
	})
	if after := sessions(); !slices.Equal(after, before) {
		t.Fatalf("members %v before the reload, %v after: the reload made a new membership", before, after)
	}
	var list clusterAnswer
	b.admin(t, "GET", "/ws_to_tcp/connections?scope=cluster&user=alice", "", "", &list)
	if len(list.Connections) != 3 || len(list.Instances) != 3 {
		t.Fatalf("after the reload: %d connections from %d instances, want 3 from 3", len(list.Connections), len(list.Instances))
	}
	kept[0].Close()
	eventually(t, "a slot given back by a tunnel of the old configuration", func() bool {
		c, _ := b.dial(t, "/echo", "alice")
		return c != nil
	})
}

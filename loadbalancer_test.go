package wstotcp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// testBalancer is a balancer over n upstreams with states of their own
// (not in the shared pool), all healthy.
func testBalancer(policy string, n int, limit int64) *balancer {
	b := &balancer{policy: policy, maxPerUpstream: limit}
	for i := range n {
		key := fmt.Sprintf("127.0.9.%d:5900", i+1)
		s := &upstreamState{dial: key}
		s.up.Store(true)
		b.ups = append(b.ups, &Upstream{Dial: key})
		b.keys = append(b.keys, key)
		b.states = append(b.states, s)
	}
	return b
}

// counts picks n times (nothing skipped, nothing reserved) and counts the
// choices; -1 counts as index len.
func (b *balancer) counts(n int, user string) []int {
	out := make([]int, len(b.states)+1)
	r := httptest.NewRequest("GET", "/", nil)
	for range n {
		i := b.pick(r, user, make([]bool, len(b.states)))
		if i < 0 {
			i = len(b.states)
		}
		out[i]++
	}
	return out
}

func TestRoundRobin(t *testing.T) {
	b := testBalancer(policyRoundRobin, 3, 0)
	r := httptest.NewRequest("GET", "/", nil)
	for k := range 9 {
		if i := b.pick(r, "", make([]bool, 3)); i != k%3 {
			t.Fatalf("pick %d went to %d, want %d", k, i, k%3)
		}
	}
	if got := b.counts(300, ""); got[0] != 100 || got[1] != 100 || got[2] != 100 {
		t.Fatalf("counts %v", got)
	}
	// A down upstream is skipped, and its turn does not double the next
	// one's share (reverse_proxy's way: the counter moves on).
	b.states[1].up.Store(false)
	if got := b.counts(300, ""); got[0] != 150 || got[1] != 0 || got[2] != 150 {
		t.Fatalf("counts with the second down %v", got)
	}
	for _, s := range b.states {
		s.up.Store(false)
	}
	if got := b.counts(10, ""); got[3] != 10 {
		t.Fatalf("all down: %v", got)
	}
}

func TestFirst(t *testing.T) {
	b := testBalancer(policyFirst, 3, 2)
	if got := b.counts(100, ""); got[0] != 100 {
		t.Fatalf("counts %v", got)
	}
	b.states[0].up.Store(false)
	if got := b.counts(100, ""); got[1] != 100 {
		t.Fatalf("first down: %v", got)
	}
	b.states[1].active.Store(2) // at max_connections_per_upstream
	if got := b.counts(100, ""); got[2] != 100 {
		t.Fatalf("first down, second full: %v", got)
	}
}

func TestLeastConn(t *testing.T) {
	b := testBalancer(policyLeastConn, 3, 0)
	b.states[0].active.Store(5)
	b.states[1].active.Store(1)
	b.states[2].active.Store(2)
	if got := b.counts(100, ""); got[1] != 100 {
		t.Fatalf("counts %v", got)
	}
	b.states[2].active.Store(1) // a tie: both chosen, at random
	got := b.counts(1000, "")
	if got[0] != 0 || got[1] < 400 || got[2] < 400 {
		t.Fatalf("ties: %v", got)
	}
	b.states[1].up.Store(false)
	if got := b.counts(100, ""); got[2] != 100 {
		t.Fatalf("least one down: %v", got)
	}
}

func TestRandomPolicy(t *testing.T) {
	b := testBalancer(policyRandom, 3, 0)
	got := b.counts(3000, "")
	for i := range 3 {
		if got[i] < 850 || got[i] > 1150 { // expected 1000, sd 26
			t.Fatalf("counts %v", got)
		}
	}
	b.states[0].up.Store(false)
	if got := b.counts(300, ""); got[0] != 0 || got[1] == 0 || got[2] == 0 {
		t.Fatalf("first down: %v", got)
	}
}

// Rendezvous hashing: a key stays on its upstream, keys spread over all
// upstreams, and when one goes down only its keys move.
func TestHashPolicies(t *testing.T) {
	b := testBalancer(policyUserHash, 3, 0)
	r := httptest.NewRequest("GET", "/", nil)
	all := make([]bool, 3)
	before := map[string]int{}
	spread := make([]int, 3)
	for k := range 1000 {
		user := "user" + strconv.Itoa(k)
		i := b.pick(r, user, all)
		for range 3 {
			if j := b.pick(r, user, all); j != i {
				t.Fatalf("%s went to %d, then to %d", user, i, j)
			}
		}
		before[user] = i
		spread[i]++
	}
	for i, n := range spread {
		if n < 250 {
			t.Fatalf("upstream %d got %d of 1000 users: %v", i, n, spread)
		}
	}
	b.states[1].up.Store(false)
	for user, was := range before {
		now := b.pick(r, user, all)
		if was != 1 && now != was {
			t.Fatalf("%s moved from %d to %d though only 1 went down", user, was, now)
		}
		if now == 1 {
			t.Fatalf("%s still on the down upstream", user)
		}
	}
	// No user: at random.
	b.states[1].up.Store(true)
	if got := b.counts(300, ""); got[0] < 50 || got[1] < 50 || got[2] < 50 {
		t.Fatalf("user_hash without a user: %v", got)
	}

	// ip_hash hashes Caddy's client IP the same way.
	b.policy = policyIPHash
	ipOf := func(ip string) int {
		req := httptest.NewRequest("GET", "/", nil)
		req.RemoteAddr = ip + ":1234"
		return b.pick(req, "", all)
	}
	ipSpread := make([]int, 3)
	for k := range 300 {
		ip := fmt.Sprintf("10.1.%d.%d", k/250, k%250)
		i := ipOf(ip)
		if ipOf(ip) != i {
			t.Fatalf("%s not stable", ip)
		}
		ipSpread[i]++
	}
	if ipSpread[0] < 60 || ipSpread[1] < 60 || ipSpread[2] < 60 {
		t.Fatalf("ip_hash spread %v", ipSpread)
	}
}

// reserve takes a slot of the chosen upstream, and skips a full one.
func TestReserveLimit(t *testing.T) {
	b := testBalancer(policyFirst, 2, 2)
	r := httptest.NewRequest("GET", "/", nil)
	var got []int
	for range 5 {
		got = append(got, b.reserve(r, "", make([]bool, 2), new(slots)))
	}
	if fmt.Sprint(got) != "[0 0 1 1 -1]" {
		t.Fatalf("reservations %v", got)
	}
	if b.states[0].active.Load() != 2 || b.states[1].active.Load() != 2 {
		t.Fatalf("active %d %d", b.states[0].active.Load(), b.states[1].active.Load())
	}
	// A slot taken between the choice and the reservation: the next one.
	b.states[0].active.Store(1)
	b.maxPerUpstream = 2
	b.states[1].active.Store(0)
	skip := make([]bool, 2)
	b.states[0].active.Store(2) // as if a concurrent handshake took it
	if i := b.reserve(r, "", skip, new(slots)); i != 1 {
		t.Fatalf("reserved %d", i)
	}
	if !b.anyHealthy() {
		t.Fatal("anyHealthy false with healthy upstreams")
	}
}

// The verdict changes (and so the metric and the events) only on
// transitions: a second failure of a down upstream changes nothing, and
// failures expire.
func TestPassiveTransitions(t *testing.T) {
	h := provisioned(t, `{"upstreams": [{"dial": "127.0.0.1:19091"}],
		"health_checks": {"passive": {"fail_duration": "150ms", "max_fails": 2}}}`)
	t.Cleanup(func() { h.Cleanup() })
	s := h.lb.states[0]
	if !s.up.Load() || metricValue(t, "127.0.0.1:19091") != 1 {
		t.Fatal("not healthy at the start")
	}
	h.countFailure(s, errors.New("refused"))
	if !s.up.Load() {
		t.Fatal("down after 1 failure, max_fails 2")
	}
	h.countFailure(s, errors.New("refused"))
	if s.up.Load() || metricValue(t, "127.0.0.1:19091") != 0 {
		t.Fatal("up after 2 failures")
	}
	h.countFailure(s, errors.New("refused"))
	eventually(t, "the failures to expire", s.up.Load)
	if metricValue(t, "127.0.0.1:19091") != 1 {
		t.Fatal("metric not back to 1")
	}
}

// Active thresholds: health_fails consecutive failures mark down,
// health_passes consecutive passes bring back.
func TestActiveThresholds(t *testing.T) {
	h := provisioned(t, `{"upstreams": [{"dial": "127.0.0.1:19092"}],
		"health_checks": {"active": {"interval": "1h", "fails": 2, "passes": 3}}}`)
	t.Cleanup(func() { h.Cleanup() })
	s := h.lb.states[0]
	fail := errors.New("refused")
	steps := []struct {
		err  error
		want bool
	}{
		{fail, true}, {nil, true}, {fail, true}, {fail, false}, {fail, false},
		{nil, false}, {nil, false}, {fail, false}, {nil, false}, {nil, false}, {nil, true}, {fail, true},
	}
	for k, st := range steps {
		h.recordCheck(s, st.err)
		if s.up.Load() != st.want {
			t.Fatalf("step %d: healthy %v, want %v", k, s.up.Load(), st.want)
		}
	}
}

// Health kept per address survives a new handler with the address (a
// reload), and is forgotten when no handler checks it any more.
func TestStateSharedAcrossHandlers(t *testing.T) {
	const js = `{"upstreams": [{"dial": "127.0.0.1:19093"}],
		"health_checks": {"active": {"interval": "1h"}}}`
	h1 := provisioned(t, js)
	h1.recordCheck(h1.lb.states[0], errors.New("refused"))
	h2 := provisioned(t, js)
	if h2.lb.states[0] != h1.lb.states[0] || h2.lb.states[0].up.Load() {
		t.Fatal("the second handler does not share the down state")
	}
	h1.Cleanup()
	if h2.lb.states[0].up.Load() {
		t.Fatal("up after the first handler went, though the second checks it")
	}
	// A handler without active checks replaces the one with them: the
	// active verdict is forgotten.
	h3 := provisioned(t, `{"upstreams": [{"dial": "127.0.0.1:19093"}]}`)
	h2.Cleanup()
	if !h3.lb.states[0].up.Load() {
		t.Fatal("still down with no active checks configured")
	}
	if refs, _ := upstreamStates.References("127.0.0.1:19093"); refs != 1 {
		t.Fatalf("%d references, want 1", refs)
	}
	h3.Cleanup()
	h3.Cleanup() // idempotent
	if _, ok := upstreamStates.References("127.0.0.1:19093"); ok {
		t.Fatal("state kept after the last handler")
	}
}

func metricValue(t *testing.T, upstream string) float64 {
	t.Helper()
	healthMetric.Lock()
	defer healthMetric.Unlock()
	if healthMetric.current[upstream] == nil {
		t.Fatalf("no upstream_healthy series for %s", upstream)
	}
	m := &dtoMetric{}
	if err := upstreamHealthy.WithLabelValues(upstream).Write(&m.Metric); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

func TestBalancerCaddyfileErrors(t *testing.T) {
	tests := []caddyfileErrorCase{
		{"lb_policy unknown", "to 127.0.0.1:5900\nlb_policy weighted", 4, []string{"lb_policy:", `"weighted"`, "round_robin"}},
		{"lb_policy without arg", "to 127.0.0.1:5900\nlb_policy", 4, []string{"lb_policy:", "expected one of"}},
		{"lb_policy two args", "to 127.0.0.1:5900\nlb_policy first random", 4, []string{"lb_policy:"}},
		{"lb_retries word", "to 127.0.0.1:5900\nlb_retries some", 4, []string{"lb_retries:", `"some"`, "not a whole number"}},
		{"max_connections_per_upstream 0", "to 127.0.0.1:5900\nmax_connections_per_upstream 0", 4, []string{"max_connections_per_upstream:", "positive"}},
		{"health_interval bad", "to 127.0.0.1:5900\nhealth_interval often", 4, []string{"health_interval:", "invalid duration"}},
		{"health_interval 0", "to 127.0.0.1:5900\nhealth_interval 0s", 4, []string{"health_interval:", "more than 0"}},
		{"health_timeout without arg", "to 127.0.0.1:5900\nhealth_timeout", 4, []string{"health_timeout:", "expected one duration"}},
		{"health_send empty", "to 127.0.0.1:5900\nhealth_send \"\"", 4, []string{"health_send:", "non-empty"}},
		{"health_expect two args", "to 127.0.0.1:5900\nhealth_expect a b", 4, []string{"health_expect:", "quote it"}},
		{"health_fails 0", "to 127.0.0.1:5900\nhealth_fails 0", 4, []string{"health_fails:", "positive"}},
		{"health_passes word", "to 127.0.0.1:5900\nhealth_passes two", 4, []string{"health_passes:", `"two"`}},
		{"fail_duration negative", "to 127.0.0.1:5900\nfail_duration -1s", 4, []string{"fail_duration:", "more than 0"}},
		{"max_fails 0", "to 127.0.0.1:5900\nmax_fails 0", 4, []string{"max_fails:", "positive"}},
		{"proxy_protocol v3", "to 127.0.0.1:5900\nproxy_protocol v3", 4, []string{"proxy_protocol:", "v1 or v2"}},
		{"proxy_protocol without arg", "to 127.0.0.1:5900\nproxy_protocol", 4, []string{"proxy_protocol:", "v1 or v2"}},
		{"preamble twice", "to 127.0.0.1:5900\npreamble a\npreamble b", 5, []string{"preamble", "already specified"}},
	}
	checkCaddyfileErrors(t, tests)
}

// What the Caddyfile lets through (or JSON says) and Provision
// refuse.
func TestBalancerValidateErrors(t *testing.T) {
	tests := []struct {
		name string
		js   string
		want string
	}{
		{"unknown policy", `"load_balancing": {"selection_policy": "weighted"}`, `load_balancing.selection_policy (lb_policy): unknown policy "weighted"`},
		{"negative retries", `"load_balancing": {"retries": -1}`, "load_balancing.retries (lb_retries): must not be negative"},
		{"negative limit", `"max_connections_per_upstream": -1`, "max_connections_per_upstream: must not be negative"},
		{"proxy v3", `"proxy_protocol": "v3"`, `proxy_protocol: "v3" is neither v1 nor v2`},
		{"bad preamble", `"preamble": "\\x4"`, "preamble: "},
		{"timeout without interval", `"health_checks": {"active": {"timeout": "1s"}}`, "health_checks.active.interval (health_interval): a positive interval is required"},
		{"send without interval", `"health_checks": {"active": {"send": "PING"}}`, "health_checks.active.interval (health_interval): "},
		{"bad send", `"health_checks": {"active": {"interval": "1s", "send": "\\xq1"}}`, "health_checks.active.send (health_send): "},
		{"bad expect", `"health_checks": {"active": {"interval": "1s", "expect": "\\x"}}`, "health_checks.active.expect (health_expect): "},
		{"negative fails", `"health_checks": {"active": {"interval": "1s", "fails": -1}}`, "health_checks.active.fails (health_fails): must not be negative"},
		{"max_fails alone", `"health_checks": {"passive": {"max_fails": 3}}`, "health_checks.passive.max_fails (max_fails): needs fail_duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := new(Handler)
			if err := json.Unmarshal([]byte(`{"upstreams": [{"dial": "127.0.0.1:19094"}], `+tt.js+`}`), h); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := h.Provision(ctx)
			h.Cleanup()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// Defaults, as documented.
func TestBalancerDefaults(t *testing.T) {
	h := provisioned(t, `{"upstreams": [{"dial": "127.0.0.1:19095"}, {"dial": "127.0.0.1:19095"}],
		"health_checks": {"active": {"interval": "1h", "send": "PING\\r\\n", "expect": "+PONG"}, "passive": {"fail_duration": "30s"}},
		"preamble": "LOGIN {http.auth.user.id}\\n"}`)
	t.Cleanup(func() { h.Cleanup() })
	b := h.lb
	if b.policy != policyRandom || b.retries != 0 || b.maxPerUpstream != 0 || b.dialer.proxyVersion != 0 {
		t.Fatalf("balancer %+v", b)
	}
	if b.failDuration != 30*time.Second || b.maxFails != 1 {
		t.Fatalf("passive %v %d", b.failDuration, b.maxFails)
	}
	a := b.active
	if a.timeout != 5*time.Second || a.fails != 1 || a.passes != 1 || string(a.send) != "PING\r\n" || string(a.expect) != "+PONG" {
		t.Fatalf("active %+v", a)
	}
	if b.dialer.preamble != "LOGIN {http.auth.user.id}\n" {
		t.Fatalf("preamble %q", b.dialer.preamble)
	}
	if b.states[0] != b.states[1] {
		t.Fatal("one address configured twice has two states")
	}
	if refs, _ := upstreamStates.References("127.0.0.1:19095"); refs != 2 {
		t.Fatalf("%d references, want 2", refs)
	}
}

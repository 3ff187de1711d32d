package wstotcp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Selection policies (`lb_policy`), with the meaning they have in Caddy's
// reverse_proxy. Each chooses among the available upstreams only: healthy,
// and below max_connections_per_upstream.
const (
	policyRandom     = "random"      // uniformly at random (the default)
	policyRoundRobin = "round_robin" // in turn
	policyLeastConn  = "least_conn"  // the fewest open tunnels; ties broken at random
	policyFirst      = "first"       // the first in the configured order
	policyIPHash     = "ip_hash"     // rendezvous hash of Caddy's client IP
	policyUserHash   = "user_hash"   // rendezvous hash of {http.auth.user.id}; random without a user
)

var policies = []string{policyRandom, policyRoundRobin, policyLeastConn, policyFirst, policyIPHash, policyUserHash}

// LoadBalancing chooses an upstream for each connection when there are
// several.
type LoadBalancing struct {
	// How an upstream is chosen among the available ones (healthy, and
	// below max_connections_per_upstream): `random`, `round_robin`,
	// `least_conn` (the fewest open tunnels, counted over every
	// configuration of the process; ties broken at random), `first` (the
	// first available in the configured order), `ip_hash` (Caddy's client
	// IP, which honours the server's trusted_proxies) or `user_hash`
	// (`{http.auth.user.id}`; connections without a user are placed at
	// random). The hashes are rendezvous hashes, as reverse_proxy's: a
	// client stays on its upstream while that one is available, and only
	// the clients of an upstream that goes away move. Default: random.
	SelectionPolicy string `json:"selection_policy,omitempty"`

	// How many other upstreams to try, one after the other, when dialling
	// the chosen one fails (refused, unreachable, timed out, or the PROXY
	// header or preamble could not be written). All of it happens before
	// the upgrade: a client never gets a 101 for an upstream that is not
	// there. Default: 0, no retry.
	Retries int `json:"retries,omitempty"`
}

// balancer is a handler's run-time view of its upstreams: their shared
// state, the policy, and the dialer that connects to them.
type balancer struct {
	policy         string
	retries        int
	maxPerUpstream int64            // 0: no limit
	ups            []*Upstream      // the configured upstreams, without those with placeholders (dynamic targets)
	keys           []string         // their addresses
	states         []*upstreamState // states[i] is ups[i]'s
	robin          atomic.Uint64

	dialer *dialer // for the configured upstreams and the dynamic targets alike

	failDuration time.Duration // passive health; 0: off
	maxFails     int
	active       *activeCheck // nil: no active health checks

	healthCancel context.CancelFunc // stops the active health checker
	healthDone   chan struct{}      // closed when it has stopped
	releaseOnce  sync.Once
}

// provisionBalancer sets up load balancing, health and the dialer, and
// takes the handler's references to the shared upstream states. It does no
// I/O; the active health checker it starts makes its first check a moment
// later.
func (h *Handler) provisionBalancer(ctx caddy.Context) error {
	b := &balancer{policy: policyRandom, maxPerUpstream: int64(h.MaxConnectionsPerUpstream)}
	if lb := h.LoadBalancing; lb != nil {
		if lb.SelectionPolicy != "" {
			b.policy = lb.SelectionPolicy
		}
		b.retries = lb.Retries
	}
	var err error
	if b.dialer, err = newDialer(h); err != nil {
		return err
	}
	if err := b.provisionHealth(h.HealthChecks); err != nil {
		return err
	}

	// From here on nothing fails: the references taken are given back by
	// releaseUpstreams, on Cleanup or when the context is done.
	h.lb = b
	for _, u := range h.Upstreams {
		if strings.Contains(u.Dial, "{") {
			continue // a dynamic target, resolved per request by resolveTarget
		}
		b.ups = append(b.ups, u)
		b.keys = append(b.keys, u.Dial)
		b.states = append(b.states, acquireState(u.Dial))
	}
	for _, s := range uniqueStates(b.states) {
		s.addOwner(h)
	}
	// Provisioned modules are cleaned up by Cleanup; a handler provisioned
	// on its own (unit tests, a failed load) is covered by its context.
	context.AfterFunc(ctx, h.releaseUpstreams)
	if b.active != nil {
		hctx, cancel := context.WithCancel(ctx)
		b.healthCancel, b.healthDone = cancel, make(chan struct{})
		go h.healthLoop(hctx)
	}
	return nil
}

// validateBalancer checks the load-balancing and PROXY settings before
// provisionBalancer takes any reference; the preamble is checked by
// provisionBalancer and the health checks by provisionHealth, which
// compile them.
func (h *Handler) validateBalancer() error {
	if lb := h.LoadBalancing; lb != nil {
		if lb.SelectionPolicy != "" && !isPolicy(lb.SelectionPolicy) {
			return settingError("load_balancing.selection_policy", "lb_policy",
				"unknown policy %q; expected one of %s", lb.SelectionPolicy, strings.Join(policies, ", "))
		}
		if lb.Retries < 0 {
			return settingError("load_balancing.retries", "lb_retries", "must not be negative")
		}
	}
	if h.MaxConnectionsPerUpstream < 0 {
		return settingError("max_connections_per_upstream", "", "must not be negative")
	}
	if h.ProxyProtocol != "" && !isProxyVersion(h.ProxyProtocol) {
		return settingError("proxy_protocol", "", "%q is neither v1 nor v2", h.ProxyProtocol)
	}
	return nil
}

func isProxyVersion(v string) bool { return v == "v1" || v == "v2" }

func isPolicy(p string) bool {
	for _, q := range policies {
		if p == q {
			return true
		}
	}
	return false
}

// releaseUpstreams gives back the handler's references to the shared
// upstream states and stops its health checker; once, whoever calls it
// first (Cleanup, or the end of the provisioning context).
func (h *Handler) releaseUpstreams() {
	b := h.lb
	if b == nil {
		return
	}
	b.releaseOnce.Do(func() {
		if b.healthCancel != nil {
			b.healthCancel()
			<-b.healthDone
		}
		for _, s := range uniqueStates(b.states) {
			s.removeOwner(h)
		}
		for _, k := range b.keys {
			releaseState(k)
		}
	})
}

// dialUpstream connects to an upstream before the upgrade, with the
// request's prelude (PROXY header, preamble). With a target (a dynamic
// target resolved from the client's token) it dials exactly that one. Else
// it chooses among the configured upstreams by the selection policy and,
// when the dial fails, tries up to lb_retries others.
//
// The chosen upstream's open-tunnel slot is taken into sl at selection; a
// failed dial gives it back before the next try, a successful one leaves
// it in sl. Answers: 502 when every candidate was refused or unreachable,
// or when every upstream is down; 504 when the last one timed out; 503
// with Retry-After when the healthy upstreams are all at
// max_connections_per_upstream.
func (h *Handler) dialUpstream(w http.ResponseWriter, r *http.Request, user string, sl *slots, target *Upstream) (net.Conn, *Upstream, error) {
	b := h.lb
	p, err := b.dialer.requestPrelude(r)
	if err != nil {
		return nil, nil, err
	}
	if target != nil {
		conn, err := b.dialer.dialRequest(r.Context(), target, p)
		if err != nil {
			return nil, nil, dialError(target, err)
		}
		return conn, target, nil
	}

	skip := make([]bool, len(b.ups))
	var lastErr error
	var lastUp *Upstream
	for attempt := 0; attempt <= b.retries; attempt++ {
		i := b.reserve(r, user, skip, sl)
		if i < 0 {
			break
		}
		skip[i] = true
		u, s := b.ups[i], b.states[i]
		conn, err := b.dialer.dialRequest(r.Context(), u, p)
		if err == nil {
			return conn, u, nil
		}
		sl.dropUpstream()
		if r.Context().Err() != nil {
			// The client went away: not the upstream's fault.
			return nil, nil, caddyhttp.Error(statusClientClosedRequest, fmt.Errorf("dialing upstream %s: client gone: %w", u.Dial, err))
		}
		h.countFailure(s, err)
		if c := h.logger.Check(zapcore.DebugLevel, "upstream dial failed"); c != nil {
			c.Write(zap.String("upstream", u.Dial), zap.Int("attempt", attempt+1),
				zap.Int("max_attempts", b.retries+1), zap.Error(err))
		}
		lastErr, lastUp = err, u
	}
	if lastErr != nil {
		return nil, nil, dialError(lastUp, lastErr)
	}
	if b.anyHealthy() {
		w.Header().Set("Retry-After", retryAfter)
		return nil, nil, h.rejected(r, rejectLimit, http.StatusServiceUnavailable,
			fmt.Errorf("every healthy upstream is at max_connections_per_upstream (%d)", b.maxPerUpstream))
	}
	if len(b.ups) == 0 {
		return nil, nil, caddyhttp.Error(http.StatusBadGateway, errors.New("no upstream configured"))
	}
	return nil, nil, caddyhttp.Error(http.StatusBadGateway,
		fmt.Errorf("no upstream available: all %d upstreams are down", len(b.ups)))
}

// reserve chooses an available upstream not in skip and takes one of its
// open-tunnel slots into sl, or returns -1 when there is none. An upstream
// found full when its slot is taken (a concurrent handshake took the last
// one) is skipped and another chosen.
func (b *balancer) reserve(r *http.Request, user string, skip []bool, sl *slots) int {
	for {
		i := b.pick(r, user, skip)
		if i < 0 {
			return -1
		}
		if sl.takeUpstream(b.states[i], b.maxPerUpstream) {
			return i
		}
		skip[i] = true
	}
}

// available reports whether upstream i may be chosen.
func (b *balancer) available(i int, skip []bool) bool {
	if skip[i] {
		return false
	}
	s := b.states[i]
	return s.up.Load() && (b.maxPerUpstream <= 0 || s.active.Load() < b.maxPerUpstream)
}

// pick applies the selection policy to the available upstreams not in
// skip; -1 when there is none.
func (b *balancer) pick(r *http.Request, user string, skip []bool) int {
	switch b.policy {
	case policyRoundRobin:
		n := uint64(len(b.states))
		for range n {
			if i := int((b.robin.Add(1) - 1) % n); b.available(i, skip) {
				return i
			}
		}
		return -1
	case policyLeastConn:
		best, count := -1, 0
		var least int64
		for i, s := range b.states {
			if !b.available(i, skip) {
				continue
			}
			n := s.active.Load()
			if best < 0 || n < least {
				best, least, count = i, n, 1
				continue
			}
			if n == least {
				count++
				if rand.IntN(count) == 0 { // reservoir sampling among the ties
					best = i
				}
			}
		}
		return best
	case policyFirst:
		for i := range b.states {
			if b.available(i, skip) {
				return i
			}
		}
		return -1
	case policyIPHash:
		return b.byHash(clientIP(r), skip)
	case policyUserHash:
		if user != "" {
			return b.byHash(user, skip)
		}
	}
	return b.random(skip)
}

// random returns an available upstream chosen uniformly at random.
func (b *balancer) random(skip []bool) int {
	chosen, count := -1, 0
	for i := range b.states {
		if !b.available(i, skip) {
			continue
		}
		count++
		if rand.IntN(count) == 0 {
			chosen = i
		}
	}
	return chosen
}

// byHash is rendezvous (highest random weight) hashing, as reverse_proxy
// does it: each available upstream scores the hash of its address and the
// key, the highest wins. A key keeps its upstream while that one is
// available, and when one goes away only its keys move.
func (b *balancer) byHash(key string, skip []bool) int {
	chosen := -1
	var highest uint64
	for i, k := range b.keys {
		if !b.available(i, skip) {
			continue
		}
		if h := xxhash.Sum64String(k + key); chosen < 0 || h > highest {
			chosen, highest = i, h
		}
	}
	return chosen
}

// anyHealthy reports whether any upstream is healthy, whatever its load.
func (b *balancer) anyHealthy() bool {
	for _, s := range b.states {
		if s.up.Load() {
			return true
		}
	}
	return false
}

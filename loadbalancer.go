package wstotcp

import (
	"context"
	"crypto/tls"
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
// state, the policy, and what is written to an upstream after the dial.
type balancer struct {
	policy         string
	retries        int
	maxPerUpstream int64            // 0: no limit
	ups            []*Upstream      // the configured upstreams, without those with placeholders (dynamic targets)
	keys           []string         // their addresses
	states         []*upstreamState // states[i] is ups[i]'s
	robin          atomic.Uint64

	proxyVersion int    // 1 or 2; 0: no PROXY header
	preamble     string // escapes interpreted; placeholders expanded per request

	failDuration time.Duration // passive health; 0: off
	maxFails     int
	active       *activeCheck // nil: no active health checks

	healthCancel context.CancelFunc // stops the active health checker
	healthDone   chan struct{}      // closed when it has stopped
	releaseOnce  sync.Once
}

// provisionBalancer sets up load balancing, health and what is sent
// upstream after the dial, and takes the handler's references to the
// shared upstream states. It does no I/O; the active health checker it
// starts makes its first check a moment later.
func (h *Handler) provisionBalancer(ctx caddy.Context) error {
	b := &balancer{policy: policyRandom, maxPerUpstream: int64(h.MaxConnectionsPerUpstream)}
	if lb := h.LoadBalancing; lb != nil {
		if lb.SelectionPolicy != "" {
			b.policy = lb.SelectionPolicy
		}
		b.retries = lb.Retries
	}
	switch h.ProxyProtocol {
	case "v1":
		b.proxyVersion = 1
	case "v2":
		b.proxyVersion = 2
	}
	var err error
	if b.preamble, err = unescape(h.Preamble); err != nil {
		return fmt.Errorf("preamble: %v", err)
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

// dialUpstream connects to an upstream before the upgrade and writes the
// PROXY header and the preamble, if configured. With a target (a dynamic
// target resolved from the client's token) it dials exactly that one. Else
// it chooses among the configured upstreams by the selection policy and,
// when the dial fails, tries up to lb_retries others.
//
// The chosen upstream's open-tunnel count is taken at selection and given
// back through adm.release: when the handshake fails, or when the tunnel
// ends. Answers: 502 when every candidate was refused or unreachable, or
// when every upstream is down; 504 when the last one timed out; 503 with
// Retry-After when the healthy upstreams are all at
// max_connections_per_upstream.
func (h *Handler) dialUpstream(w http.ResponseWriter, r *http.Request, adm *admission, target *Upstream) (net.Conn, *Upstream, error) {
	b := h.lb
	// What is written first on the connection is the request's, whatever
	// the upstream.
	var header, preamble []byte
	if b.proxyVersion != 0 {
		src, dst := proxyAddrs(r)
		header = proxyHeader(b.proxyVersion, src, dst)
	}
	if b.preamble != "" {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		var err error
		if preamble, err = expandPreamble(b.preamble, repl); err != nil {
			return nil, nil, caddyhttp.Error(http.StatusBadRequest, err)
		}
	}
	if target != nil {
		conn, err := h.connect(r, target, header, preamble)
		if err != nil {
			return nil, nil, dialError(target, err)
		}
		return conn, target, nil
	}

	skip := make([]bool, len(b.ups))
	var lastErr error
	var lastUp *Upstream
	for attempt := 0; attempt <= b.retries; attempt++ {
		i := b.reserve(r, adm.user, skip)
		if i < 0 {
			break
		}
		skip[i] = true
		u, s := b.ups[i], b.states[i]
		conn, err := h.connect(r, u, header, preamble)
		if err == nil {
			prev := adm.release
			var once sync.Once
			adm.release = func() {
				once.Do(func() { s.active.Add(-1) })
				if prev != nil {
					prev()
				}
			}
			return conn, u, nil
		}
		s.active.Add(-1)
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

// dialError is the handler error for a failed dial: 504 for a timeout,
// else 502.
func dialError(u *Upstream, err error) error {
	status := http.StatusBadGateway
	if isTimeout(err) {
		status = http.StatusGatewayTimeout
	}
	return caddyhttp.Error(status, fmt.Errorf("dialing upstream %s: %w", u.Dial, err))
}

// statusClientClosedRequest is what Caddy's reverse_proxy logs for a client
// that went away while the upstream was dialled (nginx's 499).
const statusClientClosedRequest = 499

// connect dials u and writes what goes first on the connection: the PROXY
// header (before the TLS handshake of a tls/ upstream: it is addressed to
// the upstream's TCP layer) and the preamble, all within dial_timeout.
func (h *Handler) connect(r *http.Request, u *Upstream, header, preamble []byte) (net.Conn, error) {
	start := time.Now()
	conn, err := h.open(r.Context(), u, time.Duration(h.DialTimeout), header, preamble)
	if err != nil {
		return nil, err
	}
	observeDial(time.Since(start))
	return conn, nil
}

// open dials u within timeout, writes header before the TLS handshake of a
// tls/ upstream and after before returning. The request path and the
// active health check both open connections through it.
func (h *Handler) open(ctx context.Context, u *Upstream, timeout time.Duration, header, after []byte) (net.Conn, error) {
	var conn net.Conn
	var err error
	deadline := time.Now().Add(timeout)
	if header == nil {
		if conn, err = u.dial(ctx, timeout, h.upstreamTLS); err != nil {
			return nil, err
		}
	} else {
		dctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		if conn, err = (&net.Dialer{}).DialContext(dctx, u.network, u.address); err != nil {
			return nil, err
		}
		conn.SetWriteDeadline(deadline)
		if _, err := conn.Write(header); err != nil {
			conn.Close()
			return nil, fmt.Errorf("writing the PROXY header: %w", err)
		}
		if u.useTLS {
			cfg := h.upstreamTLS.Clone()
			if cfg == nil {
				cfg = &tls.Config{MinVersion: tls.VersionTLS12}
			}
			if cfg.ServerName == "" {
				cfg.ServerName, _, _ = net.SplitHostPort(u.address)
			}
			tc := tls.Client(conn, cfg)
			if err := tc.HandshakeContext(dctx); err != nil {
				conn.Close()
				return nil, err
			}
			conn = tc
		}
	}
	if len(after) > 0 {
		conn.SetWriteDeadline(deadline)
		if _, err := conn.Write(after); err != nil {
			conn.Close()
			return nil, fmt.Errorf("writing the preamble: %w", err)
		}
	}
	if header != nil || len(after) > 0 {
		conn.SetWriteDeadline(time.Time{})
	}
	return conn, nil
}

// reserve chooses an available upstream not in skip and takes one of its
// open-tunnel slots, or returns -1 when there is none. An upstream found
// full when its slot is taken (a concurrent handshake took the last one)
// is skipped and another chosen.
func (b *balancer) reserve(r *http.Request, user string, skip []bool) int {
	for {
		i := b.pick(r, user, skip)
		if i < 0 {
			return -1
		}
		if b.states[i].tryAcquire(b.maxPerUpstream) {
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

package wstotcp

import (
	"bytes"
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// Health events, emitted when an upstream's health changes (never twice
// in a row for the same state).
const (
	eventUpstreamDown = "ws_to_tcp.upstream_down"
	eventUpstreamUp   = "ws_to_tcp.upstream_up"
)

// Defaults of the health checks, as reverse_proxy's.
const (
	defaultHealthTimeout = 5 * time.Second
	// maxHealthRead bounds what an active check reads looking for the
	// expected bytes.
	maxHealthRead = 64 << 10
)

// HealthChecks decides which upstreams are up. Upstreams start healthy;
// a down upstream is not chosen, and when every upstream is down the
// handshake is answered with 502.
//
// Health is kept per upstream address for the whole process, shared by
// every handler that has the address and kept across config reloads (a
// reload neither forgets that an upstream is down nor resets its open
// tunnel count). When handlers with different settings share an address,
// the lowest max_fails applies, and an active check of any of them counts.
type HealthChecks struct {
	// Active checks: a TCP dial to each upstream at an interval,
	// optionally writing bytes and expecting bytes back. Default: none.
	Active *ActiveHealthChecks `json:"active,omitempty"`

	// Passive checks: failed dials of real connections, remembered for a
	// while. Default: none.
	Passive *PassiveHealthChecks `json:"passive,omitempty"`
}

// ActiveHealthChecks dials every upstream at an interval, on one goroutine
// per handler. A check passes when the dial succeeds (with the TLS
// handshake for tls/ upstreams), `send` could be written and, if set,
// `expect` was read within the timeout. With proxy_protocol, the check's
// connection starts with a PROXY header that carries no client address
// (v1 `UNKNOWN`, v2 `LOCAL`), which PROXY-protocol servers accept.
type ActiveHealthChecks struct {
	// How often to check each upstream; setting it turns active checks on.
	// The first check runs one interval after the configuration loads, or
	// after 1s if the interval is longer. Required for active checks.
	Interval caddy.Duration `json:"interval,omitempty"`

	// How long a check may take: the dial, the write and the read
	// together. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Bytes to write once connected. The escapes `\n`, `\r`, `\t`, `\\`
	// and `\xHH` are interpreted (in JSON too: `\\n` in a JSON string).
	// Default: nothing is written.
	Send string `json:"send,omitempty"`

	// Bytes the upstream must send (anywhere in its first 64 KiB) within
	// the timeout for the check to pass; escapes as in `send`. Default:
	// nothing is read, a successful dial passes.
	Expect string `json:"expect,omitempty"`

	// How many consecutive failed checks mark a healthy upstream down.
	// Default: 1.
	Fails int `json:"fails,omitempty"`

	// How many consecutive passed checks bring a down upstream back up.
	// Default: 1.
	Passes int `json:"passes,omitempty"`
}

// PassiveHealthChecks counts failed dials (refused, unreachable, timed
// out, or the PROXY header or preamble could not be written) of real
// connections. Each failure counts for fail_duration; an upstream with
// max_fails failures counting is down, and comes back when they expire.
type PassiveHealthChecks struct {
	// How long a failed dial counts. Setting it turns passive checks on.
	// Default: 0, off.
	FailDuration caddy.Duration `json:"fail_duration,omitempty"`

	// How many failures counting at once mark the upstream down. Default:
	// 1.
	MaxFails int `json:"max_fails,omitempty"`
}

// activeCheck is ActiveHealthChecks ready to run.
type activeCheck struct {
	interval, timeout time.Duration
	send, expect      []byte
	fails, passes     int
}

// provisionHealth checks and compiles the health check settings.
func (b *balancer) provisionHealth(hc *HealthChecks) error {
	if hc == nil {
		return nil
	}
	if p := hc.Passive; p != nil {
		if p.FailDuration < 0 {
			return settingError("health_checks.passive.fail_duration", "fail_duration", "must not be negative")
		}
		if p.MaxFails < 0 {
			return settingError("health_checks.passive.max_fails", "max_fails", "must not be negative")
		}
		if p.MaxFails > 0 && p.FailDuration == 0 {
			return settingError("health_checks.passive.max_fails", "max_fails",
				"needs fail_duration, which turns passive health checks on")
		}
		if p.FailDuration > 0 {
			b.failDuration = time.Duration(p.FailDuration)
			b.maxFails = max(p.MaxFails, 1)
		}
	}
	a := hc.Active
	if a == nil {
		return nil
	}
	if a.Interval <= 0 {
		return settingError("health_checks.active.interval", "health_interval",
			"a positive interval is required for active health checks "+
				"(health_timeout, health_send, health_expect, health_fails and health_passes need it)")
	}
	for _, f := range []struct {
		path, sub string
		v         int64
	}{
		{"health_checks.active.timeout", "health_timeout", int64(a.Timeout)},
		{"health_checks.active.fails", "health_fails", int64(a.Fails)},
		{"health_checks.active.passes", "health_passes", int64(a.Passes)},
	} {
		if f.v < 0 {
			return settingError(f.path, f.sub, "must not be negative")
		}
	}
	send, err := unescape(a.Send)
	if err != nil {
		return settingError("health_checks.active.send", "health_send", "%v", err)
	}
	expect, err := unescape(a.Expect)
	if err != nil {
		return settingError("health_checks.active.expect", "health_expect", "%v", err)
	}
	b.active = &activeCheck{
		interval: time.Duration(a.Interval),
		timeout:  time.Duration(a.Timeout),
		send:     []byte(send),
		expect:   []byte(expect),
		fails:    max(a.Fails, 1),
		passes:   max(a.Passes, 1),
	}
	if b.active.timeout == 0 {
		b.active.timeout = defaultHealthTimeout
	}
	return nil
}

// upstreamStates holds an *upstreamState per upstream address, for as long
// as a loaded handler has the address: a reload provisions the new
// configuration before it cleans up the old one, so the state of an
// upstream kept across a reload carries over.
var upstreamStates = caddy.NewUsagePool()

// upstreamState is what is known of one upstream address, process-wide.
type upstreamState struct {
	dial   string
	up     atomic.Bool  // the verdict: healthy; read lock-free by the selection
	active atomic.Int64 // open tunnels, and handshakes dialling it

	// emitMu orders the changes of the verdict with their events and
	// metric updates; taken before mu.
	emitMu sync.Mutex

	mu          sync.Mutex
	fails       int        // passive: failed dials counting now
	maxFails    int        // passive: the lowest max_fails of the owners; 0: off
	activeDown  bool       // active: the checks say down
	failsInRow  int        // active: consecutive failed checks
	passesInRow int        // active: consecutive passed checks
	owners      []*Handler // the loaded handlers that have the address
	clusterDown bool       // another instance of a cluster reports it down (cluster_health.go)
}

// acquireState returns the state of an upstream address, creating it
// (healthy) if no loaded handler has the address; releaseState gives the
// reference back.
func acquireState(dial string) *upstreamState {
	v, _, _ := upstreamStates.LoadOrNew(dial, func() (caddy.Destructor, error) {
		s := &upstreamState{dial: dial, clusterDown: clusterDownBy(dial) != ""}
		s.up.Store(!s.clusterDown)
		healthMetric.Lock()
		healthMetric.current[dial] = s
		if s.clusterDown {
			upstreamHealthy.WithLabelValues(dial).Set(0)
		} else {
			upstreamHealthy.WithLabelValues(dial).Set(1)
		}
		healthMetric.Unlock()
		return s, nil
	})
	return v.(*upstreamState)
}

func releaseState(dial string) {
	upstreamStates.Delete(dial)
}

// healthMetric guards caddy_ws_to_tcp_upstream_healthy: only the current
// state of an address sets it, so a state being destroyed while a new one
// for the same address is created cannot remove the new one's series.
var healthMetric = struct {
	sync.Mutex
	current map[string]*upstreamState
}{current: make(map[string]*upstreamState)}

// Destruct runs when no loaded handler has the address any more. Tunnels
// that outlive their configuration may still hold the state; they only
// decrement its count.
func (s *upstreamState) Destruct() error {
	healthMetric.Lock()
	defer healthMetric.Unlock()
	if healthMetric.current[s.dial] == s {
		delete(healthMetric.current, s.dial)
		upstreamHealthy.DeleteLabelValues(s.dial)
	}
	return nil
}

func (s *upstreamState) setMetric(healthy bool) {
	healthMetric.Lock()
	defer healthMetric.Unlock()
	if healthMetric.current[s.dial] == s {
		v := 0.0
		if healthy {
			v = 1
		}
		upstreamHealthy.WithLabelValues(s.dial).Set(v)
	}
}

// tryAcquire counts one more tunnel unless limit (when positive) is
// reached.
func (s *upstreamState) tryAcquire(limit int64) bool {
	for {
		n := s.active.Load()
		if limit > 0 && n >= limit {
			return false
		}
		if s.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// healthyLocked is the verdict: not down by the active checks, fewer
// failures counting than max_fails, and no instance of a cluster reports
// it down.
func (s *upstreamState) healthyLocked() bool {
	return s.localHealthyLocked() && !s.clusterDown
}

// localHealthyLocked is this instance's own verdict, which a cluster
// shares (cluster_health.go).
func (s *upstreamState) localHealthyLocked() bool {
	return !s.activeDown && (s.maxFails == 0 || s.fails < s.maxFails)
}

// update changes the state with f, under its lock, and when that changes
// the verdict, publishes it: the metric, a log line and an event (with
// f's reason), emitted by an owner of the running configuration (none
// while it is being replaced: the new one's events app is not started
// yet, and emitting to it then would race with its start).
func (s *upstreamState) update(f func() (reason string)) {
	s.emitMu.Lock()
	defer s.emitMu.Unlock()
	s.mu.Lock()
	localBefore := s.localHealthyLocked()
	reason := f()
	localChanged := s.localHealthyLocked() != localBefore
	healthy := s.healthyLocked()
	changed := healthy != s.up.Load()
	if changed {
		s.up.Store(healthy)
	}
	var emitter *Handler
	for i := len(s.owners) - 1; i >= 0; i-- {
		if s.owners[i].configRunning() {
			emitter = s.owners[i]
			break
		}
	}
	orphan := len(s.owners) == 0 // no configuration has the address any more
	s.mu.Unlock()
	if localChanged {
		kickClusterNodes() // the cluster hears of it (cluster_health.go)
	}
	if !changed || orphan {
		return
	}
	s.setMetric(healthy)
	logger := caddy.Log().Named("http.handlers.ws_to_tcp")
	if emitter != nil {
		logger = emitter.logger
	}
	name := eventUpstreamUp
	if healthy {
		logger.Info("upstream up", zap.String("upstream", s.dial), zap.String("reason", reason))
	} else {
		name = eventUpstreamDown
		logger.Warn("upstream down", zap.String("upstream", s.dial), zap.String("reason", reason))
	}
	if emitter != nil {
		emitter.emit(name, func() map[string]any {
			return map[string]any{"upstream": s.dial, "reason": reason}
		})
	}
}

// addOwner and removeOwner follow the handlers that have the address, whose
// settings decide the thresholds.
func (s *upstreamState) addOwner(h *Handler) {
	s.update(func() string {
		s.owners = append(s.owners, h)
		s.reconfigureLocked()
		return "health checks reconfigured"
	})
}

func (s *upstreamState) removeOwner(h *Handler) {
	s.update(func() string {
		for i, o := range s.owners {
			if o == h {
				s.owners = append(s.owners[:i], s.owners[i+1:]...)
				break
			}
		}
		if len(s.owners) > 0 { // else the state is about to go: keep its verdict
			s.reconfigureLocked()
		}
		return "health checks reconfigured"
	})
}

// reconfigureLocked derives the thresholds from the owners: the lowest
// max_fails of those with passive checks, and, when none has active checks
// any more, forgets what the active checks said (upstreams start healthy).
func (s *upstreamState) reconfigureLocked() {
	s.maxFails = 0
	anyActive := false
	for _, o := range s.owners {
		b := o.lb
		if b.failDuration > 0 && (s.maxFails == 0 || b.maxFails < s.maxFails) {
			s.maxFails = b.maxFails
		}
		anyActive = anyActive || b.active != nil
	}
	if !anyActive {
		s.activeDown, s.failsInRow, s.passesInRow = false, 0, 0
	}
}

// countFailure records a failed dial for passive health: it counts for
// fail_duration.
func (h *Handler) countFailure(s *upstreamState, err error) {
	b := h.lb
	if b.failDuration <= 0 {
		return
	}
	s.update(func() string {
		s.fails++
		return fmt.Sprintf("%d failed dials within fail_duration %v (max_fails %d); last: %v",
			s.fails, b.failDuration, s.maxFails, err)
	})
	time.AfterFunc(b.failDuration, func() {
		s.update(func() string {
			s.fails--
			return fmt.Sprintf("failed dials expired (fail_duration %v)", b.failDuration)
		})
	})
}

// recordCheck records the result of an active check.
func (h *Handler) recordCheck(s *upstreamState, err error) {
	a := h.lb.active
	s.update(func() string {
		if err == nil {
			s.failsInRow = 0
			s.passesInRow++
			if s.activeDown && s.passesInRow >= a.passes {
				s.activeDown = false
				return fmt.Sprintf("%d health checks passed", s.passesInRow)
			}
			return ""
		}
		s.passesInRow = 0
		s.failsInRow++
		if !s.activeDown && s.failsInRow >= a.fails {
			s.activeDown = true
			return fmt.Sprintf("%d health checks failed; last: %v", s.failsInRow, err)
		}
		return ""
	})
}

// healthLoops counts the health loops running in the process. The tests
// read it: a loop's goroutine outlives the close of its healthDone by a
// moment, so counting goroutines cannot tell whether Cleanup waited.
var healthLoops atomic.Int32

// healthLoop runs the active checks of a handler until its context is
// done or releaseUpstreams stops it. Every interval it starts a check of
// each upstream whose previous check has finished (a slow upstream, whose
// checks last up to health_timeout, delays no other's), and before it
// returns it waits for the checks under way, which the context cancels.
func (h *Handler) healthLoop(ctx context.Context) {
	b := h.lb
	healthLoops.Add(1)
	defer func() {
		healthLoops.Add(-1)
		close(b.healthDone)
	}()
	var checks sync.WaitGroup
	defer checks.Wait()
	defer h.recoverHealth()
	type target struct {
		u       *Upstream
		s       *upstreamState
		running atomic.Bool
	}
	var targets []*target
	seen := make(map[*upstreamState]bool, len(b.states))
	for i, s := range b.states {
		if !seen[s] {
			seen[s] = true
			targets = append(targets, &target{u: b.ups[i], s: s})
		}
	}
	timer := time.NewTimer(min(b.active.interval, time.Second))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		if !h.configRunning() {
			// Loaded but not started yet (its events app cannot take
			// events before), or already replaced: no checks, which also
			// keeps `caddy validate` from dialling.
			timer.Reset(min(b.active.interval, 10*time.Millisecond))
			continue
		}
		timer.Reset(b.active.interval)
		for _, tg := range targets {
			if !tg.running.CompareAndSwap(false, true) {
				continue // the last check is still under way
			}
			checks.Go(func() {
				defer tg.running.Store(false)
				defer h.recoverHealth()
				h.checkOne(ctx, tg.u, tg.s)
			})
		}
	}
}

// checkOne checks one upstream and records the result, unless the checker
// was stopped meanwhile.
func (h *Handler) checkOne(ctx context.Context, u *Upstream, s *upstreamState) {
	err := h.healthCheck(ctx, u)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		if c := h.logger.Check(zap.DebugLevel, "health check failed"); c != nil {
			c.Write(zap.String("upstream", u.Dial), zap.Error(err))
		}
	}
	h.recordCheck(s, err)
}

// configRunning reports whether the handler belongs to the configuration
// Caddy is running: started (its apps, the events app among them, are
// running) and not replaced or stopped.
func (h *Handler) configRunning() bool {
	if h.ctx.Context == nil || h.ctx.Err() != nil {
		return false
	}
	// The http app hands its modules a context derived from the
	// configuration's (with values added): the same Done channel tells
	// them apart from those of another configuration.
	ac := caddy.ActiveContext()
	return ac.Context != nil && ac.Done() == h.ctx.Done()
}

func (h *Handler) recoverHealth() {
	if v := recover(); v != nil {
		h.logger.Error("panic in active health check",
			zap.String("panic", fmt.Sprint(v)), zap.ByteString("stack", debug.Stack()))
	}
}

// healthCheck checks one upstream: dial (with a PROXY header of no client
// when proxy_protocol is on), write send, read until expect is seen.
func (h *Handler) healthCheck(ctx context.Context, u *Upstream) error {
	b := h.lb
	a := b.active
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	conn, err := b.dialer.dial(ctx, u, a.timeout, b.dialer.healthPrelude(a.send))
	if err != nil {
		return err
	}
	defer conn.Close()
	if len(a.expect) == 0 {
		return nil
	}
	deadline, _ := ctx.Deadline()
	conn.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 0, 512)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if bytes.Contains(buf, a.expect) {
			return nil
		}
		if err != nil || len(buf) >= maxHealthRead {
			if err == nil {
				err = fmt.Errorf("read %d bytes", len(buf))
			}
			return fmt.Errorf("expected %q, got %q: %w", truncate(string(a.expect), 64), truncate(string(buf), 64), err)
		}
	}
}

// uniqueStates returns the states without repeats (an address configured
// twice has one state).
func uniqueStates(states []*upstreamState) []*upstreamState {
	out := make([]*upstreamState, 0, len(states))
	seen := make(map[*upstreamState]bool, len(states))
	for _, s := range states {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// upstreamInfos describes the upstreams of the loaded configurations, from
// their shared state, for the admin API.
func upstreamInfos() []upstreamInfo {
	var out []upstreamInfo
	upstreamStates.Range(func(_, v any) bool {
		s := v.(*upstreamState)
		s.mu.Lock()
		fails := s.fails + s.failsInRow
		s.mu.Unlock()
		out = append(out, upstreamInfo{
			Address: s.dial,
			Healthy: s.up.Load(),
			Active:  int(s.active.Load()),
			Fails:   fails,
		})
		return true
	})
	return out
}

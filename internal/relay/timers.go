package relay

import (
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Heartbeats and the idle timeout run on timers rather than goroutines:
// thousands of idle tunnels then cost no stacks for them. A timer's
// function resets only its own timer, so it never runs twice at once.

func (t *Tunnel) startTimers() {
	if iv := t.cfg.HeartbeatInterval; iv > 0 {
		t.nextPing = int64(iv)
		t.hbTimer = time.AfterFunc(iv, t.heartbeat)
	}
	if d := t.cfg.IdleTimeout; d > 0 {
		t.idleTimer = time.AfterFunc(d, t.checkIdle)
	}
}

func (t *Tunnel) stopTimers() {
	if t.hbTimer != nil {
		t.hbTimer.Stop()
	}
	if t.idleTimer != nil {
		t.idleTimer.Stop()
	}
}

// heartbeat runs when a ping is due or when the oldest unanswered ping's
// timeout is up. A client heard from (anything, not only a pong) since that
// ping has answered it; one that has not by then is closed with 1008.
func (t *Tunnel) heartbeat() {
	if t.ending.Load() {
		return
	}
	interval, timeout := int64(t.cfg.HeartbeatInterval), int64(t.cfg.HeartbeatTimeout)
	now := t.since()
	if t.pingAt != 0 && t.lastHeard.Load() >= t.pingAt {
		t.pingAt = 0
	}
	if t.pingAt != 0 && now >= t.pingAt+timeout {
		t.terminate(wsframe.ClosePolicyViolation, "heartbeat timeout")
		return
	}
	if now >= t.nextPing {
		// A failed write ends the tunnel; a client too slow to take the
		// heartbeat is left to write_timeout or to the check below.
		if t.cfg.heartbeat != nil {
			t.WritePrepared(t.cfg.heartbeat)
		} else {
			t.Ping(nil)
		}
		if t.ending.Load() {
			return
		}
		if t.pingAt == 0 {
			t.pingAt = now
		}
		t.nextPing = now + interval
	}
	next := t.nextPing
	if t.pingAt != 0 {
		next = min(next, t.pingAt+timeout)
	}
	t.hbTimer.Reset(time.Duration(max(next-t.since(), 0)))
}

// checkIdle closes a tunnel that relayed no data either way for
// idle_timeout, and otherwise looks again when it could be idle that long.
func (t *Tunnel) checkIdle() {
	if t.ending.Load() {
		return
	}
	idle := t.cfg.IdleTimeout
	quiet := time.Duration(t.since() - t.lastData.Load())
	if quiet >= idle {
		t.terminate(wsframe.ClosePolicyViolation, "idle timeout")
		return
	}
	t.idleTimer.Reset(idle - quiet)
}

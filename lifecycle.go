package wstotcp

import (
	"time"
)

// Heartbeats and the idle timeout run on timers rather than goroutines:
// thousands of idle tunnels then cost no stacks for them. A timer's
// function resets only its own timer, so it never runs twice at once.

// since is the time since the tunnel started, on the monotonic clock, as
// the atomics that record activity store it.
func (t *tunnel) since() int64 { return int64(time.Since(t.started)) }

func (t *tunnel) startTimers() {
	if iv := time.Duration(t.h.HeartbeatInterval); iv > 0 {
		t.nextPing = int64(iv)
		t.hbTimer = time.AfterFunc(iv, t.heartbeat)
	}
	if d := time.Duration(t.h.IdleTimeout); d > 0 {
		t.idleTimer = time.AfterFunc(d, t.checkIdle)
	}
}

func (t *tunnel) stopTimers() {
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
func (t *tunnel) heartbeat() {
	if t.ending.Load() {
		return
	}
	interval, timeout := int64(t.h.HeartbeatInterval), int64(t.h.HeartbeatTimeout)
	now := t.since()
	if t.pingAt != 0 && t.lastHeard.Load() >= t.pingAt {
		t.pingAt = 0
	}
	if t.pingAt != 0 && now >= t.pingAt+timeout {
		t.terminate(closePolicyViolation, "heartbeat timeout")
		return
	}
	if now >= t.nextPing {
		// A failed write ends the tunnel; a client too slow to take the
		// heartbeat is left to write_timeout or to the check below.
		if t.h.heartbeatFrame != nil {
			t.writePrepared(t.h.heartbeatFrame)
		} else {
			t.ping(nil)
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
func (t *tunnel) checkIdle() {
	if t.ending.Load() {
		return
	}
	idle := time.Duration(t.h.IdleTimeout)
	quiet := time.Duration(t.since() - t.lastData.Load())
	if quiet >= idle {
		t.terminate(closePolicyViolation, "idle timeout")
		return
	}
	t.idleTimer.Reset(idle - quiet)
}

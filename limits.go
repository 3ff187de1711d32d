package wstotcp

import (
	"fmt"
	"sync"
)

// connLimits counts the connections of one handler instance: handshakes
// being admitted and tunnels open. A slot is taken during admission,
// before the upstream is dialled, and given back when the handshake fails
// or, for an admitted one, when its tunnel ends. Counts are per instance:
// after a config reload the new instance starts at zero while the tunnels
// of the old one may still run.
type connLimits struct {
	maxTotal, maxIP, maxUser int // 0: no limit

	mu      sync.Mutex
	total   int
	perIP   map[string]int
	perUser map[string]int
}

// newConnLimits returns nil when no limit is set.
func newConnLimits(maxTotal, maxIP, maxUser int) *connLimits {
	if maxTotal <= 0 && maxIP <= 0 && maxUser <= 0 {
		return nil
	}
	return &connLimits{
		maxTotal: maxTotal, maxIP: maxIP, maxUser: maxUser,
		perIP: make(map[string]int), perUser: make(map[string]int),
	}
}

// acquire takes a slot of the handler's total and one of the client IP's,
// both or neither, under one lock, so that no burst gets past a limit. The
// release function gives them back; it may be called more than once.
func (l *connLimits) acquire(ip string) (release func(), err error) {
	if l == nil || l.maxTotal <= 0 && l.maxIP <= 0 {
		return func() {}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.maxTotal > 0 && l.total >= l.maxTotal {
		return nil, fmt.Errorf("too many connections (max_connections %d)", l.maxTotal)
	}
	if l.maxIP > 0 && l.perIP[ip] >= l.maxIP {
		return nil, fmt.Errorf("too many connections from this client address (max_connections_per_ip %d)", l.maxIP)
	}
	l.total++
	if l.maxIP > 0 {
		l.perIP[ip]++
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			l.total--
			if l.maxIP > 0 {
				decrement(l.perIP, ip)
			}
			l.mu.Unlock()
		})
	}, nil
}

// acquireUser takes a slot of the user's. Connections without a user are
// not counted per user.
func (l *connLimits) acquireUser(user string) (release func(), err error) {
	if l == nil || l.maxUser <= 0 || user == "" {
		return func() {}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perUser[user] >= l.maxUser {
		return nil, fmt.Errorf("too many connections for this user (max_connections_per_user %d)", l.maxUser)
	}
	l.perUser[user]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			decrement(l.perUser, user)
			l.mu.Unlock()
		})
	}, nil
}

// counts returns the slots taken, for tests.
func (l *connLimits) counts(ip, user string) (total, perIP, perUser int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.perIP[ip], l.perUser[user]
}

// decrement drops a count, and its key at zero so the maps stay as small
// as the set of clients connected.
func decrement(m map[string]int, k string) {
	if m[k] <= 1 {
		delete(m, k)
		return
	}
	m[k]--
}

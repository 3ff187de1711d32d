package wstotcp

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// connLimits counts the connections of one handler instance against
// max_connections, max_connections_per_ip and max_connections_per_user:
// handshakes being admitted and tunnels open. Counts are per instance:
// after a config reload the new instance starts at zero while the tunnels
// of the old one may still run.
type connLimits struct {
	maxTotal, maxIP, maxUser int // 0: no limit

	// With a cluster, the limits count every instance's connections too
	// (cluster_limits.go); nil without.
	cluster *clusterLimits

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

// slots is everything one handshake holds, from admission to the end of
// its tunnel: a slot of the handler's max_connections and of the client
// IP's max_connections_per_ip, one of the user's max_connections_per_user,
// and one of the chosen upstream's max_connections_per_upstream (its open
// tunnel count, which least_conn and the admin API read). admit takes the
// connection and user slots, the dial adds the upstream's, and then either
// the handshake fails and gives everything back, or it hands the slots to
// its tunnel, which gives them back when it ends (README, Connection
// limits). Whatever the way out, release runs its decrements exactly once.
//
// Until handOver the slots belong to the handshake's goroutine; after it,
// to the tunnel, whose end calls release.
type slots struct {
	limits *connLimits // nil: no connection limits
	conn   bool        // holds a slot of limits.total (and of perIP[ip] with a per-IP limit)
	ip     string
	user   string         // holds a slot of limits.perUser[user]; "" when none
	up     *upstreamState // holds one of up.active; nil when none
	lease  *clusterLease  // the cluster's slots (cluster_limits.go); nil when none

	handedOver bool        // the tunnel owns the slots
	released   atomic.Bool // release ran
}

// take admits one more connection from ip: a slot of the handler's total
// and one of the client IP's, both or neither, under one lock, so that no
// burst gets past a limit. On success the returned slots hold them (or
// nothing, without limits) and must be released.
func (l *connLimits) take(ip string) (*slots, error) {
	s := &slots{limits: l, ip: ip}
	if l == nil || l.maxTotal <= 0 && l.maxIP <= 0 {
		return s, nil
	}
	if err := l.takeLocal(s); err != nil {
		return nil, err
	}
	// The cluster's count next, outside the lock: one Redis round trip.
	if err := l.cluster.takeConn(s, l.maxTotal, l.maxIP); err != nil {
		s.release()
		return nil, err
	}
	return s, nil
}

func (l *connLimits) takeLocal(s *slots) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.maxTotal > 0 && l.total >= l.maxTotal {
		return fmt.Errorf("too many connections (max_connections %d)", l.maxTotal)
	}
	if l.maxIP > 0 && l.perIP[s.ip] >= l.maxIP {
		return fmt.Errorf("too many connections from this client address (max_connections_per_ip %d)", l.maxIP)
	}
	l.total++
	if l.maxIP > 0 {
		l.perIP[s.ip]++
	}
	s.conn = true
	return nil
}

// takeUser adds a slot of the user's. Connections without a user are not
// counted per user. On error nothing was added.
func (s *slots) takeUser(user string) error {
	l := s.limits
	if l == nil || l.maxUser <= 0 || user == "" {
		return nil
	}
	l.mu.Lock()
	if l.perUser[user] >= l.maxUser {
		l.mu.Unlock()
		return fmt.Errorf("too many connections for this user (max_connections_per_user %d)", l.maxUser)
	}
	l.perUser[user]++
	l.mu.Unlock()
	if err := l.cluster.takeUser(s, user, l.maxUser); err != nil {
		l.mu.Lock()
		decrement(l.perUser, user)
		l.mu.Unlock()
		return err
	}
	s.user = user
	return nil
}

// takeUpstream adds one of the upstream's open-tunnel slots unless limit
// (when positive) is reached. The slots hold one upstream slot at most: a
// dial that fails gives it back with dropUpstream before the next try.
func (s *slots) takeUpstream(st *upstreamState, limit int64) bool {
	if !st.tryAcquire(limit) {
		return false
	}
	s.up = st
	return true
}

// dropUpstream gives back the upstream slot after a failed dial.
func (s *slots) dropUpstream() {
	if s.up != nil {
		s.up.active.Add(-1)
		s.up = nil
	}
}

// handOver makes the tunnel the owner of the slots and returns what it
// calls when it ends.
func (s *slots) handOver() func() {
	s.handedOver = true
	return s.release
}

// releaseUnlessHandedOver is the handshake's way out: every slot goes back
// unless the tunnel has them.
func (s *slots) releaseUnlessHandedOver() {
	if !s.handedOver {
		s.release()
	}
}

// release gives back every slot held; it may be called more than once,
// only the first call counts.
func (s *slots) release() {
	if !s.released.CompareAndSwap(false, true) {
		return
	}
	s.dropUpstream()
	s.lease.release()
	l := s.limits
	if l == nil || !s.conn && s.user == "" {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.conn {
		l.total--
		if l.maxIP > 0 {
			decrement(l.perIP, s.ip)
		}
	}
	if s.user != "" {
		decrement(l.perUser, s.user)
	}
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

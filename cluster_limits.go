package wstotcp

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// clusterLimits counts a handler's max_connections, max_connections_per_ip
// and max_connections_per_user over every instance of its cluster (README,
// Cluster). The local counts (slots.go) still apply: they are what is left
// when Redis cannot be reached and cluster_fail is open.
//
// A slot is one more in this node's field of a Redis hash per limit key;
// the fields of an instance count while its membership (renewed by its
// heartbeat) is live, so the slots of a killed instance stop counting
// within the lease. Taking the slots of one admission step is one script,
// one round trip, atomic across the cluster; giving them back is batched
// by the node.
type clusterLimits struct {
	node       *clusterNode
	failClosed bool
}

// clusterLease is the cluster slots one handshake holds: one under each
// key.
type clusterLease struct {
	node *clusterNode
	keys []string
}

// errClusterDown refuses a handshake with cluster_fail closed while Redis
// cannot be reached.
var errClusterDown = errors.New("the cluster's Redis cannot be reached and cluster_fail is closed")

// Limit keys, under the cluster's prefix.
func (n *clusterNode) connsKey() string           { return n.prefix + "limit:conns" }
func (n *clusterNode) ipKey(ip string) string     { return n.prefix + "limit:ip:" + ip }
func (n *clusterNode) userKey(user string) string { return n.prefix + "limit:user:" + user }

// takeConn takes the cluster slots of max_connections and
// max_connections_per_ip into s.
func (cl *clusterLimits) takeConn(s *slots, maxTotal, maxIP int) error {
	if cl == nil {
		return nil
	}
	var keys []string
	var limits []int
	var names []string
	if maxTotal > 0 {
		keys, limits, names = append(keys, cl.node.connsKey()), append(limits, maxTotal), append(names, "max_connections")
	}
	if maxIP > 0 {
		keys, limits, names = append(keys, cl.node.ipKey(s.ip)), append(limits, maxIP), append(names, "max_connections_per_ip")
	}
	if len(keys) == 0 {
		return nil
	}
	full, err := cl.take(s, keys, limits)
	if err != nil {
		return err
	}
	if full >= 0 {
		what := "connections in the cluster"
		if names[full] == "max_connections_per_ip" {
			what = "connections from this client address in the cluster"
		}
		return fmt.Errorf("too many %s (%s %d)", what, names[full], limits[full])
	}
	return nil
}

// takeUser takes the cluster slot of max_connections_per_user into s.
func (cl *clusterLimits) takeUser(s *slots, user string, maxUser int) error {
	if cl == nil {
		return nil
	}
	full, err := cl.take(s, []string{cl.node.userKey(user)}, []int{maxUser})
	if err != nil {
		return err
	}
	if full >= 0 {
		return fmt.Errorf("too many connections for this user in the cluster (max_connections_per_user %d)", maxUser)
	}
	return nil
}

// take holds one slot under each key, each below its limit, all or none.
// It answers the index of a limit reached (nothing taken), or -1 when the
// slots are held (in s.lease). While Redis cannot be reached the slots are
// held locally only (cluster_fail open), and written to Redis when it is
// back; with cluster_fail closed that is errClusterDown.
func (cl *clusterLimits) take(s *slots, keys []string, limits []int) (int, error) {
	n := cl.node
	n.mu.Lock()
	for _, k := range keys {
		n.counts[k]++
	}
	gen := n.gen
	n.mu.Unlock()
	n.hold()

	var err error
	res := int64(-2)
	if !n.up.Load() {
		err = errors.New("down") // a known outage: no round trip, no wait
	} else {
		args := make([]any, 0, len(limits)+1)
		args = append(args, n.session)
		for _, l := range limits {
			args = append(args, l)
		}
		ctx, cancel := context.WithTimeout(n.ctx, clusterTimeout)
		res, err = takeScript.Run(ctx, n.client, append([]string{n.membersKey(), n.heldKey(n.session)}, keys...), args...).Int64()
		cancel()
		if err != nil && !errors.Is(err, redis.Nil) && n.ctx.Err() == nil {
			n.setUp(false, err)
		}
	}
	if err == nil && res == -1 {
		// Our membership ran out (Redis restarted, or a long pause): the
		// counts are being rebuilt; the next heartbeat writes ours.
		err = errors.New("membership expired")
	}
	if err != nil {
		// The script may or may not have run: the next heartbeat writes
		// the counts whole.
		n.markDirty()
		if cl.failClosed {
			cl.undo(keys, gen)
			return -1, errClusterDown
		}
		cl.record(s, keys)
		return -1, nil
	}
	if res > 0 {
		cl.undo(keys, gen)
		return int(res - 1), nil
	}
	n.mu.Lock()
	if n.gen != gen {
		// The counts were written whole meanwhile, maybe before the
		// script ran: write them again.
		n.dirty = true
	}
	n.mu.Unlock()
	cl.record(s, keys)
	return -1, nil
}

func (cl *clusterLimits) record(s *slots, keys []string) {
	if s.lease == nil {
		s.lease = &clusterLease{node: cl.node}
	}
	s.lease.keys = append(s.lease.keys, keys...)
}

// undo gives back local counts of slots that Redis did not give.
func (cl *clusterLimits) undo(keys []string, gen uint64) {
	n := cl.node
	n.mu.Lock()
	n.dropCountsLocked(keys)
	if n.gen != gen {
		n.dirty = true
	}
	n.mu.Unlock()
	n.unhold()
}

func (n *clusterNode) dropCountsLocked(keys []string) {
	for _, k := range keys {
		if n.counts[k] <= 1 {
			delete(n.counts, k)
		} else {
			n.counts[k]--
		}
	}
}

// release gives the slots back: at once locally, to Redis by the node's
// loop, in batches.
func (l *clusterLease) release() {
	if l == nil || len(l.keys) == 0 {
		return
	}
	n := l.node
	n.mu.Lock()
	n.dropCountsLocked(l.keys)
	gen := n.gen
	n.mu.Unlock()
	select {
	case n.releases <- queuedRelease{keys: l.keys, gen: gen}:
	default:
		n.markDirty() // the queue is full: the next heartbeat writes the counts whole
	}
	n.unhold()
}

// maxReleaseBatch bounds the releases sent in one script.
const maxReleaseBatch = 256

// flushReleases sends first and the releases queued after it to Redis, in
// one script. Those queued before the counts were last written whole are
// in them already.
func (n *clusterNode) flushReleases(first queuedRelease) {
	batch := []queuedRelease{first}
	for len(batch) < maxReleaseBatch {
		select {
		case r := <-n.releases:
			batch = append(batch, r)
			continue
		default:
		}
		break
	}
	n.mu.Lock()
	gen, dirty := n.gen, n.dirty
	n.mu.Unlock()
	if dirty || !n.up.Load() {
		n.markDirty() // the next heartbeat writes the counts whole
		return
	}
	keys := []string{n.heldKey(n.session)}
	for _, r := range batch {
		if r.gen == gen {
			keys = append(keys, r.keys...)
		}
	}
	if len(keys) == 1 {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, clusterTimeout)
	defer cancel()
	if err := releaseScript.Run(ctx, n.client, keys, n.session).Err(); err != nil && !errors.Is(err, redis.Nil) {
		n.markDirty()
		if n.ctx.Err() == nil {
			n.setUp(false, err)
		}
	}
}

// takeScript checks and takes one slot under each limit key, atomically:
// for each key, the slots of the live members are summed (those of
// expired members dropped on the way) and compared with its limit; if all
// are below, one is added to this node's field of each. It answers 0 when
// taken, i (1-based) when the i-th limit is reached, -1 when this node is
// not a live member (its counts are being rebuilt).
//
// KEYS[1] members, KEYS[2] held set of the session, KEYS[3..] limit keys;
// ARGV[1] session, ARGV[2..] the limits of KEYS[3..].
var takeScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not mine or tonumber(mine) < now then return -1 end
for i = 3, #KEYS do
  local limit = tonumber(ARGV[i - 1])
  local f = redis.call('HGETALL', KEYS[i])
  local total = 0
  for j = 1, #f, 2 do
    local s = redis.call('ZSCORE', KEYS[1], f[j])
    if s and tonumber(s) >= now then
      total = total + tonumber(f[j + 1])
    else
      redis.call('HDEL', KEYS[i], f[j])
    end
  end
  if total >= limit then return i - 2 end
end
for i = 3, #KEYS do
  redis.call('HINCRBY', KEYS[i], ARGV[1], 1)
  redis.call('SADD', KEYS[2], KEYS[i])
end
return 0
`)

// releaseScript gives back one slot under each key (a key may repeat),
// dropping fields that reach zero.
//
// KEYS[1] held set of the session, KEYS[2..] limit keys; ARGV[1] session.
var releaseScript = redis.NewScript(`
for i = 2, #KEYS do
  if redis.call('HINCRBY', KEYS[i], ARGV[1], -1) <= 0 then
    redis.call('HDEL', KEYS[i], ARGV[1])
    redis.call('SREM', KEYS[1], KEYS[i])
  end
end
return 0
`)

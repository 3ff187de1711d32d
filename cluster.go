package wstotcp

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// Cluster joins the handler to a cluster of Caddy instances that share one
// Redis (README, Cluster): the admin API's `?scope=cluster` reaches the
// tunnels of every instance, max_connections, max_connections_per_ip and
// max_connections_per_user count the tunnels of every instance, and
// upstream health seen by one instance holds for all. Instances find each
// other through Redis only: no other port, no membership list.
//
// Instances with the same Redis and prefix form one cluster. Tunnels are
// never affected by Redis: when it cannot be reached, they keep relaying,
// and admission follows `fail`.
type Cluster struct {
	// The Redis server: `redis://[[user]:password@]host:port[/db]`,
	// `rediss://` for TLS, or `unix:///path/to.sock`. Required.
	Redis string `json:"redis,omitempty"`

	// The prefix of every Redis key and pub/sub channel of the cluster.
	// Handlers with the same Redis and prefix share their limit counts: give
	// a handler whose limits are its own a prefix of its own. Default:
	// `ws_to_tcp:`.
	Prefix string `json:"prefix,omitempty"`

	// This instance's id in the cluster, shown in the admin API
	// (`instance`) and in logs: at most 64 printable characters, no space.
	// Default: the host name, a dash and a random suffix, new for each
	// process.
	Name string `json:"name,omitempty"`

	// What admission does while Redis cannot be reached: `open` (the limits
	// count this instance's tunnels only) or `closed` (handshakes that a
	// cluster-wide limit concerns get 503 with `Retry-After: 1`). Default:
	// open.
	Fail string `json:"fail,omitempty"`

	// How long the connection slots and the membership of an instance that
	// stopped renewing them (killed, or cut off from Redis) keep counting.
	// Each instance renews its own every third of it. At least 1s. Default:
	// 30s.
	Lease caddy.Duration `json:"lease,omitempty"`
}

// Defaults and bounds of the cluster settings.
const (
	defaultClusterPrefix = "ws_to_tcp:"
	defaultClusterLease  = 30 * time.Second
	minClusterLease      = time.Second
	maxClusterNameLen    = 64
	// clusterTimeout bounds one Redis command of admission or of the
	// heartbeat: a Redis that does not answer in time counts as down.
	clusterTimeout = time.Second
	// defaultClusterAdminTimeout is how long ?scope=cluster waits for the
	// other instances' answers (README, Admin API).
	defaultClusterAdminTimeout = 2 * time.Second
)

// handlerCluster is a handler's provisioned cluster settings.
type handlerCluster struct {
	node       *clusterNode
	failClosed bool
	once       sync.Once
}

// provisionCluster checks the cluster settings and joins the process's
// node for this Redis and prefix (shared by every handler and kept across
// reloads that keep the settings). It does no I/O: the node connects once
// a configuration that has it runs.
func (h *Handler) provisionCluster(ctx caddy.Context) error {
	c := h.Cluster
	if c == nil {
		return nil
	}
	if strings.TrimSpace(c.Redis) == "" {
		return settingError("cluster.redis", "cluster", "a Redis URL is required (cluster <redis-url> [<prefix>])")
	}
	opt, shown, err := parseRedisURL(c.Redis)
	if err != nil {
		return settingError("cluster.redis", "cluster", "%v", err)
	}
	switch c.Fail {
	case "", "open", "closed":
	default:
		return settingError("cluster.fail", "cluster_fail", "%q is neither open nor closed", c.Fail)
	}
	if c.Lease != 0 && time.Duration(c.Lease) < minClusterLease {
		return settingError("cluster.lease", "cluster_lease", "%v is shorter than %v", time.Duration(c.Lease), minClusterLease)
	}
	if err := checkInstanceName(c.Name); err != nil {
		return settingError("cluster.name", "cluster_name", "%v", err)
	}
	if c.Prefix == "" {
		c.Prefix = defaultClusterPrefix
	}
	if c.Lease == 0 {
		c.Lease = caddy.Duration(defaultClusterLease)
	}
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		var already prometheus.AlreadyRegisteredError
		if err := reg.Register(clusterUp); err != nil && !errors.As(err, &already) {
			return err
		}
	}
	name := c.Name
	if name == "" {
		name = defaultInstanceName()
	}
	n := acquireNode(clusterKey{redis: c.Redis, prefix: c.Prefix, name: name, lease: time.Duration(c.Lease)}, opt, shown, h)
	h.cluster = &handlerCluster{node: n, failClosed: c.Fail == "closed"}
	if h.limits != nil {
		h.limits.cluster = &clusterLimits{node: n, failClosed: c.Fail == "closed"}
	}
	context.AfterFunc(ctx, h.releaseCluster)
	return nil
}

// releaseCluster leaves the node; once, whoever calls it first (Cleanup,
// or the end of the provisioning context).
func (h *Handler) releaseCluster() {
	if hc := h.cluster; hc != nil {
		hc.once.Do(func() { hc.node.leave(h) })
	}
}

// instanceName is the handler's instance id in its cluster, "" without.
func (h *Handler) instanceName() string {
	if h == nil || h.cluster == nil {
		return ""
	}
	return h.cluster.node.name
}

func checkInstanceName(s string) error {
	if len(s) > maxClusterNameLen {
		return fmt.Errorf("longer than %d bytes", maxClusterNameLen)
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f {
			return fmt.Errorf("%q: spaces and control characters are not allowed", s)
		}
	}
	return nil
}

// parseRedisURL reads a Redis URL for the cluster's client. Errors never
// quote the URL, which may hold a password.
func parseRedisURL(raw string) (*redis.Options, string, error) {
	raw = strings.TrimSpace(raw)
	shown := "redis URL"
	if u, err := url.Parse(raw); err == nil {
		shown = u.Redacted()
	}
	opt, err := redis.ParseURL(raw)
	if err != nil {
		return nil, "", fmt.Errorf("%s: not a redis://, rediss:// or unix:// URL", shown)
	}
	opt.DialTimeout = clusterTimeout
	opt.ReadTimeout = clusterTimeout
	opt.WriteTimeout = clusterTimeout
	opt.ContextTimeoutEnabled = true
	opt.MaxRetries = 0         // a failed command is an outage: the fail mode decides, fast
	opt.DisableIdentity = true // no CLIENT SETINFO on connect
	return opt, shown, nil
}

var (
	instanceOnce sync.Once
	instanceID   string
)

// defaultInstanceName is the host name and a random suffix, one per
// process: two processes on one host, or one restarted, are two instances.
func defaultInstanceName() string {
	instanceOnce.Do(func() {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "caddy"
		}
		if len(host) > maxClusterNameLen-9 {
			host = host[:maxClusterNameLen-9]
		}
		instanceID = host + "-" + randomSuffix(8)
	})
	return instanceID
}

func randomSuffix(n int) string {
	var b [10]byte
	rand.Read(b[:])
	return strings.ToLower(idEncoding.EncodeToString(b[:]))[:n]
}

// clusterUp is caddy_ws_to_tcp_cluster_up, registered when a handler has a
// cluster.
var clusterUp = prometheus.NewGauge(prometheus.GaugeOpts{
	Namespace: "caddy", Subsystem: "ws_to_tcp", Name: "cluster_up",
	Help: "1 when the cluster's Redis answered the last command, 0 while it cannot be reached (admission then follows cluster_fail).",
})

// clusterKey tells the nodes apart: the settings that a node is made of.
type clusterKey struct {
	redis, prefix, name string
	lease               time.Duration
}

// clusterNodes holds the process's nodes. A node lives while a loaded
// handler has it or a tunnel holds slots through it, so that tunnels that
// outlive their configuration keep their slots renewed.
var clusterNodes = struct {
	sync.Mutex
	m map[clusterKey]*clusterNode
}{m: make(map[clusterKey]*clusterNode)}

// clusterNode is this process's membership of one cluster: the Redis
// client, the subscription to the cluster's channels, the heartbeat that
// renews the membership and the slots, and what the other instances said
// about upstream health.
type clusterNode struct {
	key     clusterKey
	client  *redis.Client
	shown   string // the Redis URL for logs, password redacted
	prefix  string
	name    string // the instance id
	session string // name/random: this node's membership; its slots are counted under it
	lease   time.Duration
	logger  *zap.Logger

	// under clusterNodes' lock
	owners  []*Handler
	holds   int // slots held by handshakes and tunnels
	stopped bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	up      atomic.Bool // Redis answered the last command
	started atomic.Bool // the first heartbeat went through and the subscription is on
	downMu  sync.Mutex  // orders the up/down transitions with their log line
	isDown  bool        // an outage was logged and not yet its end

	mu     sync.Mutex
	counts map[string]int // limit key -> slots this node holds under it
	dirty  bool           // Redis may not hold counts: the next heartbeat writes them whole
	gen    uint64         // counts the whole writes: a release queued before one is already in it

	releases chan queuedRelease
	kick     chan struct{} // the local health verdicts changed

	membersMu sync.Mutex
	members   []string // the live sessions, as of the last heartbeat

	pendingMu sync.Mutex
	pending   map[string]chan clusterReply // admin requests waiting for answers, by request id

	health clusterHealth
}

type queuedRelease struct {
	keys []string
	gen  uint64
}

var redisLoggerOnce sync.Once

// acquireNode returns the node of key, making it if needed, with h as an
// owner.
func acquireNode(key clusterKey, opt *redis.Options, shown string, h *Handler) *clusterNode {
	redisLoggerOnce.Do(func() {
		// go-redis writes its reconnection attempts to stderr; a Redis
		// outage is reported once by the node instead.
		redis.SetLogger(redisLogger{})
	})
	clusterNodes.Lock()
	defer clusterNodes.Unlock()
	if n := clusterNodes.m[key]; n != nil {
		n.owners = append(n.owners, h)
		return n
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &clusterNode{
		key:      key,
		client:   redis.NewClient(opt), // connects lazily
		shown:    shown,
		prefix:   key.prefix,
		name:     key.name,
		session:  key.name + "/" + randomSuffix(10),
		lease:    key.lease,
		logger:   caddy.Log().Named("http.handlers.ws_to_tcp.cluster"),
		owners:   []*Handler{h},
		ctx:      ctx,
		cancel:   cancel,
		counts:   make(map[string]int),
		dirty:    true,
		releases: make(chan queuedRelease, 4096),
		kick:     make(chan struct{}, 1),
		pending:  make(map[string]chan clusterReply),
	}
	n.health.remote = make(map[string]remoteHealth)
	clusterNodes.m[key] = n
	n.wg.Add(1)
	go n.run()
	return n
}

// leave removes h from the owners; the node stops when it has neither
// owners nor slots.
func (n *clusterNode) leave(h *Handler) {
	clusterNodes.Lock()
	for i, o := range n.owners {
		if o == h {
			n.owners = append(n.owners[:i], n.owners[i+1:]...)
			break
		}
	}
	stop := n.stopIfUnusedLocked()
	clusterNodes.Unlock()
	if stop {
		n.stop()
	}
}

// hold and unhold count the slots held through the node.
func (n *clusterNode) hold() {
	clusterNodes.Lock()
	n.holds++
	clusterNodes.Unlock()
}

func (n *clusterNode) unhold() {
	clusterNodes.Lock()
	n.holds--
	stop := n.stopIfUnusedLocked()
	clusterNodes.Unlock()
	if stop {
		// Not on the caller's goroutine: a tunnel may end inside the
		// node's own admin handling, which stop waits for.
		go n.stop()
	}
}

func (n *clusterNode) stopIfUnusedLocked() bool {
	if n.stopped || len(n.owners) > 0 || n.holds > 0 {
		return false
	}
	n.stopped = true
	if clusterNodes.m[n.key] == n {
		delete(clusterNodes.m, n.key)
	}
	return true
}

// stop ends the node's goroutines and leaves the cluster: its membership
// and slots are removed from Redis at once (best effort: else they expire
// with the lease).
func (n *clusterNode) stop() {
	n.cancel()
	n.wg.Wait()
	if n.started.Load() && n.up.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
		leaveScript.Run(ctx, n.client, []string{n.membersKey(), n.heldKey(n.session)}, n.session)
		cancel()
	}
	n.client.Close()
	n.health.forget(n)
}

// Redis keys and channels of the cluster, all under the prefix.
func (n *clusterNode) membersKey() string            { return n.prefix + "members" }
func (n *clusterNode) heldKey(session string) string { return n.prefix + "held:" + session }
func (n *clusterNode) adminChannel() string          { return n.prefix + "admin" }
func (n *clusterNode) healthChannel() string         { return n.prefix + "health" }
func (n *clusterNode) replyChannel(session string) string {
	return n.prefix + "reply:" + session
}

// ownerRunning reports whether a configuration that has the node runs
// (not only loaded: `caddy validate` and failed loads connect nowhere).
func (n *clusterNode) ownerRunning() bool {
	clusterNodes.Lock()
	owners := append([]*Handler(nil), n.owners...)
	clusterNodes.Unlock()
	for _, h := range owners {
		if h.configRunning() {
			return true
		}
	}
	return false
}

// run is the node's loop: it waits for a running configuration, then
// subscribes, beats (renewing the membership and, after an outage,
// writing the slots whole), sends the queued slot releases, and publishes
// the local health verdicts when they change.
func (n *clusterNode) run() {
	defer n.wg.Done()
	defer n.recoverPanic("cluster loop")
	wait := time.NewTimer(0)
	defer wait.Stop()
	for !n.ownerRunning() {
		select {
		case <-n.ctx.Done():
			return
		case <-wait.C:
			wait.Reset(10 * time.Millisecond)
		}
	}
	ps := n.client.Subscribe(n.ctx, n.adminChannel(), n.healthChannel(), n.replyChannel(n.session))
	defer ps.Close()
	interval := n.lease / 3
	msgs := ps.ChannelWithSubscriptions(redis.WithChannelHealthCheckInterval(interval), redis.WithChannelSize(1024))
	n.wg.Add(1)
	go n.receive(msgs)

	beat := time.NewTimer(0)
	defer beat.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-beat.C:
			n.heartbeat()
			next := interval
			n.mu.Lock()
			if n.dirty || !n.up.Load() {
				next = min(interval, 250*time.Millisecond) // retry soon: Redis may be back
			}
			n.mu.Unlock()
			beat.Reset(next)
		case r := <-n.releases:
			n.flushReleases(r)
		case <-n.kick:
			n.publishHealth(false)
		}
	}
}

// receive dispatches the messages of the cluster's channels.
func (n *clusterNode) receive(msgs <-chan any) {
	defer n.wg.Done()
	defer n.recoverPanic("cluster subscription")
	for {
		select {
		case <-n.ctx.Done():
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			msg, ok := m.(*redis.Message)
			if !ok {
				continue // a (re)subscription
			}
			switch msg.Channel {
			case n.adminChannel():
				n.serveRemote(msg.Payload)
			case n.healthChannel():
				n.receiveHealth(msg.Payload)
			default:
				n.receiveReply(msg.Payload)
			}
		}
	}
}

func (n *clusterNode) recoverPanic(where string) {
	if v := recover(); v != nil {
		n.logger.Error("panic in "+where, zap.String("panic", fmt.Sprint(v)), zap.ByteString("stack", debug.Stack()))
	}
}

// heartbeat renews the membership, removes the memberships and slots of
// instances whose lease ran out, and learns the live members. After an
// outage (or at the start) it writes the node's slot counts whole, in the
// same script.
func (n *clusterNode) heartbeat() {
	n.mu.Lock()
	resync := n.dirty
	keys := []string{n.membersKey(), n.heldKey(n.session)}
	args := []any{n.session, n.lease.Milliseconds(), n.prefix, "0"}
	if resync {
		args[3] = "1"
		for k, c := range n.counts {
			keys = append(keys, k)
			args = append(args, c)
		}
		n.dirty = false
		n.gen++
	}
	n.mu.Unlock()

	ctx, cancel := context.WithTimeout(n.ctx, clusterTimeout)
	defer cancel()
	res, err := heartbeatScript.Run(ctx, n.client, keys, args...).Slice()
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("unexpected heartbeat answer %v", res)
	}
	if err != nil {
		if resync {
			n.markDirty()
		}
		if n.ctx.Err() == nil {
			n.setUp(false, err)
		}
		return
	}
	if live, _ := res[0].(int64); live == 0 && !resync {
		// Our membership had run out (a pause longer than the lease): the
		// other instances may have dropped our slots. Write them again.
		n.markDirty()
	}
	var members []string
	if list, ok := res[1].([]any); ok {
		for _, m := range list {
			if s, ok := m.(string); ok {
				members = append(members, s)
			}
		}
	}
	n.membersMu.Lock()
	n.members = members
	n.membersMu.Unlock()
	n.started.Store(true)
	n.setUp(true, nil)
	n.health.pruneMembers(n, members)
	n.publishHealth(true)
}

func (n *clusterNode) markDirty() {
	n.mu.Lock()
	n.dirty = true
	n.mu.Unlock()
}

// setUp records whether Redis answers: the metric, and one WARN per
// outage (one INFO at its end).
func (n *clusterNode) setUp(up bool, err error) {
	n.downMu.Lock()
	defer n.downMu.Unlock()
	n.up.Store(up)
	if up {
		clusterUp.Set(1)
		if n.isDown {
			n.isDown = false
			n.logger.Info("cluster: Redis reachable again; cluster-wide limits, admin scope and health apply again",
				zap.String("redis", n.shown), zap.String("instance", n.name))
		}
		return
	}
	clusterUp.Set(0)
	if n.isDown {
		return
	}
	n.isDown = true
	n.health.resetSent()
	n.logger.Warn("cluster: Redis unreachable; tunnels go on, admission follows cluster_fail, the admin API answers for this instance only",
		zap.String("redis", n.shown), zap.String("instance", n.name), zap.Error(err))
}

// liveMembers returns the sessions of the live instances as of the last
// heartbeat.
func (n *clusterNode) liveMembers() []string {
	n.membersMu.Lock()
	defer n.membersMu.Unlock()
	return append([]string(nil), n.members...)
}

// instanceOf is the instance id of a session.
func instanceOf(session string) string {
	if i := strings.LastIndexByte(session, '/'); i >= 0 {
		return session[:i]
	}
	return session
}

// fetchMembers returns the sessions of the live instances.
func (n *clusterNode) fetchMembers(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, clusterTimeout)
	defer cancel()
	return membersScript.Run(ctx, n.client, []string{n.membersKey()}).StringSlice()
}

func (n *clusterNode) publish(ctx context.Context, channel string, v any) error {
	payload, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, clusterTimeout)
	defer cancel()
	return n.client.Publish(ctx, channel, payload).Err()
}

// redisLogger drops go-redis's own log lines (reconnection attempts); the
// nodes log an outage once.
type redisLogger struct{}

func (redisLogger) Printf(context.Context, string, ...any) {}

// The scripts. Times are Redis's (TIME), in milliseconds, so that the
// instances' clocks do not matter. A membership is a member of the sorted
// set <prefix>members whose score is its expiry; a node's slots are fields
// (its session) of one hash per limit key, whose value is how many it
// holds, and the set <prefix>held:<session> lists those keys so that the
// slots of an expired member can be removed.

// heartbeatScript renews a membership and removes the expired ones with
// their slots; with ARGV[4] = "1" it first writes the node's slots whole
// (KEYS[3..] with the counts ARGV[5..]). It answers whether the membership
// was live before and the live members.
//
// KEYS[1] members, KEYS[2] held set of the session, KEYS[3..] limit keys;
// ARGV[1] session, ARGV[2] lease (ms), ARGV[3] prefix, ARGV[4] resync.
var heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
local live = 0
if mine and tonumber(mine) >= now then live = 1 end
if ARGV[4] == '1' then
  for _, k in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('HDEL', k, ARGV[1]) end
  redis.call('DEL', KEYS[2])
  for i = 3, #KEYS do
    if tonumber(ARGV[i + 2]) > 0 then
      redis.call('HSET', KEYS[i], ARGV[1], ARGV[i + 2])
      redis.call('SADD', KEYS[2], KEYS[i])
    end
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
for _, d in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)) do
  local held = ARGV[3] .. 'held:' .. d
  for _, k in ipairs(redis.call('SMEMBERS', held)) do redis.call('HDEL', k, d) end
  redis.call('DEL', held)
  redis.call('ZREM', KEYS[1], d)
end
return {live, redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')}
`)

// leaveScript removes a membership and its slots (a node that stops).
//
// KEYS[1] members, KEYS[2] held set; ARGV[1] session.
var leaveScript = redis.NewScript(`
for _, k in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('HDEL', k, ARGV[1]) end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 0
`)

// membersScript answers the live members.
//
// KEYS[1] members.
var membersScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
`)

// Package wstotcp is a Caddy HTTP handler that relays WebSocket clients to
// TCP or Unix-socket upstreams, byte for byte: the job websockify does for
// noVNC, browser terminals and MQTT over WebSocket, done inside Caddy.
package wstotcp

import (
	"crypto/tls"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/relay"
	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

func init() {
	caddy.RegisterModule(Handler{})
	caddy.RegisterModule(adminAPI{})
	httpcaddyfile.RegisterHandlerDirective("ws_to_tcp", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("ws_to_tcp", httpcaddyfile.Before, "reverse_proxy")
}

// Defaults of the optional settings.
const (
	defaultDialTimeout  = 5 * time.Second
	defaultWriteTimeout = 30 * time.Second
	defaultBufferSize   = 32 * 1024
	minBufferSize       = 512
	maxBufferSize       = 16 * 1024 * 1024
)

// Handler relays each WebSocket connection to a TCP or Unix-socket upstream.
//
// A request that is not a WebSocket upgrade is passed to the next handler,
// so ws_to_tcp can share a path with a file_server (noVNC's files, say).
// The upstream is dialled before the 101 response: a refused upstream gives
// 502 and a dial timeout 504, and then no upgrade happens.
//
// Placeholders set for later handlers and the access log:
//
// | placeholder | value |
// |---|---|
// | `{http.ws_to_tcp.conn_id}` | the tunnel's id, as the admin API and logs show it |
// | `{http.ws_to_tcp.upstream}` | the upstream address dialled |
// | `{http.ws_to_tcp.subprotocol}` | the subprotocol echoed to the client, if any |
// | `{http.auth.user.id}` | the user, when the `auth` block authenticated the request |
type Handler struct {
	// The upstreams to relay to. Each `dial` address is `host:port`,
	// `tcp/host:port`, `unix//path/to.sock` or `tls/host:port` (TLS to the
	// upstream, see `upstream_tls`). With allow_targets, one address may
	// hold placeholders, expanded and checked per request. Required, unless
	// `targets` chooses the upstream.
	Upstreams []*Upstream `json:"upstreams,omitempty"`

	// How long to wait for an upstream's TCP handshake (and TLS handshake
	// for `tls/` upstreams) before answering 504. Default: 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// TLS settings for `tls/` upstreams. Default: the system's roots and the
	// upstream's host name as server name.
	UpstreamTLS *UpstreamTLS `json:"upstream_tls,omitempty"`

	// How an upstream is chosen among several (`selection_policy`) and how
	// many others are tried when its dial fails (`retries`). Default:
	// random, no retry.
	LoadBalancing *LoadBalancing `json:"load_balancing,omitempty"`

	// Active and passive health checks of the upstreams. Upstreams start
	// healthy; down ones are skipped, and when all are down the handshake
	// gets 502. Default: none, every upstream is always healthy.
	HealthChecks *HealthChecks `json:"health_checks,omitempty"`

	// The most tunnels open to one upstream address at once (with the
	// handshakes dialling it), counted over every handler and configuration
	// of the process that has the address. An upstream at its limit is not
	// chosen; when every healthy upstream is at its limit the handshake
	// gets 503 with `Retry-After: 1`. Default: 0, no limit.
	MaxConnectionsPerUpstream int `json:"max_connections_per_upstream,omitempty"`

	// Send a PROXY protocol header, `v1` (text) or `v2` (binary), as the
	// first bytes to the upstream, right after the dial (before the TLS
	// handshake of a `tls/` upstream). It carries Caddy's client IP (which
	// honours the server's trusted_proxies), with the client's port when
	// that IP is the connection's peer and 0 when it came from a header,
	// and the address of the server socket that accepted the request.
	// Default: none.
	ProxyProtocol string `json:"proxy_protocol,omitempty"`

	// Bytes to send to the upstream right after the dial (after the PROXY
	// header), before any byte of the client: e.g. a login on behalf of the
	// user. Placeholders of the request are replaced (`{http.auth.user.id}`,
	// `{http.request.header.*}`, `{http.request.uri.query.*}`; unknown ones
	// by nothing), with control characters removed from their values so
	// that a client cannot add a line; the escapes `\n`, `\r`, `\t`, `\\`
	// and `\xHH` are interpreted in the template. At most 64 KiB once
	// expanded. Default: none.
	Preamble string `json:"preamble,omitempty"`

	// The accepted subprotocols, in server preference order: the first one
	// the client also offered is echoed, and a client that offers none of
	// them gets 400. `binary` and `base64` have websockify's meaning (base64
	// text frames both ways); any other name is echoed and the data passed
	// through. Default: any offered protocol is accepted and the client's
	// first offer echoed.
	Subprotocols []string `json:"subprotocols,omitempty"`

	// The frame type of messages to the client: `binary` or `text`. With
	// `text`, a UTF-8 sequence split by a read is carried over to the next
	// message, and bytes that are not UTF-8 are replaced by U+FFFD.
	// Ignored when the `base64` subprotocol is selected. Default: binary.
	MessageType string `json:"message_type,omitempty"`

	// The largest client message, in bytes; a larger one closes the
	// connection with 1009. Default: 0, unlimited (messages are streamed to
	// the upstream, never held whole).
	MaxMessageSize int64 `json:"max_message_size,omitempty"`

	// Check that client text messages are valid UTF-8 (incrementally,
	// across fragments) and close with 1007 when one is not. Default: off,
	// text messages are passed through as bytes.
	ValidateUTF8 bool `json:"validate_utf8,omitempty"`

	// The relay's buffer each way, in bytes: the largest upstream read sent
	// as one message, and the most client data gathered into one upstream
	// write. Between 512 B and 16 MiB. Default: 32768.
	BufferSize int `json:"buffer_size,omitempty"`

	// How long a client may take to accept a message before it is dropped.
	// Default: 30s.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	// Open tunnels survive a config reload by default. When set, the tunnels
	// of an unloaded configuration are closed with 1001 this long after the
	// reload. Default: 0, they stay open until either side ends them.
	ReloadCloseAfter caddy.Duration `json:"reload_close_after,omitempty"`

	// Send a ping to the client this often; a client that then sends
	// nothing at all (no pong, no data) for heartbeat_timeout is closed with
	// 1008, and its upstream closed. Catches clients that vanished without a
	// FIN. Default: 0, off.
	HeartbeatInterval caddy.Duration `json:"heartbeat_interval,omitempty"`

	// How long to wait for anything from the client after a heartbeat.
	// Default: heartbeat_interval.
	HeartbeatTimeout caddy.Duration `json:"heartbeat_timeout,omitempty"`

	// Send this text message as the heartbeat instead of a ping, for
	// clients that do not see pings (browsers answer them silently, and
	// some applications want a keep-alive they can observe). The client's
	// answer, or anything else it sends, counts as alive. Default: empty,
	// a ping.
	HeartbeatText string `json:"heartbeat_text,omitempty"`

	// Close a tunnel (1008) that relayed no data either way for this long.
	// Pings and pongs do not count as data. Default: 0, no limit.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	// Bandwidth caps per tunnel. Default: none.
	Throttle *Throttle `json:"throttle,omitempty"`

	// A label for each connection, a template expanded with the request's
	// placeholders (e.g. `{http.request.uri.query.room}`; unknown ones
	// become empty), at most 256 bytes. It shows in the admin API, where it
	// selects connections (`?channel=`), in the log line and in events.
	// Default: empty.
	Channel string `json:"channel,omitempty"`

	// Allowed values of the Origin header, in addition to the default
	// rule, which admits requests without an Origin (clients that are not
	// browsers) and from the same origin as the request's Host. Patterns
	// are `scheme://host[:port]`; a `*` in the host stands for one or more
	// characters other than a dot (one label: `https://*.example.com`), a
	// `*` port for any port (`http://127.0.0.1:*`); `null` matches the
	// Origin `null`. `*` alone allows every origin, and logs a warning at
	// load. A request from another origin gets 403 before anything is
	// dialled. Default: the default rule only.
	Origins []string `json:"origins,omitempty"`

	// Host names trusted by the same-origin rule on plain-HTTP requests.
	// Without TLS nothing binds a name to this server: a page under an
	// attacker's name that is later pointed at this server (DNS
	// rebinding) sends a Host and an Origin that agree, so over plain HTTP
	// the rule trusts only a Host that is an IP address, `localhost` or
	// `*.localhost`, a name of the site's address (the host matchers above
	// the handler, and the server's listen addresses), the host of an
	// `origins` pattern, or a name listed here. A `*` stands for one label
	// (`*.vnc.lan`). Requests over TLS are not concerned: the certificate
	// binds the name. A refused handshake gets 403. Default: none.
	AllowedHosts []string `json:"allowed_hosts,omitempty"`

	// Authentication by the handler itself: basic, static bearer tokens and
	// JWTs, carried by the Authorization header, a query parameter, a
	// cookie or a `bearer.<token>` subprotocol entry. Not needed when
	// Caddy's basic_auth or forward_auth earlier in the route sets
	// `{http.auth.user.id}`, which counts as authenticated. On success
	// `{http.auth.user.id}` is set to the user. Default: none, every
	// client that passes the origin check is admitted.
	Auth *Auth `json:"auth,omitempty"`

	// The most connections this handler holds at once: tunnels open plus
	// handshakes being admitted. Over it: 503 with `Retry-After: 1`,
	// before anything is dialled. Counted per handler instance, so after a
	// config reload the tunnels of the old configuration are not counted.
	// Default: 0, no limit.
	MaxConnections int `json:"max_connections,omitempty"`

	// The most connections from one client IP address (Caddy's client IP,
	// which honours the server's `trusted_proxies`), counted like
	// max_connections. Default: 0, no limit.
	MaxConnectionsPerIP int `json:"max_connections_per_ip,omitempty"`

	// The most connections of one user (`{http.auth.user.id}`), checked
	// after authentication. Connections without a user are not counted.
	// Default: 0, no limit.
	MaxConnectionsPerUser int `json:"max_connections_per_user,omitempty"`

	// Serve the built-in test page on every GET that is not a WebSocket
	// upgrade and reaches this handler (so such requests no longer fall
	// through to the next handler; use a matcher to put the page on one
	// path). The page, embedded with no external assets, connects to its
	// own URL and sends text or hex, showing what comes back as text and
	// hex, and the close code and reason. Default: off.
	TestPage bool `json:"test_page,omitempty"`

	// Dynamic targets: the upstream is chosen per client by a token it
	// presents (query parameter, cookie, path segment or Host header),
	// looked up in a map, a token file, an HTTP service or Redis. Replaces
	// `upstreams`. See Targets. Default: none.
	Targets *Targets `json:"targets,omitempty"`

	// Where dynamic targets (from `targets`, or from placeholders in an
	// upstream address) may lead: `<cidr|ip|host glob>[:<port or lo-hi>]`
	// (`10.0.0.0/8:5900-5999`, `127.0.0.1:5900`, `[::1]:5901`,
	// `*.vnc.internal:5900`) or `unix/<path glob>` (`unix//run/vnc/*.sock`).
	// A target outside the list gets 403. A host name is resolved once and
	// every address it resolves to is checked against the address rules
	// (name rules trust the DNS for the names they match); the checked
	// address is dialled, never the name again. Required for placeholders
	// in upstream addresses. Configured upstreams are not checked.
	// Default: none, every target of the token table is trusted.
	AllowTargets []string `json:"allow_targets,omitempty"`

	// Join a cluster of Caddy instances through Redis: the admin API's
	// `?scope=cluster`, max_connections, max_connections_per_ip and
	// max_connections_per_user, and upstream health then span every
	// instance. See Cluster. Default: none, this instance alone.
	Cluster *Cluster `json:"cluster,omitempty"`

	ctx         caddy.Context
	logger      *zap.Logger
	events      *caddyevents.App // nil without an events app
	relay       *relay.Config    // how this handler's tunnels relay; built once, read by them
	streamsDown *atomic.Bool     // set when the server carrying this handler's HTTP/2-3 tunnels begins to shut down
	upstreamTLS *tls.Config
	origins     *originPolicy   // origins and allowed_hosts; never nil once provisioned
	auth        *authenticator  // nil without an auth block
	limits      *connLimits     // nil without limits
	lb          *balancer       // upstream pool, policy, health; see loadbalancer.go
	targets     *targetResolver // nil without targets or placeholders in to
	cluster     *handlerCluster // nil without cluster
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ws_to_tcp",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision checks the settings and sets up the handler. It is the one
// place where what the settings mean is checked (see caddyfile.go for
// what the Caddyfile parser checks), and its errors name the JSON field
// and the subdirective (settingError). It does no network I/O, so that it
// is cheap for `caddy validate` and config reloads.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.ctx = ctx
	h.logger = ctx.Logger()

	if err := h.validateSettings(); err != nil {
		return err
	}
	if err := h.validateBalancer(); err != nil {
		return err
	}
	if h.DialTimeout == 0 {
		h.DialTimeout = caddy.Duration(defaultDialTimeout)
	}
	if h.WriteTimeout == 0 {
		h.WriteTimeout = caddy.Duration(defaultWriteTimeout)
	}
	if h.BufferSize == 0 {
		h.BufferSize = defaultBufferSize
	}
	if h.HeartbeatInterval > 0 && h.HeartbeatTimeout == 0 {
		h.HeartbeatTimeout = h.HeartbeatInterval
	}

	for i, u := range h.Upstreams {
		if u == nil {
			return settingError(fmt.Sprintf("upstreams[%d]", i), "to", "empty")
		}
		if err := u.parse(); err != nil {
			return settingError(fmt.Sprintf("upstreams[%d].dial", i), "to", "%v", err)
		}
	}
	if err := h.provisionTargets(); err != nil {
		return err
	}
	if len(h.Upstreams) == 0 && h.targets == nil {
		return settingError("upstreams", "to", "at least one upstream is required, or targets")
	}
	if h.UpstreamTLS != nil || h.anyTLSUpstream() || h.targets != nil {
		cfg, err := h.UpstreamTLS.tlsConfig()
		if err != nil {
			return err
		}
		h.upstreamTLS = cfg
	}

	h.relay = &relay.Config{
		BufferSize:        h.BufferSize,
		WriteTimeout:      time.Duration(h.WriteTimeout),
		MaxMessageSize:    h.MaxMessageSize,
		ValidateUTF8:      h.ValidateUTF8,
		Text:              h.MessageType == "text",
		HeartbeatInterval: time.Duration(h.HeartbeatInterval),
		HeartbeatTimeout:  time.Duration(h.HeartbeatTimeout),
		HeartbeatText:     h.HeartbeatText,
		IdleTimeout:       time.Duration(h.IdleTimeout),
		// A client's Close 1000 is the upstream's EOF, and its answer still
		// reaches the client (README, "Recipes": caddy tcp-to-ws).
		HalfClose: true,
	}
	if th := h.Throttle; th != nil {
		h.relay.ReadRate, h.relay.WriteRate, h.relay.Burst = th.Read, th.Write, th.Burst
	}
	h.relay.Prepare()
	if err := h.provisionAdmission(); err != nil {
		return err
	}
	if err := h.provisionOps(ctx); err != nil {
		return err
	}
	if err := h.provisionBalancer(ctx); err != nil {
		return err
	}
	h.provisionStreams(ctx)
	return h.provisionCluster(ctx) // last: nothing after it fails
}

// validateSettings checks the handler's own plain settings: those of the
// tunnel (sizes, timeouts, heartbeat, throttle) and of the handshake
// (subprotocols). The grouped ones are checked where they are compiled:
// provisionTargets, provisionAdmission, validateBalancer, provisionHealth.
func (h *Handler) validateSettings() error {
	if h.MessageType != "" && !isMessageType(h.MessageType) {
		return settingError("message_type", "", "%q is neither binary nor text", h.MessageType)
	}
	if h.BufferSize != 0 && (h.BufferSize < minBufferSize || h.BufferSize > maxBufferSize) {
		return settingError("buffer_size", "", "%d bytes is outside %d B to %d MiB", h.BufferSize, minBufferSize, maxBufferSize>>20)
	}
	if h.MaxMessageSize < 0 {
		return settingError("max_message_size", "", "must not be negative")
	}
	for _, d := range []struct {
		path, sub string
		v         caddy.Duration
	}{
		{"dial_timeout", "", h.DialTimeout},
		{"write_timeout", "", h.WriteTimeout},
		{"reload_close_after", "", h.ReloadCloseAfter},
		{"idle_timeout", "", h.IdleTimeout},
		{"heartbeat_interval", "heartbeat", h.HeartbeatInterval},
		{"heartbeat_timeout", "heartbeat", h.HeartbeatTimeout},
	} {
		if d.v < 0 {
			return settingError(d.path, d.sub, "must not be negative")
		}
	}
	if h.HeartbeatTimeout > 0 && h.HeartbeatInterval == 0 {
		return settingError("heartbeat_timeout", "heartbeat", "needs heartbeat_interval")
	}
	// heartbeat_text is UTF-8: Caddy loads the module from JSON, whose
	// decoder replaces invalid bytes.
	if h.HeartbeatText != "" && h.HeartbeatInterval == 0 {
		return settingError("heartbeat_text", "heartbeat_payload", "needs heartbeat_interval (heartbeat <interval>)")
	}
	if err := h.Throttle.validate(); err != nil {
		return err
	}
	for i, p := range h.Subprotocols {
		if !isToken(p) {
			return settingError(fmt.Sprintf("subprotocols[%d]", i), "subprotocols", "%q is not a valid protocol name", p)
		}
		if len(p) >= len(bearerProtocolPrefix) && strings.EqualFold(p[:len(bearerProtocolPrefix)], bearerProtocolPrefix) {
			return settingError(fmt.Sprintf("subprotocols[%d]", i), "subprotocols",
				"%q: the prefix %q is reserved for tokens, which are never echoed", p, bearerProtocolPrefix)
		}
	}
	return nil
}

// validate checks the throttle's rates and burst.
func (th *Throttle) validate() error {
	if th == nil {
		return nil
	}
	for _, r := range []struct {
		path string
		v    int64
	}{{"throttle.read", th.Read}, {"throttle.write", th.Write}, {"throttle.burst", th.Burst}} {
		if r.v < 0 {
			return settingError(r.path, "throttle", "must not be negative")
		}
	}
	if th.Read == 0 && th.Write == 0 {
		return settingError("throttle", "", "set read, write or both")
	}
	if th.Burst > math.MaxInt32 {
		return settingError("throttle.burst", "throttle", "%d bytes is more than 2 GiB", th.Burst)
	}
	return nil
}

func isMessageType(s string) bool { return s == "binary" || s == "text" }

// settingError is a load-time error about one setting. It names the
// setting by its JSON field path (path, e.g. `load_balancing.retries` or
// `upstreams[1].dial`) and, when the Caddyfile spells it differently, by
// its subdirective (sub, with nested ones as `auth > basic`), so that both
// JSON and Caddyfile users find it:
// `load_balancing.selection_policy (lb_policy): unknown policy "foo"`.
func settingError(path, sub, format string, args ...any) error {
	name := path
	if sub != "" && sub != path {
		name += " (" + sub + ")"
	}
	return fmt.Errorf("%s: %w", name, fmt.Errorf(format, args...))
}

// Cleanup runs when the configuration is unloaded (reload or stop). The HTTP
// server's shutdown leaves hijacked connections alone, so tunnels are ours
// to close: all of them when the process exits, this handler's after
// reload_close_after on a reload, none otherwise (they survive the reload).
// It also stops the active health checker and gives back the handler's
// references to the shared upstream states (loadbalancer.go).
func (h *Handler) Cleanup() error {
	switch {
	case caddy.Exiting():
		closeTunnels(nil, wsframe.CloseGoingAway, "server shutting down")
	case h.ReloadCloseAfter > 0:
		time.AfterFunc(time.Duration(h.ReloadCloseAfter), func() {
			closeTunnels(h, wsframe.CloseGoingAway, "configuration reloaded")
		})
	}
	h.cleanupTargets()
	h.releaseUpstreams()
	h.releaseCluster()
	return nil
}

func (h *Handler) anyTLSUpstream() bool {
	for _, u := range h.Upstreams {
		if u.useTLS {
			return true
		}
	}
	return false
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

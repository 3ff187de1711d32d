package wstotcp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/singleflight"

	"github.com/caddyserver/caddy/v2"
)

// Targets chooses the upstream per client from a token the client
// presents (websockify's token plugins). The token is taken from the
// carriers (query parameter, cookie, path, Host header) and looked up in
// the sources, in this order: `map`, `file`, `http`, `redis`; the first
// source that knows the token wins. A value is `host:port`,
// `tls/host:port`, `unix//path/to.sock`, websockify's `unix_socket:/path`,
// or JSON: `{"host": "h", "port": p}`, `{"host": "h:p"}` or
// `{"target": "host:port"}`.
//
// No token, or a token no source knows: 404. A source that fails (down,
// timed out, an answer that is not a target): 503, with the reason in the
// log, never in the response. A target outside `allow_targets` (when set):
// 403. The token itself is never logged, and the query parameter is
// removed from the request's URI. With targets, `to` is not used (and not
// allowed).
type Targets struct {
	// The query parameter that carries the token. It is removed from the
	// request's URI before later handlers and this module's logs see it.
	// Default: `token` when no carrier is configured (websockify's).
	Query string `json:"query,omitempty"`

	// The cookie that carries the token. Default: none.
	Cookie string `json:"cookie,omitempty"`

	// A path segment carries the token: the segment's index (from 0, as in
	// `{http.request.uri.path.1}`, so `1` for `/vnc/<token>`), or any
	// placeholder template expanded per request. Default: none.
	Path string `json:"path,omitempty"`

	// The Host header carries the token: `full` for the whole host name
	// without the port (websockify's `--host-token`), `label` for its
	// first label (`vm1` for `vm1.vnc.example.com`). Default: none.
	Host string `json:"host,omitempty"`

	// Tokens and their targets, in the configuration. Values are checked
	// when the config loads. The config (and so the admin API's /config)
	// shows them: keep real secrets in a file, an HTTP service or Redis.
	Map map[string]string `json:"map,omitempty"`

	// A token file in websockify's format, one `token: target` per line,
	// `#` starts a comment line; or a directory of such files (regular
	// files whose names do not start with a dot). Read when the config
	// loads (it must exist then), and again when its modification time or
	// size changes, checked at most once a second when a token is looked
	// up. A line that cannot be read is skipped, with a warning that names
	// the file and line number, never the token. If the file cannot be
	// read later, the last good table is kept.
	File string `json:"file,omitempty"`

	// An HTTP(S) URL to GET for each token not found in map or file, with
	// the token URL-escaped in place of `{token}` (or websockify's `%s`),
	// or else added as the query parameter `token`. A 2xx answer is the
	// target (plain text `host:port`, or JSON); 404 or 410 means the token
	// is unknown; anything else, or no answer within `timeout`, is a
	// failure (503). Redirects are not followed. Placeholders such as
	// `{env.LOOKUP_KEY}` are expanded when the config loads.
	HTTP string `json:"http,omitempty"`

	// A Redis server whose keys `<prefix><token>` hold the targets, so
	// that many Caddy instances share one token table. Looked up after the
	// http source.
	Redis *RedisTargets `json:"redis,omitempty"`

	// How long answers of the http and redis sources are remembered
	// (tokens found only; unknown tokens and failures are asked again).
	// 0 turns the cache off. Default: 10s.
	CacheTTL *caddy.Duration `json:"cache_ttl,omitempty"`

	// The longest one lookup may take: one http or redis request, and the
	// DNS resolution of a target's host name for allow_targets. A client
	// waits at most this long per source; other clients are not held up.
	// Default: 2s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// RedisTargets is the Redis source of Targets.
type RedisTargets struct {
	// The server: `redis://[[user]:password@]host[:port][/db]`,
	// `rediss://` for TLS, or `unix://[[user]:password@]/path?db=n`.
	// Placeholders such as `{env.REDIS_URL}` are expanded when the config
	// loads; the password is never logged. Required.
	URL string `json:"url"`

	// Prepended to the token to make the key. Default: empty, the token
	// is the key (websockify's TokenRedis).
	Prefix string `json:"prefix,omitempty"`
}

const (
	defaultTargetQuery    = "token"
	defaultTargetCacheTTL = 10 * time.Second
	defaultTargetTimeout  = 2 * time.Second

	// Tokens longer than this, or holding control characters, are
	// unknown without a lookup.
	maxTargetTokenLen = 1024
)

var (
	errNoToken      = errors.New("no target token in the request")
	errUnknownToken = errors.New("unknown target token")
)

// target is a parsed target value.
type target struct {
	unix   bool
	useTLS bool
	host   string // tcp: host name or IP literal, without brackets
	port   uint16
	path   string // unix: socket path
}

// String is the target as logs and the admin API show it.
func (t target) String() string {
	if t.unix {
		return "unix/" + t.path
	}
	s := net.JoinHostPort(t.host, strconv.Itoa(int(t.port)))
	if t.useTLS {
		return "tls/" + s
	}
	return s
}

// parseTargetAddress parses an upstream address as `to` accepts it:
// `host:port`, `tcp/host:port`, `tls/host:port`, `unix//path`.
func parseTargetAddress(s string) (target, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return target{}, errors.New("empty address")
	}
	if strings.ContainsAny(s, "{}") || strings.ContainsFunc(s, isCtl) || !utf8.ValidString(s) {
		return target{}, fmt.Errorf("%q is not an address", truncate(s, 200))
	}
	if p, ok := strings.CutPrefix(s, "unix/"); ok {
		return unixTarget(p)
	}
	var t target
	switch {
	case strings.HasPrefix(s, "tls/"):
		t.useTLS = true
		s = s[len("tls/"):]
	case strings.HasPrefix(s, "tcp/"):
		s = s[len("tcp/"):]
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return target{}, fmt.Errorf("%q: %v", truncate(s, 200), err)
	}
	return hostPortTarget(t, host, port)
}

func unixTarget(p string) (target, error) {
	if !path.IsAbs(p) {
		return target{}, fmt.Errorf("unix/%s: the socket path must be absolute", truncate(p, 200))
	}
	return target{unix: true, path: p}, nil
}

func hostPortTarget(t target, host, port string) (target, error) {
	if host == "" {
		return target{}, errors.New("missing host")
	}
	if strings.ContainsAny(host, "/ %[]") {
		return target{}, fmt.Errorf("%q is not a host", truncate(host, 200))
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p < 1 {
		return target{}, fmt.Errorf("port %q is not a number from 1 to 65535", truncate(port, 20))
	}
	t.host, t.port = host, uint16(p)
	return t, nil
}

// parseTargetValue parses a value of the token table: an address as `to`
// takes it, websockify's `unix_socket:/path` and `host:port` with an IPv6
// address unbracketed (it splits at the last colon), or websockify's JSON.
func parseTargetValue(s string) (target, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "{") || strings.HasPrefix(s, `"`) {
		return parseTargetJSON(s)
	}
	if p, ok := strings.CutPrefix(s, "unix_socket:"); ok {
		return unixTarget(p)
	}
	t, err := parseTargetAddress(s)
	if err != nil && !strings.Contains(s, "/") && strings.Count(s, ":") > 1 && !strings.Contains(s, "[") {
		// websockify: host, port = target.rsplit(":", 1)
		i := strings.LastIndexByte(s, ':')
		if addr, aerr := netip.ParseAddr(s[:i]); aerr == nil {
			return hostPortTarget(target{}, addr.String(), s[i+1:])
		}
	}
	return t, err
}

func parseTargetJSON(s string) (target, error) {
	var v struct {
		Host   *string         `json:"host"`
		Port   json.RawMessage `json:"port"`
		Target *string         `json:"target"`
	}
	if strings.HasPrefix(s, `"`) {
		var str string
		if err := json.Unmarshal([]byte(s), &str); err != nil {
			return target{}, fmt.Errorf("not a JSON string: %v", err)
		}
		return parseTargetValue(str)
	}
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return target{}, fmt.Errorf("not JSON: %v", err)
	}
	switch {
	case v.Target != nil:
		return parseTargetAddress(*v.Target)
	case v.Host == nil:
		return target{}, errors.New(`JSON without "host" or "target"`)
	case len(v.Port) == 0 || string(v.Port) == "null":
		// {"host": "h:p"}, websockify's TokenRedis form
		return parseTargetValue(*v.Host)
	}
	var port string
	if err := json.Unmarshal(v.Port, &port); err != nil {
		var n json.Number
		if err := json.Unmarshal(v.Port, &n); err != nil {
			return target{}, errors.New(`"port" is neither a number nor a string`)
		}
		port = n.String()
	}
	if *v.Host == "unix_socket" {
		// websockify's UnixDomainSocketDirectory answer: [unix_socket, path]
		return unixTarget(port)
	}
	return hostPortTarget(target{}, strings.TrimSuffix(strings.TrimPrefix(*v.Host, "["), "]"), port)
}

// targetSource is a remote token table: http or redis.
type targetSource interface {
	name() string
	// get looks the token up; errUnknownToken when it is not there. Its
	// errors never hold the token.
	get(ctx context.Context, token string) (target, error)
	close()
}

// targetResolver is the provisioned form of Targets and allow_targets.
type targetResolver struct {
	ctx     context.Context // the handler's: lookups stop when it is unloaded
	logger  *zap.Logger
	timeout time.Duration

	// carriers
	query, cookie, path, host string

	// template is a `to` address with placeholders, expanded per request
	// (then there are no carriers and no sources).
	template string

	table  map[string]target
	file   *fileSource
	remote []targetSource
	cache  *targetCache // nil when off
	group  singleflight.Group

	allow *allowList // nil: every target is trusted
}

// provisionTargets sets up `targets` and `allow_targets`, and a `to` with
// placeholders. It runs after the upstreams are parsed; a `to` with
// placeholders leaves Upstreams, as it is resolved per request here. It
// does no network I/O (the token file is read).
func (h *Handler) provisionTargets() error {
	tmpl, at := (*Upstream)(nil), ""
	for i, u := range h.Upstreams {
		if u.template {
			tmpl, at = u, fmt.Sprintf("upstreams[%d].dial", i)
		}
	}
	if tmpl != nil {
		switch {
		case len(h.AllowTargets) == 0:
			return settingError(at, "to", "%q: placeholders in an upstream address need allow_targets, "+
				"so that clients cannot make this server connect anywhere it can reach", tmpl.Dial)
		case len(h.Upstreams) > 1:
			return settingError(at, "to", "%q: an address with placeholders must be the only upstream", tmpl.Dial)
		case h.Targets != nil:
			return settingError(at, "to", "an address with placeholders and targets cannot be combined")
		}
	}
	if h.Targets != nil && len(h.Upstreams) > 0 {
		return settingError("targets", "", "the upstream is chosen by the token: remove upstreams (to, and the directive's upstream arguments)")
	}
	var allow *allowList
	if len(h.AllowTargets) > 0 {
		a, err := compileAllowList(h.AllowTargets)
		if err != nil {
			return settingError("allow_targets", "", "%v", err)
		}
		allow = a
	}
	if h.Targets == nil && tmpl == nil {
		if allow != nil {
			h.logger.Warn("allow_targets has no effect without targets or placeholders in to; configured upstreams are not checked")
		}
		return nil
	}
	rt := &targetResolver{ctx: h.ctx, logger: h.logger, timeout: defaultTargetTimeout, allow: allow}
	if tmpl != nil {
		rt.template = strings.TrimSpace(tmpl.Dial)
		h.Upstreams = nil
		h.targets = rt
		return nil
	}
	if err := rt.provision(h); err != nil {
		rt.close()
		return err
	}
	h.targets = rt
	return nil
}

// provision checks and compiles the targets block; its errors name the
// setting, never a token.
func (rt *targetResolver) provision(h *Handler) error {
	c := h.Targets
	if c.Timeout < 0 {
		return settingError("targets.timeout", "", "must not be negative")
	}
	if c.CacheTTL != nil && *c.CacheTTL < 0 {
		return settingError("targets.cache_ttl", "", "must not be negative")
	}
	if c.Timeout > 0 {
		rt.timeout = time.Duration(c.Timeout)
	}
	rt.query, rt.cookie, rt.path = c.Query, c.Cookie, c.Path
	if rt.query == "" && rt.cookie == "" && rt.path == "" && c.Host == "" {
		rt.query = defaultTargetQuery
	}
	if strings.ContainsAny(rt.query, "&=#?+% \t") {
		return settingError("targets.query", "", "%q is not a plain parameter name", rt.query)
	}
	if rt.cookie != "" && !isToken(rt.cookie) {
		return settingError("targets.cookie", "", "%q is not a valid cookie name", rt.cookie)
	}
	if n, err := strconv.Atoi(rt.path); err == nil {
		if n < 0 {
			return settingError("targets.path", "", "%q: a segment index is 0 or more", rt.path)
		}
		rt.path = "{http.request.uri.path." + rt.path + "}"
	} else if rt.path != "" && !strings.Contains(rt.path, "{") {
		return settingError("targets.path", "", "%q is neither a segment index nor a placeholder such as {http.request.uri.path.1}", rt.path)
	}
	if c.Host != "" && !isHostCarrier(c.Host) {
		return settingError("targets.host", "", "%q is neither full nor label", c.Host)
	}
	rt.host = c.Host
	if rt.query != "" && h.Auth != nil {
		authQuery := h.Auth.TokenQuery
		if authQuery == "" {
			authQuery = defaultTokenQuery
		}
		if authQuery == rt.query {
			return settingError("targets.query", "", "%q is also auth.token_query (the auth block's token_query): give them different names", rt.query)
		}
	}

	if len(c.Map) > 0 {
		rt.table = make(map[string]target, len(c.Map))
		keys := make([]string, 0, len(c.Map))
		for k := range c.Map {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for i, k := range keys {
			if k == "" {
				return settingError("targets.map", "", "an empty token")
			}
			t, err := parseTargetValue(c.Map[k])
			if err != nil {
				// the token is a secret: name the entry by its value
				return settingError("targets.map", "", "entry %d (%q): %v", i+1, c.Map[k], err)
			}
			rt.table[k] = t
		}
	}
	repl := caddy.NewReplacer()
	if c.File != "" {
		fs, err := newFileSource(repl.ReplaceKnown(c.File, ""), rt.logger)
		if err != nil {
			return settingError("targets.file", "", "%v", err)
		}
		rt.file = fs
	}
	if c.HTTP != "" {
		src, err := newHTTPSource(repl.ReplaceKnown(c.HTTP, ""), rt.timeout)
		if err != nil {
			return settingError("targets.http", "", "%v", err)
		}
		rt.remote = append(rt.remote, src)
	}
	if c.Redis != nil {
		src, err := newRedisSource(repl.ReplaceKnown(c.Redis.URL, ""), c.Redis.Prefix, rt.timeout)
		if err != nil {
			return settingError("targets.redis.url", "targets > redis", "%v", err)
		}
		if c.Redis.Prefix == "" {
			h.logger.Warn(redisNoPrefixWarning)
		}
		rt.remote = append(rt.remote, src)
	}
	if rt.table == nil && rt.file == nil && len(rt.remote) == 0 {
		return settingError("targets", "", "configure at least one source: map, file, http or redis")
	}
	ttl := defaultTargetCacheTTL
	if c.CacheTTL != nil {
		ttl = time.Duration(*c.CacheTTL)
	}
	if ttl > 0 && len(rt.remote) > 0 {
		rt.cache = newTargetCache(ttl)
	}
	if len(rt.remote) > 0 && rt.allow == nil {
		h.logger.Warn("targets: http or redis lookups without allow_targets: whoever can write that token table " +
			"can make this server connect anywhere it can reach; set allow_targets to limit where")
	}
	return nil
}

// isHostCarrier reports whether s is a way to take the token from the
// Host header.
func isHostCarrier(s string) bool { return s == "full" || s == "label" }

// close releases the sources' connections.
func (rt *targetResolver) close() {
	for _, s := range rt.remote {
		s.close()
	}
}

// cleanupTargets runs from Cleanup.
func (h *Handler) cleanupTargets() {
	if h.targets != nil {
		h.targets.close()
	}
}

// resolveTarget picks the upstream a client's token names (docs/targets.md,
// dynamic targets), or expands a `to` with placeholders, and checks it
// against allow_targets. It returns nil when the handler has neither: the
// configured upstreams are used. Refusals go through h.rejected with the
// reason "target": 404 no or unknown token, 403 not allowed, 503 lookup
// failed, 502/504 the target's name does not resolve.
func (h *Handler) resolveTarget(r *http.Request) (*Upstream, error) {
	rt := h.targets
	if rt == nil {
		return nil, nil
	}
	var (
		t      target
		source string
	)
	if rt.template != "" {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl == nil {
			repl = caddy.NewReplacer()
		}
		addr := repl.ReplaceAll(rt.template, "")
		var err error
		if t, err = parseTargetAddress(addr); err != nil {
			return nil, h.rejected(r, rejectTarget, http.StatusForbidden,
				fmt.Errorf("target %s: %w: %v", truncate(addr, 200), errNotAllowed, err))
		}
		source = "to"
	} else {
		tok := rt.token(r)
		if tok == "" {
			return nil, h.rejected(r, rejectTarget, http.StatusNotFound, errNoToken)
		}
		var err error
		t, source, err = rt.lookup(r.Context(), tok)
		switch {
		case errors.Is(err, errUnknownToken):
			return nil, h.rejected(r, rejectTarget, http.StatusNotFound, errUnknownToken)
		case err != nil:
			return nil, h.rejected(r, rejectTarget, http.StatusServiceUnavailable, fmt.Errorf("target lookup: %w", err))
		}
	}
	u, err := rt.check(r.Context(), t)
	if err != nil {
		var re *errResolve
		switch {
		case errors.As(err, &re) && isTimeout(err):
			return nil, h.rejected(r, rejectTarget, http.StatusGatewayTimeout, err)
		case errors.As(err, &re):
			return nil, h.rejected(r, rejectTarget, http.StatusBadGateway, err)
		default:
			return nil, h.rejected(r, rejectTarget, http.StatusForbidden, fmt.Errorf("target %w", err))
		}
	}
	if c := h.logger.Check(zapcore.DebugLevel, "target resolved"); c != nil {
		c.Write(zap.String("source", source), zap.String("target", u.Dial),
			zap.String("address", u.network+"/"+u.address), zap.String("remote_ip", clientIP(r)))
	}
	return u, nil
}

// check applies allow_targets and returns the upstream to dial: with an
// allowlist, the address that was checked (an IP, never the name again).
func (rt *targetResolver) check(ctx context.Context, t target) (*Upstream, error) {
	dial := t.String()
	serverName := ""
	if rt.allow != nil {
		if t.unix {
			if err := rt.allow.checkSocket(t.path); err != nil {
				return nil, err
			}
		} else {
			ctx, cancel := context.WithTimeout(ctx, rt.timeout)
			defer cancel()
			ip, err := rt.allow.checkHost(ctx, t.host, t.port)
			if err != nil {
				return nil, err
			}
			checked := t
			checked.host = ip.String()
			dial = checked.String()
			if _, err := netip.ParseAddr(t.host); err != nil {
				serverName = t.host
			}
		}
	}
	u := &Upstream{Dial: dial}
	if err := u.parse(); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", t, errNotAllowed, err)
	}
	u.Dial = t.String()
	u.serverName = serverName
	return u, nil
}

// token takes the request's token from the carriers, in the order query,
// cookie, path, host; the first one present wins. The query parameter is
// removed from the request's URI whether it won or not.
func (rt *targetResolver) token(r *http.Request) string {
	var tok string
	if rt.query != "" {
		if vals := stripQueryParam(r, rt.query); len(vals) > 0 {
			tok = vals[0]
		}
	}
	if tok == "" && rt.cookie != "" {
		if c, err := r.Cookie(rt.cookie); err == nil {
			tok = c.Value
		}
	}
	if tok == "" && rt.path != "" {
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			tok = repl.ReplaceAll(rt.path, "")
		}
	}
	if tok == "" && rt.host != "" {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.TrimSuffix(strings.ToLower(host), ".")
		if rt.host == "label" {
			host, _, _ = strings.Cut(host, ".")
		}
		tok = host
	}
	return strings.TrimSpace(tok)
}

// stripQueryParam removes the parameter from the request's URL and
// RequestURI (as extractCredentials does for the auth token) and returns
// its values.
func stripQueryParam(r *http.Request, name string) []string {
	var values []string
	r.URL.RawQuery, values = removeQueryParam(r.URL.RawQuery, name)
	if p, query, ok := strings.Cut(r.RequestURI, "?"); ok {
		query, _ = removeQueryParam(query, name)
		if query == "" {
			r.RequestURI = p
		} else {
			r.RequestURI = p + "?" + query
		}
	}
	return values
}

// lookup finds the token's target in the sources, in order.
func (rt *targetResolver) lookup(ctx context.Context, tok string) (target, string, error) {
	if len(tok) > maxTargetTokenLen || strings.ContainsFunc(tok, isCtl) {
		// not a token any table holds: unknown, without a lookup
		return target{}, "", errUnknownToken
	}
	if t, ok := rt.table[tok]; ok {
		return t, "map", nil
	}
	if rt.file != nil {
		if t, ok := rt.file.lookup(tok); ok {
			return t, "file", nil
		}
	}
	if len(rt.remote) == 0 {
		return target{}, "", errUnknownToken
	}
	if e, ok := rt.cache.get(tok); ok {
		return e.t, e.source + " (cached)", nil
	}
	// Concurrent lookups of one token share one request; each client
	// waits for it at most until its own request ends. The lookup runs
	// on the handler's context, so a client that leaves does not fail
	// the others.
	ch := rt.group.DoChan(tok, func() (e any, err error) {
		// singleflight re-panics in a goroutine of its own, where nothing
		// would recover: a panic must end here, as a failed lookup
		defer func() {
			if v := recover(); v != nil {
				rt.logger.Error("panic in a target lookup", zap.Any("panic", v), zap.Stack("stack"))
				e, err = nil, fmt.Errorf("internal error in the lookup")
			}
		}()
		return rt.lookupRemote(tok)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return target{}, "", res.Err
		}
		e := res.Val.(cacheEntry)
		return e.t, e.source, nil
	case <-ctx.Done():
		return target{}, "", ctx.Err()
	}
}

// lookupRemote asks the remote sources in order, each within the
// timeout, and caches what is found.
func (rt *targetResolver) lookupRemote(tok string) (cacheEntry, error) {
	for _, src := range rt.remote {
		ctx, cancel := context.WithTimeout(rt.ctx, rt.timeout)
		t, err := src.get(ctx, tok)
		cancel()
		if errors.Is(err, errUnknownToken) {
			continue
		}
		if err != nil {
			rt.logger.Warn("target lookup failed", zap.String("source", src.name()), zap.Error(err))
			return cacheEntry{}, fmt.Errorf("%s: %w", src.name(), err)
		}
		e := cacheEntry{t: t, source: src.name()}
		rt.cache.put(tok, e)
		return e, nil
	}
	return cacheEntry{}, errUnknownToken
}

// targetCache remembers what the remote sources answered, for the TTL.
type targetCache struct {
	ttl time.Duration
	now func() time.Time

	mu sync.Mutex
	m  map[string]cacheEntry
}

type cacheEntry struct {
	t       target
	source  string
	expires time.Time
}

// maxCachedTargets bounds the cache's memory: beyond it, expired entries
// are dropped, then arbitrary ones.
const maxCachedTargets = 10000

func newTargetCache(ttl time.Duration) *targetCache {
	return &targetCache{ttl: ttl, now: time.Now, m: make(map[string]cacheEntry)}
}

func (c *targetCache) get(tok string) (cacheEntry, bool) {
	if c == nil {
		return cacheEntry{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[tok]
	if !ok {
		return cacheEntry{}, false
	}
	if !c.now().Before(e.expires) {
		delete(c.m, tok)
		return cacheEntry{}, false
	}
	return e, true
}

func (c *targetCache) put(tok string, e cacheEntry) {
	if c == nil {
		return
	}
	now := c.now()
	e.expires = now.Add(c.ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxCachedTargets {
		for k, old := range c.m {
			if !now.Before(old.expires) {
				delete(c.m, k)
			}
		}
		for k := range c.m {
			if len(c.m) < maxCachedTargets*9/10 {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[tok] = e
}

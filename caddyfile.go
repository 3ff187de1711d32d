package wstotcp

// Where a setting is checked, so that each rule is written once:
//
//   - UnmarshalCaddyfile (this file, and targets_caddyfile.go for the
//     targets block) checks the Caddyfile's own syntax: subdirective names,
//     how many arguments and blocks each takes, subdirectives given twice,
//     keywords (binary|text, v1|v2, the lb_policy names, full|label: the
//     same lists Provision holds JSON values to), and that an argument is
//     written as its kind (a duration, a size, a rate, a whole number).
//     A 0 that the JSON would drop, and so read as the default, is refused:
//     counts, and the heartbeat and health durations, are positive; leave
//     the subdirective out for the default. Its errors name the
//     subdirective and the Caddyfile line (d.Errf).
//   - Provision checks what the values mean, once, however they were
//     written: ranges and signs, settings that need or exclude each other,
//     patterns, escapes, names, files and keys. Its errors, made by
//     settingError (module.go), name the JSON field path and, where the
//     Caddyfile spells it differently, the subdirective:
//     `load_balancing.selection_policy (lb_policy): unknown policy "foo"`.
//   - There is no Validate: nothing is left to check after Provision.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	x := new(Handler)
	err := x.UnmarshalCaddyfile(h.Dispenser)
	return x, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	ws_to_tcp [<matcher>] [<upstream...>] {
//		to <upstream...>
//		dial_timeout <duration>
//		lb_policy random|round_robin|least_conn|first|ip_hash|user_hash
//		lb_retries <n>
//		max_connections_per_upstream <n>
//		health_interval <duration>
//		health_timeout <duration>
//		health_send <bytes>
//		health_expect <bytes>
//		health_fails <n>
//		health_passes <n>
//		fail_duration <duration>
//		max_fails <n>
//		proxy_protocol v1|v2
//		preamble <template>
//		upstream_tls {
//			ca <pem file>
//			server_name <name>
//			insecure_skip_verify
//		}
//		subprotocols <name...>
//		message_type binary|text
//		max_message_size <size>
//		validate_utf8
//		buffer_size <size>
//		write_timeout <duration>
//		reload_close_after <duration>
//		heartbeat <interval> [<timeout>]
//		heartbeat_payload text <string>
//		idle_timeout <duration>
//		throttle <rate> | throttle {
//			read <rate>
//			write <rate>
//			burst <size>
//		}
//		channel <template>
//		origins <pattern...>
//		allowed_hosts <name...>
//		auth {
//			basic {
//				<user> <bcrypt hash>
//			}
//			bearer <token...>
//			jwt {
//				secret <key> | public_key <pem file> | jwks_file <file>
//				issuer <iss>
//				audience <aud>
//				leeway <duration>
//			}
//			realm <realm>
//			token_query <name>|off
//			token_cookie <name>|off
//		}
//		max_connections <n>
//		max_connections_per_ip <n>
//		max_connections_per_user <n>
//		test_page
//		targets {
//			query [<name>]
//			cookie <name>
//			path <segment index>|<placeholder>
//			host [full|label]
//			map {
//				<token> <target>
//			}
//			file <path>
//			http <url>
//			redis <url> [<prefix>]
//			cache_ttl <duration>
//			timeout <duration>
//		}
//		allow_targets <cidr|ip|host glob>[:<port>|<lo-hi>]... | unix/<path glob>...
//		cluster <redis-url> [<prefix>]
//		cluster_fail open|closed
//		cluster_name <instance id>
//		cluster_lease <duration>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name; httpcaddyfile removed the matcher
	for d.NextArg() {
		h.Upstreams = append(h.Upstreams, &Upstream{Dial: d.Val()})
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] && sub != "to" {
			return d.Errf("%s: already specified", sub)
		}
		seen[sub] = true
		if err := h.parseSubdirective(d, sub); err != nil {
			return err
		}
	}
	return nil
}

// parseSubdirective reads one subdirective of the ws_to_tcp block.
func (h *Handler) parseSubdirective(d *caddyfile.Dispenser, sub string) error {
	switch sub {
	case "to":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.Errf("to: at least one upstream address is required")
		}
		for _, a := range args {
			h.Upstreams = append(h.Upstreams, &Upstream{Dial: a})
		}
	case "dial_timeout":
		return parseDuration(d, &h.DialTimeout)
	case "write_timeout":
		return parseDuration(d, &h.WriteTimeout)
	case "reload_close_after":
		return parseDuration(d, &h.ReloadCloseAfter)
	case "idle_timeout":
		return parseDuration(d, &h.IdleTimeout)
	case "heartbeat":
		return h.parseHeartbeat(d)
	case "heartbeat_payload":
		args := d.RemainingArgs()
		if len(args) != 2 || args[0] != "text" {
			return d.Errf("heartbeat_payload: expected: heartbeat_payload text <string>")
		}
		if args[1] == "" {
			return d.Errf("heartbeat_payload: the text must not be empty")
		}
		h.HeartbeatText = args[1]
	case "throttle":
		return h.parseThrottle(d)
	case "channel":
		if !d.AllArgs(&h.Channel) {
			return d.Errf("channel: expected one template, e.g. {http.request.uri.query.room}")
		}
		if h.Channel == "" {
			return d.Errf("channel: the template must not be empty")
		}
	case "upstream_tls":
		return h.parseUpstreamTLS(d)
	case "subprotocols":
		h.Subprotocols = d.RemainingArgs()
		if len(h.Subprotocols) == 0 {
			return d.Errf("subprotocols: at least one name is required")
		}
	case "message_type":
		var v string
		if !d.AllArgs(&v) {
			return d.Errf("message_type: expected binary or text")
		}
		if !isMessageType(v) {
			return d.Errf("message_type: %q is neither binary nor text", v)
		}
		h.MessageType = v
	case "max_message_size":
		n, err := parseSize(d)
		if err != nil {
			return err
		}
		h.MaxMessageSize = n
	case "buffer_size":
		n, err := parseSize(d)
		if err != nil {
			return err
		}
		if n == 0 || n > math.MaxInt {
			return d.Errf("buffer_size: %s is outside %d B to %d MiB", d.Val(), minBufferSize, maxBufferSize>>20)
		}
		h.BufferSize = int(n)
	case "validate_utf8":
		return parseFlag(d, &h.ValidateUTF8)
	case "test_page":
		return parseFlag(d, &h.TestPage)
	case "origins":
		h.Origins = d.RemainingArgs()
		if len(h.Origins) == 0 {
			return d.Errf("origins: at least one pattern is required")
		}
	case "allowed_hosts":
		h.AllowedHosts = d.RemainingArgs()
		if len(h.AllowedHosts) == 0 {
			return d.Errf("allowed_hosts: at least one host name is required")
		}
	case "auth":
		return h.parseAuth(d)
	case "max_connections":
		return parseCount(d, &h.MaxConnections)
	case "max_connections_per_ip":
		return parseCount(d, &h.MaxConnectionsPerIP)
	case "max_connections_per_user":
		return parseCount(d, &h.MaxConnectionsPerUser)
	case "max_connections_per_upstream":
		return parseCount(d, &h.MaxConnectionsPerUpstream)
	case "lb_policy", "lb_retries":
		return h.parseLoadBalancing(d, sub)
	case "health_interval", "health_timeout", "health_send", "health_expect", "health_fails", "health_passes",
		"fail_duration", "max_fails":
		return h.parseHealth(d, sub)
	case "proxy_protocol":
		var v string
		if !d.AllArgs(&v) || !isProxyVersion(v) {
			return d.Errf("proxy_protocol: expected v1 or v2")
		}
		h.ProxyProtocol = v
	case "preamble":
		return parseBytes(d, &h.Preamble)
	case "targets":
		return h.parseTargets(d) // targets_caddyfile.go
	case "allow_targets":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.Errf("allow_targets: at least one pattern is required")
		}
		h.AllowTargets = append(h.AllowTargets, args...)
	case "cluster", "cluster_fail", "cluster_name", "cluster_lease":
		return h.parseCluster(d, sub) // cluster.go's settings
	default:
		return d.Errf("unrecognized ws_to_tcp subdirective %q", sub)
	}
	return nil
}

func (h *Handler) parseUpstreamTLS(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.Errf("upstream_tls: takes a block, not arguments")
	}
	h.UpstreamTLS = new(UpstreamTLS)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch sub := d.Val(); sub {
		case "ca":
			if !d.AllArgs(&h.UpstreamTLS.CA) {
				return d.Errf("upstream_tls: ca: expected one PEM file")
			}
		case "server_name":
			if !d.AllArgs(&h.UpstreamTLS.ServerName) {
				return d.Errf("upstream_tls: server_name: expected one name")
			}
		case "insecure_skip_verify":
			if d.NextArg() {
				return d.Errf("upstream_tls: insecure_skip_verify: takes no arguments")
			}
			h.UpstreamTLS.InsecureSkipVerify = true
		default:
			return d.Errf("upstream_tls: unrecognized subdirective %q", sub)
		}
	}
	return nil
}

func (h *Handler) parseHeartbeat(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return d.Errf("heartbeat: expected heartbeat <interval> [<timeout>]")
	}
	for i, a := range args {
		dur, err := caddy.ParseDuration(a)
		if err != nil || dur <= 0 {
			return d.Errf("heartbeat: %q is not a positive duration", a)
		}
		if i == 0 {
			h.HeartbeatInterval = caddy.Duration(dur)
		} else {
			h.HeartbeatTimeout = caddy.Duration(dur)
		}
	}
	return nil
}

// parseThrottle reads `throttle <rate>` (both ways) or the block form.
func (h *Handler) parseThrottle(d *caddyfile.Dispenser) error {
	h.Throttle = new(Throttle)
	args := d.RemainingArgs()
	if len(args) > 1 {
		return d.Errf("throttle: expected one rate, or a block")
	}
	if len(args) == 1 {
		r, err := parseRate(args[0])
		if err != nil {
			return d.Errf("throttle: %v", err)
		}
		h.Throttle.Read, h.Throttle.Write = r, r
		if d.NextBlock(d.Nesting()) {
			return d.Errf("throttle: takes a rate or a block, not both")
		}
		return nil
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		var v string
		if !d.AllArgs(&v) {
			return d.Errf("throttle: %s: expected one value", sub)
		}
		switch sub {
		case "read", "write":
			r, err := parseRate(v)
			if err != nil {
				return d.Errf("throttle: %s: %v", sub, err)
			}
			if sub == "read" {
				h.Throttle.Read = r
			} else {
				h.Throttle.Write = r
			}
		case "burst":
			n, err := humanize.ParseBytes(v)
			if err != nil || n == 0 || n > math.MaxInt64 {
				return d.Errf("throttle: burst: invalid size %q", v)
			}
			h.Throttle.Burst = int64(n)
		default:
			return d.Errf("throttle: unrecognized subdirective %q", sub)
		}
	}
	return nil
}

// parseRate reads a bandwidth: bits per second with bps, kbps, Mbps or Gbps
// (powers of 1000), or bytes per second with B/s, KB/s, MB/s, GB/s (powers
// of 1000) or KiB/s, MiB/s, GiB/s (powers of 1024). It returns bytes per
// second, the unit of the JSON.
func parseRate(s string) (int64, error) {
	units := []struct {
		suffix string
		bytes  float64 // bytes per second per unit
	}{
		{"kbps", 1e3 / 8}, {"mbps", 1e6 / 8}, {"gbps", 1e9 / 8}, {"bps", 1.0 / 8},
		{"kib/s", 1 << 10}, {"mib/s", 1 << 20}, {"gib/s", 1 << 30},
		{"kb/s", 1e3}, {"mb/s", 1e6}, {"gb/s", 1e9}, {"b/s", 1},
	}
	lower := strings.ToLower(strings.TrimSpace(s))
	for _, u := range units {
		num, ok := strings.CutSuffix(lower, u.suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			return 0, fmt.Errorf("invalid rate %q: want a positive number before %s", s, u.suffix)
		}
		b := v * u.bytes
		if b < 1 || b > math.MaxInt64/2 {
			return 0, fmt.Errorf("rate %q is out of range", s)
		}
		return int64(b), nil
	}
	return 0, fmt.Errorf("invalid rate %q: use bits per second (512kbps, 10Mbps, 1Gbps) or bytes per second (64KiB/s, 2MiB/s)", s)
}

// parseLoadBalancing reads lb_policy and lb_retries.
func (h *Handler) parseLoadBalancing(d *caddyfile.Dispenser, sub string) error {
	if h.LoadBalancing == nil {
		h.LoadBalancing = new(LoadBalancing)
	}
	var s string
	if sub == "lb_policy" {
		if !d.AllArgs(&s) {
			return d.Errf("lb_policy: expected one of %s", strings.Join(policies, ", "))
		}
		if !isPolicy(s) {
			return d.Errf("lb_policy: unknown policy %q; expected one of %s", s, strings.Join(policies, ", "))
		}
		h.LoadBalancing.SelectionPolicy = s
		return nil
	}
	if !d.AllArgs(&s) {
		return d.Errf("lb_retries: expected one number")
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return d.Errf("lb_retries: %q is not a whole number", s)
	}
	h.LoadBalancing.Retries = n
	return nil
}

// parseHealth reads the subdirectives of the active (health_*) and
// passive (fail_duration, max_fails) health checks.
func (h *Handler) parseHealth(d *caddyfile.Dispenser, sub string) error {
	if h.HealthChecks == nil {
		h.HealthChecks = new(HealthChecks)
	}
	hc := h.HealthChecks
	if strings.HasPrefix(sub, "health_") {
		if hc.Active == nil {
			hc.Active = new(ActiveHealthChecks)
		}
	} else if hc.Passive == nil {
		hc.Passive = new(PassiveHealthChecks)
	}
	switch sub {
	case "health_interval":
		return parsePositiveDuration(d, &hc.Active.Interval)
	case "health_timeout":
		return parsePositiveDuration(d, &hc.Active.Timeout)
	case "health_send":
		return parseBytes(d, &hc.Active.Send)
	case "health_expect":
		return parseBytes(d, &hc.Active.Expect)
	case "health_fails":
		return parseCount(d, &hc.Active.Fails)
	case "health_passes":
		return parseCount(d, &hc.Active.Passes)
	case "fail_duration":
		return parsePositiveDuration(d, &hc.Passive.FailDuration)
	default: // max_fails
		return parseCount(d, &hc.Passive.MaxFails)
	}
}

// parseBytes reads the one argument of health_send, health_expect and
// preamble; its escapes are Provision's to check.
func parseBytes(d *caddyfile.Dispenser, dst *string) error {
	sub := d.Val()
	if !d.AllArgs(dst) || *dst == "" {
		return d.Errf("%s: expected one non-empty argument (quote it if it has spaces)", sub)
	}
	return nil
}

// parseDuration reads the one duration argument of the current
// subdirective.
func parseDuration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	sub := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.Errf("%s: expected one duration", sub)
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("%s: invalid duration %q: %v", sub, s, err)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// parsePositiveDuration reads a duration for which 0 would mean the
// default in the JSON.
func parsePositiveDuration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	sub := d.Val()
	if err := parseDuration(d, dst); err != nil {
		return err
	}
	if *dst <= 0 {
		return d.Errf("%s: %q: must be more than 0 (leave %s out for the default)", sub, d.Val(), sub)
	}
	return nil
}

// parseSize reads the one size argument of the current subdirective:
// bytes, or with a unit such as 64KiB or 1MB.
func parseSize(d *caddyfile.Dispenser) (int64, error) {
	sub := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return 0, d.Errf("%s: expected one size", sub)
	}
	n, err := humanize.ParseBytes(strings.TrimSpace(s))
	if err != nil {
		return 0, d.Errf("%s: invalid size %q: %v", sub, s, err)
	}
	if n > math.MaxInt64 {
		return 0, d.Errf("%s: size %q is too large", sub, s)
	}
	return int64(n), nil
}

// parseCount reads the one positive integer argument of the current
// subdirective.
func parseCount(d *caddyfile.Dispenser, dst *int) error {
	sub := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.Errf("%s: expected one number", sub)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return d.Errf("%s: %q is not a positive whole number", sub, s)
	}
	*dst = n
	return nil
}

// parseFlag reads a subdirective that takes no arguments and turns a
// setting on.
func parseFlag(d *caddyfile.Dispenser, dst *bool) error {
	if sub := d.Val(); d.NextArg() {
		return d.Errf("%s: takes no arguments", sub)
	}
	*dst = true
	return nil
}

// parseAuth reads the `auth` block.
func (h *Handler) parseAuth(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.Errf("auth: takes a block, not arguments")
	}
	a := new(Auth)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] && sub != "bearer" {
			return d.Errf("auth: %s: already specified", sub)
		}
		seen[sub] = true
		switch sub {
		case "basic":
			if d.NextArg() {
				return d.Errf("auth: basic: takes a block of <user> <bcrypt hash> lines")
			}
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				user := d.Val()
				var hash string
				if !d.AllArgs(&hash) {
					return d.Errf("auth: basic: expected <user> <bcrypt hash>")
				}
				a.Basic = append(a.Basic, BasicAccount{Username: user, Password: hash})
			}
			if len(a.Basic) == 0 {
				return d.Errf("auth: basic: at least one <user> <bcrypt hash> line is required")
			}
		case "bearer":
			toks := d.RemainingArgs()
			if len(toks) == 0 {
				return d.Errf("auth: bearer: at least one token is required")
			}
			for _, tok := range toks {
				h, err := bearerEntry(tok)
				if err != nil {
					return d.Errf("auth: bearer: %v", err)
				}
				a.Bearer = append(a.Bearer, h)
			}
		case "jwt":
			if err := parseJWT(d, a); err != nil {
				return err
			}
		case "realm":
			if !d.AllArgs(&a.Realm) || a.Realm == "" {
				return d.Errf("auth: realm: expected one name")
			}
		case "token_query":
			if !d.AllArgs(&a.TokenQuery) || a.TokenQuery == "" {
				return d.Errf("auth: token_query: expected a parameter name, or off")
			}
		case "token_cookie":
			if !d.AllArgs(&a.TokenCookie) || a.TokenCookie == "" {
				return d.Errf("auth: token_cookie: expected a cookie name, or off")
			}
		default:
			return d.Errf("auth: unrecognized subdirective %q", sub)
		}
	}
	h.Auth = a
	return nil
}

// bearerEntry is the JSON form of a `bearer` token of the Caddyfile: a
// literal token becomes its sha256: form, so that neither the adapted JSON
// nor Caddy's dumps of it (admin API, DEBUG log) hold the token; a
// placeholder stays, to be expanded when the config loads, as does an
// entry already in sha256: form.
func bearerEntry(tok string) (string, error) {
	switch {
	case tok == "":
		return "", fmt.Errorf("empty token")
	case hasPlaceholder(tok), strings.HasPrefix(tok, bearerHashPrefix):
		return tok, nil
	case len(tok) > maxTokenLen:
		return "", fmt.Errorf("a token is longer than %d bytes", maxTokenLen)
	}
	sum := sha256.Sum256([]byte(tok))
	return bearerHashPrefix + hex.EncodeToString(sum[:]), nil
}

// parseJWT reads the `jwt` block of `auth`.
func parseJWT(d *caddyfile.Dispenser, a *Auth) error {
	if d.NextArg() {
		return d.Errf("auth: jwt: takes a block, not arguments")
	}
	j := new(JWTAuth)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] {
			return d.Errf("auth: jwt: %s: already specified", sub)
		}
		seen[sub] = true
		var dst *string
		switch sub {
		case "secret":
			dst = &j.Secret
		case "public_key":
			dst = &j.PublicKey
		case "jwks_file":
			dst = &j.JWKSFile
		case "issuer":
			dst = &j.Issuer
		case "audience":
			dst = &j.Audience
		case "leeway":
			var s string
			if !d.AllArgs(&s) {
				return d.Errf("auth: jwt: leeway: expected one duration")
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil {
				return d.Errf("auth: jwt: leeway: invalid duration %q", s)
			}
			j.Leeway = caddy.Duration(dur)
			continue
		default:
			return d.Errf("auth: jwt: unrecognized subdirective %q", sub)
		}
		if !d.AllArgs(dst) || *dst == "" {
			return d.Errf("auth: jwt: %s: expected one value", sub)
		}
	}
	a.JWT = j
	return nil
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)

// parseCluster reads the cluster subdirectives. They are subdirectives of
// the handler, not a global option, because what they share is the
// handler's: its limits, its tunnels and its upstreams (README, Cluster).
func (h *Handler) parseCluster(d *caddyfile.Dispenser, sub string) error {
	if h.Cluster == nil {
		h.Cluster = new(Cluster)
	}
	c := h.Cluster
	switch sub {
	case "cluster":
		args := d.RemainingArgs()
		if len(args) < 1 || len(args) > 2 {
			return d.Errf("cluster: expected <redis-url> [<prefix>]")
		}
		c.Redis = args[0]
		if len(args) == 2 {
			c.Prefix = args[1]
		}
	case "cluster_fail":
		var v string
		if !d.AllArgs(&v) || v != "open" && v != "closed" {
			return d.Errf("cluster_fail: expected open or closed")
		}
		c.Fail = v
	case "cluster_name":
		if !d.AllArgs(&c.Name) {
			return d.Errf("cluster_name: expected one name")
		}
	case "cluster_lease":
		return parsePositiveDuration(d, &c.Lease)
	}
	return nil
}

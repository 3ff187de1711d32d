package wstotcp

import (
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
		var err error
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
			err = parseDuration(d, &h.DialTimeout)
		case "write_timeout":
			err = parseDuration(d, &h.WriteTimeout)
		case "reload_close_after":
			err = parseDuration(d, &h.ReloadCloseAfter)
		case "idle_timeout":
			err = parseDuration(d, &h.IdleTimeout)
		case "heartbeat":
			err = h.parseHeartbeat(d)
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
			err = h.parseThrottle(d)
		case "channel":
			if !d.AllArgs(&h.Channel) {
				return d.Errf("channel: expected one template, e.g. {http.request.uri.query.room}")
			}
			if h.Channel == "" {
				return d.Errf("channel: the template must not be empty")
			}
		case "upstream_tls":
			err = h.parseUpstreamTLS(d)
		case "subprotocols":
			h.Subprotocols = d.RemainingArgs()
			if len(h.Subprotocols) == 0 {
				return d.Errf("subprotocols: at least one name is required")
			}
			for _, p := range h.Subprotocols {
				if !isToken(p) {
					return d.Errf("subprotocols: %q is not a valid protocol name", p)
				}
			}
		case "message_type":
			var v string
			if !d.AllArgs(&v) {
				return d.Errf("message_type: expected binary or text")
			}
			if v != "binary" && v != "text" {
				return d.Errf("message_type: %q is neither binary nor text", v)
			}
			h.MessageType = v
		case "max_message_size":
			var n int64
			n, err = parseSize(d)
			h.MaxMessageSize = n
		case "buffer_size":
			var n int64
			n, err = parseSize(d)
			if err == nil && (n < minBufferSize || n > maxBufferSize) {
				return d.Errf("buffer_size: %s is outside 512 B to 16 MiB", d.Val())
			}
			h.BufferSize = int(n)
		case "validate_utf8":
			if d.NextArg() {
				return d.Errf("validate_utf8: takes no arguments")
			}
			h.ValidateUTF8 = true
		case "origins":
			err = h.parseOrigins(d)
		case "auth":
			err = h.parseAuth(d)
		case "max_connections":
			err = parseCount(d, &h.MaxConnections)
		case "max_connections_per_ip":
			err = parseCount(d, &h.MaxConnectionsPerIP)
		case "max_connections_per_user":
			err = parseCount(d, &h.MaxConnectionsPerUser)
		case "lb_policy", "lb_retries", "max_connections_per_upstream",
			"health_interval", "health_timeout", "health_send", "health_expect", "health_fails", "health_passes",
			"fail_duration", "max_fails", "proxy_protocol", "preamble":
			err = h.parseBalancerOption(d) // loadbalancer.go
		case "test_page":
			if d.NextArg() {
				return d.Errf("test_page: takes no arguments")
			}
			h.TestPage = true
		case "targets":
			err = h.parseTargets(d)
		case "allow_targets":
			err = h.parseAllowTargets(d)
		default:
			return d.Errf("unrecognized ws_to_tcp subdirective %q", sub)
		}
		if err != nil {
			return err
		}
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
			if err != nil || n == 0 || n > math.MaxInt32 {
				return d.Errf("throttle: burst: invalid size %q", v)
			}
			h.Throttle.Burst = int64(n)
		default:
			return d.Errf("throttle: unrecognized subdirective %q", sub)
		}
	}
	if h.Throttle.Read == 0 && h.Throttle.Write == 0 {
		return d.Errf("throttle: set read, write, or both")
	}
	return nil
}

// parseDuration reads the one duration argument of the current subdirective.
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
	if dur < 0 {
		return d.Errf("%s: duration %q must not be negative", sub, s)
	}
	*dst = caddy.Duration(dur)
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

// parseOrigins reads `origins <pattern...>`, checking the patterns here so
// that an error names the line.
func (h *Handler) parseOrigins(d *caddyfile.Dispenser) error {
	h.Origins = d.RemainingArgs()
	if len(h.Origins) == 0 {
		return d.Errf("origins: at least one pattern is required")
	}
	if _, err := compileOrigins(h.Origins); err != nil {
		return d.Errf("origins: %v", err)
	}
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
				if !isBcryptHash(hash) && !strings.Contains(hash, "{") {
					return d.Errf("auth: basic: user %q: the password must be a bcrypt hash "+
						"($2a$, $2b$ or $2y$, as `caddy hash-password` prints it), not plain text", user)
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
			a.Bearer = append(a.Bearer, toks...)
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
	if len(a.Basic) == 0 && len(a.Bearer) == 0 && a.JWT == nil {
		return d.Errf("auth: configure basic, bearer or jwt")
	}
	h.Auth = a
	return nil
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
			if err != nil || dur < 0 {
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
	n := 0
	for _, s := range []string{j.Secret, j.PublicKey, j.JWKSFile} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return d.Errf("auth: jwt: configure exactly one of secret, public_key and jwks_file")
	}
	a.JWT = j
	return nil
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

var _ caddyfile.Unmarshaler = (*Handler)(nil)

package wstotcp

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// parseTargets reads the `targets` block:
//
//	targets {
//		query [<name>]
//		cookie <name>
//		path <segment index>|<placeholder>
//		host [full|label]
//		map {
//			<token> <target>
//		}
//		file <path>
//		http <url>
//		redis <url> [<prefix>]
//		cache_ttl <duration>
//		timeout <duration>
//	}
func (h *Handler) parseTargets(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.Errf("targets: takes a block, not arguments")
	}
	t := new(Targets)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] {
			return d.Errf("targets: %s: already specified", sub)
		}
		seen[sub] = true
		args := d.RemainingArgs()
		one := func(what string) (string, error) {
			if len(args) != 1 || args[0] == "" {
				return "", d.Errf("targets: %s: expected %s", sub, what)
			}
			return args[0], nil
		}
		var err error
		switch sub {
		case "query":
			switch {
			case len(args) == 0:
				t.Query = defaultTargetQuery
			case len(args) == 1 && args[0] != "":
				t.Query = args[0]
			default:
				return d.Errf("targets: query: expected at most one parameter name")
			}
		case "cookie":
			t.Cookie, err = one("a cookie name")
		case "path":
			t.Path, err = one("a segment index (1 for /vnc/<token>) or a placeholder such as {http.request.uri.path.1}")
		case "host":
			switch {
			case len(args) == 0:
				t.Host = "full"
			case len(args) == 1 && isHostCarrier(args[0]):
				t.Host = args[0]
			default:
				return d.Errf("targets: host: expected nothing, full or label")
			}
		case "map":
			if len(args) > 0 {
				return d.Errf("targets: map: takes a block of <token> <target> lines")
			}
			if t.Map == nil {
				t.Map = map[string]string{}
			}
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				tok := d.Val()
				var v string
				if !d.AllArgs(&v) {
					return d.Errf("targets: map: expected <token> <target>")
				}
				if _, dup := t.Map[tok]; dup {
					// the token is a secret: name the line by its target
					return d.Errf("targets: map: a token is listed twice (target %q)", v)
				}
				t.Map[tok] = v
			}
			if len(t.Map) == 0 {
				return d.Errf("targets: map: at least one <token> <target> line is required")
			}
		case "file":
			t.File, err = one("a file or directory")
		case "http":
			t.HTTP, err = one("a URL, e.g. http://127.0.0.1:8000/lookup?token={token}")
		case "redis":
			if len(args) < 1 || len(args) > 2 || args[0] == "" {
				return d.Errf("targets: redis: expected <url> [<prefix>]")
			}
			t.Redis = &RedisTargets{URL: args[0]}
			if len(args) == 2 {
				t.Redis.Prefix = args[1]
			}
		case "cache_ttl", "timeout":
			var s string
			if s, err = one("a duration"); err != nil {
				return err
			}
			dur, perr := caddy.ParseDuration(s)
			if perr != nil {
				return d.Errf("targets: %s: invalid duration %q", sub, s)
			}
			if sub == "cache_ttl" {
				cd := caddy.Duration(dur)
				t.CacheTTL = &cd
				break
			}
			if dur <= 0 {
				// 0 would be the default in the JSON
				return d.Errf("targets: timeout: %q: must be more than 0 (leave timeout out for the default)", s)
			}
			t.Timeout = caddy.Duration(dur)
		default:
			return d.Errf("targets: unrecognized subdirective %q", sub)
		}
		if err != nil {
			return err
		}
	}
	h.Targets = t
	return nil
}

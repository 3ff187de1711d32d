package wstotcp

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Browsers send cookies and basic-auth credentials with a cross-site
// WebSocket handshake, and the same-origin policy does not apply to
// WebSockets: without an Origin check any web page could drive the tunnel
// as the user (cross-site WebSocket hijacking). The Origin header is the
// one thing a page cannot forge; clients that are not browsers send none.

// A page can also reach a plain-HTTP listener under a name of the
// attacker's (DNS rebinding): its name first resolves to the attacker's
// server, which serves the page, then to this one, which receives
// `Host: rebind.attacker.example` with the same name in the Origin. The
// same-origin rule then says yes. Over TLS the certificate binds the name
// to this server; without it, the Host is trusted only when no attacker
// can own it (README, Admission and authentication), as webpack-dev-server,
// Vite and Caddy's own admin endpoint do.

// originPolicy is the compiled `origins` and `allowed_hosts` settings.
type originPolicy struct {
	any      bool            // `origins *`
	patterns []originPattern // in addition to the default rule
	hosts    []originPattern // allowed_hosts: only host (or hostRe) is set

	// The names of the site addresses above the handler, per server (the
	// same handler may serve through several), learned from the first
	// request each server passes: *caddyhttp.Server -> []originPattern.
	sites sync.Map
}

// originPattern is one compiled pattern: scheme://host[:port], where host
// may hold `*` wildcards and port may be `*`; or the literal `null`.
type originPattern struct {
	raw    string
	null   bool           // matches the Origin "null" (sandboxed frames, file: pages)
	scheme string         // lower case
	host   string         // lower case, without wildcards
	hostRe *regexp.Regexp // when the host has wildcards
	port   string         // "" for the scheme's default port, "*" for any
}

// compileOrigins compiles the `origins` patterns; its errors name the
// pattern at fault. No pattern is the default rule alone.
func compileOrigins(patterns []string) (*originPolicy, error) {
	p := new(originPolicy)
	for _, raw := range patterns {
		if raw == "*" {
			p.any = true
			continue
		}
		op, err := parseOriginPattern(raw)
		if err != nil {
			return nil, err
		}
		p.patterns = append(p.patterns, op)
	}
	if p.any && len(p.patterns) > 0 {
		return nil, fmt.Errorf("%q allows every origin: list no other pattern with it", "*")
	}
	return p, nil
}

// parseOriginPattern parses one pattern. A `*` in the host matches one or
// more characters other than a dot, so `*.example.com` matches
// `a.example.com` but neither `example.com` nor `a.b.example.com` (as in
// Caddy's host matcher); a `*` port matches any port, the default one
// included.
func parseOriginPattern(raw string) (originPattern, error) {
	op := originPattern{raw: raw}
	if strings.EqualFold(raw, "null") {
		op.null = true
		return op, nil
	}
	scheme, host, port, err := splitOrigin(raw, true)
	if err != nil {
		return op, fmt.Errorf("%q: %v", raw, err)
	}
	op.scheme, op.port = scheme, port
	if strings.Contains(host, "*") {
		if strings.HasPrefix(host, "[") {
			return op, fmt.Errorf("%q: no wildcard in an IPv6 address", raw)
		}
		if strings.Contains(host, "**") {
			return op, fmt.Errorf("%q: %q in the host: write one * per label", raw, "**")
		}
		parts := strings.Split(host, "*")
		for i := range parts {
			parts[i] = regexp.QuoteMeta(parts[i])
		}
		op.hostRe = regexp.MustCompile(`^` + strings.Join(parts, `[^.]+`) + `$`)
	} else {
		op.host = host
	}
	return op, nil
}

// splitOrigin splits a serialized origin (or, with pattern, an origin
// pattern) into its lower-cased scheme, host and port. The port of the
// scheme's default is dropped, so "https://a:443" and "https://a" compare
// equal; browsers never send it, but an operator may write it.
func splitOrigin(s string, pattern bool) (scheme, host, port string, err error) {
	i := strings.Index(s, "://")
	if i <= 0 {
		return "", "", "", fmt.Errorf("expected scheme://host[:port]")
	}
	scheme = strings.ToLower(s[:i])
	for k := 0; k < len(scheme); k++ {
		c := scheme[k]
		if !(c >= 'a' && c <= 'z' || k > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return "", "", "", fmt.Errorf("invalid scheme %q", s[:i])
		}
	}
	rest := s[i+3:]
	if rest == "" {
		return "", "", "", fmt.Errorf("missing host")
	}
	if strings.ContainsAny(rest, "/?#@\\ \t") {
		return "", "", "", fmt.Errorf("an origin has no path, query, user or spaces")
	}
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return "", "", "", fmt.Errorf("unclosed [ in the host")
		}
		host, rest = rest[:end+1], rest[end+1:]
		if rest != "" && rest[0] != ':' {
			return "", "", "", fmt.Errorf("unexpected %q after the IPv6 address", rest)
		}
		if len(host) < 3 || strings.Trim(strings.ToLower(host[1:len(host)-1]), "0123456789abcdef:.%") != "" {
			return "", "", "", fmt.Errorf("invalid IPv6 address %q", host)
		}
	} else {
		host = rest
		if k := strings.LastIndexByte(rest, ':'); k >= 0 {
			host, rest = rest[:k], rest[k:]
		} else {
			rest = ""
		}
		if host == "" {
			return "", "", "", fmt.Errorf("missing host")
		}
		for k := 0; k < len(host); k++ {
			c := host[k]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
				c == '-' || c == '.' || c == '_' || pattern && c == '*') {
				return "", "", "", fmt.Errorf("invalid character %q in the host", c)
			}
		}
	}
	host = strings.ToLower(host)
	if rest != "" { // ":port"
		port = rest[1:]
		switch {
		case pattern && port == "*":
		case port == "" || len(port) > 5 || strings.Trim(port, "0123456789") != "":
			return "", "", "", fmt.Errorf("invalid port %q", port)
		}
		if port == defaultPort(scheme) {
			port = ""
		}
	}
	return scheme, host, port, nil
}

// defaultPort is the port a scheme implies when an origin names none.
func defaultPort(scheme string) string {
	switch scheme {
	case "http", "ws":
		return "80"
	case "https", "wss":
		return "443"
	}
	return ""
}

// match reports whether the Origin header value matches the pattern.
func (op *originPattern) match(origin string) bool {
	if op.null {
		return origin == "null"
	}
	scheme, host, port, err := splitOrigin(origin, false)
	if err != nil || scheme != op.scheme {
		return false
	}
	if op.port != "*" && port != op.port {
		return false
	}
	if op.hostRe != nil {
		return !strings.HasPrefix(host, "[") && op.hostRe.MatchString(host)
	}
	return host == op.host
}

// compileAllowedHosts compiles the `allowed_hosts` names: host names,
// where a `*` stands for one or more characters other than a dot, as in
// origins. Its errors name the name at fault.
func compileAllowedHosts(names []string) ([]originPattern, error) {
	var out []originPattern
	for _, name := range names {
		hp, err := parseHostPattern(name)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", name, err)
		}
		out = append(out, hp)
	}
	return out, nil
}

// parseHostPattern parses a host name pattern, without scheme or port.
func parseHostPattern(name string) (originPattern, error) {
	if name == "" || strings.ContainsAny(name, ":/[]") {
		return originPattern{}, errors.New("expected a host name, without scheme, port or path (IP addresses are always trusted)")
	}
	for k := 0; k < len(name); k++ {
		c := name[k]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '*') {
			return originPattern{}, fmt.Errorf("invalid character %q in the host name", c)
		}
	}
	if strings.Contains(name, "**") {
		return originPattern{}, fmt.Errorf("%q in the host name: write one * per label", "**")
	}
	return parseOriginPattern("http://" + name)
}

// matchHost reports whether a lower-case host name (no port) matches the
// pattern's host, whatever its scheme and port.
func (op *originPattern) matchHost(host string) bool {
	switch {
	case op.null:
		return false
	case op.hostRe != nil:
		return op.hostRe.MatchString(host)
	}
	return host == op.host
}

// checkOrigin is the Origin check of admission: nil when the request's
// Origin is acceptable, else why not. See originPolicy.check.
func (h *Handler) checkOrigin(r *http.Request) error {
	return h.origins.check(r, h)
}

// check returns nil when the request's Origin is acceptable: no Origin
// header at all (a client that is not a browser), an origin matching a
// configured pattern, any with `origins *`, or the same origin as the
// request. Over TLS the same origin is an https one; without TLS, a Host
// that an attacker could point at this server (see above) is not trusted
// to be the same origin. self is the handler, to find the site addresses
// above it. A nil policy is the default rule alone.
func (p *originPolicy) check(r *http.Request, self *Handler) error {
	if p == nil {
		p = &originPolicy{}
	}
	if p.any {
		return nil
	}
	values := r.Header.Values("Origin")
	if len(values) == 0 {
		return nil
	}
	if len(values) > 1 {
		return errors.New("more than one Origin header") // a browser sends exactly one
	}
	origin := values[0]
	for i := range p.patterns {
		if p.patterns[i].match(origin) {
			return nil
		}
	}
	overTLS := r.TLS != nil
	if !sameOrigin(origin, r.Host, overTLS) {
		return fmt.Errorf("origin %q not allowed", truncate(origin, 200))
	}
	if overTLS {
		return nil
	}
	host := requestHostName(r.Host)
	if p.trustedHost(host, r, self) {
		return nil
	}
	return fmt.Errorf("origin %q not allowed: the request came over plain HTTP for the name %q, "+
		"which could be anyone's name pointed at this server (DNS rebinding); "+
		"if the name is yours, list it in allowed_hosts (or the origin in origins)",
		truncate(origin, 200), truncate(host, 200))
}

// requestHostName is the Host header's name, lower case, without the port
// or an IPv6 address's brackets.
func requestHostName(hostport string) string {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	return strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
}

// trustedHost reports whether a plain-HTTP request's Host name is one
// that no attacker can point at this server: an IP address, localhost or
// a name under .localhost (which browsers resolve to the loopback
// themselves), a name of the site's address, a name in allowed_hosts, or
// the host of an origins pattern.
func (p *originPolicy) trustedHost(host string, r *http.Request, self *Handler) bool {
	if net.ParseIP(host) != nil || host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	for _, list := range [][]originPattern{p.hosts, p.patterns, p.siteHosts(r, self)} {
		for i := range list {
			if list[i].matchHost(host) {
				return true
			}
		}
	}
	return false
}

// siteHosts returns the host names of the site addresses above the
// handler in the routes of the server that received the request (the host
// matchers on the way to it, as a site address `http://vnc.lan:6080`
// makes one), with the host names of the server's listen addresses.
// Names with placeholders are left out: a placeholder may hold what the
// client sent.
func (p *originPolicy) siteHosts(r *http.Request, self *Handler) []originPattern {
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil {
		return nil
	}
	if v, ok := p.sites.Load(srv); ok {
		return v.([]originPattern)
	}
	names, _ := hostsAbove(srv.Routes, self, nil)
	if srv.Errors != nil {
		if more, ok := hostsAbove(srv.Errors.Routes, self, nil); ok {
			names = append(names, more...)
		}
	}
	for _, l := range srv.Listen {
		if na, err := caddy.ParseNetworkAddress(l); err == nil && na.Host != "" {
			names = append(names, na.Host)
		}
	}
	var out []originPattern
	for _, n := range names {
		if strings.ContainsAny(n, "{}") {
			continue
		}
		if hp, err := parseHostPattern(n); err == nil {
			out = append(out, hp)
		}
	}
	v, _ := p.sites.LoadOrStore(srv, out)
	return v.([]originPattern)
}

// hostsAbove looks for the handler in routes, going into subroutes, and
// returns the names of the host matchers of the routes on the way to it.
func hostsAbove(routes caddyhttp.RouteList, self *Handler, above []string) ([]string, bool) {
	for _, rt := range routes {
		names := above
		for _, set := range rt.MatcherSets {
			for _, m := range set {
				switch mh := m.(type) {
				case caddyhttp.MatchHost:
					names = append(names[:len(names):len(names)], mh...)
				case *caddyhttp.MatchHost:
					names = append(names[:len(names):len(names)], (*mh)...)
				}
			}
		}
		for _, hd := range rt.Handlers {
			if h, ok := hd.(*Handler); ok && h == self {
				return names, true
			}
			if sr, ok := hd.(*caddyhttp.Subroute); ok {
				if found, ok := hostsAbove(sr.Routes, self, names); ok {
					return found, true
				}
			}
		}
	}
	return nil, false
}

// sameOrigin reports whether the origin names the host (and port) the
// request was sent to. A port equal to the origin scheme's default counts
// as no port on either side. Over TLS the origin must be https: a page
// served over plain HTTP under the same name is not the same origin. On a
// plain-HTTP request the scheme is not compared: behind a proxy that ends
// TLS the request does not show it.
func sameOrigin(origin, requestHost string, overTLS bool) bool {
	scheme, host, port, err := splitOrigin(origin, false)
	if err != nil {
		return false
	}
	if overTLS && scheme != "https" {
		return false
	}
	want := host
	if port != "" {
		want += ":" + port
	}
	got := strings.ToLower(requestHost)
	if d := defaultPort(scheme); d != "" {
		got = strings.TrimSuffix(got, ":"+d)
	}
	return got == want
}

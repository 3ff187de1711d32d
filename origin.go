package wstotcp

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
)

// Browsers send cookies and basic-auth credentials with a cross-site
// WebSocket handshake, and the same-origin policy does not apply to
// WebSockets: without an Origin check any web page could drive the tunnel
// as the user (cross-site WebSocket hijacking). The Origin header is the
// one thing a page cannot forge; clients that are not browsers send none.

// originPolicy is the compiled `origins` setting.
type originPolicy struct {
	any      bool            // `origins *`
	patterns []originPattern // in addition to the default rule
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
// pattern at fault.
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

// allowed reports whether the request's Origin is acceptable: no Origin
// header at all (a client that is not a browser), the same origin as the
// request, an origin matching a configured pattern, or any with
// `origins *`. A nil policy is the default rule alone.
func (p *originPolicy) allowed(r *http.Request) bool {
	if p != nil && p.any {
		return true
	}
	values := r.Header.Values("Origin")
	if len(values) == 0 {
		return true
	}
	if len(values) > 1 {
		return false // a browser sends exactly one
	}
	origin := values[0]
	if sameOrigin(origin, r.Host) {
		return true
	}
	if p != nil {
		for i := range p.patterns {
			if p.patterns[i].match(origin) {
				return true
			}
		}
	}
	return false
}

// sameOrigin reports whether the origin names the host (and port) the
// request was sent to. The scheme is not compared: behind a proxy that
// ends TLS the request does not show it. A port equal to the origin
// scheme's default counts as no port on either side.
func sameOrigin(origin, requestHost string) bool {
	scheme, host, port, err := splitOrigin(origin, false)
	if err != nil {
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

package wstotcp

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestOriginPatternMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern string
		yes, no []string
	}{
		{"https://*.example.com",
			[]string{"https://app.example.com", "https://APP.Example.COM", "HTTPS://x-1.example.com", "https://a.example.com:443"},
			[]string{"https://example.com", "https://a.b.example.com", "http://app.example.com", "https://app.example.com:8443",
				"https://app.example.com.evil.net", "https://appexample.com", "https://app.example.co", "null", "",
				"https://app.example.com/", "https://user@app.example.com"}},
		{"http://127.0.0.1:*",
			[]string{"http://127.0.0.1:5173", "http://127.0.0.1", "http://127.0.0.1:80", "http://127.0.0.1:1"},
			[]string{"http://127.0.0.2:5173", "https://127.0.0.1:5173", "http://127.0.0.10:5173", "http://[::1]:5173"}},
		{"https://app-*.example.com:8443",
			[]string{"https://app-1.example.com:8443", "https://app-blue.example.com:8443"},
			[]string{"https://app-.example.com:8443", "https://app-1.example.com", "https://app-a.b.example.com:8443", "https://web-1.example.com:8443"}},
		{"https://example.com",
			[]string{"https://example.com", "https://EXAMPLE.com", "https://example.com:443"},
			[]string{"https://example.com:8443", "http://example.com", "https://www.example.com", "https://example.com."}},
		{"https://example.com:443", // the default port, written out
			[]string{"https://example.com"},
			[]string{"https://example.com:444"}},
		{"http://[::1]:8080",
			[]string{"http://[::1]:8080", "http://[::1]:8080"},
			[]string{"http://[::1]", "http://[::2]:8080"}},
		{"null",
			[]string{"null"},
			[]string{"NULL", "https://null"}},
		{"chrome-extension://abcdef",
			[]string{"chrome-extension://abcdef"},
			[]string{"chrome-extension://abcdeg"}},
	}
	for _, tt := range tests {
		p, err := parseOriginPattern(tt.pattern)
		if err != nil {
			t.Errorf("%q: %v", tt.pattern, err)
			continue
		}
		for _, o := range tt.yes {
			if !p.match(o) {
				t.Errorf("%q does not match %q, want a match", tt.pattern, o)
			}
		}
		for _, o := range tt.no {
			if p.match(o) {
				t.Errorf("%q matches %q, want no match", tt.pattern, o)
			}
		}
	}
}

func TestOriginPatternErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ pattern, want string }{
		{"example.com", "scheme://host"},
		{"*.example.com", "scheme://host"},
		{"https://", "missing host"},
		{"https://example.com/", "no path"},
		{"https://example.com/app", "no path"},
		{"https://example.com?x", "no path"},
		{"https://user@example.com", "no path"},
		{"https://exa mple.com", "no path"},
		{"https://example.com:", "invalid port"},
		{"https://example.com:http", "invalid port"},
		{"https://example.com:123456", "invalid port"},
		{"https://example.com:8*", "invalid port"},
		{"https://ex%61mple.com", "invalid character"},
		{"https://**.example.com", "one * per label"},
		{"https://[::*]:80", "IPv6"},
		{"https://[::1", "unclosed"},
		{"https://[::1]x", "after the IPv6"},
		{"1https://example.com", "invalid scheme"},
		{"://example.com", "scheme://host"},
	} {
		_, err := compileOrigins([]string{tt.pattern})
		if err == nil {
			t.Errorf("%q: compiled, want an error containing %q", tt.pattern, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.pattern) {
			t.Errorf("%q: error %q, want it to contain %q and the pattern", tt.pattern, err, tt.want)
		}
	}
	if _, err := compileOrigins([]string{"*", "https://example.com"}); err == nil {
		t.Error(`"*" with another pattern compiled, want an error`)
	}
}

func TestOriginPolicyAllowed(t *testing.T) {
	t.Parallel()
	// req is a request over TLS unless its Host is an IP address, so that
	// the host names are trusted (see TestSameOriginHostRebinding).
	req := func(host string, origins ...string) *http.Request {
		r, _ := http.NewRequest("GET", "http://"+host+"/", nil)
		r.Host = host
		if net.ParseIP(requestHostName(host)) == nil {
			r.TLS = &tls.ConnectionState{}
		}
		for _, o := range origins {
			r.Header.Add("Origin", o)
		}
		return r
	}
	var def *originPolicy // the default rule
	list, err := compileOrigins([]string{"https://*.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	all, err := compileOrigins([]string{"*"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		p       *originPolicy
		r       *http.Request
		allowed bool
	}{
		{"no Origin", def, req("vnc.example.net"), true},
		{"same origin", def, req("vnc.example.net", "https://vnc.example.net"), true},
		{"same origin, case", def, req("VNC.example.net", "https://vnc.EXAMPLE.net"), true},
		{"same origin with port", def, req("127.0.0.1:6080", "http://127.0.0.1:6080"), true},
		{"same origin, default port in Host", def, req("vnc.example.net:443", "https://vnc.example.net"), true},
		{"same origin, http default port", def, req("127.0.0.1", "http://127.0.0.1:80"), true},
		{"same host, other port", def, req("127.0.0.1:6080", "http://127.0.0.1:6081"), false},
		{"same host, origin port missing", def, req("127.0.0.1:6080", "http://127.0.0.1"), false},
		{"cross site", def, req("vnc.example.net", "https://evil.example"), false},
		{"null", def, req("vnc.example.net", "null"), false},
		{"garbage", def, req("vnc.example.net", "vnc.example.net"), false},
		{"two Origin headers", def, req("vnc.example.net", "https://vnc.example.net", "https://vnc.example.net"), false},
		{"list adds to same origin", list, req("vnc.example.net", "https://vnc.example.net"), true},
		{"list match", list, req("vnc.example.net", "https://app.example.com"), true},
		{"list miss", list, req("vnc.example.net", "https://evil.example"), false},
		{"star", all, req("vnc.example.net", "https://evil.example"), true},
	}
	for _, tt := range tests {
		if got := tt.p.check(tt.r, nil) == nil; got != tt.allowed {
			t.Errorf("%s: allowed = %v, want %v", tt.name, got, tt.allowed)
		}
	}
}

// canonicalOrigin is how an origin compares: lower-case scheme and host,
// without the scheme's default port.
func canonicalOrigin(s string) (string, bool) {
	scheme, host, port, err := splitOrigin(s, false)
	if err != nil {
		return "", false
	}
	if port != "" {
		host += ":" + port
	}
	return scheme + "://" + host, true
}

// FuzzOriginPattern: compiling and matching never panic; a pattern
// without `*` matches itself (whatever the case of its scheme and host)
// and nothing but origins equal to it; a wildcard pattern only matches
// origins of its scheme.
func FuzzOriginPattern(f *testing.F) {
	for _, s := range [][2]string{
		{"https://*.example.com", "https://app.example.com"},
		{"http://127.0.0.1:*", "http://127.0.0.1:5173"},
		{"https://example.com", "https://EXAMPLE.com:443"},
		{"http://[::1]:8080", "http://[::1]:8080"},
		{"null", "null"},
		{"https://app-*.*.example.com:*", "https://app-1.eu.example.com:8443"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, origin string) {
		p, err := parseOriginPattern(pattern)
		if err != nil {
			return
		}
		matched := p.match(origin)
		if strings.Contains(pattern, "*") {
			if matched && !strings.EqualFold(origin[:strings.Index(origin, ":")], pattern[:strings.Index(pattern, ":")]) {
				t.Fatalf("%q matched %q of another scheme", pattern, origin)
			}
			return
		}
		if p.null {
			if matched != (origin == "null") {
				t.Fatalf("null pattern: match(%q) = %v", origin, matched)
			}
			return
		}
		if !p.match(pattern) || !p.match(strings.ToUpper(pattern)) || !p.match(strings.ToLower(pattern)) {
			t.Fatalf("%q does not match itself in every case", pattern)
		}
		if matched {
			co, ok1 := canonicalOrigin(origin)
			cp, ok2 := canonicalOrigin(pattern)
			if !ok1 || !ok2 || co != cp {
				t.Fatalf("%q (canonically %q) matched %q (canonically %q)", pattern, cp, origin, co)
			}
		}
	})
}

// TestSameOriginHostRebinding: over plain HTTP, the same-origin rule
// trusts the Host only when it cannot be an attacker's name pointed at
// this server (DNS rebinding): an IP address, localhost, a name of the
// site's address, or a name allowed by origins or allowed_hosts. Over TLS
// the certificate binds the name, and the Origin must then be https
// unless a pattern says otherwise. Refusals come before any dial.
func TestSameOriginHostRebinding(t *testing.T) {
	up := newDialCounter(t)
	def := provisioned(t, `{"upstreams": [{"dial": "`+up.addr+`"}]}`)
	opts := provisioned(t, `{"upstreams": [{"dial": "`+up.addr+`"}],
		"origins": ["http://vnc.lan:*"], "allowed_hosts": ["vnc.home.arpa", "*.vnc.example"]}`)
	site := provisioned(t, `{"upstreams": [{"dial": "`+up.addr+`"}]}`)
	// site sits in a subroute under a site address's host matcher, as the
	// Caddyfile `http://vnc.site.example:6080, *.desk.example { … }` puts it
	srv := &caddyhttp.Server{Routes: caddyhttp.RouteList{{
		MatcherSets: caddyhttp.MatcherSets{{&caddyhttp.MatchHost{"vnc.site.example", "*.desk.example"}}},
		Handlers: []caddyhttp.MiddlewareHandler{&caddyhttp.Subroute{Routes: caddyhttp.RouteList{
			{Handlers: []caddyhttp.MiddlewareHandler{site}},
		}}},
	}}}
	const attacker = "rebind.attacker.example:6080"
	for _, tt := range []struct {
		name         string
		h            *Handler
		host, origin string
		tls          bool
		want         int
	}{
		{"rebound name", def, attacker, "http://" + attacker, false, 403},
		{"rebound name, no port", def, "rebind.attacker.example", "http://rebind.attacker.example", false, 403},
		{"localhost as a label", def, "localhost.attacker.example:6080", "http://localhost.attacker.example:6080", false, 403},
		{"IP-looking name", def, "127.0.0.1.nip.io:6080", "http://127.0.0.1.nip.io:6080", false, 403},
		{"no Origin: not a browser", def, attacker, "", false, 101},
		{"IPv4", def, "127.0.0.1:6080", "http://127.0.0.1:6080", false, 101},
		{"IPv6", def, "[::1]:6080", "http://[::1]:6080", false, 101},
		{"LAN address", def, "192.168.1.20:6080", "http://192.168.1.20:6080", false, 101},
		{"localhost", def, "localhost:6080", "http://localhost:6080", false, 101},
		{"LOCALHOST", def, "LocalHost:6080", "http://localhost:6080", false, 101},
		{"*.localhost", def, "vnc.localhost:6080", "http://vnc.localhost:6080", false, 101},
		{"https origin behind a TLS-ending proxy", def, "127.0.0.1:6080", "https://127.0.0.1:6080", false, 101},
		{"over TLS, the name is bound", def, "vnc.example.com", "https://vnc.example.com", true, 101},
		{"over TLS, with a port", def, "vnc.example.com:8443", "https://vnc.example.com:8443", true, 101},
		{"over TLS, an http page", def, "victim.example", "http://victim.example", true, 403},
		{"over TLS, an http page on 443", def, "victim.example:443", "http://victim.example:443", true, 403},
		{"name of an origins pattern", opts, "vnc.lan:6080", "http://vnc.lan:6080", false, 101},
		{"origins pattern over TLS says http", opts, "vnc.lan:8443", "http://vnc.lan:8443", true, 101},
		{"allowed_hosts", opts, "vnc.home.arpa:6080", "http://vnc.home.arpa:6080", false, 101},
		{"allowed_hosts, case", opts, "VNC.Home.Arpa:6080", "http://vnc.home.arpa:6080", false, 101},
		{"allowed_hosts wildcard", opts, "pc1.vnc.example", "http://pc1.vnc.example", false, 101},
		{"allowed_hosts wildcard, one label only", opts, "a.pc1.vnc.example", "http://a.pc1.vnc.example", false, 403},
		{"not in allowed_hosts", opts, attacker, "http://" + attacker, false, 403},
		{"the site's name", site, "vnc.site.example:6080", "http://vnc.site.example:6080", false, 101},
		{"the site's wildcard", site, "pc7.desk.example", "http://pc7.desk.example", false, 101},
		{"not the site's name", site, attacker, "http://" + attacker, false, 403},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newHijackRecorder()
			var s *caddyhttp.Server
			if tt.h == site {
				s = srv
			}
			res := serveHandshake(t, tt.h, prepareHandshake(tt.host, tt.origin, tt.tls, s, w), w)
			dials := up.dials(t)
			if res.status != tt.want {
				t.Fatalf("Host %q, Origin %q, TLS %v: status %d (%v), want %d", tt.host, tt.origin, tt.tls, res.status, res.err, tt.want)
			}
			if tt.want == 403 && dials != 0 {
				t.Errorf("refused, yet %d dials", dials)
			}
			if tt.want == 403 && !tt.tls && !strings.Contains(fmt.Sprint(res.err), "allowed_hosts") {
				t.Errorf("the refusal does not name allowed_hosts, the option that would admit it: %v", res.err)
			}
		})
	}
}

package wstotcp

import (
	"net/http"
	"strings"
	"testing"
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
	req := func(host string, origins ...string) *http.Request {
		r, _ := http.NewRequest("GET", "http://"+host+"/", nil)
		r.Host = host
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
		{"same origin, http default port", def, req("vnc.example.net", "http://vnc.example.net:80"), true},
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
		if got := tt.p.allowed(tt.r); got != tt.allowed {
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

package wstotcp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestParseTargetValue(t *testing.T) {
	good := map[string]string{
		"127.0.0.1:5900":                        "127.0.0.1:5900",
		"  vnc1.internal:5901\n":                "vnc1.internal:5901",
		"tcp/10.0.0.5:5900":                     "10.0.0.5:5900",
		"tls/vnc.example:5901":                  "tls/vnc.example:5901",
		"[::1]:5900":                            "[::1]:5900",
		"::1:5900":                              "[::1]:5900", // websockify splits at the last colon
		"fd00::7:5900":                          "[fd00::7]:5900",
		"unix//run/vnc/a.sock":                  "unix//run/vnc/a.sock",
		"unix_socket:/run/vnc/a.sock":           "unix//run/vnc/a.sock",
		`{"host": "10.0.0.5", "port": 5900}`:    "10.0.0.5:5900",
		`{"host": "10.0.0.5", "port": "5900"}`:  "10.0.0.5:5900",
		`{"host": "10.0.0.5:5900"}`:             "10.0.0.5:5900",
		`{"host": "::1", "port": 5900}`:         "[::1]:5900",
		`{"host": "[::1]", "port": 5900}`:       "[::1]:5900",
		`{"target": "tls/vnc.example:5901"}`:    "tls/vnc.example:5901",
		`{"target": "unix//run/x.sock"}`:        "unix//run/x.sock",
		`{"host":"unix_socket","port":"/r.s"}`:  "unix//r.s",
		`"10.0.0.5:5900"`:                       "10.0.0.5:5900",
		`{"host": "h", "port": 5900, "x": [1]}`: "h:5900",
	}
	for in, want := range good {
		got, err := parseTargetValue(in)
		if err != nil || got.String() != want {
			t.Errorf("parseTargetValue(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	bad := []string{
		"", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:vnc", ":5900", "unix/relative.sock",
		"unix_socket:relative", "http://x:80", "{", `{"port": 5900}`, `{"host": "h", "port": true}`,
		`{"host": "h", "port": 0}`, "a b:5900", "h:5900\x00", "{http.request.host}:5900", "[fe80::1%eth0]:5900",
		`{"host": "h/x", "port": 1}`, "ws://h:1",
	}
	for _, in := range bad {
		if got, err := parseTargetValue(in); err == nil {
			t.Errorf("parseTargetValue(%q) = %v, want an error", in, got)
		}
	}
}

func TestParseTokenLine(t *testing.T) {
	tests := []struct {
		line, tok, target, err string
	}{
		{"vnc1: 127.0.0.1:5900", "vnc1", "127.0.0.1:5900", ""},
		{"  vnc1:\t127.0.0.1:5900  ", "vnc1", "127.0.0.1:5900", ""},
		{"a.b-c_d: vnc.internal:5901", "a.b-c_d", "vnc.internal:5901", ""},
		{"sock: unix_socket:/run/vnc/a.sock", "sock", "unix//run/vnc/a.sock", ""},
		{`js: {"host": "h", "port": 5900}`, "js", "h:5900", ""},
		{"tok:with:colons: h:1", "tok:with:colons", "h:1", ""},
		{"", "", "", "blank"},
		{"   # a comment: with colon", "", "", "blank"},
		{"nospace:127.0.0.1:5900", "", "", "colon and a space"},
		{": 127.0.0.1:5900", "", "", "colon and a space"},
		{"tok: nonsense", "", "", "not host:port"},
		{"tok:", "", "", "colon and a space"},
	}
	for _, tt := range tests {
		tok, tg, err := parseTokenLine(tt.line)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: %v, want an error containing %q", tt.line, err, tt.err)
			}
			if err != nil && tt.tok == "" && strings.Contains(err.Error(), "nospace") {
				t.Errorf("%q: the error quotes the line: %v", tt.line, err)
			}
			continue
		}
		if err != nil || tok != tt.tok || tg.String() != tt.target {
			t.Errorf("%q: %q %v %v; want %q %q", tt.line, tok, tg, err, tt.tok, tt.target)
		}
	}
}

// targetRequest is a WebSocket handshake request prepared as Caddy's
// server prepares it (replacer, vars), for unit tests.
func targetRequest(t testing.TB, target string, hdr http.Header) *http.Request {
	t.Helper()
	r := httptest.NewRequest("GET", target, nil)
	r.RequestURI = target
	for k, v := range hdr {
		r.Header[k] = v
	}
	return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), httptest.NewRecorder(), nil)
}

func TestTargetTokenCarriers(t *testing.T) {
	rt := &targetResolver{query: "token"}
	r := targetRequest(t, "/ws?a=1&token=s%2Fecret&b=2&token=second", nil)
	if tok := rt.token(r); tok != "s/ecret" {
		t.Errorf("query: %q", tok)
	}
	if r.URL.RawQuery != "a=1&b=2" || r.RequestURI != "/ws?a=1&b=2" {
		t.Errorf("the token is still in the URI: %q %q", r.URL.RawQuery, r.RequestURI)
	}
	r = targetRequest(t, "/ws?token=only", nil)
	rt.token(r)
	if r.RequestURI != "/ws" || r.URL.RawQuery != "" {
		t.Errorf("URI %q, query %q", r.RequestURI, r.URL.RawQuery)
	}

	// every carrier; the query one wins, and is stripped even when another
	// carries the token
	all := &targetResolver{query: "t", cookie: "vnc", path: "{http.request.uri.path.1}", host: "label"}
	hdr := http.Header{"Cookie": {"other=1; vnc=from-cookie"}}
	r = targetRequest(t, "/vnc/from-path?t=from-query", hdr)
	r.Host = "from-host.vnc.example:8443"
	if tok := all.token(r); tok != "from-query" {
		t.Errorf("all carriers: %q, want the query's", tok)
	}
	r = targetRequest(t, "/vnc/from-path?t=", hdr)
	r.Host = "from-host.vnc.example:8443"
	if tok := all.token(r); tok != "from-cookie" {
		t.Errorf("no query: %q, want the cookie's", tok)
	}
	r = targetRequest(t, "/vnc/from-path", nil)
	r.Host = "from-host.vnc.example:8443"
	if tok := all.token(r); tok != "from-path" {
		t.Errorf("no cookie: %q, want the path's", tok)
	}
	r = targetRequest(t, "/", nil)
	r.Host = "From-Host.vnc.example.:8443"
	if tok := all.token(r); tok != "from-host" {
		t.Errorf("host label: %q", tok)
	}
	full := &targetResolver{host: "full"}
	r = targetRequest(t, "/", nil)
	r.Host = "vm1.vnc.example:8443"
	if tok := full.token(r); tok != "vm1.vnc.example" {
		t.Errorf("host full: %q", tok)
	}
	r = targetRequest(t, "/", nil)
	r.Host = "[::1]:8443"
	if tok := full.token(r); tok != "::1" {
		t.Errorf("host full, IPv6: %q", tok)
	}

	// tokens that no table holds are unknown without a lookup
	for _, bad := range []string{"/ws?token=a%0Ab", "/ws?token=" + strings.Repeat("x", maxTargetTokenLen+1)} {
		r = targetRequest(t, bad, nil)
		tok := rt.token(r)
		if _, _, err := rt.lookup(context.Background(), tok); !errors.Is(err, errUnknownToken) {
			t.Errorf("%.40s: %v, want unknown", bad, err)
		}
	}
}

func TestTargetCache(t *testing.T) {
	c := newTargetCache(time.Second)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	c.put("a", cacheEntry{t: target{host: "h", port: 1}, source: "http"})
	if e, ok := c.get("a"); !ok || e.t.host != "h" {
		t.Fatal("not cached")
	}
	now = now.Add(999 * time.Millisecond)
	if _, ok := c.get("a"); !ok {
		t.Fatal("expired early")
	}
	now = now.Add(time.Millisecond)
	if _, ok := c.get("a"); ok {
		t.Fatal("not expired after the TTL")
	}
	// bounded
	for i := 0; i < maxCachedTargets+10; i++ {
		c.put(fmt.Sprint(i), cacheEntry{})
	}
	if n := len(c.m); n > maxCachedTargets {
		t.Fatalf("%d entries", n)
	}
	var nilCache *targetCache
	nilCache.put("a", cacheEntry{})
	if _, ok := nilCache.get("a"); ok {
		t.Fatal("a nil cache (cache_ttl 0) remembered")
	}
}

func TestTokenFileReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens")
	write := func(content string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(file, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	base := time.Now().Add(-time.Hour)
	write("# tokens\nvnc1: 127.0.0.1:5901\nbad line\nvnc2: unix_socket:/run/vnc2.sock\n", base)
	fs, err := newFileSource(file, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	fs.now = func() time.Time { return now }
	if tg, ok := fs.lookup("vnc1"); !ok || tg.String() != "127.0.0.1:5901" {
		t.Fatalf("vnc1: %v %v", tg, ok)
	}
	if tg, ok := fs.lookup("vnc2"); !ok || tg.String() != "unix//run/vnc2.sock" {
		t.Fatalf("vnc2: %v %v", tg, ok)
	}
	// same size, new mtime: seen only once a second has passed
	write("# tokens\nvnc1: 127.0.0.1:5902\nbad line\nvnc2: unix_socket:/run/vnc2.sock\n", base.Add(time.Second))
	if tg, _ := fs.lookup("vnc1"); tg.port != 5901 {
		t.Fatalf("re-read within a second: %v", tg)
	}
	now = now.Add(fileCheckInterval)
	if tg, _ := fs.lookup("vnc1"); tg.port != 5902 {
		t.Fatalf("not re-read after the change: %v", tg)
	}
	// a file that vanishes: the last table stays
	os.Remove(file)
	now = now.Add(fileCheckInterval)
	if _, ok := fs.lookup("vnc1"); !ok {
		t.Fatal("table lost when the file vanished")
	}
	write("vnc3: 127.0.0.1:5903\n", base.Add(2*time.Second))
	now = now.Add(fileCheckInterval)
	if _, ok := fs.lookup("vnc1"); ok {
		t.Fatal("vnc1 still there after the rewrite")
	}
	if _, ok := fs.lookup("vnc3"); !ok {
		t.Fatal("vnc3 not there after the rewrite")
	}
	if _, err := newFileSource(filepath.Join(dir, "missing"), zap.NewNop()); err == nil {
		t.Fatal("a missing file loaded")
	}
}

func TestTokenDirectory(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"a.conf":   "vm-a: 127.0.0.1:5901\n",
		"b":        "vm-b: 127.0.0.1:5902\nvm-a: 127.0.0.1:5999\n", // later file wins
		".b.swp":   "vm-swap: 127.0.0.1:5903\n",
		"sub/c.cf": "vm-c: 127.0.0.1:5904\n",
	} {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fs, err := newFileSource(dir, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	fs.now = func() time.Time { return now }
	for tok, want := range map[string]string{"vm-a": "127.0.0.1:5999", "vm-b": "127.0.0.1:5902", "vm-swap": "", "vm-c": ""} {
		tg, ok := fs.lookup(tok)
		if (want == "") == ok || (ok && tg.String() != want) {
			t.Errorf("%s: %v %v, want %q", tok, tg, ok, want)
		}
	}
	// a new file in the directory is seen
	if err := os.WriteFile(filepath.Join(dir, "d"), []byte("vm-d: 127.0.0.1:5905\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	now = now.Add(fileCheckInterval)
	if _, ok := fs.lookup("vm-d"); !ok {
		t.Error("a new file of the directory was not read")
	}
}

func TestHTTPSourceUnit(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.RequestURI())
		mu.Unlock()
		tok := r.URL.Query().Get("token")
		if tok == "" {
			tok = strings.TrimPrefix(r.URL.Path, "/t/")
		}
		switch tok {
		case "plain":
			fmt.Fprint(w, "127.0.0.1:5901\n")
		case "json":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"host": "127.0.0.1", "port": 5902}`)
		case "a b/c&d":
			fmt.Fprint(w, `{"target": "127.0.0.1:5903"}`)
		case "garbage":
			fmt.Fprint(w, "<html>")
		case "boom":
			http.Error(w, "boom", 500)
		case "redirect":
			http.Redirect(w, r, "http://127.0.0.1:1/?token=redirect", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	for _, tmpl := range []string{srv.URL + "/?x=1", srv.URL + "/?token={token}", srv.URL + "/t/{token}", srv.URL + "/t/%s"} {
		s, err := newHTTPSource(tmpl, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for tok, want := range map[string]string{"plain": "127.0.0.1:5901", "json": "127.0.0.1:5902", "a b/c&d": "127.0.0.1:5903"} {
			tg, err := s.get(context.Background(), tok)
			if err != nil || tg.String() != want {
				t.Errorf("%s, %q: %v %v; want %s", tmpl, tok, tg, err, want)
			}
		}
		if _, err := s.get(context.Background(), "nope"); !errors.Is(err, errUnknownToken) {
			t.Errorf("%s: unknown token: %v", tmpl, err)
		}
		for _, tok := range []string{"garbage", "boom", "redirect"} {
			_, err := s.get(context.Background(), tok)
			if err == nil || errors.Is(err, errUnknownToken) {
				t.Errorf("%s, %s: %v, want a failure", tmpl, tok, err)
			} else if strings.Contains(err.Error(), tok) && tok != "garbage" {
				t.Errorf("%s: the error holds the token: %v", tmpl, err)
			}
		}
		s.close()
	}
	// the token was escaped where it stood
	mu.Lock()
	joined := strings.Join(seen, "\n")
	mu.Unlock()
	for _, want := range []string{"/?x=1&token=a+b%2Fc%26d", "/?token=a+b%2Fc%26d", "/t/a%20b%2Fc&d"} {
		if !strings.Contains(joined, want) {
			t.Errorf("no request %q among:\n%s", want, joined)
		}
	}

	// down: the error names the URL template, not the token
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	s, _ := newHTTPSource("http://user:hunter2@"+strings.TrimPrefix(closed.URL, "http://")+"/?token={token}", time.Second)
	_, err := s.get(context.Background(), "SECRET-TOKEN")
	if err == nil || strings.Contains(err.Error(), "SECRET-TOKEN") || strings.Contains(err.Error(), "hunter2") ||
		!strings.Contains(err.Error(), "{token}") {
		t.Errorf("source down: %v", err)
	}

	for _, bad := range []string{"ftp://x/", "/relative", "http:///nohost", "http://x/#frag"} {
		if _, err := newHTTPSource(bad, time.Second); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestTargetsProvisionErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, js string
		want     []string
	}{
		{"placeholder without allow_targets", `{"upstreams": [{"dial": "127.0.0.1:{http.request.uri.query.port}"}]}`,
			[]string{"upstreams[0].dial (to): ", "placeholders", "allow_targets"}},
		{"placeholder with another upstream", `{"upstreams": [{"dial": "127.0.0.1:{http.request.uri.query.port}"}, {"dial": "127.0.0.1:1"}], "allow_targets": ["127.0.0.1"]}`,
			[]string{"upstreams[0].dial (to): ", "only upstream"}},
		{"placeholder and targets", `{"upstreams": [{"dial": "127.0.0.1:{http.request.uri.query.port}"}], "allow_targets": ["127.0.0.1"], "targets": {"map": {"a": "127.0.0.1:1"}}}`,
			[]string{"upstreams[0].dial (to): ", "targets"}},
		{"targets and to", `{"upstreams": [{"dial": "127.0.0.1:1"}], "targets": {"map": {"a": "127.0.0.1:1"}}}`,
			[]string{"targets: ", "remove upstreams"}},
		{"no source", `{"targets": {"query": "t"}}`, []string{"targets: configure at least one source"}},
		{"bad map value", `{"targets": {"map": {"s3cret": "nowhere"}}}`, []string{"targets.map: ", `"nowhere"`}},
		{"bad allow_targets", `{"targets": {"map": {"a": "127.0.0.1:1"}}, "allow_targets": ["10.0.0.0/8:0"]}`,
			[]string{"allow_targets: ", "10.0.0.0/8:0"}},
		{"missing file", `{"targets": {"file": "` + filepath.Join(dir, "missing") + `"}}`, []string{"targets.file: ", "missing"}},
		{"bad http", `{"targets": {"http": "ftp://x/"}}`, []string{"targets.http: "}},
		{"bad redis", `{"targets": {"redis": {"url": "http://:pw@x/"}}}`, []string{"targets.redis.url (targets > redis): ", "redis://"}},
		{"bad host", `{"targets": {"host": "first", "map": {"a": "127.0.0.1:1"}}}`, []string{"targets.host: "}},
		{"bad path", `{"targets": {"path": "segment", "map": {"a": "127.0.0.1:1"}}}`, []string{"targets.path: "}},
		{"bad cookie", `{"targets": {"cookie": "a b", "map": {"a": "127.0.0.1:1"}}}`, []string{"targets.cookie: "}},
		{"same query as auth", `{"targets": {"map": {"a": "127.0.0.1:1"}, "query": "access_token"}, "auth": {"bearer": ["x"]}}`,
			[]string{"targets.query: ", "auth.token_query"}},
		{"negative ttl", `{"targets": {"map": {"a": "127.0.0.1:1"}, "cache_ttl": -1}}`, []string{"targets.cache_ttl: must not be negative"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := new(Handler)
			if err := json.Unmarshal([]byte(tt.js), h); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := h.Provision(ctx)
			h.Cleanup()
			if err == nil {
				t.Fatal("loaded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), ":pw@") {
				t.Errorf("the error holds a secret: %v", err)
			}
		})
	}
}

// TestResolveTargetUnit covers the statuses of resolveTarget and what it
// returns to dial, on a provisioned handler.
func TestResolveTargetUnit(t *testing.T) {
	h := provisioned(t, `{
		"targets": {"map": {"a": "127.0.0.1:5901", "name": "localhost:5902", "far": "192.0.2.1:5900",
			"sock": "unix//run/vnc/a.sock", "tls": "tls/vnc.test:5903"}},
		"allow_targets": ["127.0.0.0/8:5900-5999", "unix//run/vnc/*.sock", "vnc.test:5903"]
	}`)
	h.targets.allow.lookup = fakeDNS(map[string][]string{"localhost": {"127.0.0.1"}, "vnc.test": {"127.0.0.7"}})
	for _, tt := range []struct {
		uri     string
		status  int
		dial    string // Upstream.Dial
		address string // what is dialled
	}{
		{"/?token=a", 0, "127.0.0.1:5901", "127.0.0.1:5901"},
		{"/?token=name", 0, "localhost:5902", "127.0.0.1:5902"},
		{"/?token=sock", 0, "unix//run/vnc/a.sock", "/run/vnc/a.sock"},
		{"/?token=tls", 0, "tls/vnc.test:5903", "127.0.0.7:5903"},
		{"/?token=far", 403, "", ""},
		{"/?token=nope", 404, "", ""},
		{"/?other=a", 404, "", ""},
		{"/", 404, "", ""},
	} {
		r := targetRequest(t, tt.uri, nil)
		u, err := h.resolveTarget(r)
		if got := handlerErrorStatus(err); got != tt.status {
			t.Errorf("%s: status %d (%v), want %d", tt.uri, got, err, tt.status)
			continue
		}
		if tt.status != 0 {
			if u != nil {
				t.Errorf("%s: an upstream with an error", tt.uri)
			}
			continue
		}
		if u.Dial != tt.dial || u.address != tt.address {
			t.Errorf("%s: dial %q address %q, want %q %q", tt.uri, u.Dial, u.address, tt.dial, tt.address)
		}
		if tt.uri == "/?token=tls" && (!u.useTLS || u.serverName != "vnc.test") {
			t.Errorf("tls target: useTLS %v, server name %q", u.useTLS, u.serverName)
		}
		if strings.Contains(r.URL.RawQuery, "token") || strings.Contains(r.RequestURI, "token") {
			t.Errorf("%s: token left in the URI", tt.uri)
		}
	}

	// a `to` with placeholders
	h = provisioned(t, `{"upstreams": [{"dial": "127.0.0.1:{http.request.uri.query.port}"}], "allow_targets": ["127.0.0.1:5900-5999"]}`)
	if len(h.Upstreams) != 0 {
		t.Errorf("the template stayed among the configured upstreams: %v", h.Upstreams)
	}
	for uri, status := range map[string]int{"/?port=5901": 0, "/?port=22": 403, "/": 403, "/?port=5901%7B": 403, "/?port=5901/x": 403} {
		u, err := h.resolveTarget(targetRequest(t, uri, nil))
		if got := handlerErrorStatus(err); got != status {
			t.Errorf("to template %s: status %d (%v), want %d", uri, got, err, status)
		}
		if status == 0 && (u == nil || u.address != "127.0.0.1:5901") {
			t.Errorf("to template %s: %+v", uri, u)
		}
	}

	// websockify's UnixDomainSocketDirectory, as docs/targets.md (From
	// websockify's token plugins) gives it: the token names a socket in the
	// directory and cannot leave it
	h = provisioned(t, `{"upstreams": [{"dial": "unix//run/vnc/{http.request.uri.query.token}"}], "allow_targets": ["unix//run/vnc/*"]}`)
	for uri, status := range map[string]int{
		"/?token=vm1": 0, "/?token=..": 403, "/?token=%2e%2e": 403, "/?token=../etc/passwd": 403,
		"/?token=a%2Fb": 403, "/?token=": 403, "/": 403, "/?token=.%2Fvm1": 403,
	} {
		u, err := h.resolveTarget(targetRequest(t, uri, nil))
		if got := handlerErrorStatus(err); got != status {
			t.Errorf("socket directory %s: status %d (%v), want %d", uri, got, err, status)
		}
		if status == 0 && (u == nil || u.network != "unix" || u.address != "/run/vnc/vm1") {
			t.Errorf("socket directory %s: %+v", uri, u)
		}
	}

	// no targets: nil, the configured upstreams are used
	h = provisioned(t, `{"upstreams": [{"dial": "127.0.0.1:1"}]}`)
	if u, err := h.resolveTarget(targetRequest(t, "/?token=a", nil)); u != nil || err != nil {
		t.Errorf("without targets: %v %v", u, err)
	}
}

// fakeSource is a remote source for unit tests.
type fakeSource struct {
	calls atomic.Int32
	fn    func(ctx context.Context, tok string) (target, error)
}

func (f *fakeSource) name() string { return "fake" }
func (f *fakeSource) close()       {}
func (f *fakeSource) get(ctx context.Context, tok string) (target, error) {
	f.calls.Add(1)
	return f.fn(ctx, tok)
}

// TestRemoteLookupCoalescedAndBounded: concurrent lookups of one token
// make one request; a slow source is bounded by the timeout and holds up
// neither other tokens nor a client that gives up. In virtual time: "at
// once" is exactly no time.
func TestRemoteLookupCoalescedAndBounded(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		src := &fakeSource{fn: func(ctx context.Context, tok string) (target, error) {
			switch tok {
			case "slow":
				select {
				case <-release:
					return target{host: "127.0.0.1", port: 5900}, nil
				case <-ctx.Done():
					return target{}, ctx.Err()
				}
			case "fast":
				return target{host: "127.0.0.1", port: 5901}, nil
			}
			return target{}, errUnknownToken
		}}
		rt := &targetResolver{ctx: context.Background(), logger: zap.NewNop(), timeout: 5 * time.Second,
			remote: []targetSource{src}, cache: newTargetCache(time.Minute)}

		var wg sync.WaitGroup
		results := make(chan error, 10)
		for range 10 {
			wg.Go(func() {
				_, _, err := rt.lookup(context.Background(), "slow")
				results <- err
			})
		}
		synctest.Wait() // all ten wait for the one slow request
		// the slow lookup is pending: another token is answered at once
		start := time.Now()
		if tg, _, err := rt.lookup(context.Background(), "fast"); err != nil || tg.port != 5901 {
			t.Fatalf("fast: %v %v", tg, err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("fast token took %v behind a slow one", d)
		}
		// a client that gives up is not held
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		if _, _, err := rt.lookup(ctx, "slow"); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) != 50*time.Millisecond {
			t.Errorf("client deadline: %v after %v, want the deadline at 50ms", err, time.Since(start))
		}
		cancel()
		close(release)
		wg.Wait()
		close(results)
		for err := range results {
			if err != nil {
				t.Errorf("slow: %v", err)
			}
		}
		if n := src.calls.Load(); n != 2 {
			t.Errorf("%d source calls for 12 lookups of 2 tokens, want 2", n)
		}
		// cached now
		if _, source, err := rt.lookup(context.Background(), "slow"); err != nil || !strings.Contains(source, "cached") {
			t.Errorf("cached lookup: %q %v", source, err)
		}
		if n := src.calls.Load(); n != 2 {
			t.Error("a cached token was looked up again")
		}

		// the timeout bounds a source that never answers
		hang := &fakeSource{fn: func(ctx context.Context, _ string) (target, error) { <-ctx.Done(); return target{}, ctx.Err() }}
		rt = &targetResolver{ctx: context.Background(), logger: zap.NewNop(), timeout: 100 * time.Millisecond, remote: []targetSource{hang}}
		start = time.Now()
		_, _, err := rt.lookup(context.Background(), "x")
		if err == nil || errors.Is(err, errUnknownToken) || time.Since(start) != 100*time.Millisecond {
			t.Errorf("hanging source: %v after %v, want a failure at the 100ms timeout", err, time.Since(start))
		}
	})
}

// TestTargetsCacheTTL: within cache_ttl a token is looked up once; from
// the TTL on, again; unknown tokens are not cached; cache_ttl 0 asks every
// time. A handler's resolver, with its source replaced, in virtual time.
func TestTargetsCacheTTL(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var late atomic.Bool
		src := &fakeSource{fn: func(_ context.Context, tok string) (target, error) {
			if tok == "late" && !late.Load() {
				return target{}, errUnknownToken
			}
			return target{host: "127.0.0.1", port: 5900}, nil
		}}
		resolver := func(ttl string) func(tok string) int {
			h := provisioned(t, `{"targets": {"http": "http://127.0.0.1:9/lookup", "cache_ttl": "`+ttl+`"}}`)
			h.targets.remote = []targetSource{src}
			return func(tok string) int {
				_, err := h.resolveTarget(targetRequest(t, "/?token="+tok, nil))
				return handlerErrorStatus(err)
			}
		}
		calls := func(want int32, when string) {
			t.Helper()
			if n := src.calls.Swap(0); n != want {
				t.Errorf("%s: %d lookups, want %d", when, n, want)
			}
		}
		resolve := resolver("500ms")
		resolve("cached")
		calls(1, "the first handshake")
		time.Sleep(499 * time.Millisecond) // virtual time: the test runs in a synctest bubble
		resolve("cached")
		calls(0, "within cache_ttl")
		time.Sleep(time.Millisecond) // virtual time: the test runs in a synctest bubble
		resolve("cached")
		calls(1, "at cache_ttl")
		if st := resolve("late"); st != http.StatusNotFound {
			t.Fatalf("unknown token: %d", st)
		}
		late.Store(true)
		if st := resolve("late"); st != 0 {
			t.Fatalf("a token known since: %d, want it found (unknown tokens are not cached)", st)
		}
		calls(2, "an unknown token, then known")

		resolve = resolver("0")
		for range 3 {
			resolve("uncached")
		}
		calls(3, "cache_ttl 0, 3 handshakes")
	})
}

// TestTargetsFileEditPicked: an edit of the token file is seen by the
// first lookup a second or more after the last check, without a reload.
func TestTargetsFileEditPicked(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		tokenFile := filepath.Join(t.TempDir(), "tokens")
		write := func(content string, mtime time.Time) {
			t.Helper()
			if err := os.WriteFile(tokenFile, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			// an explicit, distinct modification time: the file system's
			// timestamp granularity does not matter
			if err := os.Chtimes(tokenFile, mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}
		base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		write("vm: 127.0.0.1:5901\n", base)
		js, _ := json.Marshal(map[string]any{"targets": map[string]any{"file": tokenFile}})
		h := provisioned(t, string(js))
		resolve := func(tok string) string {
			u, err := h.resolveTarget(targetRequest(t, "/?token="+tok, nil))
			if err != nil {
				return fmt.Sprint(handlerErrorStatus(err))
			}
			return u.Dial
		}
		if got := resolve("vm"); got != "127.0.0.1:5901" {
			t.Fatalf("vm: %s", got)
		}
		if got := resolve("vm-new"); got != "404" {
			t.Fatalf("vm-new before the edit: %s", got)
		}

		// the same token now leads elsewhere, and a new one appears
		write("vm: 127.0.0.1:5902\nvm-new: 127.0.0.1:5903\n", base.Add(time.Minute))
		time.Sleep(fileCheckInterval - time.Millisecond) // virtual time: the test runs in a synctest bubble
		if got := resolve("vm-new"); got != "404" {
			t.Fatalf("vm-new within a second of the last check: %s", got)
		}
		time.Sleep(time.Millisecond) // virtual time: the test runs in a synctest bubble
		if got := resolve("vm-new"); got != "127.0.0.1:5903" {
			t.Fatalf("vm-new a second after the last check: %s", got)
		}
		if got := resolve("vm"); got != "127.0.0.1:5902" {
			t.Fatalf("vm after the edit: %s", got)
		}
	})
}

func TestRemoteLookupPanicIsAFailure(t *testing.T) {
	boom := &fakeSource{fn: func(context.Context, string) (target, error) { panic("bug in a source") }}
	rt := &targetResolver{ctx: context.Background(), logger: zap.NewNop(), timeout: time.Second, remote: []targetSource{boom}}
	if _, _, err := rt.lookup(context.Background(), "x"); err == nil || errors.Is(err, errUnknownToken) {
		t.Fatalf("got %v, want a failure", err)
	}
}

func TestTargetStatusesFromSources(t *testing.T) {
	h := provisioned(t, `{"targets": {"map": {"m": "127.0.0.1:5900"}}}`)
	failing := &fakeSource{fn: func(context.Context, string) (target, error) { return target{}, errors.New("connection refused") }}
	h.targets.remote = []targetSource{failing}
	if _, err := h.resolveTarget(targetRequest(t, "/?token=other", nil)); handlerErrorStatus(err) != 503 {
		t.Errorf("source down: %v, want 503", err)
	}
	if u, err := h.resolveTarget(targetRequest(t, "/?token=m", nil)); err != nil || u.address != "127.0.0.1:5900" {
		t.Errorf("map token with the remote source down: %v %v", u, err)
	}
}

func TestTargetsCaddyfileErrors(t *testing.T) {
	tests := []struct {
		body string
		want []string
	}{
		{"targets x", []string{"targets:", "block"}},
		{"targets {\n\tquery a b\n\tmap {\n\t\ta 127.0.0.1:1\n\t}\n}", []string{"targets: query:"}},
		{"targets {\n\tcookie\n\tfile /x\n}", []string{"targets: cookie:"}},
		{"targets {\n\thost first\n\tfile /x\n}", []string{"targets: host:"}},
		{"targets {\n\tmap {\n\t\ttok\n\t}\n}", []string{"targets: map:", "<token> <target>"}},
		{"targets {\n\tmap {\n\t\tt 127.0.0.1:1\n\t\tt 127.0.0.1:2\n\t}\n}", []string{"targets: map:", "twice"}},
		{"targets {\n\tmap\n}", []string{"targets: map:", "at least one"}},
		{"targets {\n\tredis\n}", []string{"targets: redis:", "<url> [<prefix>]"}},
		{"targets {\n\tfile /x\n\tcache_ttl soon\n}", []string{"targets: cache_ttl:"}},
		{"targets {\n\tfile /x\n\ttimeout 0\n}", []string{"targets: timeout:"}},
		{"targets {\n\tfile /x\n\tfile /y\n}", []string{"targets: file:", "already"}},
		{"targets {\n\tfile /x\n\tjwt k\n}", []string{"targets:", "unrecognized", "jwt"}},
		{"allow_targets", []string{"allow_targets:", "at least one"}},
	}
	for _, tt := range tests {
		_, err := adaptCaddyfile(siteWith(tt.body))
		if err == nil {
			t.Errorf("%q: adapted", tt.body)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not contain %q", tt.body, err, w)
			}
		}
		if strings.Contains(err.Error(), "secret-tok") {
			t.Errorf("the error names a token: %v", err)
		}
	}
}

// TestHTTPSourceTokenCannotChangePath: a token put in the lookup URL's path
// stays one segment: `.` and `..` (which a service normalising dot
// segments would take as "this" or "the parent" resource) and the empty
// token are unknown without a request, and anything else, escaped, is the
// one segment the template gives it.
func TestHTTPSourceTokenCannotChangePath(t *testing.T) {
	var mu sync.Mutex
	var paths []string // escaped, as sent
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.EscapedPath())
		mu.Unlock()
		fmt.Fprint(w, "127.0.0.1:5901") // a target for any path: a service that answers for another resource
	}))
	defer srv.Close()
	requests := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := paths
		paths = nil
		return out
	}
	for _, tmpl := range []string{"/tokens/{token}", "/tokens/%s", "/tokens/{token}/target", "/tokens/{token}?x=1", "/?token={token}"} {
		s, err := newHTTPSource(srv.URL+tmpl, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for _, tok := range []string{".", "..", ""} {
			if _, err := s.get(context.Background(), tok); !errors.Is(err, errUnknownToken) {
				t.Errorf("%s, token %q: %v, want unknown", tmpl, tok, err)
			}
			if got := requests(); len(got) != 0 {
				t.Errorf("%s, token %q: looked up as %q, want no request", tmpl, tok, got)
			}
		}
		inPath := !strings.HasPrefix(tmpl, "/?")
		for _, tok := range []string{"...", "..x", ".x", "a.b", "%2e%2e", "..%2f..", "../..", "a/../b", `..\..`, "a;b", "a?b", "a#b"} {
			if _, err := s.get(context.Background(), tok); err != nil {
				t.Errorf("%s, token %q: %v", tmpl, tok, err)
				continue
			}
			got := requests()
			if len(got) != 1 {
				t.Fatalf("%s, token %q: %d requests", tmpl, tok, len(got))
			}
			if !inPath {
				continue
			}
			segs := strings.Split(got[0], "/")
			if len(segs) < 3 || segs[1] != "tokens" || len(segs) != strings.Count(strings.Split(tmpl, "?")[0], "/")+1 {
				t.Errorf("%s, token %q: requested %q: the token changed the path", tmpl, tok, got[0])
				continue
			}
			if seg, err := url.PathUnescape(segs[2]); err != nil || seg != tok || seg == "." || seg == ".." {
				t.Errorf("%s, token %q: requested %q, whose token segment is %q", tmpl, tok, got[0], seg)
			}
		}
		s.close()
	}
}

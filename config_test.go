package wstotcp

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestSettingError checks the one format of load-time errors: the JSON
// field path, and the subdirective when the Caddyfile spells it
// differently.
func TestSettingError(t *testing.T) {
	for _, tt := range []struct {
		path, sub, want string
	}{
		{"load_balancing.selection_policy", "lb_policy", `load_balancing.selection_policy (lb_policy): unknown policy "foo"`},
		{"dial_timeout", "", `dial_timeout: unknown policy "foo"`},
		{"origins", "origins", `origins: unknown policy "foo"`},
	} {
		if got := settingError(tt.path, tt.sub, "unknown policy %q", "foo").Error(); got != tt.want {
			t.Errorf("settingError(%q, %q) = %q, want %q", tt.path, tt.sub, got, tt.want)
		}
	}
}

// TestJSONConfigErrors loads bad JSON handler configurations through
// Provision, as Caddy does, and checks that each error starts with the
// JSON field path at fault (and the subdirective, where the Caddyfile
// spells it differently), then says what is wrong.
func TestJSONConfigErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	const to = `"upstreams": [{"dial": "127.0.0.1:1"}]`
	tests := []struct {
		js   string // the handler's JSON, without braces
		path string // the JSON field path the error must start with
		sub  string // the Caddyfile subdirective, when spelled differently
		want string // what the error must say after the names
	}{
		// upstreams
		{`"upstreams": [null]`, "upstreams[0]", "to", "empty"},
		{`"upstreams": [{"dial": "127.0.0.1:1"}, {"dial": "ws://x"}]`, "upstreams[1].dial", "to", "not a URL"},
		{`"dial_timeout": "1s"`, "upstreams", "to", "at least one upstream is required"},
		{`"upstreams": [{"dial": "127.0.0.1:{http.request.uri.query.port}"}]`, "upstreams[0].dial", "to", "need allow_targets"},
		{`"upstreams": [{"dial": "127.0.0.1:1"}, {"dial": "127.0.0.1:{http.request.uri.query.port}"}], "allow_targets": ["127.0.0.1"]`,
			"upstreams[1].dial", "to", "must be the only upstream"},
		{`"upstreams": [{"dial": "tls/127.0.0.1:1"}], "upstream_tls": {"ca": "` + missing + `"}`, "upstream_tls.ca", "", "no such file"},

		// the tunnel
		{to + `, "dial_timeout": -1`, "dial_timeout", "", "must not be negative"},
		{to + `, "write_timeout": "-1s"`, "write_timeout", "", "must not be negative"},
		{to + `, "reload_close_after": "-1m"`, "reload_close_after", "", "must not be negative"},
		{to + `, "idle_timeout": "-1s"`, "idle_timeout", "", "must not be negative"},
		{to + `, "heartbeat_interval": "-1s"`, "heartbeat_interval", "heartbeat", "must not be negative"},
		{to + `, "heartbeat_interval": "1s", "heartbeat_timeout": "-1s"`, "heartbeat_timeout", "heartbeat", "must not be negative"},
		{to + `, "heartbeat_timeout": "1s"`, "heartbeat_timeout", "heartbeat", "needs heartbeat_interval"},
		{to + `, "heartbeat_text": "ping"`, "heartbeat_text", "heartbeat_payload", "needs heartbeat_interval"},
		{to + `, "message_type": "utf8"`, "message_type", "", `"utf8" is neither binary nor text`},
		{to + `, "buffer_size": 100`, "buffer_size", "", "100 bytes is outside 512 B to 16 MiB"},
		{to + `, "buffer_size": 16777217`, "buffer_size", "", "outside 512 B to 16 MiB"},
		{to + `, "max_message_size": -1`, "max_message_size", "", "must not be negative"},
		{to + `, "throttle": {"read": -1, "write": 10}`, "throttle.read", "throttle", "must not be negative"},
		{to + `, "throttle": {"write": -1}`, "throttle.write", "throttle", "must not be negative"},
		{to + `, "throttle": {"read": 10, "burst": -1}`, "throttle.burst", "throttle", "must not be negative"},
		{to + `, "throttle": {"read": 10, "burst": 4294967296}`, "throttle.burst", "throttle", "more than 2 GiB"},
		{to + `, "throttle": {"burst": 1000}`, "throttle", "", "set read, write or both"},

		// the handshake and admission
		{to + `, "subprotocols": ["binary", "a b"]`, "subprotocols[1]", "subprotocols", `"a b" is not a valid protocol name`},
		{to + `, "subprotocols": ["Bearer.x"]`, "subprotocols[0]", "subprotocols", "reserved for tokens"},
		{to + `, "origins": ["https://ok.example", "example.com"]`, "origins", "", `"example.com": expected scheme://host`},
		{to + `, "origins": ["*", "https://example.com"]`, "origins", "", "every origin"},
		{to + `, "max_connections": -1`, "max_connections", "", "must not be negative"},
		{to + `, "max_connections_per_ip": -1`, "max_connections_per_ip", "", "must not be negative"},
		{to + `, "max_connections_per_user": -1`, "max_connections_per_user", "", "must not be negative"},
		{to + `, "auth": {}`, "auth", "", "configure basic, bearer or jwt"},
		{to + `, "auth": {"bearer": ["x"], "realm": "a\"b"}`, "auth.realm", "", "no quotes"},
		{to + `, "auth": {"bearer": ["x"], "token_query": "a=b"}`, "auth.token_query", "", "not a plain parameter name"},
		{to + `, "auth": {"bearer": ["x"], "token_cookie": "a b"}`, "auth.token_cookie", "", "not a valid cookie name"},
		{to + `, "auth": {"basic": [{"username": "", "password": "$2a$04$x"}]}`, "auth.basic[0].username", "auth > basic", "non-empty"},
		{to + `, "auth": {"basic": [{"username": "a", "password": "hunter2"}]}`, "auth.basic[0].password", "auth > basic", "not plain text"},
		{to + `, "auth": {"bearer": ["x", ""]}`, "auth.bearer[1]", "auth > bearer", "empty"},
		{to + `, "auth": {"jwt": {"secret": "s", "jwks_file": "f"}}`, "auth.jwt", "", "exactly one of secret, public_key and jwks_file"},
		{to + `, "auth": {"jwt": {"secret": "s", "leeway": "-1s"}}`, "auth.jwt.leeway", "", "must not be negative"},
		{to + `, "auth": {"jwt": {"secret": "{env.WS_TO_TCP_UNSET}"}}`, "auth.jwt.secret", "", "empty"},
		{to + `, "auth": {"jwt": {"public_key": "` + missing + `"}}`, "auth.jwt.public_key", "", "no such file"},
		{to + `, "auth": {"jwt": {"jwks_file": "` + missing + `"}}`, "auth.jwt.jwks_file", "", "no such file"},

		// load balancing, health, what is sent upstream
		{to + `, "load_balancing": {"selection_policy": "weighted"}`, "load_balancing.selection_policy", "lb_policy",
			`unknown policy "weighted"; expected one of random, round_robin`},
		{to + `, "load_balancing": {"retries": -1}`, "load_balancing.retries", "lb_retries", "must not be negative"},
		{to + `, "max_connections_per_upstream": -1`, "max_connections_per_upstream", "", "must not be negative"},
		{to + `, "proxy_protocol": "v3"`, "proxy_protocol", "", `"v3" is neither v1 nor v2`},
		{to + `, "preamble": "LOGIN\\x4"`, "preamble", "", "hex digits"},
		{to + `, "health_checks": {"active": {"send": "PING"}}`, "health_checks.active.interval", "health_interval", "positive interval is required"},
		{to + `, "health_checks": {"active": {"interval": "1s", "timeout": "-1s"}}`, "health_checks.active.timeout", "health_timeout", "must not be negative"},
		{to + `, "health_checks": {"active": {"interval": "1s", "fails": -1}}`, "health_checks.active.fails", "health_fails", "must not be negative"},
		{to + `, "health_checks": {"active": {"interval": "1s", "passes": -1}}`, "health_checks.active.passes", "health_passes", "must not be negative"},
		{to + `, "health_checks": {"active": {"interval": "1s", "send": "\\xZZ"}}`, "health_checks.active.send", "health_send", "hex digits"},
		{to + `, "health_checks": {"active": {"interval": "1s", "expect": "\\x"}}`, "health_checks.active.expect", "health_expect", "hex digits"},
		{to + `, "health_checks": {"passive": {"fail_duration": "-1s"}}`, "health_checks.passive.fail_duration", "fail_duration", "must not be negative"},
		{to + `, "health_checks": {"passive": {"fail_duration": "1s", "max_fails": -1}}`, "health_checks.passive.max_fails", "max_fails", "must not be negative"},
		{to + `, "health_checks": {"passive": {"max_fails": 2}}`, "health_checks.passive.max_fails", "max_fails", "needs fail_duration"},

		// dynamic targets
		{to + `, "targets": {"map": {"a": "127.0.0.1:1"}}`, "targets", "", "remove upstreams"},
		{`"targets": {"query": "t"}`, "targets", "", "configure at least one source"},
		{`"targets": {"map": {"a": "127.0.0.1:1"}, "timeout": "-1s"}`, "targets.timeout", "", "must not be negative"},
		{`"targets": {"map": {"a": "127.0.0.1:1"}, "cache_ttl": "-1s"}`, "targets.cache_ttl", "", "must not be negative"},
		{`"targets": {"map": {"a": "127.0.0.1:1"}, "query": "a&b"}`, "targets.query", "", "not a plain parameter name"},
		{`"targets": {"map": {"a": "127.0.0.1:1"}, "cookie": "a;b"}`, "targets.cookie", "", "not a valid cookie name"},
		{`"targets": {"map": {"a": "127.0.0.1:1"}, "path": "-1"}`, "targets.path", "", "a segment index is 0 or more"},
		{`"targets": {"map": {"a": "127.0.0.1:1"}, "path": "seg"}`, "targets.path", "", "neither a segment index nor a placeholder"},
		{`"targets": {"map": {"a": "127.0.0.1:1"}, "host": "first"}`, "targets.host", "", `"first" is neither full nor label`},
		{`"targets": {"map": {"a": "127.0.0.1:1"}, "query": "tok"}, "auth": {"bearer": ["x"], "token_query": "tok"}`,
			"targets.query", "", "also auth.token_query"},
		{`"targets": {"map": {"": "127.0.0.1:1"}}`, "targets.map", "", "an empty token"},
		{`"targets": {"map": {"s3cret": "nowhere"}}`, "targets.map", "", `entry 1 ("nowhere")`},
		{`"targets": {"file": "` + missing + `"}`, "targets.file", "", "missing"},
		{`"targets": {"http": "ftp://x/"}`, "targets.http", "", "http:// or https://"},
		{`"targets": {"redis": {"url": "http://:hunter2@x/"}}`, "targets.redis.url", "targets > redis", "not a redis://"},
		{`"targets": {"map": {"a": "127.0.0.1:1"}}, "allow_targets": ["10.0.0.0/8:0"]`, "allow_targets", "", "not a port"},
	}
	for _, tt := range tests {
		name := tt.path
		if tt.sub != "" {
			name += " (" + tt.sub + ")"
		}
		t.Run(name, func(t *testing.T) {
			js := "{" + tt.js + "}"
			h := new(Handler)
			if err := json.Unmarshal([]byte(js), h); err != nil {
				t.Fatalf("%s: %v", js, err)
			}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
			defer cancel()
			err := h.Provision(ctx)
			h.Cleanup()
			if err == nil {
				t.Fatalf("Provision accepted %s", js)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, name+": ") {
				t.Errorf("error %q does not start with %q", msg, name+": ")
			}
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not say %q", msg, tt.want)
			}
			for _, secret := range []string{"hunter2", "s3cret"} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q shows the secret %q", msg, secret)
				}
			}
		})
	}
}

// TestJSONConfigErrorThroughCaddy loads a whole bad JSON configuration as
// `caddy validate` and `caddy run` do: the error a JSON user reads names
// the field.
func TestJSONConfigErrorThroughCaddy(t *testing.T) {
	cfgJSON := `{
		"admin": {"disabled": true},
		"apps": {"http": {"servers": {"srv0": {
			"listen": ["127.0.0.1:0"],
			"automatic_https": {"disable": true},
			"routes": [{"handle": [{
				"handler": "ws_to_tcp",
				"upstreams": [{"dial": "127.0.0.1:1"}],
				"load_balancing": {"selection_policy": "weighted"}
			}]}]
		}}}}
	}`
	var cfg caddy.Config
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		t.Fatal(err)
	}
	err := caddy.Validate(&cfg)
	if err == nil {
		t.Fatal("caddy.Validate accepted an unknown selection policy")
	}
	t.Logf("error: %v", err)
	if want := `load_balancing.selection_policy (lb_policy): unknown policy "weighted"`; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
}

package wstotcp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// siteWith returns a whole Caddyfile whose one site block holds a ws_to_tcp
// directive with body inside its block. The directive is on line 2, so the
// first line of body is line 3.
func siteWith(body string) string {
	var b strings.Builder
	b.WriteString(":8080 {\n\tws_to_tcp {\n")
	for _, l := range strings.Split(body, "\n") {
		b.WriteString("\t\t" + l + "\n")
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// adaptCaddyfile runs the caddyfile adapter on a whole Caddyfile, as
// `caddy adapt` and `caddy run` do.
func adaptCaddyfile(cfg string) ([]byte, error) {
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
	return js, err
}

// findHandler returns the JSON of the first ws_to_tcp handler in an adapted
// configuration, looking into subroutes too.
func findHandler(t *testing.T, cfgJSON []byte) []byte {
	t.Helper()
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []json.RawMessage `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatalf("adapted config is not JSON: %v", err)
	}
	var inRoutes func(routes []json.RawMessage) []byte
	inRoutes = func(routes []json.RawMessage) []byte {
		for _, r := range routes {
			var route struct {
				Handle []json.RawMessage `json:"handle"`
			}
			if err := json.Unmarshal(r, &route); err != nil {
				t.Fatal(err)
			}
			for _, h := range route.Handle {
				var head struct {
					Handler string            `json:"handler"`
					Routes  []json.RawMessage `json:"routes"`
				}
				if err := json.Unmarshal(h, &head); err != nil {
					t.Fatal(err)
				}
				if head.Handler == "ws_to_tcp" {
					return h
				}
				if found := inRoutes(head.Routes); found != nil {
					return found
				}
			}
		}
		return nil
	}
	for _, srv := range cfg.Apps.HTTP.Servers {
		if h := inRoutes(srv.Routes); h != nil {
			return h
		}
	}
	t.Fatalf("no ws_to_tcp handler in the adapted config:\n%s", cfgJSON)
	return nil
}

// loadHandler adapts cfg (which must adapt without error), then decodes,
// provisions its ws_to_tcp handler as Caddy does on load. The returned
// handler is nil when Provision fails.
func loadHandler(t *testing.T, cfg string) (*Handler, error) {
	t.Helper()
	js, err := adaptCaddyfile(cfg)
	if err != nil {
		t.Fatalf("adapting should succeed, the error is for Provision to find: %v\n%s", err, cfg)
	}
	h := new(Handler)
	if err := json.Unmarshal(findHandler(t, js), h); err != nil {
		t.Fatalf("decoding the handler JSON: %v", err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		return nil, err
	}
	return h, nil
}

func TestCaddyfileErrors(t *testing.T) {
	tests := []caddyfileErrorCase{
		{"unknown subdirective", "to 127.0.0.1:5900\nfrobnicate 1", 4,
			[]string{"unrecognized ws_to_tcp subdirective", `"frobnicate"`}},
		{"heartbeat without args", "to 127.0.0.1:5900\nheartbeat", 4,
			[]string{"heartbeat:", "interval"}},
		{"heartbeat bad duration", "to 127.0.0.1:5900\nheartbeat soon", 4,
			[]string{"heartbeat:", `"soon"`}},
		{"heartbeat three args", "to 127.0.0.1:5900\nheartbeat 1s 2s 3s", 4,
			[]string{"heartbeat:"}},
		{"heartbeat_payload not text", "to 127.0.0.1:5900\nheartbeat 1s\nheartbeat_payload binary x", 5,
			[]string{"heartbeat_payload:", "text"}},
		{"idle_timeout bad", "to 127.0.0.1:5900\nidle_timeout forever", 4,
			[]string{"idle_timeout:", "invalid duration"}},
		{"throttle no unit", "to 127.0.0.1:5900\nthrottle 100", 4,
			[]string{"throttle:", "bits per second"}},
		{"throttle bad number", "to 127.0.0.1:5900\nthrottle fastMbps", 4,
			[]string{"throttle:", "positive number"}},
		{"throttle block unknown", "to 127.0.0.1:5900\nthrottle {\nup 1Mbps\n}", 5,
			[]string{"throttle:", `"up"`}},
		{"throttle block bad rate", "to 127.0.0.1:5900\nthrottle {\nread 0Mbps\n}", 5,
			[]string{"throttle: read:"}},
		{"throttle block bad burst", "to 127.0.0.1:5900\nthrottle {\nread 1Mbps\nburst lots\n}", 6,
			[]string{"throttle: burst:"}},
		{"health_timeout 0", "to 127.0.0.1:5900\nhealth_interval 1s\nhealth_timeout 0s", 5,
			[]string{"health_timeout:", "more than 0", "leave health_timeout out"}},
		{"heartbeat_payload empty", "to 127.0.0.1:5900\nheartbeat 1s\nheartbeat_payload text \"\"", 5,
			[]string{"heartbeat_payload:", "must not be empty"}},
		{"channel empty", "to 127.0.0.1:5900\nchannel \"\"", 4,
			[]string{"channel:", "must not be empty"}},
		{"test_page with arg", "to 127.0.0.1:5900\ntest_page on", 4,
			[]string{"test_page:", "takes no arguments"}},
		{"duplicate subdirective", "to 127.0.0.1:5900\ndial_timeout 1s\ndial_timeout 2s", 5,
			[]string{"dial_timeout", "already specified"}},
		{"duplicate subprotocols", "to 127.0.0.1:5900\nsubprotocols binary\nsubprotocols base64", 5,
			[]string{"subprotocols", "already specified"}},
		{"to without args", "to", 3,
			[]string{"to:", "at least one upstream"}},
		{"dial_timeout without arg", "to 127.0.0.1:5900\ndial_timeout", 4,
			[]string{"dial_timeout:", "expected one duration"}},
		{"dial_timeout bad duration", "to 127.0.0.1:5900\ndial_timeout soon", 4,
			[]string{"dial_timeout:", "invalid duration", `"soon"`}},
		{"dial_timeout two args", "to 127.0.0.1:5900\ndial_timeout 1s 2s", 4,
			[]string{"dial_timeout:", "expected one duration"}},
		{"write_timeout bad duration", "to 127.0.0.1:5900\nwrite_timeout 5 parsecs", 4,
			[]string{"write_timeout:", "expected one duration"}},
		{"message_type foo", "to 127.0.0.1:5900\nmessage_type foo", 4,
			[]string{"message_type:", `"foo"`, "neither binary nor text"}},
		{"message_type without arg", "to 127.0.0.1:5900\nmessage_type", 4,
			[]string{"message_type:", "expected binary or text"}},
		{"buffer_size 0", "to 127.0.0.1:5900\nbuffer_size 0", 4,
			[]string{"buffer_size:", "outside 512 B to 16 MiB"}},
		{"buffer_size garbage", "to 127.0.0.1:5900\nbuffer_size lots", 4,
			[]string{"buffer_size:", "invalid size", `"lots"`}},
		{"buffer_size without arg", "to 127.0.0.1:5900\nbuffer_size", 4,
			[]string{"buffer_size:", "expected one size"}},
		{"max_message_size garbage", "to 127.0.0.1:5900\nmax_message_size huge", 4,
			[]string{"max_message_size:", "invalid size", `"huge"`}},
		{"validate_utf8 with arg", "to 127.0.0.1:5900\nvalidate_utf8 yes", 4,
			[]string{"validate_utf8:", "takes no arguments"}},
		{"subprotocols without args", "to 127.0.0.1:5900\nsubprotocols", 4,
			[]string{"subprotocols:", "at least one name"}},
		{"upstream_tls with an arg", "to tls/10.0.0.1:443\nupstream_tls on {\n}", 4,
			[]string{"upstream_tls:", "takes a block"}},
		{"upstream_tls unknown sub", "to tls/10.0.0.1:443\nupstream_tls {\n\tca /etc/ca.pem\n\tclient_cert x.pem\n}", 6,
			[]string{"upstream_tls:", "unrecognized subdirective", `"client_cert"`}},
		{"upstream_tls ca without file", "to tls/10.0.0.1:443\nupstream_tls {\n\tca\n}", 5,
			[]string{"upstream_tls: ca:", "expected one PEM file"}},
		{"upstream_tls server_name two args", "to tls/10.0.0.1:443\nupstream_tls {\n\tserver_name a b\n}", 5,
			[]string{"upstream_tls: server_name:", "expected one name"}},
		{"upstream_tls insecure_skip_verify with arg", "to tls/10.0.0.1:443\nupstream_tls {\n\tinsecure_skip_verify true\n}", 5,
			[]string{"upstream_tls: insecure_skip_verify:", "takes no arguments"}},
	}
	checkCaddyfileErrors(t, tests)
}

// TestCaddyfileProvisionErrors covers what the Caddyfile parser lets
// through and Provision must refuse.
func TestCaddyfileProvisionErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not-a-ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "does-not-exist.pem")

	tests := []struct {
		name string
		cfg  string
		want []string
	}{
		{"placeholder port", siteWith("to 127.0.0.1:{http.request.uri.query.port}"),
			[]string{"upstreams[0].dial (to): ", "placeholders", "allow_targets"}},
		{"placeholder host as directive arg", ":8080 {\n\tws_to_tcp {http.request.host}:5900\n}\n",
			[]string{"upstreams[0].dial (to): ", "allow_targets"}},
		{"URL", siteWith("to ws://x"),
			[]string{"upstreams[0].dial (to): ", `"ws://x"`, "not a URL"}},
		{"missing port", siteWith("to 127.0.0.1"),
			[]string{"upstreams[0].dial (to): ", "missing port"}},
		{"port 0", siteWith("to 127.0.0.1:0"),
			[]string{"upstreams[0].dial (to): ", `port "0"`, "1 to 65535"}},
		{"port 70000", siteWith("to 127.0.0.1:70000"),
			[]string{"upstreams[0].dial (to): ", `port "70000"`, "1 to 65535"}},
		{"missing host", siteWith("to :5900"),
			[]string{"upstreams[0].dial (to): ", "missing host"}},
		{"second upstream bad", siteWith("to 127.0.0.1:5900 localhost:http"),
			[]string{"upstreams[1].dial (to): ", `"localhost:http"`, "1 to 65535"}},
		{"unix without path", siteWith("to unix/"),
			[]string{"upstreams[0].dial (to): ", "missing socket path"}},
		{"no to at all", siteWith("dial_timeout 1s"),
			[]string{"upstreams (to): ", "at least one upstream"}},
		{"no to and no block", ":8080 {\n\tws_to_tcp\n}\n",
			[]string{"upstreams (to): ", "at least one upstream"}},
		{"ca file does not exist", siteWith("to tls/10.0.0.1:443\nupstream_tls {\n\tca " + missing + "\n}"),
			[]string{"upstream_tls.ca: ", "does-not-exist.pem"}},
		{"ca file without PEM", siteWith("to tls/10.0.0.1:443\nupstream_tls {\n\tca " + notPEM + "\n}"),
			[]string{"upstream_tls.ca: ", "no PEM certificate"}},

		// Values the Caddyfile parser passes on (they are written as their
		// kind says) and Provision refuses for what they mean.
		{"dial_timeout negative", siteWith("to 127.0.0.1:5900\ndial_timeout -1s"),
			[]string{"dial_timeout: must not be negative"}},
		{"reload_close_after negative", siteWith("to 127.0.0.1:5900\nreload_close_after -5m"),
			[]string{"reload_close_after: must not be negative"}},
		{"buffer_size too small", siteWith("to 127.0.0.1:5900\nbuffer_size 10"),
			[]string{"buffer_size: 10 bytes is outside 512 B to 16 MiB"}},
		{"buffer_size too large", siteWith("to 127.0.0.1:5900\nbuffer_size 1GiB"),
			[]string{"buffer_size: 1073741824 bytes is outside 512 B to 16 MiB"}},
		{"subprotocols invalid token", siteWith("to 127.0.0.1:5900\nsubprotocols binary a,b"),
			[]string{"subprotocols[1] (subprotocols): ", `"a,b"`, "not a valid protocol name"}},
		{"heartbeat_payload without heartbeat", siteWith("to 127.0.0.1:5900\nheartbeat_payload text ping"),
			[]string{"heartbeat_text (heartbeat_payload): needs heartbeat_interval"}},
		{"throttle burst only", siteWith("to 127.0.0.1:5900\nthrottle {\n\tburst 1KiB\n}"),
			[]string{"throttle: set read, write or both"}},
		{"origins bad pattern", siteWith("to 127.0.0.1:5900\norigins https://ok.example https://exa mple.com/"),
			[]string{"origins: ", `"mple.com/"`, "scheme://host"}},
		{"origins with path", siteWith("to 127.0.0.1:5900\norigins https://example.com/app"),
			[]string{"origins: ", "no path"}},
		{"origins star and more", siteWith("to 127.0.0.1:5900\norigins * https://example.com"),
			[]string{"origins: ", "every origin"}},
		{"auth empty", siteWith("to 127.0.0.1:5900\nauth {\n}"),
			[]string{"auth: configure basic, bearer or jwt"}},
		{"basic plaintext", siteWith("to 127.0.0.1:5900\nauth {\n\tbasic {\n\t\talice hunter2\n\t}\n}"),
			[]string{"auth.basic[0].password (auth > basic): ", `"alice"`, "bcrypt hash", "not plain text"}},
		{"jwt no key", siteWith("to 127.0.0.1:5900\nauth {\n\tjwt {\n\t\tissuer x\n\t}\n}"),
			[]string{"auth.jwt: configure exactly one of secret, public_key and jwks_file"}},
		{"jwt two keys", siteWith("to 127.0.0.1:5900\nauth {\n\tjwt {\n\t\tsecret s\n\t\tjwks_file f\n\t}\n}"),
			[]string{"auth.jwt: configure exactly one"}},
		{"jwt negative leeway", siteWith("to 127.0.0.1:5900\nauth {\n\tjwt {\n\t\tsecret s\n\t\tleeway -1s\n\t}\n}"),
			[]string{"auth.jwt.leeway: must not be negative"}},
		{"lb_retries negative", siteWith("to 127.0.0.1:5900\nlb_retries -1"),
			[]string{"load_balancing.retries (lb_retries): must not be negative"}},
		{"health_send bad escape", siteWith("to 127.0.0.1:5900\nhealth_interval 1s\nhealth_send \"PING\\xZZ\""),
			[]string{"health_checks.active.send (health_send): ", "hex"}},
		{"health_expect without interval", siteWith("to 127.0.0.1:5900\nhealth_expect PONG"),
			[]string{"health_checks.active.interval (health_interval): ", "positive interval is required"}},
		{"max_fails without fail_duration", siteWith("to 127.0.0.1:5900\nmax_fails 2"),
			[]string{"health_checks.passive.max_fails (max_fails): needs fail_duration"}},
		{"preamble bad escape", siteWith("to 127.0.0.1:5900\npreamble `LOGIN\\x1`"),
			[]string{"preamble: ", "hex"}},
		{"targets without source", siteWith("targets {\n\tquery token\n}"),
			[]string{"targets: configure at least one source"}},
		{"targets query not plain", siteWith("targets {\n\tquery a&b\n\tfile /x\n}"),
			[]string{"targets.query: ", "plain parameter"}},
		{"targets path", siteWith("targets {\n\tpath seg\n\tfile /x\n}"),
			[]string{"targets.path: ", `"seg"`}},
		{"targets cookie", siteWith("targets {\n\tcookie a;b\n\tfile /x\n}"),
			[]string{"targets.cookie: ", "not a valid cookie name"}},
		{"targets map value", siteWith("targets {\n\tmap {\n\t\tsecret-tok nowhere\n\t}\n}"),
			[]string{"targets.map: ", `"nowhere"`}},
		{"targets cache_ttl negative", siteWith("targets {\n\tfile /x\n\tcache_ttl -1s\n}"),
			[]string{"targets.cache_ttl: must not be negative"}},
		{"targets redis URL", siteWith("targets {\n\tredis http://:hunter2@x/\n}"),
			[]string{"targets.redis.url (targets > redis): ", "redis://"}},
		{"allow_targets port", siteWith("targets {\n\tfile /x\n}\nallow_targets 10.0.0.0/8:0-1"),
			[]string{"allow_targets: ", "not a port"}},
		{"allow_targets relative socket", siteWith("targets {\n\tfile /x\n}\nallow_targets unix/run/*.sock"),
			[]string{"allow_targets: ", "absolute"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := loadHandler(t, tt.cfg)
			if err == nil {
				t.Fatalf("Provision accepted the handler %+v, want an error for:\n%s", h, tt.cfg)
			}
			t.Logf("error: %v", err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			for _, secret := range []string{"hunter2", "secret-tok"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q shows the secret %q", err, secret)
				}
			}
		})
	}
}

// writeTestCA writes a self-signed CA certificate in PEM to a temp file.
func writeTestCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ws_to_tcp test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCaddyfileProvision checks that good Caddyfiles load, and that the
// values reach the provisioned handler.
func TestCaddyfileProvision(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		h, err := loadHandler(t, ":8080 {\n\tws_to_tcp /vnc 127.0.0.1:5900\n}\n")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := time.Duration(h.DialTimeout), defaultDialTimeout; got != want {
			t.Errorf("DialTimeout = %v, want %v", got, want)
		}
		if got, want := time.Duration(h.WriteTimeout), defaultWriteTimeout; got != want {
			t.Errorf("WriteTimeout = %v, want %v", got, want)
		}
		if h.BufferSize != defaultBufferSize {
			t.Errorf("BufferSize = %d, want %d", h.BufferSize, defaultBufferSize)
		}
		if h.MessageType != "" {
			t.Errorf("MessageType = %q, want empty (binary)", h.MessageType)
		}
		if h.upstreamTLS != nil {
			t.Errorf("upstreamTLS is set without tls/ upstreams or upstream_tls")
		}
		if len(h.Upstreams) != 1 || h.Upstreams[0].network != "tcp" || h.Upstreams[0].address != "127.0.0.1:5900" {
			t.Errorf("Upstreams = %+v, want one tcp 127.0.0.1:5900", h.Upstreams)
		}
	})

	t.Run("all framing options", func(t *testing.T) {
		h, err := loadHandler(t, siteWith(strings.Join([]string{
			"to unix//run/vnc.sock [::1]:5900",
			"dial_timeout 2s",
			"write_timeout 1m",
			"reload_close_after 10m",
			"subprotocols binary mqtt",
			"message_type text",
			"max_message_size 1MiB",
			"validate_utf8",
			"buffer_size 64KiB",
		}, "\n")))
		if err != nil {
			t.Fatal(err)
		}
		if time.Duration(h.DialTimeout) != 2*time.Second || time.Duration(h.WriteTimeout) != time.Minute ||
			time.Duration(h.ReloadCloseAfter) != 10*time.Minute {
			t.Errorf("durations = %v %v %v, want 2s 1m 10m",
				time.Duration(h.DialTimeout), time.Duration(h.WriteTimeout), time.Duration(h.ReloadCloseAfter))
		}
		if h.MessageType != "text" {
			t.Errorf("MessageType = %q, want text", h.MessageType)
		}
		if h.MaxMessageSize != 1<<20 || h.BufferSize != 64<<10 || !h.ValidateUTF8 {
			t.Errorf("MaxMessageSize %d, BufferSize %d, ValidateUTF8 %v; want 1 MiB, 64 KiB, true",
				h.MaxMessageSize, h.BufferSize, h.ValidateUTF8)
		}
		if strings.Join(h.Subprotocols, " ") != "binary mqtt" {
			t.Errorf("Subprotocols = %v, want binary and mqtt", h.Subprotocols)
		}
		if len(h.Upstreams) != 2 ||
			h.Upstreams[0].network != "unix" || h.Upstreams[0].address != "/run/vnc.sock" ||
			h.Upstreams[1].network != "tcp" || h.Upstreams[1].address != "[::1]:5900" {
			t.Errorf("Upstreams = %+v %+v", h.Upstreams[0], h.Upstreams[1])
		}
	})

	t.Run("tls upstream with system roots", func(t *testing.T) {
		h, err := loadHandler(t, siteWith("to tls/vnc.example:5901"))
		if err != nil {
			t.Fatal(err)
		}
		if h.upstreamTLS == nil || h.upstreamTLS.RootCAs != nil || h.upstreamTLS.InsecureSkipVerify {
			t.Errorf("upstreamTLS = %+v, want a config with the system roots", h.upstreamTLS)
		}
		if !h.Upstreams[0].useTLS || h.Upstreams[0].address != "vnc.example:5901" {
			t.Errorf("upstream = %+v, want TLS to vnc.example:5901", h.Upstreams[0])
		}
	})

	t.Run("upstream_tls", func(t *testing.T) {
		ca := writeTestCA(t)
		h, err := loadHandler(t, siteWith("to tls/10.0.0.1:5901\nupstream_tls {\n\tca "+ca+
			"\n\tserver_name vnc.internal\n\tinsecure_skip_verify\n}"))
		if err != nil {
			t.Fatal(err)
		}
		c := h.upstreamTLS
		if c == nil || c.RootCAs == nil || c.ServerName != "vnc.internal" || !c.InsecureSkipVerify {
			t.Fatalf("upstreamTLS = %+v, want the CA pool, server name vnc.internal, insecure_skip_verify", c)
		}
	})
}

// caddyfileErrorCase is a ws_to_tcp block (its first line is line 3 of the
// Caddyfile siteWith makes) that must fail to adapt, naming line and words.
type caddyfileErrorCase struct {
	name string
	body string
	line int      // the line the error must name
	want []string // further substrings of the error
}

// checkCaddyfileErrors adapts each case and checks its error names the
// line and contains the words: bad input fails at load with the
// subdirective named.
func checkCaddyfileErrors(t *testing.T, tests []caddyfileErrorCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := siteWith(tt.body)
			_, err := adaptCaddyfile(cfg)
			if err == nil {
				t.Fatalf("adapting succeeded, want an error for:\n%s", cfg)
			}
			msg := err.Error()
			if loc := "Caddyfile:" + strconv.Itoa(tt.line); !strings.Contains(msg, loc) {
				t.Errorf("error %q does not name the line %q", msg, loc)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

package wstotcp

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestCrossSiteCookieRefusedByDefault: a page on another site cannot use
// the browser's cookie to open the tunnel; the same page's origin can.
func TestCrossSiteCookieRefusedByDefault(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	const tok = "cookie-token-7f3a"
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		auth {
			bearer `+tok+`
		}
	}
}`)
	cookie := "access_token=" + tok
	for _, origin := range []string{"https://evil.example", "http://127.0.0.1:1", "null", fmt.Sprintf("http://localhost:%d", s.httpPort)} {
		expectHandshake(t, s, "/", headerOf("Cookie", cookie, "Origin", origin), http.StatusForbidden)
	}
	m := s.waitRejection(rejectOrigin, http.StatusForbidden)
	if m["level"] != "info" || m["remote_ip"] != "127.0.0.1" {
		t.Errorf("rejection line: %v", m)
	}
	// The same cookie from the site's own page, and from a client that is
	// not a browser. Had a refused handshake been dialled, its connection
	// would be the first the upstream accepts and the round trip would
	// fail.
	c, _, err := s.tryDial("/", headerOf("Cookie", cookie, "Origin", fmt.Sprintf("http://127.0.0.1:%d", s.httpPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, up.accept(t), "same origin")
	c2, _, err := s.tryDial("/", headerOf("Cookie", cookie))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	roundTrip(t, c2, up.accept(t), "no origin")
}

func TestOriginPatterns(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	route /list {
		ws_to_tcp `+up.addr+` {
			origins https://*.example.com http://127.0.0.1:* null
		}
	}
	route /any {
		ws_to_tcp `+up.addr+` {
			origins *
		}
	}
}`)
	for _, tt := range []struct {
		origin string
		want   int
	}{
		{"https://app.example.com", 101},
		{"HTTPS://App.Example.COM", 101},
		{"https://example.com", 403},
		{"https://a.b.example.com", 403},
		{"https://app.example.com.evil.net", 403},
		{"http://app.example.com", 403},
		{"https://app.example.com:8443", 403},
		{"http://127.0.0.1:5173", 101},
		{"http://127.0.0.1", 101},
		{"http://127.0.0.2:5173", 403},
		{"null", 101},
		{fmt.Sprintf("http://127.0.0.1:%d", s.httpPort), 101}, // same origin
	} {
		t.Run(tt.origin, func(t *testing.T) {
			expectHandshake(t, s, "/list", headerOf("Origin", tt.origin), tt.want)
		})
	}
	expectHandshake(t, s, "/any", headerOf("Origin", "https://evil.example"), 101)
	s.waitLog("", "warning about origins *", func(m map[string]any) bool {
		return m["level"] == "warn" && m["logger"] == "http.handlers.ws_to_tcp" &&
			strings.HasPrefix(fmt.Sprint(m["msg"]), "origins *")
	})
}

// TestAuthCarriers: a bearer token is accepted from each carrier; the
// query and subprotocol carriers are scrubbed before later handlers (here
// log_append, evaluated after the handler) see the request.
func TestAuthCarriers(t *testing.T) {
	up := echoUpstream(t)
	const tok = "carrier-token-Zx81q"
	t.Setenv("WS_CARRIER_TOKEN", tok)
	s := startCaddy(t, `{HTTP} {
	log {
		output ws_to_tcp_test access
	}
	log_append uri_after {http.request.uri}
	log_append proto_after {http.request.header.Sec-WebSocket-Protocol}
	route /default {
		ws_to_tcp `+up.addr+` {
			auth {
				bearer {env.WS_CARRIER_TOKEN}
			}
		}
	}
	route /renamed {
		ws_to_tcp `+up.addr+` {
			auth {
				bearer `+tok+`
				token_query t
				token_cookie sess
			}
		}
	}
	route /strict {
		ws_to_tcp `+up.addr+` {
			subprotocols binary base64
			auth {
				bearer `+tok+`
				token_query off
			}
		}
	}
}`)
	accessLine := func(what string, pred func(m map[string]any) bool) map[string]any {
		t.Helper()
		return s.waitLog("access", what, pred)
	}

	t.Run("header", func(t *testing.T) {
		expectHandshake(t, s, "/default", headerOf("Authorization", "Bearer "+tok), 101)
	})
	t.Run("query", func(t *testing.T) {
		expectHandshake(t, s, "/default?x=1&access_token="+tok+"&y=2", nil, 101)
		accessLine("with the query scrubbed", func(m map[string]any) bool { return m["uri_after"] == "/default?x=1&y=2" })
	})
	t.Run("cookie", func(t *testing.T) {
		expectHandshake(t, s, "/default", headerOf("Cookie", "theme=dark; access_token="+tok), 101)
	})
	t.Run("subprotocol", func(t *testing.T) {
		c, resp := expectHandshake(t, s, "/default?sub=1", headerOf("Sec-WebSocket-Protocol", "binary, bearer."+tok), 101)
		if c.Subprotocol() != "binary" || strings.Join(resp.Header.Values("Sec-WebSocket-Protocol"), ",") != "binary" {
			t.Errorf("echoed %q, want binary only", resp.Header.Values("Sec-WebSocket-Protocol"))
		}
		m := accessLine("of the subprotocol request", func(m map[string]any) bool { return m["uri_after"] == "/default?sub=1" })
		if m["proto_after"] != "binary" {
			t.Errorf("later handlers see Sec-WebSocket-Protocol %q, want binary", m["proto_after"])
		}
	})
	t.Run("subprotocol token only", func(t *testing.T) {
		expectHandshake(t, s, "/default", headerOf("Sec-WebSocket-Protocol", "bearer."+tok), 400)
		m := s.waitRejection(rejectSubprotocol, 400)
		if !strings.Contains(fmt.Sprint(m["error"]), "a second subprotocol must be offered") {
			t.Errorf("rejection: %v", m["error"])
		}
	})
	t.Run("refused", func(t *testing.T) {
		for _, h := range []http.Header{
			headerOf("Authorization", "Bearer wrong"),
			headerOf("Authorization", "Basic "+tok),
			headerOf("Cookie", "access_token=wrong"),
			headerOf("Sec-WebSocket-Protocol", "binary, bearer.wrong"),
		} {
			_, resp := expectHandshake(t, s, "/default", h, 401)
			if got := resp.Header.Values("WWW-Authenticate"); strings.Join(got, "|") != `Bearer realm="ws_to_tcp", error="invalid_token"` &&
				h.Get("Authorization") != "Basic "+tok {
				t.Errorf("%v: WWW-Authenticate %q", h, got)
			}
		}
		expectHandshake(t, s, "/default?access_token=wrong", nil, 401)
		_, resp := expectHandshake(t, s, "/default", nil, 401)
		if got := resp.Header.Values("WWW-Authenticate"); len(got) != 1 || got[0] != `Bearer realm="ws_to_tcp"` {
			t.Errorf("without credentials: WWW-Authenticate %q", got)
		}
		s.waitRejection(rejectAuth, 401)
	})
	t.Run("renamed carriers", func(t *testing.T) {
		expectHandshake(t, s, "/renamed?t="+tok, nil, 101)
		expectHandshake(t, s, "/renamed", headerOf("Cookie", "sess="+tok), 101)
		expectHandshake(t, s, "/renamed?access_token="+tok, nil, 401)
		expectHandshake(t, s, "/renamed", headerOf("Cookie", "access_token="+tok), 401)
	})
	t.Run("configured subprotocols", func(t *testing.T) {
		// base64 frames: no echo check
		st, c, _ := dialStatus(t, s, "/strict", headerOf("Sec-WebSocket-Protocol", "bearer."+tok+", base64"))
		if st != 101 || c.Subprotocol() != "base64" {
			t.Fatalf("status %d, want 101 echoing base64", st)
		}
		expectHandshake(t, s, "/strict", headerOf("Sec-WebSocket-Protocol", "mqtt, bearer."+tok), 400)
		expectHandshake(t, s, "/strict?access_token="+tok, headerOf("Sec-WebSocket-Protocol", "binary"), 401) // query carrier off
	})
}

// TestTokenOnlySubprotocolMessage: the 400 says why; handle_errors can
// show it to the client.
func TestTokenOnlySubprotocolMessage(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		auth {
			bearer good-token
		}
	}
	handle_errors 400 401 403 {
		respond "{err.message}" {err.status_code}
	}
}`)
	_, resp := expectHandshake(t, s, "/", headerOf("Sec-WebSocket-Protocol", "bearer.good-token"), 400)
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "a second subprotocol must be offered") || strings.Contains(string(body), "good-token") {
		t.Errorf("body %q", body)
	}
	if resp.Header.Get("Sec-WebSocket-Protocol") != "" {
		t.Errorf("400 carries Sec-WebSocket-Protocol %q", resp.Header.Get("Sec-WebSocket-Protocol"))
	}
	// a bad token with only the token entry: authentication comes first;
	// the challenge survives handle_errors
	_, resp = expectHandshake(t, s, "/", headerOf("Sec-WebSocket-Protocol", "bearer.bad-token"), 401)
	body, _ = io.ReadAll(resp.Body)
	if string(body) != "invalid credentials" || resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("401: body %q, WWW-Authenticate %q", body, resp.Header.Get("WWW-Authenticate"))
	}
}

// TestIPRulesRecipe: the IP rule of docs/admission.md (IP rules), Caddy's
// client_ip matcher in front of ws_to_tcp.
func TestIPRulesRecipe(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	route /loopback-only {
		@outsiders not client_ip 127.0.0.0/8 ::1
		respond @outsiders 403
		ws_to_tcp `+up.addr+`
	}
	route /lan-only {
		@outsiders not client_ip 192.168.0.0/16
		respond @outsiders 403
		ws_to_tcp `+up.addr+`
	}
}`)
	expectHandshake(t, s, "/loopback-only", nil, 101)
	expectHandshake(t, s, "/lan-only", nil, 403)
}

func TestBasicAuthMethod(t *testing.T) {
	up := echoUpstream(t)
	hash := bcryptHash(t, "s3cret")
	s := startCaddy(t, `{HTTP} {
	route /basic {
		ws_to_tcp `+up.addr+` {
			auth {
				basic {
					alice `+hash+`
				}
				realm "VNC area"
			}
		}
	}
	route /both {
		ws_to_tcp `+up.addr+` {
			auth {
				basic {
					alice `+hash+`
				}
				bearer both-token
			}
		}
	}
}`)
	c, _ := expectHandshake(t, s, "/basic", headerOf("Authorization", basicAuthValue("alice", "s3cret")), 101)
	c.Close()
	s.waitClosedAs("alice")

	_, resp := expectHandshake(t, s, "/basic", headerOf("Authorization", basicAuthValue("alice", "S3cret")), 401)
	if got := resp.Header.Values("WWW-Authenticate"); len(got) != 1 || got[0] != `Basic realm="VNC area", charset="UTF-8"` {
		t.Errorf("WWW-Authenticate %q", got)
	}
	expectHandshake(t, s, "/basic", headerOf("Authorization", basicAuthValue("bob", "s3cret")), 401)
	expectHandshake(t, s, "/basic", headerOf("Authorization", "Bearer both-token"), 401)

	_, resp = expectHandshake(t, s, "/both", nil, 401)
	if got := resp.Header.Values("WWW-Authenticate"); len(got) != 2 ||
		got[0] != `Basic realm="ws_to_tcp", charset="UTF-8"` || got[1] != `Bearer realm="ws_to_tcp"` {
		t.Errorf("two schemes: WWW-Authenticate %q", got)
	}
	c, _ = expectHandshake(t, s, "/both", headerOf("Authorization", "Bearer both-token"), 101)
	c.Close()
	s.waitClosedAs("bearer#1")
	c, _ = expectHandshake(t, s, "/both", headerOf("Authorization", basicAuthValue("alice", "s3cret")), 101)
	c.Close()

	t.Run("refused at load", func(t *testing.T) {
		t.Setenv("WS_PLAIN_PASSWORD", "hunter2")
		t.Setenv("WS_EMPTY_TOKEN", "")
		for _, tt := range []struct{ auth, want string }{
			{"basic {\n\t\t\t\talice hunter2\n\t\t\t}", "auth.basic[0].password (auth > basic): "},
			{"basic {\n\t\t\t\talice {env.WS_PLAIN_PASSWORD}\n\t\t\t}", "auth.basic[0].password (auth > basic): "},
			{"bearer {env.WS_EMPTY_TOKEN}", "auth.bearer[0] (auth > bearer): the token is empty"},
		} {
			err := s.tryLoad(`{HTTP} {
	ws_to_tcp ` + up.addr + ` {
		auth {
			` + tt.auth + `
		}
	}
}`)
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("load: %v, want an error containing %q and no password", err, tt.want)
			}
		}
		// the running configuration is untouched
		expectHandshake(t, s, "/basic", headerOf("Authorization", basicAuthValue("alice", "s3cret")), 101)
	})
}

// TestJWTAuthMethods: valid tokens of each key type are admitted with their
// subject as the user; every kind of invalid token is refused.
func TestJWTAuthMethods(t *testing.T) {
	up := echoUpstream(t)
	k := jwtKeys(t)
	secret := "hs-secret-0123456789abcdef-0123456789"
	t.Setenv("WS_JWT_SECRET", secret)
	rsaPEM := writePublicPEM(t, &k.rsa.PublicKey)
	rsaPEMBytes, _ := os.ReadFile(rsaPEM)
	ecPEM := writePublicPEM(t, &k.ec.PublicKey)
	jwks := writeJWKS(t,
		jose.JSONWebKey{Key: k.ed.Public(), KeyID: "ed-1", Algorithm: "EdDSA", Use: "sig"},
		jose.JSONWebKey{Key: &k.rsaOther.PublicKey, KeyID: "rsa-1", Use: "sig"},
	)
	s := startCaddy(t, `{HTTP} {
	route /hs {
		ws_to_tcp `+up.addr+` {
			auth {
				jwt {
					secret {env.WS_JWT_SECRET}
					issuer https://issuer.test
					audience vnc
				}
			}
		}
	}
	route /rs {
		ws_to_tcp `+up.addr+` {
			auth {
				jwt {
					public_key `+rsaPEM+`
				}
			}
		}
	}
	route /es {
		ws_to_tcp `+up.addr+` {
			auth {
				jwt {
					public_key `+ecPEM+`
				}
			}
		}
	}
	route /jwks {
		ws_to_tcp `+up.addr+` {
			auth {
				jwt {
					jwks_file `+jwks+`
				}
			}
		}
	}
	route /leeway {
		ws_to_tcp `+up.addr+` {
			auth {
				jwt {
					secret `+secret+`
					leeway 1m
				}
			}
		}
	}
}`)
	hsClaims := func(sub string, kv ...any) jwt.MapClaims {
		return jwtClaims(sub, append([]any{"iss", "https://issuer.test", "aud", "vnc"}, kv...)...)
	}
	now := time.Now()
	bearer := func(tok string) http.Header { return headerOf("Authorization", "Bearer "+tok) }

	ok := []struct {
		name, path, sub, tok string
	}{
		{"HS256", "/hs", "hs-user", signJWT(t, jwt.SigningMethodHS256, []byte(secret), hsClaims("hs-user"))},
		{"HS512", "/hs", "hs512-user", signJWT(t, jwt.SigningMethodHS512, []byte(secret), hsClaims("hs512-user"))},
		{"RS256", "/rs", "rs-user", signJWT(t, jwt.SigningMethodRS256, k.rsa, jwtClaims("rs-user"))},
		{"ES256", "/es", "es-user", signJWT(t, jwt.SigningMethodES256, k.ec, jwtClaims("es-user"))},
		{"EdDSA", "/jwks", "ed-user", signJWT(t, jwt.SigningMethodEdDSA, k.ed, jwtClaims("ed-user"), map[string]any{"kid": "ed-1"})},
		{"RS384 from the JWKS", "/jwks", "jwks-rs-user", signJWT(t, jwt.SigningMethodRS384, k.rsaOther, jwtClaims("jwks-rs-user"), map[string]any{"kid": "rsa-1"})},
		{"expired within leeway", "/leeway", "leeway-user", signJWT(t, jwt.SigningMethodHS256, []byte(secret),
			jwtClaims("leeway-user", "exp", now.Add(-20*time.Second).Unix()))},
		{"not yet valid within leeway", "/leeway", "nbf-leeway-user", signJWT(t, jwt.SigningMethodHS256, []byte(secret),
			jwtClaims("nbf-leeway-user", "nbf", now.Add(20*time.Second).Unix()))},
	}
	for _, tt := range ok {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := expectHandshake(t, s, tt.path, bearer(tt.tok), 101)
			c.Close()
			s.waitClosedAs(tt.sub)
		})
	}
	// the query carries a JWT as well
	c, _ := expectHandshake(t, s, "/es?access_token="+signJWT(t, jwt.SigningMethodES256, k.ec, jwtClaims("es-query-user")), nil, 101)
	c.Close()
	s.waitClosedAs("es-query-user")

	refused := []struct {
		name, path, tok string
	}{
		{"expired", "/hs", signJWT(t, jwt.SigningMethodHS256, []byte(secret), hsClaims("u", "exp", now.Add(-time.Hour).Unix()))},
		{"expired 20s, no leeway", "/hs", signJWT(t, jwt.SigningMethodHS256, []byte(secret), hsClaims("u", "exp", now.Add(-20*time.Second).Unix()))},
		{"not yet valid", "/hs", signJWT(t, jwt.SigningMethodHS256, []byte(secret), hsClaims("u", "nbf", now.Add(time.Hour).Unix()))},
		{"wrong audience", "/hs", signJWT(t, jwt.SigningMethodHS256, []byte(secret), hsClaims("u", "aud", "mqtt"))},
		{"wrong issuer", "/hs", signJWT(t, jwt.SigningMethodHS256, []byte(secret), hsClaims("u", "iss", "https://evil.test"))},
		{"wrong secret", "/hs", signJWT(t, jwt.SigningMethodHS256, []byte("another-secret-0123456789abcdef-01234"), hsClaims("u"))},
		{"alg none", "/hs", signJWT(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, hsClaims("u"))},
		{"alg none, RSA key", "/rs", signJWT(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwtClaims("u"))},
		{"wrong RSA key", "/rs", signJWT(t, jwt.SigningMethodRS256, k.rsaOther, jwtClaims("u"))},
		{"HS256 signed with the RSA public key", "/rs", signJWT(t, jwt.SigningMethodHS256, rsaPEMBytes, jwtClaims("u"))},
		{"ES256 to an RSA key", "/rs", signJWT(t, jwt.SigningMethodES256, k.ec, jwtClaims("u"))},
		{"EdDSA, wrong kid", "/jwks", signJWT(t, jwt.SigningMethodEdDSA, k.ed, jwtClaims("u"), map[string]any{"kid": "rsa-1"})},
		{"RS256 with the key the PEM route trusts", "/jwks", signJWT(t, jwt.SigningMethodRS256, k.rsa, jwtClaims("u"))},
		{"expired beyond leeway", "/leeway", signJWT(t, jwt.SigningMethodHS256, []byte(secret), jwtClaims("u", "exp", now.Add(-2*time.Minute).Unix()))},
		{"not a JWT", "/hs", "not-a-jwt"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			_, resp := expectHandshake(t, s, tt.path, bearer(tt.tok), 401)
			if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer realm="ws_to_tcp", error="invalid_token"` {
				t.Errorf("WWW-Authenticate %q", got)
			}
		})
	}
}

// TestBasicAuthComposition: a user set by Caddy's basic_auth counts as
// authenticated, with or without an auth block, and is the tunnel's user.
func TestBasicAuthComposition(t *testing.T) {
	up := echoUpstream(t)
	hash := bcryptHash(t, "s3cret")
	s := startCaddy(t, `{HTTP} {
	route /plain {
		basic_auth {
			alice `+hash+`
		}
		ws_to_tcp `+up.addr+`
	}
	route /with-auth {
		basic_auth {
			bob `+hash+`
		}
		ws_to_tcp `+up.addr+` {
			auth {
				bearer only-token
			}
			max_connections_per_user 1
		}
	}
}`)
	expectHandshake(t, s, "/plain", nil, 401) // basic_auth's own refusal
	c, _ := expectHandshake(t, s, "/plain", headerOf("Authorization", basicAuthValue("alice", "s3cret")), 101)
	c.Close()
	s.waitClosedAs("alice")

	// the auth block is skipped for bob, but his user counts for the limit
	c, _ = expectHandshake(t, s, "/with-auth", headerOf("Authorization", basicAuthValue("bob", "s3cret")), 101)
	_, resp := expectHandshake(t, s, "/with-auth", headerOf("Authorization", basicAuthValue("bob", "s3cret")), 503)
	if resp.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if m := s.waitRejection(rejectLimit, 503); m["user"] != "bob" {
		t.Errorf("limit rejection: %v", m)
	}
	c.Close()
	s.waitClosedAs("bob")
}

// TestForwardAuthComposition tests the recipe of docs/admission.md
// (Composition with basic_auth and forward_auth): forward_auth copies
// the auth service's user header, and `vars` makes it the user id.
func TestForwardAuthComposition(t *testing.T) {
	up := echoUpstream(t)
	var calls atomic.Int32
	authSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.URL.Path != "/auth" {
			http.Error(w, "wrong path", http.StatusNotFound)
			return
		}
		switch r.Header.Get("X-Api-Key") {
		case "carol-key":
			w.Header().Set("X-User", "carol")
		case "anonymous-key": // valid, but names no user
		default:
			http.Error(w, "denied", http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go authSrv.Serve(ln)
	t.Cleanup(func() { authSrv.Close() })

	s := startCaddy(t, `{HTTP} {
	route /fa {
		forward_auth `+ln.Addr().String()+` {
			uri /auth
			copy_headers X-User
		}
		vars http.auth.user.id {http.request.header.X-User}
		ws_to_tcp `+up.addr+`
	}
	route /fa-auth {
		forward_auth `+ln.Addr().String()+` {
			uri /auth
			copy_headers X-User
		}
		vars http.auth.user.id {http.request.header.X-User}
		ws_to_tcp `+up.addr+` {
			auth {
				bearer fallback-token
			}
		}
	}
}`)
	c, _ := expectHandshake(t, s, "/fa", headerOf("X-Api-Key", "carol-key"), 101)
	c.Close()
	s.waitClosedAs("carol")

	// a client cannot name itself: forward_auth replaces the header
	c, _ = expectHandshake(t, s, "/fa", headerOf("X-Api-Key", "carol-key", "X-User", "mallory"), 101)
	c.Close()
	expectHandshake(t, s, "/fa", headerOf("X-Api-Key", "wrong", "X-User", "mallory"), 401)
	expectHandshake(t, s, "/fa", headerOf("X-User", "mallory"), 401)

	// with an auth block: the forward_auth user suffices; a success of
	// forward_auth without a user leaves the auth block to decide
	c, _ = expectHandshake(t, s, "/fa-auth", headerOf("X-Api-Key", "carol-key"), 101)
	c.Close()
	expectHandshake(t, s, "/fa-auth", headerOf("X-Api-Key", "anonymous-key", "X-User", "mallory"), 401)
	c, _ = expectHandshake(t, s, "/fa-auth", headerOf("X-Api-Key", "anonymous-key", "Authorization", "Bearer fallback-token"), 101)
	c.Close()
	s.waitClosedAs("bearer#1")

	waitNoTunnels(t)
	for _, m := range s.logLines("") {
		if m["msg"] == "tunnel closed" && m["user"] == "mallory" {
			t.Errorf("a client-supplied X-User became the user: %v", m)
		}
	}
	if n := calls.Load(); n < 7 {
		t.Errorf("the auth service was called %d times", n)
	}
}

// TestAdmissionOrder: limits, then origin, then authentication, then
// subprotocol (docs/admission.md, the order of the checks).
func TestAdmissionOrder(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		max_connections 1
		auth {
			bearer order-token
		}
	}
}`)
	good := "Bearer order-token"
	evil := "https://evil.example"
	held, _ := expectHandshake(t, s, "/", headerOf("Authorization", good), 101)
	expectHandshake(t, s, "/", headerOf("Origin", evil, "Authorization", "Bearer wrong", "Sec-WebSocket-Protocol", "bearer.x"), 503)
	held.Close()
	waitNoTunnels(t)
	expectHandshake(t, s, "/", headerOf("Origin", evil, "Authorization", "Bearer wrong", "Sec-WebSocket-Protocol", "bearer.x"), 403)
	expectHandshake(t, s, "/", headerOf("Authorization", "Bearer wrong", "Sec-WebSocket-Protocol", "bearer.x"), 401)
	expectHandshake(t, s, "/", headerOf("Authorization", good, "Sec-WebSocket-Protocol", "bearer.x"), 400)
	c, _ := expectHandshake(t, s, "/", headerOf("Authorization", good), 101)
	c.Close()
}

// TestLimitSlotsReleasedOnFailures: a handshake refused after it took a
// slot, or whose dial fails, gives the slot back.
func TestLimitSlotsReleasedOnFailures(t *testing.T) {
	up := echoUpstream(t)
	closed := refusedAddr(t)
	s := startCaddy(t, `{HTTP} {
	route /dead {
		ws_to_tcp `+closed+` {
			max_connections 1
		}
	}
	route /live {
		ws_to_tcp `+up.addr+` {
			max_connections 1
			max_connections_per_ip 1
			max_connections_per_user 1
			subprotocols binary
			auth {
				bearer slot-token
			}
		}
	}
}`)
	for i := 0; i < 3; i++ {
		expectHandshake(t, s, "/dead", nil, 502)
	}
	good := headerOf("Authorization", "Bearer slot-token", "Sec-WebSocket-Protocol", "binary")
	for i := 0; i < 2; i++ {
		expectHandshake(t, s, "/live", headerOf("Origin", "https://evil.example"), 403)
		expectHandshake(t, s, "/live", headerOf("Authorization", "Bearer wrong"), 401)
		expectHandshake(t, s, "/live", headerOf("Authorization", "Bearer slot-token", "Sec-WebSocket-Protocol", "mqtt"), 400)
	}
	c, _ := expectHandshake(t, s, "/live", good, 101)
	_, resp := expectHandshake(t, s, "/live", good, 503)
	if got := resp.Header.Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After %q", got)
	}
	c.Close()
	waitNoTunnels(t)
	c, _ = expectHandshake(t, s, "/live", good, 101)
	c.Close()
}

// logFilter is the recipe of docs/admission.md (Keeping tokens out of the
// logs): Caddy logs the request as it arrived, before any handler runs, so
// a token in the query string or in the Sec-WebSocket-Protocol header must
// be filtered out of its log lines.
const logFilter = `format filter {
			request>uri query {
				delete access_token
			}
			request>headers>Sec-Websocket-Protocol regexp (?i)bearer\.[^,]+ bearer.REDACTED
		}`

// TestSecretsNeverLogged runs every success and refusal path with tokens
// in each carrier, then reads every log line of the run, the module's,
// Caddy's error log and the access log, for any of the secrets.
func TestSecretsNeverLogged(t *testing.T) {
	up := echoUpstream(t)
	closed := refusedAddr(t)
	secret := func(what string) string { return what + "-" + newConnID() }
	var (
		bearerTok = secret("BearerTok")
		wrongTok  = secret("WrongTok")
		jwtSecret = secret("JwtSecret-0123456789abcdef")
		password  = secret("Password")
		wrongPass = secret("WrongPass")
	)
	jwtTok := signJWT(t, jwt.SigningMethodHS256, []byte(jwtSecret), jwtClaims("jwt-sub"))
	jwtSig := jwtTok[strings.LastIndexByte(jwtTok, '.')+1:]
	secrets := []string{bearerTok, wrongTok, jwtSecret, password, wrongPass, jwtTok, jwtSig,
		strings.TrimPrefix(basicAuthValue("alice", password), "Basic "), strings.TrimPrefix(basicAuthValue("alice", wrongPass), "Basic ")}
	t.Setenv("WS_SECRET_BEARER", bearerTok)
	t.Setenv("WS_SECRET_JWT", jwtSecret)
	hash := bcryptHash(t, password)
	auth := `auth {
				bearer {env.WS_SECRET_BEARER}
				basic {
					alice ` + hash + `
				}
				jwt {
					secret {env.WS_SECRET_JWT}
				}
			}`
	s := startCaddyWithLog(t, logFilter, `{HTTP} {
	log {
		output ws_to_tcp_test access
		`+logFilter+`
	}
	route /ws {
		ws_to_tcp `+up.addr+` {
			`+auth+`
		}
	}
	route /full {
		ws_to_tcp `+up.addr+` {
			max_connections 1
			`+auth+`
		}
	}
	route /dead {
		ws_to_tcp `+closed+` {
			`+auth+`
		}
	}
}`)
	const evil = "https://evil.example"
	proto := "Sec-WebSocket-Protocol"
	steps := []struct {
		path string
		hdr  http.Header
		want int
	}{
		{"/ws?x=1", headerOf("Authorization", "Bearer "+bearerTok), 101},
		{"/ws?x=1&access_token=" + bearerTok, nil, 101},
		{"/ws?x=1", headerOf("Cookie", "access_token="+bearerTok), 101},
		{"/ws?x=1", headerOf(proto, "binary, bearer."+bearerTok), 101},
		{"/ws?x=1", headerOf("Authorization", "Bearer "+jwtTok), 101},
		{"/ws?x=1&access_token=" + jwtTok, nil, 101},
		{"/ws?x=1", headerOf(proto, "bearer."+jwtTok+", binary"), 101},
		{"/ws?x=1", headerOf("Authorization", basicAuthValue("alice", password)), 101},
		{"/ws?x=1", headerOf("Authorization", "Bearer "+wrongTok), 401},
		{"/ws?x=1&access_token=" + wrongTok, nil, 401},
		{"/ws?x=1", headerOf("Cookie", "access_token="+wrongTok), 401},
		{"/ws?x=1", headerOf(proto, "binary, bearer."+wrongTok), 401},
		{"/ws?x=1", headerOf("Authorization", basicAuthValue("alice", wrongPass)), 401},
		{"/ws?x=1", headerOf(proto, "bearer."+bearerTok), 400},
		{"/ws?x=1&access_token=" + bearerTok, headerOf("Origin", evil), 403},
		{"/ws?x=1", headerOf("Origin", evil, proto, "binary, bearer."+bearerTok), 403},
		{"/full?x=1", headerOf("Authorization", "Bearer "+bearerTok), 101}, // holds the one slot
		{"/full?x=1&access_token=" + bearerTok, nil, 503},
		{"/full?x=1", headerOf(proto, "binary, bearer."+bearerTok), 503},
		{"/dead?x=1&access_token=" + bearerTok, nil, 502},
		{"/dead?x=1", headerOf(proto, "binary, bearer."+bearerTok), 502},
	}
	var conns []*websocket.Conn
	for i, st := range steps {
		got, c, _ := dialStatus(t, s, st.path, st.hdr)
		if got != st.want {
			t.Errorf("step %d (%s): status %d, want %d", i, st.path, got, st.want)
		}
		if c != nil {
			echoCheck(t, c)
			conns = append(conns, c)
		}
	}
	// a malformed handshake, and a plain GET, carrying tokens
	for _, version := range []string{"12", ""} {
		req, _ := http.NewRequest("GET", s.httpURL("/ws?x=1&access_token="+bearerTok), nil)
		if version != "" {
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Version", version)
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		}
		req.Header.Set(proto, "binary, bearer."+bearerTok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if version != "" && resp.StatusCode != 400 {
			t.Errorf("malformed handshake: status %d, want 400", resp.StatusCode)
		}
	}
	// end every tunnel, so that their closing lines are written
	if len(conns) != 9 || openTunnels() != 9 {
		t.Errorf("%d tunnels admitted, %d open; want 9", len(conns), openTunnels())
	}
	for _, c := range conns {
		c.Close()
	}
	waitNoTunnels(t)
	s.waitLog("access", "of the last request", func(m map[string]any) bool {
		r, _ := m["request"].(map[string]any)
		return r != nil && r["method"] == "GET" && m["status"] != nil && fmt.Sprint(r["headers"]) != "" &&
			strings.Contains(fmt.Sprint(r["headers"]), "bearer.REDACTED") && !strings.Contains(fmt.Sprint(r["headers"]), "Upgrade")
	})

	// The secrets went through every path; none reached any log line.
	for _, stream := range []string{"", "access"} {
		for i, line := range strings.Split(s.logs.text(stream), "\n") {
			for _, sec := range secrets {
				if strings.Contains(line, sec) {
					t.Errorf("log %q line %d holds a secret (%.12s...): %s", stream, i+1, sec, line)
				}
			}
		}
	}

	// ...while the logs did record the run: the module's lines, Caddy's
	// error lines with the filtered request, and the access log.
	lines := s.logLines("")
	seen := map[string]int{}
	for _, m := range lines {
		switch {
		case m["msg"] == "handshake rejected":
			seen["rejected "+fmt.Sprint(m["reason"])]++
		case m["msg"] == "tunnel closed":
			seen["closed "+fmt.Sprint(m["user"])]++
		case strings.HasPrefix(fmt.Sprint(m["logger"]), "http.log.error"):
			seen["error log"]++
			if strings.Contains(fmt.Sprint(m["request"]), "bearer.REDACTED") {
				seen["error log filtered"]++
			}
		}
	}
	for key, n := range map[string]int{
		"rejected auth": 5, "rejected origin": 2, "rejected limit": 2, "rejected subprotocol": 1, "rejected handshake": 1,
		"closed bearer#1": 5, "closed jwt-sub": 3, "closed alice": 1, "error log": 13, "error log filtered": 6,
	} {
		if seen[key] != n {
			t.Errorf("%q: %d log lines, want %d (all: %v)", key, seen[key], n, seen)
		}
	}
	acc := s.logLines("access")
	users, kept := 0, 0
	for _, m := range acc {
		if m["user_id"] == "jwt-sub" {
			users++
		}
		if r, _ := m["request"].(map[string]any); r != nil && strings.HasSuffix(fmt.Sprint(r["uri"]), "?x=1") {
			kept++
		}
	}
	if len(acc) != len(steps)+2 || users != 3 || kept != len(acc) {
		t.Errorf("access log: %d lines (want %d), %d with user_id jwt-sub (want 3), %d with the query filtered to x=1",
			len(acc), len(steps)+2, users, kept)
	}
}

// TestPlainHTTPRebindingRefused: DNS rebinding through a real Caddy. A
// page whose name the attacker points at this plain-HTTP listener sends a
// Host and an Origin of that name: refused with 403 before any dial, and
// the log line names allowed_hosts. The site's own name, a name in
// allowed_hosts, IP addresses and localhost are admitted.
func TestPlainHTTPRebindingRefused(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `http://vnc.lan {
	ws_to_tcp `+up.addr+`
}
http:// {
	handle /named {
		ws_to_tcp `+up.addr+` {
			allowed_hosts vnc.home.arpa
		}
	}
	handle {
		ws_to_tcp `+up.addr+`
	}
}`)
	at := func(name string) http.Header {
		hostport := fmt.Sprintf("%s:%d", name, s.httpPort)
		return headerOf("Host", hostport, "Origin", "http://"+hostport)
	}
	expectHandshake(t, s, "/", at("rebind.attacker.example"), http.StatusForbidden)
	expectHandshake(t, s, "/named", at("rebind.attacker.example"), http.StatusForbidden)
	m := s.waitRejection(rejectOrigin, http.StatusForbidden)
	if !strings.Contains(fmt.Sprint(m["error"]), "allowed_hosts") {
		t.Errorf("the rejection line does not name allowed_hosts: %v", m)
	}
	expectHandshake(t, s, "/", at("vnc.lan"), http.StatusSwitchingProtocols)
	expectHandshake(t, s, "/named", at("vnc.home.arpa"), http.StatusSwitchingProtocols)
	expectHandshake(t, s, "/", at("127.0.0.1"), http.StatusSwitchingProtocols)
	expectHandshake(t, s, "/", at("localhost"), http.StatusSwitchingProtocols)
	expectHandshake(t, s, "/", headerOf("Host", fmt.Sprintf("rebind.attacker.example:%d", s.httpPort)), http.StatusSwitchingProtocols)
}

// TestBearerTokenNotInConfig: the Caddyfile adapter turns a literal bearer
// token into its sha256: form, so neither the JSON nor Caddy's DEBUG dump
// of it ("adjusted config") holds the token, and the token still
// authenticates. Placeholders stay placeholders.
func TestBearerTokenNotInConfig(t *testing.T) {
	up := echoUpstream(t)
	const tok = "literal-Token-4f9c1e0b"
	t.Setenv("WS_PLACEHOLDER_TOKEN", "env-Token-77ab")
	site := `{HTTP} {
	ws_to_tcp ` + up.addr + ` {
		auth {
			bearer ` + tok + ` {env.WS_PLACEHOLDER_TOKEN}
		}
	}
}`
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(strings.ReplaceAll(site, "{HTTP}", "http://127.0.0.1:1")), nil)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(tok))
	if strings.Contains(string(js), tok) || !strings.Contains(string(js), `"sha256:`+hex.EncodeToString(sum[:])+`"`) ||
		!strings.Contains(string(js), `"{env.WS_PLACEHOLDER_TOKEN}"`) {
		t.Errorf("adapted JSON: %s\nwant the token's sha256: form and the placeholder, never the token", js)
	}
	s := startCaddy(t, site)
	expectHandshake(t, s, "/", headerOf("Authorization", "Bearer "+tok), http.StatusSwitchingProtocols)
	expectHandshake(t, s, "/", headerOf("Authorization", "Bearer env-Token-77ab"), http.StatusSwitchingProtocols)
	expectHandshake(t, s, "/", headerOf("Authorization", "Bearer sha256:"+hex.EncodeToString(sum[:])), http.StatusUnauthorized)
	// what the admin API shows, and Caddy's DEBUG dumps, come from the
	// loaded JSON
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/config/", s.adminPort))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(cfg), "sha256:") || strings.Contains(string(cfg), tok) {
		t.Errorf("GET /config/: %s\nwant the sha256: form, never the token", cfg)
	}
	if strings.Contains(s.logs.text(""), tok) {
		t.Error("Caddy's log holds the token")
	}
}

// TestLoadWarnings: settings that are allowed but risky log a WARN from
// http.handlers.ws_to_tcp when the configuration loads: origins null,
// basic-auth hashes of different costs, Redis lookups without a key
// prefix, JWTs of a public key or JWKS without an audience, a JWT secret
// written literally.
func TestLoadWarnings(t *testing.T) {
	keys := jwtKeys(t)
	pemFile := writePublicPEM(t, &keys.rsa.PublicKey)
	s := startCaddy(t, `{HTTP} {
	route /null {
		ws_to_tcp 127.0.0.1:1 {
			origins https://app.example.com null
		}
	}
	route /costs {
		ws_to_tcp 127.0.0.1:1 {
			auth {
				basic {
					alice `+bcryptHashCost(t, "a", 4)+`
					bob `+bcryptHashCost(t, "b", 5)+`
				}
			}
		}
	}
	route /redis {
		ws_to_tcp {
			targets {
				redis redis://127.0.0.1:1
			}
			allow_targets 127.0.0.1
		}
	}
	route /jwt-pem {
		ws_to_tcp 127.0.0.1:1 {
			auth {
				jwt {
					public_key `+pemFile+`
					issuer https://auth.example.com
				}
			}
		}
	}
	route /jwt-secret {
		ws_to_tcp 127.0.0.1:1 {
			auth {
				jwt {
					secret literal-jwt-secret-0123456789abcdef
					audience vnc
				}
			}
		}
	}
}`)
	for _, want := range []string{
		"origins null",
		"different bcrypt costs",
		"targets > redis: no key prefix",
		"auth > jwt: no audience",
		"auth > jwt: the secret is written in the configuration",
	} {
		m := s.waitLog("", "warning "+want, func(m map[string]any) bool {
			return m["level"] == "warn" && m["logger"] == "http.handlers.ws_to_tcp" && strings.Contains(fmt.Sprint(m["msg"]), want)
		})
		if strings.Contains(fmt.Sprint(m), "literal-jwt-secret") {
			t.Errorf("the warning shows the secret: %v", m)
		}
	}
}

func bcryptHashCost(t testing.TB, password string, cost int) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

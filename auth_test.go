package wstotcp

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// testKeys are the JWT signing keys of the tests, made once per run (RSA
// key generation is slow under -race).
type testKeys struct {
	rsa, rsaOther *rsa.PrivateKey
	ec            *ecdsa.PrivateKey
	ed            ed25519.PrivateKey
}

var (
	keysOnce   sync.Once
	sharedKeys testKeys
)

func jwtKeys(t testing.TB) testKeys {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if sharedKeys.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if sharedKeys.rsaOther, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if sharedKeys.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if _, sharedKeys.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
	})
	return sharedKeys
}

// signJWT signs claims with method and key; it fails the test on error.
func signJWT(t testing.TB, method jwt.SigningMethod, key any, claims jwt.MapClaims, header ...map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	for _, h := range header {
		for k, v := range h {
			tok.Header[k] = v
		}
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// claims returns sub, iat and an exp in the future, plus extra.
func jwtClaims(sub string, extra ...any) jwt.MapClaims {
	c := jwt.MapClaims{"sub": sub, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()}
	for i := 0; i+1 < len(extra); i += 2 {
		c[extra[i].(string)] = extra[i+1]
	}
	return c
}

// writePublicPEM writes the PKIX PEM of a public key to a temp file.
func writePublicPEM(t testing.TB, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(t.TempDir(), "pub-*.pem")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pem.Encode(f, &pem.Block{Type: "PUBLIC KEY", Bytes: der}); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// writeJWKS writes a JWK Set of the keys to a temp file.
func writeJWKS(t testing.TB, keys ...jose.JSONWebKey) string {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestParseAuthorization(t *testing.T) {
	for _, tt := range []struct {
		in, scheme, param string
		ok                bool
	}{
		{"Bearer abc.def", "bearer", "abc.def", true},
		{"bearer   abc", "bearer", "abc", true},
		{"BASIC\tYTpi", "basic", "YTpi", true},
		{"  Bearer abc  ", "bearer", "abc", true},
		{"Bearer", "", "", false},
		{"Bearer ", "", "", false},
		{"", "", "", false},
		{" abc", "", "", false},
	} {
		scheme, param, ok := parseAuthorization(tt.in)
		if scheme != tt.scheme || param != tt.param || ok != tt.ok {
			t.Errorf("parseAuthorization(%q) = %q, %q, %v; want %q, %q, %v", tt.in, scheme, param, ok, tt.scheme, tt.param, tt.ok)
		}
	}
	if u, p, ok := decodeBasic(base64.StdEncoding.EncodeToString([]byte("alice:pa:ss"))); !ok || u != "alice" || p != "pa:ss" {
		t.Errorf("decodeBasic = %q %q %v", u, p, ok)
	}
	if _, _, ok := decodeBasic("not base64!"); ok {
		t.Error("decodeBasic accepted garbage")
	}
	if _, _, ok := decodeBasic(base64.StdEncoding.EncodeToString([]byte("no colon"))); ok {
		t.Error("decodeBasic accepted credentials without a colon")
	}
}

func TestSplitSubprotocols(t *testing.T) {
	offers, tokens := splitSubprotocols([]string{"binary, bearer.abc.def", " Bearer.XYZ ,,base64\t", "mqtt"})
	if got := strings.Join(offers, "|"); got != "binary|base64|mqtt" {
		t.Errorf("offers = %q", got)
	}
	if got := strings.Join(tokens, "|"); got != "abc.def|XYZ" {
		t.Errorf("tokens = %q", got)
	}
	if o, tk := splitSubprotocols(nil); o != nil || tk != nil {
		t.Errorf("nil header: %v %v", o, tk)
	}
}

func TestRemoveQueryParam(t *testing.T) {
	for _, tt := range []struct {
		in, name, out string
		values        []string
	}{
		{"access_token=abc&port=5900", "access_token", "port=5900", []string{"abc"}},
		{"a=1&access_token=x%2By&b=%zz", "access_token", "a=1&b=%zz", []string{"x+y"}},
		{"access%5Ftoken=abc", "access_token", "", []string{"abc"}},
		{"access_token=1&access_token=2", "access_token", "", []string{"1", "2"}},
		{"access_token", "access_token", "", []string{""}},
		{"access_tokens=abc", "access_token", "access_tokens=abc", nil},
		{"x=access_token", "access_token", "x=access_token", nil},
		{"", "access_token", "", nil},
	} {
		out, values := removeQueryParam(tt.in, tt.name)
		if out != tt.out || strings.Join(values, "|") != strings.Join(tt.values, "|") {
			t.Errorf("removeQueryParam(%q) = %q %q, want %q %q", tt.in, out, values, tt.out, tt.values)
		}
	}
}

func TestExtractCredentials(t *testing.T) {
	a, err := newAuthenticator(&Auth{Bearer: []string{"t"}})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := http.NewRequest("GET", "http://h/ws?x=1&access_token=Q&y=2", nil)
	r.RequestURI = "/ws?x=1&access_token=Q&y=2"
	r.Header.Set("Authorization", "Bearer H")
	r.Header.Set("Cookie", "other=1; access_token=C")
	r.Header.Add("Sec-WebSocket-Protocol", "binary, bearer.P")
	r.Header.Add("Sec-WebSocket-Protocol", "base64")
	c := extractCredentials(r, a)
	if got := strings.Join(c.tokens, "|"); got != "H|Q|C|P" {
		t.Errorf("tokens = %q, want H|Q|C|P", got)
	}
	if !c.fromProtocol || strings.Join(c.offers, "|") != "binary|base64" {
		t.Errorf("offers %v, fromProtocol %v", c.offers, c.fromProtocol)
	}
	if r.URL.RawQuery != "x=1&y=2" || r.RequestURI != "/ws?x=1&y=2" {
		t.Errorf("query not scrubbed: RawQuery %q, RequestURI %q", r.URL.RawQuery, r.RequestURI)
	}
	if got := r.Header.Values("Sec-WebSocket-Protocol"); strings.Join(got, "|") != "binary, base64" {
		t.Errorf("Sec-WebSocket-Protocol left as %q", got)
	}

	// only the token: the header goes; the query keeps its '?' off
	r, _ = http.NewRequest("GET", "http://h/ws?access_token=Q", nil)
	r.RequestURI = "/ws?access_token=Q"
	r.Header.Set("Sec-WebSocket-Protocol", "bearer.P")
	c = extractCredentials(r, a)
	if _, ok := r.Header["Sec-Websocket-Protocol"]; ok || len(c.offers) != 0 || !c.fromProtocol {
		t.Errorf("header %q, offers %v", r.Header.Values("Sec-WebSocket-Protocol"), c.offers)
	}
	if r.RequestURI != "/ws" || r.URL.RawQuery != "" {
		t.Errorf("RequestURI %q, RawQuery %q", r.RequestURI, r.URL.RawQuery)
	}

	// without auth, bearer entries still go, the query stays
	r, _ = http.NewRequest("GET", "http://h/ws?access_token=Q", nil)
	r.Header.Set("Sec-WebSocket-Protocol", "bearer.P, mqtt")
	c = extractCredentials(r, nil)
	if len(c.tokens) != 0 || r.URL.RawQuery != "access_token=Q" || r.Header.Get("Sec-WebSocket-Protocol") != "mqtt" {
		t.Errorf("no auth: tokens %v, query %q, header %q", c.tokens, r.URL.RawQuery, r.Header.Get("Sec-WebSocket-Protocol"))
	}

	// carriers renamed or off
	a2, err := newAuthenticator(&Auth{Bearer: []string{"t"}, TokenQuery: "off", TokenCookie: "sess"})
	if err != nil {
		t.Fatal(err)
	}
	r, _ = http.NewRequest("GET", "http://h/ws?access_token=Q", nil)
	r.Header.Set("Cookie", "access_token=C; sess=S")
	c = extractCredentials(r, a2)
	if strings.Join(c.tokens, "|") != "S" || r.URL.RawQuery != "access_token=Q" {
		t.Errorf("renamed carriers: tokens %v, query %q", c.tokens, r.URL.RawQuery)
	}
}

func TestAuthenticatorMethods(t *testing.T) {
	t.Setenv("WS_TEST_TOKEN", "from-env")
	hash := bcryptHash(t, "s3cret")
	a, err := newAuthenticator(&Auth{
		Basic:  []BasicAccount{{Username: "alice", Password: hash}},
		Bearer: []string{"first", "{env.WS_TEST_TOKEN}"},
		JWT:    &JWTAuth{Secret: "0123456789abcdef0123456789abcdef"},
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := signJWT(t, jwt.SigningMethodHS256, []byte("0123456789abcdef0123456789abcdef"), jwtClaims("jwt-user"))
	for _, tt := range []struct {
		name string
		c    credentials
		user string
		ok   bool
	}{
		{"basic", credentials{basic: true, user: "alice", password: "s3cret"}, "alice", true},
		{"basic wrong", credentials{basic: true, user: "alice", password: "S3cret"}, "", false},
		{"basic unknown user", credentials{basic: true, user: "bob", password: "s3cret"}, "", false},
		{"bearer 1", credentials{tokens: []string{"first"}}, "bearer#1", true},
		{"bearer from env", credentials{tokens: []string{"from-env"}}, "bearer#2", true},
		{"placeholder itself", credentials{tokens: []string{"{env.WS_TEST_TOKEN}"}}, "", false},
		{"bearer prefix", credentials{tokens: []string{"firs"}}, "", false},
		{"jwt", credentials{tokens: []string{hs}}, "jwt-user", true},
		{"second token wins", credentials{tokens: []string{"nope", hs}}, "jwt-user", true},
		{"nothing", credentials{}, "", false},
	} {
		user, ok := a.authenticate(&tt.c)
		if user != tt.user || ok != tt.ok {
			t.Errorf("%s: %q %v, want %q %v", tt.name, user, ok, tt.user, tt.ok)
		}
	}
	h := http.Header{}
	a.challenge(h, &credentials{tokens: []string{"x"}})
	if got := strings.Join(h.Values("WWW-Authenticate"), " | "); got != `Basic realm="ws_to_tcp", charset="UTF-8" | Bearer realm="ws_to_tcp", error="invalid_token"` {
		t.Errorf("challenge = %s", got)
	}
	h = http.Header{}
	a.challenge(h, &credentials{})
	if got := h.Values("WWW-Authenticate"); len(got) != 2 || got[1] != `Bearer realm="ws_to_tcp"` {
		t.Errorf("challenge without a token = %q", got)
	}
}

func TestJWTVerifier(t *testing.T) {
	k := jwtKeys(t)
	secret := []byte("0123456789abcdef0123456789abcdef")
	rsaPEM := writePublicPEM(t, &k.rsa.PublicKey)
	ecPEM := writePublicPEM(t, &k.ec.PublicKey)
	rsaPEMBytes, _ := os.ReadFile(rsaPEM)
	jwks := writeJWKS(t,
		jose.JSONWebKey{Key: k.ed.Public(), KeyID: "ed1", Use: "sig"},
		jose.JSONWebKey{Key: &k.rsa.PublicKey, KeyID: "rsa1", Algorithm: "RS256"},
		jose.JSONWebKey{Key: &k.rsaOther.PublicKey, KeyID: "enc1", Use: "enc"},
	)
	verifier := func(cfg JWTAuth) *jwtVerifier {
		v, err := newJWTVerifier(&cfg, caddy.NewReplacer())
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	hs := verifier(JWTAuth{Secret: string(secret), Issuer: "https://issuer.test", Audience: "vnc"})
	rs := verifier(JWTAuth{PublicKey: rsaPEM})
	es := verifier(JWTAuth{PublicKey: ecPEM, Leeway: caddy.Duration(time.Minute)})
	set := verifier(JWTAuth{JWKSFile: jwks})
	past := time.Now().Add(-time.Hour).Unix()
	soon := time.Now().Add(-20 * time.Second).Unix()
	later := time.Now().Add(time.Hour).Unix()
	good := jwtClaims("u", "iss", "https://issuer.test", "aud", "vnc")
	with := func(c jwt.MapClaims, kv ...any) jwt.MapClaims {
		out := jwt.MapClaims{}
		for k, v := range c {
			out[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i].(string)] = kv[i+1]
		}
		return out
	}
	none := signJWT(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, good)
	tests := []struct {
		name string
		v    *jwtVerifier
		tok  string
		ok   bool
	}{
		{"HS256", hs, signJWT(t, jwt.SigningMethodHS256, secret, good), true},
		{"HS384", hs, signJWT(t, jwt.SigningMethodHS384, secret, good), true},
		{"HS512", hs, signJWT(t, jwt.SigningMethodHS512, secret, good), true},
		{"aud in a list", hs, signJWT(t, jwt.SigningMethodHS256, secret, with(good, "aud", []string{"x", "vnc"})), true},
		{"wrong secret", hs, signJWT(t, jwt.SigningMethodHS256, []byte("another secret, just as long!!!!"), good), false},
		{"expired", hs, signJWT(t, jwt.SigningMethodHS256, secret, with(good, "exp", past)), false},
		{"not yet valid", hs, signJWT(t, jwt.SigningMethodHS256, secret, with(good, "nbf", later)), false},
		{"wrong audience", hs, signJWT(t, jwt.SigningMethodHS256, secret, with(good, "aud", "mqtt")), false},
		{"no audience", hs, signJWT(t, jwt.SigningMethodHS256, secret, jwtClaims("u", "iss", "https://issuer.test")), false},
		{"wrong issuer", hs, signJWT(t, jwt.SigningMethodHS256, secret, with(good, "iss", "https://evil.test")), false},
		{"exp not a number", hs, signJWT(t, jwt.SigningMethodHS256, secret, with(good, "exp", "tomorrow")), false},
		{"none", hs, none, false},
		{"none, RSA verifier", rs, none, false},
		{"RS256", rs, signJWT(t, jwt.SigningMethodRS256, k.rsa, good), true},
		{"PS256", rs, signJWT(t, jwt.SigningMethodPS256, k.rsa, good), true},
		{"RS256 other key", rs, signJWT(t, jwt.SigningMethodRS256, k.rsaOther, good), false},
		{"alg confusion: HS256 with the PEM", rs, signJWT(t, jwt.SigningMethodHS256, rsaPEMBytes, good), false},
		{"ES256", es, signJWT(t, jwt.SigningMethodES256, k.ec, good), true},
		{"ES256 expired within leeway", es, signJWT(t, jwt.SigningMethodES256, k.ec, with(good, "exp", soon)), true},
		{"ES256 expired beyond leeway", es, signJWT(t, jwt.SigningMethodES256, k.ec, with(good, "exp", past)), false},
		{"RS256 to an EC key", es, signJWT(t, jwt.SigningMethodRS256, k.rsa, good), false},
		{"EdDSA from JWKS", set, signJWT(t, jwt.SigningMethodEdDSA, k.ed, good, map[string]any{"kid": "ed1"}), true},
		{"EdDSA without kid", set, signJWT(t, jwt.SigningMethodEdDSA, k.ed, good), true},
		{"RS256 from JWKS", set, signJWT(t, jwt.SigningMethodRS256, k.rsa, good, map[string]any{"kid": "rsa1"}), true},
		{"PS256 where the JWK says RS256", set, signJWT(t, jwt.SigningMethodPS256, k.rsa, good, map[string]any{"kid": "rsa1"}), false},
		{"kid of another key", set, signJWT(t, jwt.SigningMethodRS256, k.rsa, good, map[string]any{"kid": "ed1"}), false},
		{"encryption key skipped", set, signJWT(t, jwt.SigningMethodRS256, k.rsaOther, good, map[string]any{"kid": "enc1"}), false},
		{"garbage", hs, "not.a.jwt", false},
		{"empty", hs, "", false},
	}
	for _, tt := range tests {
		sub, ok := tt.v.verify(tt.tok)
		if ok != tt.ok || ok && sub != "u" {
			t.Errorf("%s: verify = %q %v, want ok %v", tt.name, sub, ok, tt.ok)
		}
	}
}

func TestAuthProvisionErrors(t *testing.T) {
	t.Setenv("WS_EMPTY", "")
	k := jwtKeys(t)
	dir := t.TempDir()
	priv := filepath.Join(dir, "priv.pem")
	der, _ := x509.MarshalPKCS8PrivateKey(k.ec)
	os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallPEM := writePublicPEM(t, &small.PublicKey)
	badJWKS := filepath.Join(dir, "bad.json")
	os.WriteFile(badJWKS, []byte(`{"keys": [{"kty": "X", "k": "y"}]}`), 0o600)
	mismatch := writeJWKS(t, jose.JSONWebKey{Key: &k.rsa.PublicKey, Algorithm: "ES256"})
	for _, tt := range []struct {
		name string
		auth Auth
		want string
	}{
		{"empty", Auth{}, "auth: configure basic, bearer or jwt"},
		{"plaintext", Auth{Basic: []BasicAccount{{Username: "alice", Password: "hunter2"}}}, "auth.basic[0].password (auth > basic): "},
		{"plaintext message", Auth{Basic: []BasicAccount{{Username: "alice", Password: "hunter2"}}}, "not plain text"},
		{"broken hash", Auth{Basic: []BasicAccount{{Username: "alice", Password: "$2a$xx"}}}, "invalid bcrypt hash"},
		{"user with colon", Auth{Basic: []BasicAccount{{Username: "a:b", Password: bcryptHash(t, "x")}}}, "auth.basic[0].username (auth > basic): the user name must be non-empty and without ':'"},
		{"empty env token", Auth{Bearer: []string{"{env.WS_EMPTY}"}}, "auth.bearer[0] (auth > bearer): the token is empty"},
		{"empty token", Auth{Bearer: []string{"ok", ""}}, "auth.bearer[1] (auth > bearer): the token is empty"},
		{"realm quote", Auth{Bearer: []string{"x"}, Realm: `a"b`}, "auth.realm: "},
		{"cookie name", Auth{Bearer: []string{"x"}, TokenCookie: "a b"}, "auth.token_cookie: "},
		{"query name", Auth{Bearer: []string{"x"}, TokenQuery: "a=b"}, "auth.token_query: "},
		{"jwt no key", Auth{JWT: &JWTAuth{}}, "auth.jwt: configure exactly one"},
		{"jwt two keys", Auth{JWT: &JWTAuth{Secret: "s", PublicKey: "p"}}, "auth.jwt: configure exactly one"},
		{"jwt empty secret", Auth{JWT: &JWTAuth{Secret: "{env.WS_EMPTY}"}}, "auth.jwt.secret: empty"},
		{"jwt missing file", Auth{JWT: &JWTAuth{PublicKey: filepath.Join(dir, "nope.pem")}}, "auth.jwt.public_key: "},
		{"jwt private key", Auth{JWT: &JWTAuth{PublicKey: priv}}, "private key"},
		{"jwt small RSA", Auth{JWT: &JWTAuth{PublicKey: smallPEM}}, "2048 bits"},
		{"jwt not PEM", Auth{JWT: &JWTAuth{PublicKey: badJWKS}}, "no PEM public key"},
		{"jwks unusable", Auth{JWT: &JWTAuth{JWKSFile: badJWKS}}, "no key usable"},
		{"jwks alg mismatch", Auth{JWT: &JWTAuth{JWKSFile: mismatch}}, `alg "ES256" does not fit`},
		{"jwt negative leeway", Auth{JWT: &JWTAuth{Secret: "s", Leeway: -1}}, "auth.jwt.leeway: must not be negative"},
	} {
		_, err := newAuthenticator(&tt.auth)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one containing %q", tt.name, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: the error shows the password: %v", tt.name, err)
		}
	}

	// {file.*} for a secret; a token file's trailing newline is dropped
	secretFile := filepath.Join(dir, "secret")
	os.WriteFile(secretFile, []byte("file-secret-0123456789abcdefghijkl\n"), 0o600)
	a, err := newAuthenticator(&Auth{JWT: &JWTAuth{Secret: "{file." + secretFile + "}"}, Bearer: []string{"{file." + secretFile + "}"}})
	if err != nil {
		t.Fatal(err)
	}
	tok := signJWT(t, jwt.SigningMethodHS256, []byte("file-secret-0123456789abcdefghijkl"), jwtClaims("f"))
	if u, ok := a.authenticate(&credentials{tokens: []string{tok}}); !ok || u != "f" {
		t.Errorf("{file.*} secret: %q %v", u, ok)
	}
	if u, ok := a.authenticate(&credentials{tokens: []string{"file-secret-0123456789abcdefghijkl"}}); !ok || u != "bearer#1" {
		t.Errorf("{file.*} bearer token: %q %v", u, ok)
	}
}

// FuzzAuthorizationHeader: parsing any Authorization header never panics,
// and well-formed Basic and Bearer headers come back as they were made.
func FuzzAuthorizationHeader(f *testing.F) {
	f.Add("Basic YWxpY2U6czNjcmV0", "alice", "s3cret")
	f.Add("Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "bob", "pa:ss:word")
	f.Add("bearer\t\ttoken", "", "")
	f.Add("Basic ", "ü", "\x00")
	f.Add("Negotiate abc==", "a b", " c ")
	f.Fuzz(func(t *testing.T, header, user, password string) {
		scheme, param, ok := parseAuthorization(header)
		if ok {
			if scheme == "" || param == "" || scheme != strings.ToLower(scheme) ||
				strings.Trim(param, " \t") != param || strings.ContainsAny(scheme, " \t") {
				t.Fatalf("parseAuthorization(%q) = %q, %q", header, scheme, param)
			}
			if scheme == "basic" {
				decodeBasic(param)
			}
		}
		if !strings.Contains(user, ":") {
			h := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
			s, p, ok := parseAuthorization(h)
			if !ok || s != "basic" {
				t.Fatalf("%q: not parsed as basic", h)
			}
			u, pw, ok := decodeBasic(p)
			if !ok || u != user || pw != password {
				t.Fatalf("basic round trip: %q %q, want %q %q", u, pw, user, password)
			}
		}
		if token := base64.RawURLEncoding.EncodeToString([]byte(user + password)); token != "" {
			s, p, ok := parseAuthorization("Bearer " + token)
			if !ok || s != "bearer" || p != token {
				t.Fatalf("bearer round trip: %q %q %v, want %q", s, p, ok, token)
			}
		}
	})
}

// fuzzVerifiers are keyed verifiers whose keys no seed token was signed
// with: a token they accept would be a forgery.
var fuzzVerifiers = sync.OnceValue(func() []*jwtVerifier {
	repl := caddy.NewReplacer()
	hs, err := newJWTVerifier(&JWTAuth{Secret: "fuzz secret that no seed was signed with"}, repl)
	if err != nil {
		panic(err)
	}
	ed := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	var path string
	dir, err := os.MkdirTemp("", "fuzzjwks")
	if err != nil {
		panic(err)
	}
	path = filepath.Join(dir, "jwks.json")
	b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: ed.Public(), KeyID: "ed"}}})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	eds, err := newJWTVerifier(&JWTAuth{JWKSFile: path, Leeway: caddy.Duration(24 * time.Hour)}, repl)
	if err != nil {
		panic(err)
	}
	return []*jwtVerifier{hs, eds}
})

// FuzzJWTVerify: any token string through the verifier never panics and
// never authenticates: no seed was signed with the verifiers' keys.
func FuzzJWTVerify(f *testing.F) {
	other := []byte("some other secret, 32 bytes long")
	c := jwt.MapClaims{"sub": "x", "exp": 4102444800}
	f.Add(signJWT(f, jwt.SigningMethodHS256, other, c))
	f.Add(signJWT(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, c))
	edPub := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public().(ed25519.PublicKey)
	f.Add(signJWT(f, jwt.SigningMethodHS256, []byte(edPub), c, map[string]any{"kid": "ed"})) // alg confusion
	f.Add("eyJhbGciOiJFZERTQSIsImtpZCI6ImVkIn0.eyJzdWIiOiJ4In0.AAAA")
	f.Add("a.b.c")
	f.Add("..")
	f.Add("")
	f.Fuzz(func(t *testing.T, token string) {
		for _, v := range fuzzVerifiers() {
			if sub, ok := v.verify(token); ok {
				t.Fatalf("token %q accepted (sub %q) without the key", token, sub)
			}
		}
	})
}

// FuzzSubprotocolHeader: parsing a Sec-WebSocket-Protocol header and
// taking out its bearer entries never panics, leaves no bearer entry in the
// request, and negotiation never echoes one.
func FuzzSubprotocolHeader(f *testing.F) {
	f.Add("binary, bearer.abc.def")
	f.Add("bearer.only")
	f.Add("BEARER.x,base64\nmqtt, bearer.")
	f.Add(" , ,bearer")
	f.Add("bearer.a, bearer.b, binary")
	open := &Handler{}
	strict := &Handler{Subprotocols: []string{"binary", "base64"}}
	auth, err := newAuthenticator(&Auth{Bearer: []string{"t"}})
	if err != nil {
		f.Fatal(err)
	}
	isBearer := func(p string) bool {
		return len(p) >= len(bearerProtocolPrefix) && strings.EqualFold(p[:len(bearerProtocolPrefix)], bearerProtocolPrefix)
	}
	f.Fuzz(func(t *testing.T, header string) {
		lines := strings.Split(header, "\n")
		offers, tokens := splitSubprotocols(lines)
		if len(offers) > maxOffers {
			t.Fatalf("%d offers kept", len(offers))
		}
		for _, o := range offers {
			if o == "" || isBearer(o) || !isToken(o) || len(o) > maxOfferLen {
				t.Fatalf("offer %q from %q", o, header)
			}
		}
		for _, h := range []*Handler{open, strict} {
			p, err := h.negotiate(offers, len(tokens) > 0)
			if isBearer(p) {
				t.Fatalf("negotiate echoes %q", p)
			}
			if err == nil && p != "" && !containsString(offers, p) {
				t.Fatalf("negotiate echoes %q, which was not offered", p)
			}
			if err == nil && len(offers) == 0 && len(tokens) > 0 {
				t.Fatal("a token-only offer was accepted")
			}
		}
		r, _ := http.NewRequest("GET", "http://h/", nil)
		for _, l := range lines {
			r.Header.Add("Sec-WebSocket-Protocol", l)
		}
		extractCredentials(r, auth)
		if _, left := splitSubprotocols(r.Header.Values("Sec-WebSocket-Protocol")); len(left) > 0 {
			t.Fatalf("bearer entries left in the header: %q", r.Header.Values("Sec-WebSocket-Protocol"))
		}
	})
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestAdmissionCaddyfileErrors(t *testing.T) {
	hash := "$2a$14$X3ulqf/iGxnf1k6oMZ.RZeJUoqI9PX2PM4rS5lkIKJXduLGXGPrt6"
	tests := []caddyfileErrorCase{
		{"origins without args", "to 127.0.0.1:5900\norigins", 4, []string{"origins:", "at least one pattern"}},
		{"allowed_hosts without args", "to 127.0.0.1:5900\nallowed_hosts", 4, []string{"allowed_hosts:", "at least one host name"}},
		{"allowed_hosts twice", "to 127.0.0.1:5900\nallowed_hosts a.lan\nallowed_hosts b.lan", 5, []string{"allowed_hosts:", "already specified"}},
		{"auth with args", "to 127.0.0.1:5900\nauth on {\n\tbearer x\n}", 4, []string{"auth:", "takes a block"}},
		{"auth unknown", "to 127.0.0.1:5900\nauth {\n\toauth x\n}", 5, []string{"auth: unrecognized subdirective", `"oauth"`}},
		{"basic missing hash", "to 127.0.0.1:5900\nauth {\n\tbasic {\n\t\talice\n\t}\n}", 6, []string{"auth: basic:", "<user> <bcrypt hash>"}},
		{"basic empty", "to 127.0.0.1:5900\nauth {\n\tbasic {\n\t}\n}", 6, []string{"auth: basic:", "at least one"}},
		{"basic twice", "to 127.0.0.1:5900\nauth {\n\tbasic {\n\t\ta " + hash + "\n\t}\n\tbasic {\n\t\tb " + hash + "\n\t}\n}", 8,
			[]string{"auth: basic:", "already specified"}},
		{"bearer without token", "to 127.0.0.1:5900\nauth {\n\tbearer\n}", 5, []string{"auth: bearer:", "at least one token"}},
		{"jwt bad leeway", "to 127.0.0.1:5900\nauth {\n\tjwt {\n\t\tsecret s\n\t\tleeway soon\n\t}\n}", 7, []string{"auth: jwt: leeway:", `"soon"`}},
		{"jwt unknown", "to 127.0.0.1:5900\nauth {\n\tjwt {\n\t\tsecret s\n\t\talgorithm HS256\n\t}\n}", 7, []string{"auth: jwt:", `"algorithm"`}},
		{"jwt secret twice", "to 127.0.0.1:5900\nauth {\n\tjwt {\n\t\tsecret s\n\t\tsecret t\n\t}\n}", 7, []string{"auth: jwt: secret:", "already specified"}},
		{"realm empty", "to 127.0.0.1:5900\nauth {\n\tbearer x\n\trealm\n}", 6, []string{"auth: realm:"}},
		{"token_query two", "to 127.0.0.1:5900\nauth {\n\tbearer x\n\ttoken_query a b\n}", 6, []string{"auth: token_query:"}},
		{"max_connections zero", "to 127.0.0.1:5900\nmax_connections 0", 4, []string{"max_connections:", `"0"`, "positive"}},
		{"max_connections_per_ip text", "to 127.0.0.1:5900\nmax_connections_per_ip lots", 4, []string{"max_connections_per_ip:", `"lots"`}},
		{"max_connections_per_user none", "to 127.0.0.1:5900\nmax_connections_per_user", 4, []string{"max_connections_per_user:", "expected one number"}},
		{"max_connections twice", "to 127.0.0.1:5900\nmax_connections 1\nmax_connections 2", 5, []string{"max_connections:", "already specified"}},
	}
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
			if strings.Contains(msg, "hunter2") {
				t.Errorf("error %q shows the password", msg)
			}
		})
	}
}

// TestAdmissionProvision: what the Caddyfile lets through (JSON, or
// placeholders) is checked at load; good settings reach the handler.
func TestAdmissionProvision(t *testing.T) {
	t.Setenv("WS_PLAIN", "hunter2")
	for _, tt := range []struct{ name, js, want string }{
		{"bad origin", `{"upstreams": [{"dial": "127.0.0.1:1"}], "origins": ["example.com"]}`, `origins: "example.com": expected scheme://host`},
		{"plaintext from env", `{"upstreams": [{"dial": "127.0.0.1:1"}], "auth": {"basic": [{"username": "a", "password": "{env.WS_PLAIN}"}]}}`, "auth.basic[0].password (auth > basic): "},
		{"allowed host with a port", `{"upstreams": [{"dial": "127.0.0.1:1"}], "allowed_hosts": ["vnc.lan:6080"]}`, `allowed_hosts: "vnc.lan:6080": expected a host name`},
		{"allowed host as a URL", `{"upstreams": [{"dial": "127.0.0.1:1"}], "allowed_hosts": ["http://vnc.lan"]}`, `allowed_hosts: "http://vnc.lan": expected a host name`},
		{"allowed host with a bad character", `{"upstreams": [{"dial": "127.0.0.1:1"}], "allowed_hosts": ["vnc lan"]}`, `allowed_hosts: "vnc lan": `},
		{"empty allowed host", `{"upstreams": [{"dial": "127.0.0.1:1"}], "allowed_hosts": [""]}`, `allowed_hosts: "": expected a host name`},
		{"negative limit", `{"upstreams": [{"dial": "127.0.0.1:1"}], "max_connections": -1}`, "max_connections: must not be negative"},
		{"reserved subprotocol", `{"upstreams": [{"dial": "127.0.0.1:1"}], "subprotocols": ["binary", "bearer.x"]}`, `subprotocols[1] (subprotocols): "bearer.x": the prefix "bearer." is reserved`},
	} {
		h := new(Handler)
		if err := json.Unmarshal([]byte(tt.js), h); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
		err := h.Provision(ctx)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: error %v, want one containing %q", tt.name, err, tt.want)
		}
	}

	h, err := loadHandler(t, siteWith("to 127.0.0.1:5900\norigins https://*.example.com\nauth {\n\tbearer tok\n\ttoken_query t\n}\nmax_connections 3\nmax_connections_per_ip 2\nmax_connections_per_user 1"))
	if err != nil {
		t.Fatal(err)
	}
	if h.origins == nil || len(h.origins.patterns) != 1 || h.auth == nil || h.auth.query != "t" || h.auth.cookie != defaultTokenCookie ||
		h.limits == nil || h.limits.maxTotal != 3 || h.limits.maxIP != 2 || h.limits.maxUser != 1 {
		t.Errorf("provisioned: origins %+v, auth %+v, limits %+v", h.origins, h.auth, h.limits)
	}
	h, err = loadHandler(t, siteWith("to 127.0.0.1:5900"))
	if err != nil {
		t.Fatal(err)
	}
	if h.origins == nil || h.origins.any || len(h.origins.patterns)+len(h.origins.hosts) != 0 || h.auth != nil || h.limits != nil {
		t.Errorf("defaults: origins %+v, auth %+v, limits %+v; want the default rule, no auth, no limits", h.origins, h.auth, h.limits)
	}
}

// TestSubprotocolOffersBounded: an offer that is not an RFC 7230 token or
// is longer than 64 bytes is ignored, and only the first 16 offers are
// considered: such offers are never echoed, and a client offering only
// them is answered as one offering nothing acceptable.
func TestSubprotocolOffersBounded(t *testing.T) {
	up := newDialCounter(t)
	any := provisioned(t, `{"upstreams": [{"dial": "`+up.addr+`"}]}`)
	chat := provisioned(t, `{"upstreams": [{"dial": "`+up.addr+`"}], "subprotocols": ["chat"]}`)
	long := strings.Repeat("x", 65)
	var sixteen []string
	for i := range 16 {
		sixteen = append(sixteen, fmt.Sprintf("p%d", i))
	}
	for _, tt := range []struct {
		name   string
		h      *Handler
		offers []string // Sec-WebSocket-Protocol lines
		status int
		echo   string
	}{
		{"a 65-byte offer", any, []string{long + ", chat"}, 101, "chat"},
		{"an 18 KB offer", any, []string{strings.Repeat("y", 18<<10) + ", chat"}, 101, "chat"},
		{"a 64-byte offer", any, []string{long[:64] + ", chat"}, 101, long[:64]},
		{"not a token", any, []string{"a/b, chat"}, 101, "chat"},
		{"not a token, quoted", any, []string{`"chat"`, "chat"}, 101, "chat"},
		{"only bad offers", any, []string{long + ", a/b"}, 101, ""},
		{"only bad offers, list configured", chat, []string{long + ", a/b"}, 400, ""},
		{"nothing offered, list configured", chat, nil, 400, ""},
		{"the 17th offer", chat, []string{strings.Join(sixteen, ", "), "chat"}, 400, ""},
		{"the 16th offer", chat, []string{strings.Join(sixteen[:15], ", "), "chat"}, 101, "chat"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newHijackRecorder()
			r := prepareHandshake("127.0.0.1:6080", "", false, nil, w)
			for _, o := range tt.offers {
				r.Header.Add("Sec-WebSocket-Protocol", o)
			}
			res := serveHandshake(t, tt.h, r, w)
			up.dials(t)
			if res.status != tt.status {
				t.Fatalf("status %d (%v), want %d", res.status, res.err, tt.status)
			}
			if tt.status != 101 {
				return
			}
			resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(res.head)), nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != tt.echo {
				t.Errorf("echoed %.80q, want %q", got, tt.echo)
			}
		})
	}
}

// TestTunnelMemoryIndependentOfHeaders: the strings a tunnel keeps for
// its life (subprotocol, channel, user) are copies, so that a tunnel
// opened with 16 KB headers holds no more memory than one opened with
// small ones. Each of the three would otherwise pin a 16 KB header (or
// the string made from it): the echoed subprotocol is a piece of the
// Sec-WebSocket-Protocol header, the channel a piece of the expanded
// template, and the basic-auth user a piece of the decoded
// "user:password".
func TestTunnelMemoryIndependentOfHeaders(t *testing.T) {
	const n = 100
	// an upstream that holds its connections open
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 4*n)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held <- c
		}
	}()
	closeHeld := func() {
		for {
			select {
			case c := <-held:
				c.Close()
			default:
				return
			}
		}
	}
	t.Cleanup(func() { ln.Close(); closeHeld() })

	// bcrypt reads the first 72 bytes of a password: the hash of those
	// accepts them followed by anything, so a 16 KB password works
	password := strings.Repeat("p", 72)
	h := provisioned(t, `{"upstreams": [{"dial": "`+ln.Addr().String()+`"}], "buffer_size": 512,
		"channel": "{http.request.header.X-Room}",
		"auth": {"basic": [{"username": "alice", "password": "`+bcryptHash(t, password)+`"}]}}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
		if err := h.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })); err != nil {
			http.Error(w, err.Error(), handlerErrorStatus(err))
		}
	}))
	t.Cleanup(srv.Close)
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/"

	// perTunnel opens n tunnels whose headers carry pad bytes each, and
	// returns the heap they hold, per tunnel.
	perTunnel := func(pad int) float64 {
		t.Helper()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&before)
		var clients []*websocket.Conn
		for i := range n {
			hdr := http.Header{}
			hdr.Set("Sec-WebSocket-Protocol", "chat, "+strings.Repeat("z", pad))
			hdr.Set("X-Room", fmt.Sprintf("room-%d-", i)+strings.Repeat("r", pad))
			hdr.Set("Authorization", basicAuthValue("alice", password+strings.Repeat("q", pad)))
			c, resp, err := websocket.DefaultDialer.Dial(url, hdr)
			if err != nil {
				t.Fatalf("tunnel %d: %v (%v)", i, err, resp)
			}
			if c.Subprotocol() != "chat" {
				t.Fatalf("subprotocol %q", c.Subprotocol())
			}
			clients = append(clients, c)
		}
		eventually(t, "the tunnels to be registered", func() bool {
			return len(selectTunnels(func(*tunnel) bool { return true })) == n
		})
		for _, tu := range selectTunnels(func(*tunnel) bool { return true }) {
			if tu.user != "alice" || tu.subprotocol != "chat" || !strings.HasPrefix(tu.channel, "room-") || len(tu.channel) != maxChannelLen {
				t.Fatalf("tunnel: user %q, subprotocol %q, channel of %d bytes", tu.user, tu.subprotocol, len(tu.channel))
			}
		}
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&after)
		for _, c := range clients {
			c.Close()
		}
		closeHeld()
		eventually(t, "the tunnels to end", func() bool {
			return len(selectTunnels(func(*tunnel) bool { return true })) == 0
		})
		runtime.KeepAlive(clients)
		return (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / n
	}
	perTunnel(300) // warm up: pools, goroutine stacks, maps
	small := perTunnel(300)
	big := perTunnel(16 << 10)
	t.Logf("heap per tunnel: %.0f B with small headers, %.0f B with 16 KB ones", small, big)
	if big-small > 8<<10 {
		t.Errorf("a tunnel opened with 16 KB headers holds %.0f B more than one opened with small headers: "+
			"it keeps pieces of them", big-small)
	}
}

// TestBasicAuthWrongPasswordSameWork: a wrong password costs the same
// bcrypt work whatever the user: known with a low cost, known with the
// highest, or unknown. The work is counted, not timed: 2^cost per
// comparison, the number of rounds bcrypt runs.
func TestBasicAuthWrongPasswordSameWork(t *testing.T) {
	t.Parallel()
	hashOf := func(pw string, cost int) string {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
		if err != nil {
			t.Fatal(err)
		}
		return string(h)
	}
	au, err := newAuthenticator(&Auth{Basic: []BasicAccount{
		{Username: "low", Password: hashOf("low-pw", 4)},
		{Username: "mid", Password: hashOf("mid-pw", 5)},
		{Username: "high", Password: hashOf("high-pw", 7)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	work := 0
	compare := au.compare
	au.compare = func(hash, password []byte) bool {
		cost, err := bcrypt.Cost(hash)
		if err != nil {
			t.Fatalf("compared with a hash that is not bcrypt: %v", err)
		}
		work += 1 << cost
		return compare(hash, password)
	}
	for _, tt := range []struct {
		user, password string
		ok             bool
	}{
		{"low", "wrong", false}, {"mid", "wrong", false}, {"high", "wrong", false}, {"nobody", "wrong", false},
		{"low", "low-pw", true}, {"mid", "mid-pw", true}, {"high", "high-pw", true}, {"nobody", "low-pw", false},
	} {
		work = 0
		if got := au.checkBasic(tt.user, tt.password); got != tt.ok {
			t.Errorf("%s/%s: %v, want %v", tt.user, tt.password, got, tt.ok)
		}
		if work != 1<<7 {
			t.Errorf("%s with a %s password: bcrypt work %d, want %d (that of the costliest hash)", tt.user,
				map[bool]string{true: "right", false: "wrong"}[tt.ok], work, 1<<7)
		}
	}
}

// TestBearerSHA256Entries: a `bearer` entry `sha256:<hex>` is the SHA-256
// of the token, so that a configuration need not hold the token; a bad
// one fails the load without showing it.
func TestBearerSHA256Entries(t *testing.T) {
	sum := func(s string) string { b := sha256.Sum256([]byte(s)); return hex.EncodeToString(b[:]) }
	t.Setenv("WS_TOKEN_SUM", "sha256:"+sum("from-env"))
	au, err := newAuthenticator(&Auth{Bearer: []string{
		"plain-one",
		"sha256:" + sum("hashed-two"),
		"sha256:" + strings.ToUpper(sum("hashed-three")),
		"{env.WS_TOKEN_SUM}",
	}})
	if err != nil {
		t.Fatal(err)
	}
	for tok, want := range map[string]int{
		"plain-one": 1, "hashed-two": 2, "hashed-three": 3, "from-env": 4,
		"sha256:" + sum("hashed-two"): 0, sum("hashed-two"): 0, "other": 0,
	} {
		if got := au.matchBearer(tok); got != want {
			t.Errorf("token %q: entry %d, want %d", tok, got, want)
		}
	}
	for _, bad := range []string{"sha256:", "sha256:abc", "sha256:" + sum("x") + "00", "sha256:" + strings.Repeat("zz", 32)} {
		_, err := newAuthenticator(&Auth{Bearer: []string{"ok", bad}})
		if err == nil || !strings.Contains(err.Error(), "auth.bearer[1]") || len(bad) > 7 && strings.Contains(err.Error(), bad[7:]) {
			t.Errorf("%q: %v, want an error naming auth.bearer[1] and not the value", bad, err)
		}
	}
}

package wstotcp

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
)

// Auth is the handler's own authentication, for what a browser can send
// with a WebSocket: a token in the query string, in a cookie or in the
// `Sec-WebSocket-Protocol` header, besides the `Authorization` header that
// other clients use. Any combination of the methods may be configured; the
// first that accepts the request wins. A request whose user was set earlier
// in the route (`{http.auth.user.id}`, by Caddy's `basic_auth` or a
// `forward_auth` recipe) is authenticated already and not checked again.
//
// A refused request gets 401 with a `WWW-Authenticate` challenge per
// configured scheme, and is never upgraded.
type Auth struct {
	// HTTP basic authentication accounts. Passwords are bcrypt hashes, as
	// `caddy hash-password` makes them (`$2a$`, `$2b$` or `$2y$`); plain
	// text is refused when the config loads. Placeholders such as
	// `{env.ALICE_HASH}` are expanded at load. Credentials come from the
	// `Authorization: Basic` header only.
	Basic []BasicAccount `json:"basic,omitempty"`

	// Static bearer tokens, compared in constant time. An entry
	// `sha256:<64 hex digits>` is the SHA-256 of the token rather than the
	// token (the Caddyfile writes literal tokens so), so that the config,
	// which the admin API and Caddy's DEBUG log show, need not hold it.
	// Placeholders (`{env.WS_TOKEN}`, `{file./run/secrets/ws_token}`) are
	// expanded when the config loads (into a token or its sha256: form),
	// and a token that is empty then fails the load. A token written as is
	// logs a warning at load. The user of a request admitted by the n-th
	// entry (from 1) is `bearer#n`.
	Bearer []string `json:"bearer,omitempty"`

	// JSON Web Tokens, verified with a shared secret or public keys. The
	// token's `sub` claim becomes the user.
	JWT *JWTAuth `json:"jwt,omitempty"`

	// The realm named in `WWW-Authenticate` challenges. Default:
	// `ws_to_tcp`.
	Realm string `json:"realm,omitempty"`

	// The query parameter that carries a bearer token or JWT; the
	// parameter is removed from the request's URI before later handlers
	// see it (Caddy's access log records the URI before any handler runs:
	// filter it there, see the README). `off` disables the query carrier.
	// Default: `access_token`.
	TokenQuery string `json:"token_query,omitempty"`

	// The cookie that carries a bearer token or JWT. `off` disables the
	// cookie carrier. Default: `access_token`.
	TokenCookie string `json:"token_cookie,omitempty"`
}

// BasicAccount is one user of HTTP basic authentication.
type BasicAccount struct {
	// The user name. Required.
	Username string `json:"username"`

	// The bcrypt hash of the password, as `caddy hash-password` prints it.
	// Required.
	Password string `json:"password"`
}

// JWTAuth verifies JSON Web Tokens. Exactly one key source is required:
// `secret` (HS256, HS384, HS512), `public_key` or `jwks_file`. The accepted
// algorithms follow the key: RS256/384/512 and PS256/384/512 for RSA keys
// (2048 bits or more), ES256, ES384 or ES512 for an ECDSA key on P-256,
// P-384 or P-521, EdDSA for an Ed25519 key. `none` is never accepted.
// `exp` and `nbf` are honoured when present.
type JWTAuth struct {
	// The HMAC secret: the raw UTF-8 bytes of the string, after
	// placeholders such as `{env.JWT_SECRET}` or `{file./path}` are
	// expanded when the config loads. Should be 32 bytes or more. A secret
	// written as is logs a warning at load: the admin API and Caddy's
	// DEBUG log show the config.
	Secret string `json:"secret,omitempty"`

	// A PEM file holding the public key (`PUBLIC KEY`, `RSA PUBLIC KEY` or
	// a `CERTIFICATE`). Read when the config loads.
	PublicKey string `json:"public_key,omitempty"`

	// A local JWK Set file (JSON `{"keys": [...]}`), read when the config
	// loads. A token whose header names a `kid` is checked with the keys of
	// that id; a key's `alg`, when set, is the only algorithm it accepts.
	// Keys with `"use": "enc"` and key types that cannot verify a JWT are
	// skipped.
	JWKSFile string `json:"jwks_file,omitempty"`

	// The required `iss` claim. Default: not checked.
	Issuer string `json:"issuer,omitempty"`

	// The required `aud` claim (one of the token's audiences). Default:
	// not checked, which with public_key or jwks_file logs a warning at
	// load: every token of the issuer would do, those meant for other
	// applications included.
	Audience string `json:"audience,omitempty"`

	// Clock skew allowed when checking `exp` and `nbf`. Default: 0.
	Leeway caddy.Duration `json:"leeway,omitempty"`
}

const (
	defaultRealm       = "ws_to_tcp"
	defaultTokenQuery  = "access_token"
	defaultTokenCookie = "access_token"
	carrierOff         = "off"

	// bearerHashPrefix marks a `bearer` entry that is the SHA-256 of the
	// token, in hex, rather than the token.
	bearerHashPrefix = "sha256:"

	// bearerProtocolPrefix marks the Sec-WebSocket-Protocol entry that
	// carries a token (the prefix is matched without regard to case).
	bearerProtocolPrefix = "bearer."

	// Tokens longer than this are not looked at; at most maxTokens
	// candidates are tried per request.
	maxTokenLen = 16 << 10
	maxTokens   = 8
)

// provisionAdmission checks and compiles the admission settings: origins,
// auth and connection limits. Its errors name the setting at fault, never
// a secret.
func (h *Handler) provisionAdmission() error {
	for _, l := range []struct {
		path string
		v    int
	}{
		{"max_connections", h.MaxConnections},
		{"max_connections_per_ip", h.MaxConnectionsPerIP},
		{"max_connections_per_user", h.MaxConnectionsPerUser},
	} {
		if l.v < 0 {
			return settingError(l.path, "", "must not be negative")
		}
	}
	p, err := compileOrigins(h.Origins)
	if err != nil {
		return settingError("origins", "", "%v", err)
	}
	if p.hosts, err = compileAllowedHosts(h.AllowedHosts); err != nil {
		return settingError("allowed_hosts", "", "%v", err)
	}
	h.origins = p
	if p.any {
		h.logger.Warn("origins *: WebSocket handshakes from every web site are accepted; " +
			"with cookie or basic-auth credentials any page a user visits can open this tunnel as that user")
	}
	for _, op := range p.patterns {
		if op.null {
			h.logger.Warn("origins null: WebSocket handshakes with the Origin null are accepted, and any web site " +
				"can send it (from a sandboxed iframe); with cookie or basic-auth credentials any page a user visits " +
				"can open this tunnel as that user")
			break
		}
	}
	if h.Auth != nil {
		au, err := newAuthenticator(h.Auth)
		if err != nil {
			return err
		}
		for _, w := range au.warnings {
			h.logger.Warn(w)
		}
		h.auth = au
	}
	h.limits = newConnLimits(h.MaxConnections, h.MaxConnectionsPerIP, h.MaxConnectionsPerUser)
	return nil
}

// authenticator is the provisioned form of Auth.
type authenticator struct {
	realm    string
	accounts map[string][]byte                // user -> bcrypt hash
	maxCost  int                              // the highest bcrypt cost of the accounts
	fakeHash func() []byte                    // compared for unknown users: a hash of maxCost
	padHash  []func() []byte                  // [k]: a hash of cost k, for the padding (see checkBasic)
	compare  func(hash, password []byte) bool // bcrypt's; a test counts the work through it
	warnings []string                         // about the settings, logged at load
	bearer   [][32]byte                       // SHA-256 of each token: fixed-length constant-time compares
	jwt      *jwtVerifier
	query    string // "" when off
	cookie   string // "" when off
}

// credentials are what a request presented.
type credentials struct {
	basic          bool // an Authorization: Basic header
	user, password string
	tokens         []string // bearer tokens or JWTs, from every carrier
	fromProtocol   bool     // a bearer.<token> Sec-WebSocket-Protocol entry was offered
	offers         []string // the other offered subprotocols, in order
}

// newAuthenticator checks and provisions the auth configuration. Its
// errors name the setting at fault, never a secret.
func newAuthenticator(a *Auth) (*authenticator, error) {
	if len(a.Basic) == 0 && len(a.Bearer) == 0 && a.JWT == nil {
		return nil, settingError("auth", "", "configure basic, bearer or jwt")
	}
	repl := caddy.NewReplacer()
	au := &authenticator{realm: a.Realm, query: a.TokenQuery, cookie: a.TokenCookie, compare: bcryptCompare}
	if au.realm == "" {
		au.realm = defaultRealm
	}
	if strings.ContainsAny(au.realm, "\"\\") || strings.ContainsFunc(au.realm, isCtl) {
		return nil, settingError("auth.realm", "", "no quotes, backslashes or control characters")
	}
	switch au.query {
	case "":
		au.query = defaultTokenQuery
	case carrierOff:
		au.query = ""
	}
	switch au.cookie {
	case "":
		au.cookie = defaultTokenCookie
	case carrierOff:
		au.cookie = ""
	}
	if strings.ContainsAny(au.query, "&=#?+% \t") {
		return nil, settingError("auth.token_query", "", "%q is not a plain parameter name", au.query)
	}
	if au.cookie != "" && !isToken(au.cookie) {
		return nil, settingError("auth.token_cookie", "", "%q is not a valid cookie name", au.cookie)
	}

	if len(a.Basic) > 0 {
		au.accounts = make(map[string][]byte, len(a.Basic))
		minCost, maxCost := bcrypt.MaxCost, 0
		for i, acc := range a.Basic {
			user := repl.ReplaceKnown(acc.Username, "")
			if user == "" || strings.ContainsRune(user, ':') {
				return nil, settingError(fmt.Sprintf("auth.basic[%d].username", i), "auth > basic",
					"the user name must be non-empty and without ':'")
			}
			if _, dup := au.accounts[user]; dup {
				return nil, settingError(fmt.Sprintf("auth.basic[%d].username", i), "auth > basic", "user %q is listed twice", user)
			}
			hash := repl.ReplaceKnown(acc.Password, "")
			cost, err := bcryptCost(hash)
			if err != nil {
				return nil, settingError(fmt.Sprintf("auth.basic[%d].password", i), "auth > basic", "user %q: %v", user, err)
			}
			minCost, maxCost = min(minCost, cost), max(maxCost, cost)
			au.accounts[user] = []byte(hash)
		}
		au.maxCost = maxCost
		au.fakeHash = fakeHashOfCost(maxCost)
		au.padHash = make([]func() []byte, maxCost)
		for k := minCost; k < maxCost; k++ {
			au.padHash[k] = fakeHashOfCost(k)
		}
		if minCost != maxCost {
			au.warnings = append(au.warnings, fmt.Sprintf("auth > basic: the password hashes have different bcrypt costs, "+
				"from %d to %d: so that a wrong password takes as long whatever the user, each check is made to cost "+
				"as much as one of cost %d; rehash the passwords with one cost (caddy hash-password --cost %d)",
				minCost, maxCost, maxCost, maxCost))
		}
	}

	for i, tok := range a.Bearer {
		path := fmt.Sprintf("auth.bearer[%d]", i)
		if !hasPlaceholder(tok) && !strings.HasPrefix(tok, bearerHashPrefix) {
			au.warnings = append(au.warnings, path+": the token is written in the configuration, which the admin API "+
				"and Caddy's DEBUG log show: write its sha256:<hex> form (the Caddyfile does), or a placeholder "+
				"such as {env.WS_TOKEN}")
		}
		tok = repl.ReplaceKnown(tok, "")
		if hexSum, ok := strings.CutPrefix(tok, bearerHashPrefix); ok {
			sum, err := hex.DecodeString(hexSum)
			if err != nil || len(sum) != sha256.Size {
				return nil, settingError(path, "auth > bearer", "%s must be followed by the 64 hex digits of a SHA-256", bearerHashPrefix)
			}
			au.bearer = append(au.bearer, [sha256.Size]byte(sum))
			continue
		}
		if tok == "" {
			return nil, settingError(path, "auth > bearer", "the token is empty (after placeholders were expanded)")
		}
		if len(tok) > maxTokenLen {
			return nil, settingError(path, "auth > bearer", "the token is longer than %d bytes", maxTokenLen)
		}
		au.bearer = append(au.bearer, sha256.Sum256([]byte(tok)))
	}

	if a.JWT != nil {
		v, err := newJWTVerifier(a.JWT, repl)
		if err != nil {
			return nil, err
		}
		au.jwt = v
		if a.JWT.Secret != "" && !hasPlaceholder(a.JWT.Secret) {
			au.warnings = append(au.warnings, "auth > jwt: the secret is written in the configuration, which the admin API "+
				"and Caddy's DEBUG log show: give it as a placeholder, {env.JWT_SECRET} or {file./run/secrets/jwt_secret}")
		}
		if a.JWT.Secret == "" && a.JWT.Audience == "" {
			au.warnings = append(au.warnings, "auth > jwt: no audience: every token the key's issuer signs is accepted, "+
				"ID tokens and access tokens meant for other applications included; set audience")
		}
	}
	return au, nil
}

// hasPlaceholder reports whether a setting holds a placeholder, such as
// {env.WS_TOKEN}, expanded when the configuration loads.
func hasPlaceholder(s string) bool {
	i := strings.IndexByte(s, '{')
	return i >= 0 && strings.IndexByte(s[i:], '}') > 1
}

// isBcryptHash reports whether s looks like a bcrypt hash.
func isBcryptHash(s string) bool {
	return strings.HasPrefix(s, "$2a$") || strings.HasPrefix(s, "$2b$") || strings.HasPrefix(s, "$2y$")
}

// bcryptCost checks that hash is a bcrypt hash and returns its cost.
func bcryptCost(hash string) (int, error) {
	if !isBcryptHash(hash) {
		return 0, errors.New("the password must be a bcrypt hash ($2a$, $2b$ or $2y$, as `caddy hash-password` prints it), not plain text")
	}
	cost, err := bcrypt.Cost([]byte(hash))
	if err != nil {
		return 0, fmt.Errorf("invalid bcrypt hash: %v", err)
	}
	return cost, nil
}

// fakeHashOfCost returns the hash compared for unknown users: one of the
// same cost as the real ones, so that a missing user takes as long as a
// wrong password. Caddy's own fake hash serves the common cost (14);
// another cost's is made on first use, as making it costs one comparison.
func fakeHashOfCost(cost int) func() []byte {
	caddyFake := caddyauth.BcryptHash{}.FakeHash()
	if c, err := bcrypt.Cost(caddyFake); err == nil && c == cost {
		return func() []byte { return caddyFake }
	}
	return sync.OnceValue(func() []byte {
		h, err := bcrypt.GenerateFromPassword([]byte("ws_to_tcp antitiming"), cost)
		if err != nil {
			return caddyFake
		}
		return h
	})
}

func isCtl(r rune) bool { return r < ' ' || r == 0x7f }

// extractCredentials collects what the request carries and scrubs the
// carriers later handlers must not see: `bearer.` entries leave the
// Sec-WebSocket-Protocol header (always: the prefix is reserved), and,
// when the query carrier is on, the token parameter leaves the URI.
// a may be nil (no auth block).
func extractCredentials(r *http.Request, a *authenticator) *credentials {
	c := new(credentials)
	var protoTokens []string
	c.offers, protoTokens = splitSubprotocols(r.Header.Values("Sec-Websocket-Protocol"))
	if len(protoTokens) > 0 {
		c.fromProtocol = true
		if len(c.offers) > 0 {
			r.Header["Sec-Websocket-Protocol"] = []string{strings.Join(c.offers, ", ")}
		} else {
			r.Header.Del("Sec-Websocket-Protocol")
		}
	}
	if a == nil {
		return c
	}

	add := func(tok string) {
		if tok != "" && len(tok) <= maxTokenLen && len(c.tokens) < maxTokens {
			c.tokens = append(c.tokens, tok)
		}
	}
	if scheme, param, ok := parseAuthorization(r.Header.Get("Authorization")); ok {
		switch scheme {
		case "basic":
			c.user, c.password, c.basic = decodeBasic(param)
		case "bearer":
			add(param)
		}
	}
	if a.query != "" {
		var values []string
		r.URL.RawQuery, values = removeQueryParam(r.URL.RawQuery, a.query)
		if path, query, ok := strings.Cut(r.RequestURI, "?"); ok {
			query, _ = removeQueryParam(query, a.query)
			if query == "" {
				r.RequestURI = path
			} else {
				r.RequestURI = path + "?" + query
			}
		}
		for _, v := range values {
			add(v)
		}
	}
	if a.cookie != "" {
		for _, ck := range r.CookiesNamed(a.cookie) {
			add(ck.Value)
		}
	}
	for _, tok := range protoTokens {
		add(tok)
	}
	return c
}

// splitSubprotocols parses Sec-WebSocket-Protocol header values (several
// lines, each a comma-separated list) into the offered subprotocols and
// the tokens of the `bearer.<token>` entries, which are never offers.
// Only the first maxOffers offers are considered, and of those only the
// RFC 7230 tokens of at most maxOfferLen bytes are kept: anything else
// could not be echoed, and a tunnel keeps the one echoed. The offers are
// copies, so that the one a tunnel keeps does not pin the header it came
// from.
func splitSubprotocols(values []string) (offers, tokens []string) {
	considered := 0
	for _, v := range values {
		for p := range strings.SplitSeq(v, ",") {
			p = strings.Trim(p, " \t")
			if p == "" {
				continue
			}
			if len(p) >= len(bearerProtocolPrefix) && strings.EqualFold(p[:len(bearerProtocolPrefix)], bearerProtocolPrefix) {
				tokens = append(tokens, p[len(bearerProtocolPrefix):])
				continue
			}
			if considered++; considered > maxOffers || len(p) > maxOfferLen || !isToken(p) {
				continue
			}
			offers = append(offers, strings.Clone(p))
		}
	}
	return offers, tokens
}

// The offers of a handshake that are considered, and the longest one.
const (
	maxOffers   = 16
	maxOfferLen = 64
)

// removeQueryParam removes every `name=value` pair from a raw query,
// keeping the other pairs byte for byte, and returns the removed values
// (unescaped). A pair whose key does not unescape is kept.
func removeQueryParam(rawQuery, name string) (string, []string) {
	if rawQuery == "" {
		return rawQuery, nil
	}
	var kept []string
	var values []string
	removed := false
	for _, pair := range strings.Split(rawQuery, "&") {
		k, v, _ := strings.Cut(pair, "=")
		if key, err := url.QueryUnescape(k); err == nil && key == name {
			removed = true
			if val, err := url.QueryUnescape(v); err == nil {
				values = append(values, val)
			}
			continue
		}
		kept = append(kept, pair)
	}
	if !removed {
		return rawQuery, nil
	}
	return strings.Join(kept, "&"), values
}

// parseAuthorization splits an Authorization header value into its scheme
// (lower-cased) and parameter.
func parseAuthorization(v string) (scheme, param string, ok bool) {
	v = strings.Trim(v, " \t")
	i := strings.IndexAny(v, " \t")
	if i <= 0 {
		return "", "", false
	}
	scheme = strings.ToLower(v[:i])
	param = strings.Trim(v[i:], " \t")
	if param == "" {
		return "", "", false
	}
	return scheme, param, true
}

// decodeBasic decodes the parameter of a Basic Authorization header.
func decodeBasic(param string) (user, password string, ok bool) {
	b, err := base64.StdEncoding.DecodeString(param)
	if err != nil {
		return "", "", false
	}
	user, password, ok = strings.Cut(string(b), ":")
	return user, password, ok
}

// authenticate returns the user of the first method that accepts the
// credentials: basic, then each token as a bearer token and as a JWT.
func (a *authenticator) authenticate(c *credentials) (user string, ok bool) {
	if c.basic && a.accounts != nil {
		if a.checkBasic(c.user, c.password) {
			return c.user, true
		}
	}
	for _, tok := range c.tokens {
		if i := a.matchBearer(tok); i > 0 {
			return "bearer#" + strconv.Itoa(i), true
		}
		if a.jwt != nil {
			if sub, ok := a.jwt.verify(tok); ok {
				return sub, true
			}
		}
	}
	return "", false
}

// checkBasic checks a user's password with the same bcrypt work whatever
// the user: the work of a comparison doubles with each cost step, so one
// of cost c is padded with comparisons of costs c, c+1, ..., maxCost-1,
// which add up to one of maxCost. An unknown user is compared with a hash
// of maxCost. The padding runs whatever the result: a right password
// tells nothing the client does not know.
func (a *authenticator) checkBasic(user, password string) bool {
	hash, known := a.accounts[user]
	if !known {
		hash = a.fakeHash()
	}
	pw := []byte(password)
	same := a.compare(hash, pw)
	if cost, err := bcrypt.Cost(hash); err == nil {
		for k := cost; k < a.maxCost && k < len(a.padHash); k++ {
			if a.padHash[k] != nil {
				a.compare(a.padHash[k](), pw)
			}
		}
	}
	return same && known
}

// bcryptCompare reports whether password matches the bcrypt hash.
func bcryptCompare(hash, password []byte) bool {
	same, err := caddyauth.BcryptHash{}.Compare(hash, password)
	return err == nil && same
}

// matchBearer returns the 1-based position of the token in the configured
// list, or 0. Every configured token is compared, in constant time.
func (a *authenticator) matchBearer(tok string) int {
	sum := sha256.Sum256([]byte(tok))
	found := 0
	for i := range a.bearer {
		if subtle.ConstantTimeCompare(sum[:], a.bearer[i][:]) == 1 && found == 0 {
			found = i + 1
		}
	}
	return found
}

// challenge sets the WWW-Authenticate headers of a 401: one per scheme
// configured. A bearer challenge carries error="invalid_token" when a
// token was presented (RFC 6750 §3.1: none when no token was).
func (a *authenticator) challenge(h http.Header, c *credentials) {
	if a.accounts != nil {
		h.Add("WWW-Authenticate", `Basic realm="`+a.realm+`", charset="UTF-8"`)
	}
	if len(a.bearer) > 0 || a.jwt != nil {
		v := `Bearer realm="` + a.realm + `"`
		if len(c.tokens) > 0 {
			v += `, error="invalid_token"`
		}
		h.Add("WWW-Authenticate", v)
	}
}

// jwtVerifier checks JSON Web Tokens against a fixed set of keys.
type jwtVerifier struct {
	parser *jwt.Parser
	keys   []jwtKey
}

type jwtKey struct {
	kid  string
	key  any      // []byte, *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
	algs []string // the algorithms this key verifies
}

func newJWTVerifier(cfg *JWTAuth, repl *caddy.Replacer) (*jwtVerifier, error) {
	sources := 0
	for _, s := range []string{cfg.Secret, cfg.PublicKey, cfg.JWKSFile} {
		if s != "" {
			sources++
		}
	}
	if sources != 1 {
		return nil, settingError("auth.jwt", "", "configure exactly one of secret, public_key and jwks_file")
	}
	if cfg.Leeway < 0 {
		return nil, settingError("auth.jwt.leeway", "", "must not be negative")
	}
	v := new(jwtVerifier)
	switch {
	case cfg.Secret != "":
		secret := repl.ReplaceKnown(cfg.Secret, "")
		if secret == "" {
			return nil, settingError("auth.jwt.secret", "", "empty (after placeholders were expanded)")
		}
		v.keys = []jwtKey{{key: []byte(secret), algs: hmacAlgs}}
	case cfg.PublicKey != "":
		file := repl.ReplaceKnown(cfg.PublicKey, "")
		keys, err := loadPEMKeys(file)
		if err != nil {
			return nil, settingError("auth.jwt.public_key", "", "%v", err)
		}
		v.keys = keys
	default:
		file := repl.ReplaceKnown(cfg.JWKSFile, "")
		keys, err := loadJWKS(file)
		if err != nil {
			return nil, settingError("auth.jwt.jwks_file", "", "%v", err)
		}
		v.keys = keys
	}
	var methods []string
	for _, k := range v.keys {
		for _, alg := range k.algs {
			if !slices.Contains(methods, alg) {
				methods = append(methods, alg)
			}
		}
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithLeeway(time.Duration(cfg.Leeway)),
	}
	if iss := repl.ReplaceKnown(cfg.Issuer, ""); iss != "" {
		opts = append(opts, jwt.WithIssuer(iss))
	}
	if aud := repl.ReplaceKnown(cfg.Audience, ""); aud != "" {
		opts = append(opts, jwt.WithAudience(aud))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

var (
	hmacAlgs    = []string{"HS256", "HS384", "HS512"}
	rsaAlgs     = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	ed25519Algs = []string{"EdDSA"}
)

// algsFor returns the JWT algorithms a key verifies, pinned to its type
// (and, for ECDSA, its curve), so that no token can pick another.
func algsFor(key any) ([]string, error) {
	switch k := key.(type) {
	case []byte:
		if len(k) == 0 {
			return nil, errors.New("empty symmetric key")
		}
		return hmacAlgs, nil
	case *rsa.PublicKey:
		if k.N == nil || k.N.BitLen() < 2048 {
			return nil, errors.New("RSA keys must have 2048 bits or more")
		}
		return rsaAlgs, nil
	case *ecdsa.PublicKey:
		if k.Curve == nil {
			return nil, errors.New("ECDSA key without a curve")
		}
		switch k.Curve.Params().Name {
		case "P-256":
			return []string{"ES256"}, nil
		case "P-384":
			return []string{"ES384"}, nil
		case "P-521":
			return []string{"ES512"}, nil
		}
		return nil, fmt.Errorf("ECDSA curve %s is not used by JWT", k.Curve.Params().Name)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return nil, errors.New("invalid Ed25519 key")
		}
		return ed25519Algs, nil
	}
	return nil, fmt.Errorf("unsupported key type %T", key)
}

// loadPEMKeys reads the public keys of a PEM file.
func loadPEMKeys(file string) ([]jwtKey, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var keys []jwtKey
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var pub any
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				pub = cert.PublicKey
			}
		default:
			if strings.Contains(block.Type, "PRIVATE") {
				return nil, fmt.Errorf("%s: holds a private key; give the public key only", file)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %v", file, block.Type, err)
		}
		algs, err := algsFor(pub)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", file, err)
		}
		keys = append(keys, jwtKey{key: pub, algs: algs})
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no PEM public key or certificate", file)
	}
	return keys, nil
}

// loadJWKS reads a JWK Set file. Keys that cannot verify a JWT signature
// (encryption keys, unknown types) are skipped; a set left empty is an
// error.
func loadJWKS(file string) ([]jwtKey, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("%s: not a JWK Set: %v", file, err)
	}
	var keys []jwtKey
	for i, raw := range set.Keys {
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(raw); err != nil {
			continue // a key type go-jose does not know, e.g. X25519
		}
		if jwk.Use == "enc" {
			continue
		}
		var key any = jwk.Key
		if _, sym := key.([]byte); !sym {
			pub := jwk.Public()
			if !pub.Valid() {
				continue
			}
			key = pub.Key
		}
		algs, err := algsFor(key)
		if err != nil {
			return nil, fmt.Errorf("%s: key %d (kid %q): %v", file, i+1, jwk.KeyID, err)
		}
		if jwk.Algorithm != "" {
			if !slices.Contains(algs, jwk.Algorithm) {
				return nil, fmt.Errorf("%s: key %d (kid %q): alg %q does not fit a %T key", file, i+1, jwk.KeyID, jwk.Algorithm, key)
			}
			algs = []string{jwk.Algorithm}
		}
		keys = append(keys, jwtKey{kid: jwk.KeyID, key: key, algs: algs})
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no key usable to verify signatures", file)
	}
	return keys, nil
}

// verify returns the `sub` claim of a valid token.
func (v *jwtVerifier) verify(token string) (sub string, ok bool) {
	var claims jwt.RegisteredClaims
	t, err := v.parser.ParseWithClaims(token, &claims, v.keyFor)
	if err != nil || t == nil || !t.Valid {
		return "", false
	}
	return claims.Subject, true
}

// keyFor selects the keys that may have signed a token: those of its
// algorithm and, when the token names a `kid`, of that id (keys without an
// id are tried with any).
func (v *jwtVerifier) keyFor(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	kid, _ := t.Header["kid"].(string)
	var set jwt.VerificationKeySet
	for _, k := range v.keys {
		if !slices.Contains(k.algs, alg) || kid != "" && k.kid != "" && k.kid != kid {
			continue
		}
		set.Keys = append(set.Keys, k.key)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("no key for this token")
	}
	return set, nil
}

package wstotcp

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// ServeHTTP admits a WebSocket client, dials its upstream, upgrades, and
// relays until either side ends. Every refusal is a plain HTTP response
// given before the upgrade. An HTTP/1.1 upgrade is hijacked and relayed on
// goroutines of its own; a WebSocket over HTTP/2 or HTTP/3 is relayed on
// its stream, and ServeHTTP returns when it ends.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	stream := isExtendedConnect(r)
	if !stream && !websocket.IsWebSocketUpgrade(r) {
		if h.TestPage && r.Method == http.MethodGet {
			return serveTestPage(w, r)
		}
		return next.ServeHTTP(w, r)
	}
	adm, err := h.admit(w, r)
	if err != nil {
		return err
	}
	// Until the tunnel takes them, any way out gives the slots back.
	defer adm.slots.releaseUnlessHandedOver()
	subprotocol := adm.subprotocol

	// The last admission step: a dynamic target chosen by the client's
	// token (404 unknown, 403 not allowed, 503 lookup down), or nil for the
	// configured upstreams.
	target, err := h.resolveTarget(r)
	if err != nil {
		return err
	}
	up, u, err := h.dialUpstream(w, r, adm.user, adm.slots, target)
	if err != nil {
		return err // 502 or 504, logged by Caddy with the reason
	}

	t := newTunnel(h, u.Dial, subprotocol, clientIP(r), transportOf(r))
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl != nil {
		repl.Set("http.ws_to_tcp.conn_id", t.id)
		repl.Set("http.ws_to_tcp.upstream", u.Dial)
		repl.Set("http.ws_to_tcp.subprotocol", subprotocol)
		if user, ok := repl.GetString("http.auth.user.id"); ok {
			t.user = strings.Clone(user) // not a piece of the request's headers, kept for the tunnel's life
		}
		t.channel = h.expandChannel(repl)
	}

	if stream {
		t.release = adm.slots.handOver()
		h.serveStream(w, r, t, up)
		return nil // the stream carried the tunnel: there is no response left to write
	}
	conn, brw, err := hijackShim{w}.Hijack()
	if err != nil {
		// As gorilla's Upgrade did: a 500 answered here, not a handler
		// error.
		up.Close()
		h.logger.Debug("upgrade failed", zap.String("conn_id", t.id), zap.Error(err))
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return nil
	}
	if err := upgrade(conn, brw, r, subprotocol); err != nil {
		conn.Close()
		up.Close()
		h.logger.Debug("upgrade failed", zap.String("conn_id", t.id), zap.Error(err))
		return nil // the connection is hijacked: there is no response to write
	}
	t.release = adm.slots.handOver()
	t.start(conn, up)
	return nil // the connection is hijacked: there is no response to write
}

// checkHandshake refuses, before anything is dialled, the handshakes that
// gorilla would refuse after, and extended CONNECTs that RFC 8441 would.
func checkHandshake(r *http.Request) error {
	if isExtendedConnect(r) {
		if r.Header.Get("Sec-Websocket-Version") != "13" {
			return errors.New("unsupported Sec-WebSocket-Version: only 13 is supported")
		}
		return nil
	}
	if r.Method != http.MethodGet {
		return fmt.Errorf("WebSocket handshake must be a GET, not %s", r.Method)
	}
	if r.Header.Get("Sec-Websocket-Version") != "13" {
		return errors.New("unsupported Sec-WebSocket-Version: only 13 is supported")
	}
	if !validKey(r.Header.Get("Sec-Websocket-Key")) {
		return errors.New("missing or invalid Sec-WebSocket-Key: the base64 of 16 bytes is required")
	}
	return nil
}

// validKey reports whether key is the base64 of 16 bytes, decoding it
// on the stack.
func validKey(key string) bool {
	if len(key) != 24 {
		return false
	}
	var k [18]byte
	n, err := base64.StdEncoding.Decode(k[:], []byte(key))
	return err == nil && n == 16
}

// errEarlyData: the client sent data after its handshake, before the
// answer.
var errEarlyData = errors.New("client sent data before the handshake was complete")

// upgrade answers an admitted HTTP/1.1 handshake (checkHandshake and
// websocket.IsWebSocketUpgrade passed) with 101 on its hijacked
// connection, in one write. It is gorilla's Upgrade without what the relay
// never uses: gorilla's *Conn, its buffers and handlers, and a header map
// for the subprotocol. net/http's Hijack has cleared the connection's
// deadlines already.
func upgrade(conn net.Conn, brw *bufio.ReadWriter, r *http.Request, subprotocol string) error {
	if brw.Reader.Buffered() > 0 {
		return errEarlyData
	}
	// The hijacked writer's buffer is free: the answer is built there.
	p := brw.Writer.AvailableBuffer()
	p = append(p, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	p = appendAcceptKey(p, r.Header.Get("Sec-Websocket-Key"))
	if subprotocol != "" {
		p = append(p, "\r\nSec-WebSocket-Protocol: "...)
		p = append(p, subprotocol...) // a token (negotiate): nothing to escape
	}
	p = append(p, "\r\n\r\n"...)
	_, err := conn.Write(p)
	return err
}

// appendAcceptKey appends the Sec-WebSocket-Accept of key (RFC 6455
// §4.2.2), a valid key (24 bytes).
func appendAcceptKey(p []byte, key string) []byte {
	const guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
	var in [24 + len(guid)]byte
	n := copy(in[:], key)
	n += copy(in[n:], guid)
	sum := sha1.Sum(in[:n])
	var out [28]byte
	base64.StdEncoding.Encode(out[:], sum[:])
	return append(p, out[:]...)
}

// admission is what a handshake that passed admission carries to the dial.
type admission struct {
	subprotocol string // to echo; "" for none
	user        string // "" when anonymous
	slots       *slots // the connection-limit slots taken; the dial adds the upstream's
}

// admit runs the admission checks in the README's order (Admission and
// authentication): connection limits (503 with Retry-After), Origin (403),
// authentication (401 with WWW-Authenticate), the per-user limit (503; it
// needs the user, so it comes after authentication), subprotocol (400).
// Before any of them it takes the credentials out of the request: the
// bearer.<token> subprotocol entry, and the query token when that carrier
// is on, so that later handlers and this module's log lines never see
// them. A refusal holds no slot; an admission holds them in adm.slots.
func (h *Handler) admit(w http.ResponseWriter, r *http.Request) (adm admission, err error) {
	creds := extractCredentials(r, h.auth)
	if err := checkHandshake(r); err != nil {
		return admission{}, h.rejected(r, rejectHandshake, http.StatusBadRequest, err)
	}

	sl, err := h.limits.take(clientIP(r))
	if err != nil {
		w.Header().Set("Retry-After", retryAfter)
		return admission{}, h.rejected(r, rejectLimit, http.StatusServiceUnavailable, err)
	}
	defer func() {
		if err != nil {
			sl.release()
		}
	}()

	if err := h.checkOrigin(r); err != nil {
		return admission{}, h.rejected(r, rejectOrigin, http.StatusForbidden, err)
	}

	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	var user string
	if repl != nil {
		// set by basic_auth, forward_auth (see the README) or another
		// authentication handler earlier in the route
		user, _ = repl.GetString("http.auth.user.id")
	}
	if user == "" && h.auth != nil {
		u, ok := h.auth.authenticate(creds)
		if !ok {
			h.auth.challenge(w.Header(), creds)
			msg := "authentication required"
			if creds.basic || len(creds.tokens) > 0 {
				msg = "invalid credentials"
			}
			return admission{}, h.rejected(r, rejectAuth, http.StatusUnauthorized, errors.New(msg))
		}
		user = u
		if repl != nil && user != "" {
			repl.Set("http.auth.user.id", user)
		}
	}

	if err := sl.takeUser(user); err != nil {
		w.Header().Set("Retry-After", retryAfter)
		return admission{}, h.rejected(r, rejectLimit, http.StatusServiceUnavailable, err)
	}

	subprotocol, err := h.negotiate(creds.offers, creds.fromProtocol)
	if err != nil {
		return admission{}, h.rejected(r, rejectSubprotocol, http.StatusBadRequest, err)
	}
	return admission{subprotocol: subprotocol, user: user, slots: sl}, nil
}

// retryAfter is the Retry-After of a 503 for a connection limit, in
// seconds.
const retryAfter = "1"

// truncate shortens a client-supplied string for an error message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// negotiate picks the subprotocol to echo among the offered ones
// (README, Caddyfile reference: Subprotocol negotiation), bearer.<token>
// entries already removed (withToken tells there was one). With a configured list, the server's order wins and an offer of
// none of them is refused; without one, the client's first offer is
// echoed, because browsers fail a handshake that echoes none of their
// offers. For the same reason a client that offered only a token entry,
// which is never echoed, is refused.
func (h *Handler) negotiate(offered []string, withToken bool) (string, error) {
	if len(offered) == 0 && withToken {
		return "", errors.New("a second subprotocol must be offered besides the bearer.<token> entry, " +
			"which is never echoed (browsers fail a handshake that echoes none of their offers): " +
			`e.g. new WebSocket(url, ["binary", "bearer." + token])`)
	}
	if len(h.Subprotocols) == 0 {
		if len(offered) > 0 {
			return offered[0], nil
		}
		return "", nil
	}
	for _, p := range h.Subprotocols {
		for _, o := range offered {
			if o == p {
				return p, nil
			}
		}
	}
	if len(offered) == 0 {
		return "", fmt.Errorf("a subprotocol is required; accepted: %s", strings.Join(h.Subprotocols, ", "))
	}
	return "", fmt.Errorf("none of the offered subprotocols is accepted; accepted: %s", strings.Join(h.Subprotocols, ", "))
}

// clientIP is Caddy's idea of the client address, which honours the
// server's trusted_proxies.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// isToken reports whether s is an RFC 7230 token, the syntax of a
// subprotocol name.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return true
}

// hijackShim lets gorilla hijack through Caddy's wrapped ResponseWriter:
// gorilla only type-asserts http.Hijacker, which Caddy's wrappers (and the
// `header` and `encode` handlers) do not implement, while
// http.ResponseController unwraps them.
type hijackShim struct{ http.ResponseWriter }

// Hijack hijacks the innermost ResponseWriter's connection. Caddy's
// response recorder (there when the site has an access log) would wrap the
// connection to count its bytes for the access log; the relay's two pumps
// would then update those counters concurrently, and after ServeHTTP
// returned, while the access log line reads them: a data race. The tunnel
// counts its bytes itself. No other wrapper implements Hijack.
func (s hijackShim) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(innermost(s.ResponseWriter)).Hijack()
}

func (s hijackShim) Unwrap() http.ResponseWriter { return s.ResponseWriter }

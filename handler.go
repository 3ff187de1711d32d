package wstotcp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// ServeHTTP admits a WebSocket client, dials its upstream, upgrades, and
// relays until either side ends. Every refusal is a plain HTTP response
// given before the upgrade.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if isExtendedConnect(r) {
		// gorilla upgrades only hijacked HTTP/1.1 connections.
		h.logger.Warn("WebSocket over HTTP/2 or HTTP/3 is not supported; the client should use HTTP/1.1",
			zap.String("proto", r.Proto), zap.String("remote_ip", clientIP(r)))
		return caddyhttp.Error(http.StatusNotImplemented,
			errors.New("WebSocket over HTTP/2 or HTTP/3 (extended CONNECT) is not supported; use HTTP/1.1"))
	}
	if !websocket.IsWebSocketUpgrade(r) {
		return next.ServeHTTP(w, r)
	}
	if err := checkHandshake(r); err != nil {
		return caddyhttp.Error(http.StatusBadRequest, err)
	}
	if !originAllowed(r) {
		return caddyhttp.Error(http.StatusForbidden, fmt.Errorf("origin %q not allowed", r.Header.Get("Origin")))
	}
	subprotocol, err := h.negotiate(websocket.Subprotocols(r))
	if err != nil {
		return caddyhttp.Error(http.StatusBadRequest, err)
	}

	u := h.Upstreams[0]
	up, err := u.dial(r.Context(), time.Duration(h.DialTimeout), h.upstreamTLS)
	if err != nil {
		status := http.StatusBadGateway
		if isTimeout(err) {
			status = http.StatusGatewayTimeout
		}
		return caddyhttp.Error(status, fmt.Errorf("dialing upstream %s: %w", u.Dial, err))
	}

	t := newTunnel(h, up, u.Dial, subprotocol, clientIP(r))
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl != nil {
		repl.Set("http.ws_to_tcp.conn_id", t.id)
		repl.Set("http.ws_to_tcp.upstream", u.Dial)
		repl.Set("http.ws_to_tcp.subprotocol", subprotocol)
		if user, ok := repl.GetString("http.auth.user.id"); ok {
			t.user = user
		}
	}

	var respHeader http.Header
	if subprotocol != "" {
		respHeader = http.Header{"Sec-Websocket-Protocol": {subprotocol}}
	}
	ws, err := h.upgrader.Upgrade(hijackShim{w}, r, respHeader)
	if err != nil {
		// gorilla has answered the client already.
		up.Close()
		h.logger.Debug("upgrade failed", zap.String("conn_id", t.id), zap.Error(err))
		return nil
	}
	t.start(ws.UnderlyingConn())
	return nil // the connection is hijacked: there is no response to write
}

// checkHandshake refuses, before anything is dialled, the handshakes that
// gorilla would refuse after.
func checkHandshake(r *http.Request) error {
	if r.Method != http.MethodGet {
		return fmt.Errorf("WebSocket handshake must be a GET, not %s", r.Method)
	}
	if r.Header.Get("Sec-Websocket-Version") != "13" {
		return errors.New("unsupported Sec-WebSocket-Version: only 13 is supported")
	}
	if r.Header.Get("Sec-Websocket-Key") == "" {
		return errors.New("missing Sec-WebSocket-Key")
	}
	return nil
}

// negotiate picks the subprotocol to echo (SPEC §4). With a configured
// list, the server's order wins and an offer of none of them is refused;
// without one, the client's first offer is echoed, because browsers fail a
// handshake that echoes none of their offers.
func (h *Handler) negotiate(offered []string) (string, error) {
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

// isExtendedConnect reports a WebSocket over HTTP/2 (RFC 8441) or HTTP/3
// (RFC 9220).
func isExtendedConnect(r *http.Request) bool {
	if r.ProtoMajor == 2 && r.Method == http.MethodConnect && r.Header.Get(":protocol") == "websocket" {
		return true
	}
	return r.ProtoMajor >= 2 && r.Method == http.MethodConnect && strings.EqualFold(r.Proto, "websocket")
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

func (s hijackShim) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(s.ResponseWriter).Hijack()
}

func (s hijackShim) Unwrap() http.ResponseWriter { return s.ResponseWriter }

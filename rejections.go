package wstotcp

import (
	"net/http"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Why a handshake was refused, as the log line, the ws_to_tcp.rejected
// event and caddy_ws_to_tcp_rejections_total{reason} name it: a fixed set,
// so the metric's label stays bounded.
const (
	rejectLimit       = "limit"       // 503: max_connections*
	rejectOrigin      = "origin"      // 403: Origin not allowed
	rejectAuth        = "auth"        // 401: no valid credentials
	rejectSubprotocol = "subprotocol" // 400: no acceptable subprotocol offered
	rejectHandshake   = "handshake"   // 400: malformed WebSocket handshake
	rejectTarget      = "target"      // 404 no/unknown token, 403 not allowed, 503 lookup failed, 502/504 name not resolved
)

// rejected records a refused handshake, once, and returns the error that
// makes Caddy answer with status (headers such as WWW-Authenticate or
// Retry-After must be set on the response before). Refusals by policy
// (limit, origin, auth, target) are logged at INFO, a target that could
// not be resolved (token source or DNS failing) at WARN, malformed or
// unacceptable handshakes at DEBUG. err and the log line never hold a
// credential: callers pass errors that name no token, password or cookie.
func (h *Handler) rejected(r *http.Request, reason string, status int, err error) error {
	lvl := zapcore.DebugLevel
	switch reason {
	case rejectLimit, rejectOrigin, rejectAuth:
		lvl = zapcore.InfoLevel
	case rejectTarget:
		lvl = zapcore.InfoLevel
		if status >= 500 { // a token source or the DNS failed
			lvl = zapcore.WarnLevel
		}
	}
	if c := h.logger.Check(lvl, "handshake rejected"); c != nil {
		fields := []zap.Field{
			zap.String("reason", reason),
			zap.String("remote_ip", clientIP(r)),
			zap.Int("status", status),
			zap.Error(err),
		}
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			if user, _ := repl.GetString("http.auth.user.id"); user != "" {
				fields = append(fields, zap.String("user", user))
			}
		}
		c.Write(fields...)
	}

	rejectionsTotal.WithLabelValues(reason).Inc()
	h.emitRejected(r, reason, status)

	return caddyhttp.Error(status, err)
}

package wstotcp

import (
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
)

// Events, through Caddy's events app: subscribe with a handler module, e.g.
// `events { on ws_to_tcp.connect exec … }`. Emitted once per tunnel (or
// refused handshake), never per message.
const (
	eventConnect    = "ws_to_tcp.connect"
	eventDisconnect = "ws_to_tcp.disconnect"
	eventRejected   = "ws_to_tcp.rejected"
)

// maxChannelLen bounds a tunnel's channel label, which comes from the
// request (a query parameter, say) and shows in logs and the admin API.
const maxChannelLen = 256

// provisionOps sets up the handler's operations side: events and metrics.
func (h *Handler) provisionOps(ctx caddy.Context) error {
	// The http app loads the events app, so it is there in a real
	// configuration; a bare context (unit tests) has none.
	if app, err := ctx.AppIfConfigured("events"); err == nil {
		h.events, _ = app.(*caddyevents.App)
	}
	return h.provisionMetrics(ctx)
}

// emit emits an event when something can observe it: data is only built
// then. Nothing is emitted once the handler's configuration is unloaded
// (its events app is stopped); tunnels that outlive a reload still log,
// count in the metrics and show in the admin API. Event handlers run
// synchronously: callers hold no lock.
func (h *Handler) emit(name string, data func() map[string]any) {
	if h.events == nil || h.ctx.Err() != nil || !h.events.ShouldEmit(name) {
		return
	}
	defer func() {
		// An event handler's panic must not end a relay goroutine, which
		// nothing recovers at the point where it emits.
		if v := recover(); v != nil {
			h.logger.Error("panic in event handler",
				zap.String("event", name),
				zap.String("panic", fmt.Sprint(v)),
				zap.ByteString("stack", debug.Stack()))
		}
	}()
	h.events.Emit(h.ctx, name, data())
}

func (h *Handler) emitConnect(t *tunnel) {
	h.emit(eventConnect, func() map[string]any { return tunnelEventData(t, 7) })
}

func (h *Handler) emitDisconnect(t *tunnel, d time.Duration) {
	h.emit(eventDisconnect, func() map[string]any {
		s := t.Stats()
		m := tunnelEventData(t, 14)
		m["duration"] = d.Seconds()
		m["bytes_in"], m["bytes_out"] = s.BytesIn, s.BytesOut
		m["messages_in"], m["messages_out"] = s.MessagesIn, s.MessagesOut
		m["close_code"], m["closed_by"] = t.end.Code, t.end.By
		return m
	})
}

// tunnelEventData is what every event of a tunnel says of it, in a map
// with room for size entries.
func tunnelEventData(t *tunnel, size int) map[string]any {
	m := make(map[string]any, size)
	m["conn_id"], m["remote_ip"], m["user"] = t.id, t.remote, t.user
	m["upstream"], m["subprotocol"], m["channel"], m["transport"] = t.upstream, t.subprotocol, t.channel, t.transport
	return m
}

// emitRejected announces a handshake refused before the upgrade.
func (h *Handler) emitRejected(r *http.Request, reason string, status int) {
	h.emit(eventRejected, func() map[string]any {
		return map[string]any{
			"reason":    reason,
			"remote_ip": clientIP(r),
			"status":    status,
		}
	})
}

// expandChannel is the channel label of a tunnel: the channel template with
// the request's placeholders replaced (unknown ones by nothing), cut to
// maxChannelLen bytes on a UTF-8 boundary.
func (h *Handler) expandChannel(repl *caddy.Replacer) string {
	if h.Channel == "" || repl == nil {
		return ""
	}
	s := repl.ReplaceAll(h.Channel, "")
	if len(s) > maxChannelLen {
		cut := maxChannelLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return strings.Clone(s) // not a piece of the whole expansion, kept for the tunnel's life
}

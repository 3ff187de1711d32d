package wstotcp

import (
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// WebSockets over HTTP/2 (RFC 8441) and HTTP/3 (RFC 9220): the handshake is
// an extended CONNECT with `:protocol websocket`, admitted like an
// HTTP/1.1 upgrade and answered 200; the RFC 6455 frames then flow in the
// request body and the response body of that one stream, which lives as
// long as ServeHTTP has not returned. Many such tunnels share one
// connection, each with its own flow control. See the README, "HTTP/2 and
// HTTP/3".

// Transports, as the admin API, logs, events and metrics name them.
const (
	transportHTTP1 = "http/1.1"
	transportH2    = "h2"
	transportH3    = "h3"
)

// transports are the values of the transport label, in a fixed order.
var transports = [...]string{transportHTTP1, transportH2, transportH3}

// isExtendedConnect reports a WebSocket handshake over HTTP/2 or HTTP/3.
// quic-go puts the :protocol pseudo-header in r.Proto; Go's HTTP/2 server
// keeps it as a header.
func isExtendedConnect(r *http.Request) bool {
	if r.Method != http.MethodConnect {
		return false
	}
	switch r.ProtoMajor {
	case 2:
		return strings.EqualFold(r.Header.Get(":protocol"), "websocket")
	case 3:
		return strings.EqualFold(r.Proto, "websocket")
	}
	return false
}

// transportOf names the transport of a WebSocket handshake.
func transportOf(r *http.Request) string {
	switch r.ProtoMajor {
	case 2:
		return transportH2
	case 3:
		return transportH3
	}
	return transportHTTP1
}

// serveStream answers an admitted extended CONNECT whose upstream is
// dialled, and relays on its stream until the tunnel ends. The answer and
// the frames go to the innermost ResponseWriter, past the handlers that
// wrap it (encode, header, templates): the stream is a tunnel, not a
// response body they could transform, as a hijacked HTTP/1.1 connection
// is. The server's read and write deadlines, meant for requests, are
// cleared as gorilla clears them on a hijacked connection; write_timeout,
// heartbeat and idle_timeout bound the tunnel instead.
func (h *Handler) serveStream(w http.ResponseWriter, r *http.Request, t *tunnel, up net.Conn) {
	w = innermost(w)
	if t.subprotocol != "" {
		w.Header().Set("Sec-Websocket-Protocol", t.subprotocol)
	}
	w.WriteHeader(http.StatusOK)
	client := newStreamConn(w, r)
	client.SetReadDeadline(time.Time{})
	client.SetWriteDeadline(time.Time{})
	if err := client.rc.Flush(); err != nil {
		up.Close()
		if t.release != nil {
			t.release()
		}
		h.logger.Debug("answering the extended CONNECT failed", zap.String("conn_id", t.id), zap.Error(err))
		return
	}
	t.run(client, up)
	client.finish()
}

// innermost unwraps the ResponseWriters that handlers put around the
// server's own.
func innermost(w http.ResponseWriter) http.ResponseWriter {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return w
		}
		w = u.Unwrap()
	}
}

// streamConn is the client side of a tunnel on an HTTP/2 or HTTP/3 stream:
// frames arrive in the request body and leave in the response, flushed at
// each write (the relay writes whole frames, and a frame held in a buffer
// would stall an interactive client). Deadlines go through
// http.ResponseController, which reaches the stream through Caddy's
// wrappers on both protocols.
type streamConn struct {
	body io.ReadCloser
	w    http.ResponseWriter
	rc   *http.ResponseController

	closeOnce sync.Once
	// The stream may be used only while ServeHTTP runs, but the tunnel's
	// registry entry can be terminated from elsewhere (the admin API, a
	// shutdown) around its end: each call holds the read lock, and finish
	// takes the write lock to mark the stream gone before ServeHTTP
	// returns, after which every call is a no-op.
	mu       sync.RWMutex
	finished bool
}

func newStreamConn(w http.ResponseWriter, r *http.Request) *streamConn {
	body := r.Body
	// Caddy's read_idle_timeout would end an idle tunnel: its wrapper is
	// for request bodies, not for the client side of a tunnel.
	if ir, ok := body.(*caddyhttp.IdleTimeoutReader); ok {
		body = ir.ReadCloser
	}
	return &streamConn{body: body, w: w, rc: http.NewResponseController(w)}
}

func (c *streamConn) Read(p []byte) (int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.finished {
		return 0, net.ErrClosed
	}
	return c.body.Read(p)
}

func (c *streamConn) Write(p []byte) (int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.finished {
		return 0, net.ErrClosed
	}
	n, err := c.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, c.rc.Flush()
}

func (c *streamConn) SetReadDeadline(t time.Time) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.finished {
		return net.ErrClosed
	}
	return c.rc.SetReadDeadline(t)
}

func (c *streamConn) SetWriteDeadline(t time.Time) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.finished {
		return net.ErrClosed
	}
	return c.rc.SetWriteDeadline(t)
}

// finish marks the stream gone, once every call in progress has returned
// (the relay has closed it, which interrupts them).
func (c *streamConn) finish() {
	c.mu.Lock()
	c.finished = true
	c.mu.Unlock()
}

// Close interrupts the stream's blocked reads and writes; the stream
// itself ends (END_STREAM, or a reset if the client still sends) when
// ServeHTTP returns, which the relay lets it do once both pumps are out.
func (c *streamConn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.RLock()
		defer c.mu.RUnlock()
		if c.finished {
			return
		}
		past := time.Unix(1, 0)
		c.rc.SetReadDeadline(past)
		c.rc.SetWriteDeadline(past)
		c.body.Close()
	})
	return nil
}

// provisionStreams ties the handler's HTTP/2 and HTTP/3 tunnels to the
// server that carries them. Such a tunnel is a request of that server, so
// it cannot outlive it as a hijacked HTTP/1.1 connection does: Caddy's
// shutdown of the server (on a reload or stop) would wait for it forever
// with the default eternal grace period (so `caddy stop` would hang), or
// cut it without a Close frame when grace_period ends. So when the server
// begins to shut down, these tunnels end with 1001 and their upstreams
// close; their clients reconnect to the new configuration.
func (h *Handler) provisionStreams(ctx caddy.Context) {
	srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if !ok || srv == nil {
		return
	}
	h.streamsDown = new(atomic.Bool)
	srv.RegisterOnShutdown(func() {
		// Set before the tunnels are listed: a handshake admitted meanwhile
		// registers its tunnel after this list is taken, and sees the flag
		// (tunnel.run).
		h.streamsDown.Store(true)
		closeTunnelsOn(h, func(t *tunnel) bool { return t.transport != transportHTTP1 },
			wsframe.CloseGoingAway, "server shutting down")
	})
	h2 := len(srv.Protocols) == 0 || slices.Contains(srv.Protocols, "h2")
	if h2 && len(srv.TLSConnPolicies) > 0 && !http2ExtendedConnect() {
		if _, logged := xconnectNoticed.LoadOrStore(srv.Name(), true); !logged {
			h.logger.Info("HTTP/2 extended CONNECT is off (GODEBUG=http2xconnect=1 is not in Caddy's environment): "+
				"browsers on HTTP/2 open their WebSockets over a separate HTTP/1.1 connection here (see the README, HTTP/2 and HTTP/3)",
				zap.String("server", srv.Name()))
		}
	}
}

// xconnectNoticed holds the servers whose missing HTTP/2 extended CONNECT
// was logged, so that it is logged once per process and not at each reload.
var xconnectNoticed sync.Map

// http2ExtendedConnect reports whether Go's HTTP/2 server advertises
// extended CONNECT: it reads GODEBUG from the environment once, at start.
func http2ExtendedConnect() bool {
	return strings.Contains(os.Getenv("GODEBUG"), "http2xconnect=1")
}

package wstotcp

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
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
}

func newStreamConn(w http.ResponseWriter, r *http.Request) *streamConn {
	return &streamConn{body: r.Body, w: w, rc: http.NewResponseController(w)}
}

func (c *streamConn) Read(p []byte) (int, error) { return c.body.Read(p) }

func (c *streamConn) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, c.rc.Flush()
}

func (c *streamConn) SetReadDeadline(t time.Time) error  { return c.rc.SetReadDeadline(t) }
func (c *streamConn) SetWriteDeadline(t time.Time) error { return c.rc.SetWriteDeadline(t) }

// Close interrupts the stream's blocked reads and writes; the stream
// itself ends (END_STREAM, or a reset if the client still sends) when
// ServeHTTP returns, which the relay lets it do once both pumps are out.
func (c *streamConn) Close() error {
	c.closeOnce.Do(func() {
		past := time.Unix(1, 0)
		c.rc.SetReadDeadline(past)
		c.rc.SetWriteDeadline(past)
		c.body.Close()
	})
	return nil
}

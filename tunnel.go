package wstotcp

import (
	"net"
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/relay"
	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// tunnel is one relayed client as the rest of the module sees it: the
// relay's tunnel, and who it is, where it goes and how it came, for the
// admin API, events, logs and metrics.
type tunnel struct {
	*relay.Tunnel // nil until started

	h           *Handler
	id          string
	remote      string
	user        string
	upstream    string
	subprotocol string
	channel     string
	transport   string // http/1.1, h2 or h3
	started     time.Time
	release     func() // gives back the handshake's slots; called once, when the tunnel ends
	end         relay.End
}

func newTunnel(h *Handler, upstream, subprotocol, remote, transport string) *tunnel {
	return &tunnel{
		h:           h,
		id:          newConnID(),
		upstream:    upstream,
		subprotocol: subprotocol,
		remote:      remote,
		transport:   transport,
		started:     time.Now(),
	}
}

// start relays client to up on goroutines of the relay's; the caller's
// goroutine is free once it returns.
func (t *tunnel) start(client relay.Conn, up net.Conn) {
	t.Tunnel = relay.New(t.h.relay, client, up, t.subprotocol == "base64")
	register(t)
	t.Tunnel.Start(t.ended)
}

// run relays client to up on the caller's goroutine and one of the
// relay's, and returns when the tunnel has ended: for a client stream that
// lives only while its handler runs.
func (t *tunnel) run(client relay.Conn, up net.Conn) {
	t.Tunnel = relay.New(t.h.relay, client, up, t.subprotocol == "base64")
	register(t)
	if t.h.streamsDown != nil && t.h.streamsDown.Load() {
		// Its server began to shut down while the handshake was admitted:
		// the shutdown hook has listed the tunnels without this one, which
		// would otherwise live until grace_period cut it without a Close
		// (README, HTTP/2 and HTTP/3: such tunnels end with 1001).
		t.Tunnel.Terminate(wsframe.CloseGoingAway, "server shutting down")
	}
	t.Tunnel.Run(t.ended)
}

// ended is the tunnel's one exit: it runs once, when both sides are closed.
func (t *tunnel) ended(e relay.End) {
	t.end = e
	unregister(t)
	if t.release != nil {
		t.release()
	}
	t.h.logClosed(t)
}

// state is what the admin API shows of a tunnel's life.
func (t *tunnel) state() string {
	if t.Ending() {
		return "closing"
	}
	return "open"
}

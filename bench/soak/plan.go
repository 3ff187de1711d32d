package main

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// kind is what a tunnel is made to live through. Most tunnels are normal:
// they carry data both ways and end with the client's Close 1000, and every
// byte must come back. The others are deliberately broken, each in one way
// from the list, and must end with a given close code within the
// README's bound for that case.
type kind int

const (
	kindNormal           kind = iota
	kindVanish                // the client drops its connection without a Close frame
	kindStopRead              // the client stops reading while its upstream floods it
	kindFreeze                // the client stops reading and writing (heartbeat route)
	kindAdminKill             // the tunnel is disconnected through the admin API
	kindUpReset               // the upstream resets its connection (RST)
	kindUpHalfClose           // the upstream echoes what it got, then half-closes (FIN) and reads on
	kindUpHalfCloseStall      // the upstream stops reading, then half-closes and never reads again
	kindUpStall               // the upstream stops reading and writing, and keeps the connection
	numKinds
)

// kindInfo is what the verdict expects of a kind: the close code and side
// in Caddy's log line, and how long after the fault the tunnel may take to
// end (README, "Request flow and close codes" and "Reloads and shutdown";
// docs/caddyfile.md for write_timeout and heartbeat).
type kindInfo struct {
	name     string
	code     int
	by       string
	route    string
	bound    func(c *settings) time.Duration
	atBytes  bool // the fault comes once the upstream has K bytes
	blast    bool // the client sends as fast as it can from then on
	flood    bool // the upstream sends its stream at full speed, not an echo
	clientUp bool // the upstream sees the client's end: its close time is the bound's measure too
}

var kinds = [numKinds]kindInfo{
	kindNormal: {name: "normal", code: 1000, by: "client", route: "",
		bound: func(c *settings) time.Duration { return c.closeGrace }},
	kindVanish: {name: "client vanishes", code: 1006, by: "client", route: "", clientUp: true,
		bound: func(c *settings) time.Duration { return 0 }},
	kindStopRead: {name: "client stops reading", code: 1006, by: "client", route: "", flood: true, clientUp: true,
		bound: func(c *settings) time.Duration { return c.writeTimeout + c.closeGrace }},
	kindFreeze: {name: "heartbeat timeout", code: 1008, by: "server", route: "/hb", clientUp: true,
		bound: func(c *settings) time.Duration { return c.hbInterval + c.hbTimeout }},
	kindAdminKill: {name: "admin disconnect", code: 1001, by: "server", route: "",
		bound: func(c *settings) time.Duration { return c.closeGrace }},
	kindUpReset: {name: "upstream reset", code: 1014, by: "upstream", route: "", atBytes: true,
		bound: func(c *settings) time.Duration { return 0 }},
	kindUpHalfClose: {name: "upstream half-close", code: 1000, by: "upstream", route: "", atBytes: true,
		bound: func(c *settings) time.Duration { return c.closeGrace }},
	kindUpHalfCloseStall: {name: "upstream half-close, stops reading", code: 1000, by: "upstream", route: "", atBytes: true, blast: true,
		bound: func(c *settings) time.Duration { return c.writeTimeout + c.closeGrace }},
	kindUpStall: {name: "upstream stalls", code: 1014, by: "upstream", route: "", atBytes: true, blast: true,
		bound: func(c *settings) time.Duration { return c.writeTimeout + c.closeGrace }},
}

func (k kind) String() string { return kinds[k].name }

// class is a tunnel's traffic: how big its messages are and how often
// they go.
type class int

const (
	classIdle class = iota
	classInteractive
	classBulk
)

var classNames = [...]string{"idle", "interactive", "bulk"}

// Transports, as the soak names them.
const (
	trH1    = "h1"     // ws://, HTTP/1.1 upgrade
	trH1TLS = "h1+tls" // wss://, HTTP/1.1 upgrade
	trH2    = "h2"     // wss://, extended CONNECT on HTTP/2
	trH3    = "h3"     // wss://, extended CONNECT on HTTP/3
)

var allTransports = []string{trH1, trH1TLS, trH2, trH3}

// tunnel is one tunnel's record, written by its client goroutine, its
// upstream goroutine and the log reader, each its own fields; the verdict
// reads them all once every goroutine has ended.
type tunnel struct {
	n         uint64
	name      string // also its channel in Caddy (query parameter t)
	seed      uint64
	transport string
	route     string
	kind      kind
	class     class
	life      time.Duration // how long the client runs before its planned end
	faultAt   int64         // upstream faults: bytes after which it strikes

	// Client side.
	start       time.Time     // the tunnel's connection began (a dial, or a pooled HTTP/2-3 connection)
	reqAt       time.Time     // the handshake's request went
	handshake   time.Duration // from the request to the 101 or 200
	connect     time.Duration // from start to the 101 or 200: with the TCP, TLS or QUIC handshake when one was needed
	status      int           // a refused handshake's HTTP status
	retryAfter  string
	openErr     string
	sent        atomic.Int64 // counted before the write: the echo can never overtake it
	echo        checker
	texts       int   // injected (broadcast) messages received
	lastText    int64 // the last broadcast's sequence number
	closeCode   int   // the Close frame received (0: none)
	closeSentAt time.Time
	clientFault time.Time // when the client-side fault began
	clientErr   string    // how the reader ended, when not after a Close
	writeErr    string    // a write that failed with no Close to explain it
	clientEnd   time.Time

	// Upstream side.
	upSeen     bool
	upTag      string // the configuration that opened it (A or B), from the preamble
	up         checker
	upFault    time.Time   // when an upstream fault struck
	struck     atomic.Bool // a fault (client or upstream) has struck
	upRestart  time.Time   // when the upstream restarted under it
	upEnd      time.Time
	upEndErr   string
	upEcho     int64         // bytes the upstream wrote back
	upClosed   chan struct{} // closed when the upstream connection has ended
	clientDone chan struct{} // closed when the client goroutine has ended

	// Caddy's log line for it.
	log *tunnelLog
}

func (t *tunnel) info() kindInfo { return kinds[t.kind] }

// registry finds a tunnel by name (the upstream knows it from the
// preamble, the log reader from the channel) and keeps them all for the
// verdict.
type registry struct {
	mu     sync.Mutex
	byName map[string]*tunnel
	all    []*tunnel
	next   atomic.Uint64
}

func newRegistry() *registry { return &registry{byName: map[string]*tunnel{}} }

func (r *registry) add(t *tunnel) {
	t.n = r.next.Add(1)
	t.name = fmt.Sprintf("t%d", t.n)
	t.seed = seedOf(t.n)
	t.echo.seed, t.up.seed = t.seed, t.seed
	t.upClosed = make(chan struct{})
	t.clientDone = make(chan struct{})
	r.mu.Lock()
	r.byName[t.name] = t
	r.all = append(r.all, t)
	r.mu.Unlock()
}

func (r *registry) find(name string) *tunnel {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byName[name]
}

func (r *registry) list() []*tunnel {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*tunnel(nil), r.all...)
}

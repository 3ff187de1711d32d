package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Conn is the client side of a tunnel: a stream carrying RFC 6455 frames
// both ways. A hijacked HTTP/1.1 connection is one (and gets the socket
// fast path: buffers lent only once data is readable); an HTTP/2 or
// HTTP/3 stream is another. Write has sent its bytes when it returns, and
// a deadline interrupts a blocked Read or Write.
type Conn interface {
	io.ReadWriteCloser
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// Who ended a tunnel, as logs and events report it.
const (
	ByClient   = "client"
	ByUpstream = "upstream"
	ByServer   = "server"
)

// End is how a tunnel ended: the close code sent to (or received from) the
// client, which side ended it, and why.
type End struct {
	Code int
	By   string
	Err  error // nil for a clean close; a *PanicError for a bug
}

// PanicError is the End.Err of a tunnel whose pump panicked: the tunnel
// was closed with 1011 and the server goes on.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return "internal error" }

// Stats is what a tunnel relayed: bytes and messages each way (in: client
// to upstream). Injected messages and control frames are not counted.
type Stats struct {
	BytesIn, BytesOut, MessagesIn, MessagesOut int64
}

var (
	// ErrClosing is returned by Send, WritePrepared and Ping for a tunnel
	// that is closing.
	ErrClosing          = errors.New("tunnel closing")
	errEnding           = errors.New("tunnel ending")
	ErrWriteLockTimeout = errors.New("timed out waiting to write to the client")
	errReset            = errors.New("connection reset (EOF after a write took the reset)")
	errInvalidUTF8      = &wsframe.CloseError{Code: wsframe.CloseInvalidPayload, Reason: "invalid UTF-8 in text message"}
)

// Tunnel.halfOpen: whichever of the two pumps comes second echoes the
// peer's Close after a half-close.
const (
	halfOpening = 1
	halfDone    = 2
)

// upstreamError marks an error of the upstream side.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return "upstream: " + e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// errClientClose: the client sent a Close frame, whose code is in
// Tunnel.peerCode.
var errClientClose = errors.New("client sent Close")

// Tunnel relays one client to one upstream.
type Tunnel struct {
	cfg      *Config
	client   Conn
	up       net.Conn
	clientRd socketReader
	upRd     socketReader
	base64   bool // websockify's base64 subprotocol
	opcode   byte // of messages to the client
	started  time.Time

	bytesIn, bytesOut, msgsIn, msgsOut atomic.Int64

	// The one write path to the client (writer.go).
	writeLock   chan struct{} // one frame writer at a time; a channel, to wait with a timeout
	closeSent   bool          // under writeLock
	writeBroke  bool          // under writeLock: a write failed midway, the stream is unusable
	deadlineSet time.Time     // under writeLock: when the write deadline was last moved
	upDeadline  time.Time     // client pump only: when the upstream write deadline was last moved

	endMu    sync.Mutex // makes the first decide the only one
	peerCode int        // client pump: the code of the client's Close (errClientClose)
	ending   atomic.Bool
	halfOpen atomic.Int32 // HalfClose: halfOpening once the peer's Close 1000 is handled, halfDone once the upstream pump ended
	// Client mode: the local side ended and our Close 1000 is sent; the
	// server's answer (the rest of its upstream's output) may pause up to
	// CloseGrace between reads, the reaper bounding it as a whole.
	answering atomic.Bool

	// parkEvent, when set (tests, before Start), hears a pump's park
	// deadline pass ("quiet") and its parking ("parked"), off the hot path.
	parkEvent func(client bool, event string)
	end       End           // set once, by the first decide
	done      chan struct{} // closed by the first decide
	reaper    *time.Timer   // set by the first decide: closes both sides if the closing handshake stalls
	pumps     atomic.Int32  // pumps still running; the last one finishes
	finished  chan struct{} // Run only: closed when the tunnel has ended and onEnd returned
	onEnd     func(End)

	// Heartbeat, idle timeout and throttle (timers.go); nil or zero when off.
	hbTimer, idleTimer *time.Timer
	pingAt, nextPing   int64        // oldest unanswered ping, next ping due (since start); heartbeat timer only
	lastHeard          atomic.Int64 // when the client last sent anything (since start)
	lastData           atomic.Int64 // when data last went either way (since start)
	readLim, writeLim  *limiter     // client to upstream, upstream to client

	// The pumps' state between reads, kept here so that a pump can park
	// (poller.go) and resume on another goroutine.
	parser   wsframe.Parser       // client pump
	utf8v    wsframe.UTF8Stream   // client pump
	b64      wsframe.Base64Stream // client pump
	carry    [utf8.UTFMax]byte    // upstream pump: a UTF-8 sequence split by the last read
	nc       int                  // upstream pump: bytes in carry
	repaired []byte               // upstream pump, text mode: upstream bytes that were not UTF-8, repaired
	draining bool                 // upstream pump: the tunnel is ending, what the upstream sends is dropped
}

// New returns a tunnel between client and up, not started. base64 is
// websockify's base64 subprotocol (text frames carrying base64 both ways).
func New(cfg *Config, client Conn, up net.Conn, base64 bool) *Tunnel {
	t := &Tunnel{
		cfg:       cfg,
		client:    client,
		up:        up,
		base64:    base64,
		opcode:    wsframe.OpBinary,
		started:   time.Now(),
		writeLock: make(chan struct{}, 1),
		done:      make(chan struct{}),
	}
	if cfg.Text || base64 {
		t.opcode = wsframe.OpText
	}
	t.readLim = newLimiter(cfg.ReadRate, cfg.Burst, cfg.BufferSize)
	t.writeLim = newLimiter(cfg.WriteRate, cfg.Burst, cfg.BufferSize)
	t.clientRd.init(client, cfg.bufs)
	t.upRd.init(up, cfg.bufs)
	// Set here, before the tunnel can be seen (the admin API may close it
	// before it starts), and never changed: kick reads them.
	if p := sharedPoller(); p != nil {
		for _, s := range []*socketReader{&t.clientRd, &t.upRd} {
			if s.rc != nil {
				s.poll, s.t = p, t
			}
		}
		t.clientRd.client = true
	}
	t.parser = wsframe.Parser{MaxMessage: cfg.MaxMessageSize, FromServer: cfg.Client}
	return t
}

// Start relays on two goroutines of its own, so that the caller's
// goroutine (the HTTP server's, with its buffers and deep stack) is freed
// for the tunnel's life. onEnd runs once, when both pumps have ended and
// both sides are closed.
//
// A pump whose socket stays quiet parks: its goroutine ends until the
// socket is readable again (poller.go).
func (t *Tunnel) Start(onEnd func(End)) {
	t.onEnd = onEnd
	t.startTimers()
	t.pumps.Store(2)
	go t.runClientPump()
	go t.runUpstreamPump()
}

// Run relays like Start, with the upstream pump on the caller's goroutine,
// and returns once the tunnel has ended and onEnd returned: for a client
// stream that lives only as long as its handler runs (HTTP/2, HTTP/3).
func (t *Tunnel) Run(onEnd func(End)) {
	t.onEnd = onEnd
	// The caller's goroutine is held anyway: nothing parks.
	t.clientRd.noPark, t.upRd.noPark = true, true
	t.finished = make(chan struct{})
	t.startTimers()
	t.pumps.Store(2)
	go t.runClientPump()
	t.runUpstreamPump()
	<-t.finished
}

func (t *Tunnel) runClientPump() { t.runPump(t.clientToUpstream, &t.clientRd, t.clientEnded) }

func (t *Tunnel) runUpstreamPump() { t.runPump(t.upstreamToClient, &t.upRd, t.upstreamEnded) }

// runPump runs a pump until it ends, then acts on its end, or until it
// parks (poller.go): a parked pump is not done, its next run will be.
func (t *Tunnel) runPump(pump func() error, rd *socketReader, ended func(error)) {
	parked := false
	defer func() {
		if !parked {
			t.pumpDone()
		}
	}()
	defer t.recoverPump()
	for {
		err := pump()
		if err == errPark {
			if parked = rd.park(); parked {
				return
			}
			continue
		}
		ended(err)
		return
	}
}

// Started is when the tunnel was made.
func (t *Tunnel) Started() time.Time { return t.started }

// Stats returns the traffic so far.
func (t *Tunnel) Stats() Stats {
	return Stats{t.bytesIn.Load(), t.bytesOut.Load(), t.msgsIn.Load(), t.msgsOut.Load()}
}

// Ending reports whether the tunnel has begun to close.
func (t *Tunnel) Ending() bool { return t.ending.Load() }

// Done is closed when the tunnel begins to close.
func (t *Tunnel) Done() <-chan struct{} { return t.done }

// pumpDone finishes the tunnel when the second pump ends.
func (t *Tunnel) pumpDone() {
	if t.pumps.Add(-1) > 0 {
		return
	}
	t.stopTimers()
	if t.reaper != nil {
		t.reaper.Stop()
	}
	t.clientRd.poll.release(&t.clientRd)
	t.upRd.poll.release(&t.upRd)
	t.up.Close()
	t.client.Close()
	if t.onEnd != nil {
		t.onEnd(t.end)
	}
	if t.finished != nil {
		close(t.finished)
	}
}

// recoverPump turns a panic in a pump into a 1011 close of its tunnel
// instead of the end of the whole server.
func (t *Tunnel) recoverPump() {
	if v := recover(); v != nil {
		if t.decide(wsframe.CloseInternalError, ByServer, &PanicError{Value: v, Stack: debug.Stack()}) {
			t.sendClose(wsframe.CloseInternalError, "internal error")
		}
		t.closeBoth()
	}
}

// decide records how the tunnel ends; only the first call counts, and its
// caller acts on it. From then on, the tunnel has write_timeout plus the
// closing grace to finish: a peer that neither reads nor closes cannot pin
// it.
func (t *Tunnel) decide(code int, by string, err error) bool {
	t.endMu.Lock()
	first := !t.ending.Load()
	if first {
		t.end = End{Code: code, By: by, Err: err}
		t.ending.Store(true)
		close(t.done)
		t.reaper = time.AfterFunc(t.cfg.WriteTimeout+t.cfg.CloseGrace, t.closeBoth)
	}
	t.endMu.Unlock()
	if first {
		// A parked pump reads again: the closing waits on its reads.
		t.clientRd.kick()
		t.upRd.kick()
	}
	return first
}

// closeBoth closes both sides at once: every blocked read and write of the
// pumps returns, and a parked pump resumes to find its side closed.
func (t *Tunnel) closeBoth() {
	t.up.Close()
	t.client.Close()
	t.clientRd.kick()
	t.upRd.kick()
}

// fail ends the tunnel on a broken side: nothing more can be said to the
// client, so both sides close at once.
func (t *Tunnel) fail(code int, by string, err error) {
	t.decide(code, by, err)
	t.closeBoth()
}

// clientEnded acts on the end of the client pump, when it is the tunnel's
// first end.
func (t *Tunnel) clientEnded(err error) {
	ce, _ := findErr[*wsframe.CloseError](err)
	ue, _ := findErr[*upstreamError](err)
	switch {
	case errors.Is(err, errClientClose):
		code := t.peerCode
		if !t.decide(code, ByClient, nil) {
			return
		}
		// All client data is written: half-close the upstream so that it
		// reads EOF after the last byte, echo the Close, and let the
		// upstream pump drain what the upstream still sends until it
		// closes too (closing with unread input would send an RST).
		closeWrite(t.up)
		t.upRd.setReadDeadline(time.Now().Add(t.cfg.CloseGrace))
		if t.cfg.HalfClose && code == wsframe.CloseNormal {
			// The upstream pump relays the answer and echoes the Close
			// when the upstream ends (upstreamEnded), unless it has
			// ended already.
			if t.halfOpen.CompareAndSwap(0, halfOpening) {
				return
			}
		}
		t.sendClose(code, "")
		t.client.Close()
	case ue != nil, ce != nil:
		code, reason, by := wsframe.CloseBadGateway, "bad gateway", ByUpstream
		if ue == nil {
			code, reason, by = ce.Code, ce.Reason, ByClient
		}
		if !t.decide(code, by, err) {
			return
		}
		t.sendClose(code, reason)
		t.up.Close()
		t.lingerClose()
	default: // the client vanished, or its read deadline passed
		t.fail(wsframe.CloseAbnormal, ByClient, err)
	}
}

// upstreamEnded acts on the end of the upstream pump, when it is the
// tunnel's first end.
func (t *Tunnel) upstreamEnded(err error) {
	if _, ok := findErr[*upstreamError](err); !ok {
		// Writing to the client failed: it vanished, or accepted nothing
		// for write_timeout.
		t.fail(wsframe.CloseAbnormal, ByClient, err)
		return
	}
	code, reason := wsframe.CloseNormal, ""
	if !errors.Is(err, io.EOF) {
		code, reason = wsframe.CloseBadGateway, "bad gateway"
	} else if !t.ending.Load() && wasReset(t.up) {
		// The client pump's write took the reset's error: this EOF is
		// the reset's, not the upstream's clean end.
		code, reason, err = wsframe.CloseBadGateway, "bad gateway", &upstreamError{errReset}
	}
	if !t.decide(code, ByUpstream, err) {
		if t.halfOpen.Swap(halfDone) == halfOpening {
			// The answer to the peer's half-close is all sent (or the
			// grace is over, or the server closed the tunnel): echo its
			// Close — unless the upstream failed in the middle of its
			// answer (a reset): then 1014, so that the client does not
			// take a cut answer for a whole one.
			echo, reason := wsframe.CloseNormal, ""
			if code == wsframe.CloseBadGateway && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, net.ErrClosed) {
				echo, reason = wsframe.CloseBadGateway, "bad gateway"
			}
			t.sendClose(echo, reason)
			t.client.Close()
		}
		return
	}
	// Every byte read is written. Close, and give the client pump the
	// grace period to receive the client's Close (or the last client data).
	t.sendClose(code, reason)
	t.clientRd.setReadDeadline(time.Now().Add(t.cfg.CloseGrace))
	if t.cfg.Client && code == wsframe.CloseNormal {
		t.answering.Store(true)
	}
}

// Terminate ends the tunnel from the server's side (reload, stop, admin)
// with a Close frame of code and reason, and reports whether it was open.
// A tunnel already closing is closed at once: whatever it waits for, the
// server wants it gone.
func (t *Tunnel) Terminate(code int, reason string) bool {
	if !t.terminate(code, reason) {
		t.closeBoth()
		return false
	}
	return true
}

// terminate ends the tunnel from the server's side, unless it is already
// closing, and reports whether it did.
func (t *Tunnel) terminate(code int, reason string) bool {
	if !t.decide(code, ByServer, errors.New(reason)) {
		return false
	}
	t.sendClose(code, reason)
	t.up.Close()
	t.clientRd.setReadDeadline(time.Now().Add(t.cfg.CloseGrace))
	return true
}

// lingerClose closes the client after the server's Close frame, once the
// client has closed too or the grace has passed: closing a socket with
// unread input sends an RST, which can destroy the Close frame before the
// client reads it.
func (t *Tunnel) lingerClose() {
	closeWrite(t.client)
	t.clientRd.setReadDeadline(time.Now().Add(t.cfg.CloseGrace))
	io.Copy(io.Discard, t.client)
	t.client.Close()
}

// findErr is errors.As for a pointer type, without its allocation: the
// first error of type T in err's tree.
func findErr[T error](err error) (T, bool) {
	for err != nil {
		if e, ok := err.(T); ok {
			return e, true
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, err := range u.Unwrap() {
				if e, ok := findErr[T](err); ok {
					return e, true
				}
			}
			return *new(T), false
		default:
			return *new(T), false
		}
	}
	return *new(T), false
}

// closeWrite half-closes a connection that supports it (TCP, Unix, TLS).
func closeWrite(c any) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

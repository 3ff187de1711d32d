package wstotcp

import (
	"encoding/base64"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// closeGrace bounds the closing handshake: how long a closing side waits for
// the peer's Close frame (client) or FIN (upstream) before it closes anyway.
const closeGrace = 2 * time.Second

// Who ended a tunnel, as logs and events report it.
const (
	byClient   = "client"
	byUpstream = "upstream"
	byServer   = "server"
)

// clientConn is the hijacked client connection. Gorilla reads it through a
// buffer, so a Read here means gorilla has consumed all it holds and is
// about to wait for the network: the moment to write the client bytes
// gathered so far to the upstream. Gathering until then turns a burst of
// small messages into one upstream write instead of one each.
type clientConn struct {
	net.Conn
	out *upstreamWriter
}

func (c *clientConn) Read(p []byte) (int, error) {
	if err := c.out.flush(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

// upstreamWriter gathers client bytes in buf[start:end] until the buffer is
// full or the client connection would block.
type upstreamWriter struct {
	conn       net.Conn
	buf        []byte
	start, end int
	err        error // first write error: the upstream is gone
	written    *atomic.Int64
}

func (w *upstreamWriter) flush() error {
	if w.err != nil || w.start == w.end {
		return w.err
	}
	n, err := w.conn.Write(w.buf[w.start:w.end])
	w.written.Add(int64(n))
	if err != nil {
		w.err = &upstreamError{err}
		return w.err
	}
	w.start = w.end
	return nil
}

// room returns the free tail of buf, after making room by flushing when
// full. The caller may read into it: flush never touches buf[end:].
func (w *upstreamWriter) room() ([]byte, error) {
	if w.end == len(w.buf) {
		if err := w.flush(); err != nil {
			return nil, err
		}
	}
	if w.start == w.end {
		w.start, w.end = 0, 0
	}
	return w.buf[w.end:], nil
}

// upstreamError marks an error of the upstream side, to tell it from the
// client's when both surface from one call.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return "upstream: " + e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// policyError closes the connection with its close code (1007, 1009).
type policyError struct {
	code   int
	reason string
}

func (e *policyError) Error() string { return e.reason }

// tunnel is one client relayed to one upstream.
type tunnel struct {
	h           *Handler
	id          string
	ws          *websocket.Conn
	client      *clientConn // ws's connection
	up          net.Conn
	upstream    string
	subprotocol string
	remote      string
	user        string
	started     time.Time
	base64      bool // the base64 subprotocol: text frames carry base64

	out upstreamWriter // client -> upstream

	bytesIn, bytesOut atomic.Int64 // client -> upstream, upstream -> client
	msgsIn, msgsOut   atomic.Int64

	writeMu sync.Mutex // gorilla allows one data writer at a time

	endOnce   sync.Once
	ending    atomic.Bool // set with the first decide
	closeCode int         // set once, by whoever ends the tunnel first
	closedBy  string      // byClient, byUpstream, byServer
	closeErr  error
}

func newTunnel(h *Handler, up net.Conn, upstream, subprotocol, remote string) *tunnel {
	t := &tunnel{
		h:           h,
		id:          newConnID(),
		up:          up,
		upstream:    upstream,
		subprotocol: subprotocol,
		remote:      remote,
		started:     time.Now(),
		base64:      subprotocol == "base64",
	}
	t.out.conn = up
	t.out.written = &t.bytesIn
	return t
}

// decide records how the tunnel ends; only the first call counts. It
// reports whether this call was the first, whose caller then acts.
func (t *tunnel) decide(code int, by string, err error) bool {
	first := false
	t.endOnce.Do(func() {
		t.closeCode, t.closedBy, t.closeErr = code, by, err
		t.ending.Store(true)
		first = true
	})
	return first
}

// run relays until both pumps have ended. The client pump runs on the
// caller's goroutine (the HTTP server's), the upstream pump on one more.
func (t *tunnel) run() {
	bp := t.h.bufPool.Get().(*[]byte)
	defer t.h.bufPool.Put(bp)
	t.out.buf = *bp
	t.ws.SetCloseHandler(func(int, string) error { return nil }) // we echo after flushing
	if t.h.MaxMessageSize > 0 {
		t.ws.SetReadLimit(t.h.MaxMessageSize)
	}
	register(t)
	defer unregister(t)

	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		defer t.recoverPump()
		t.upstreamEnded(t.upstreamToClient())
	}()
	func() {
		defer t.recoverPump()
		t.clientEnded(t.clientToUpstream())
	}()
	<-upDone
	t.up.Close()
	t.client.Close()
	t.h.logClosed(t)
}

// recoverPump turns a panic in a pump into a 1011 close of this tunnel
// instead of the end of the whole server.
func (t *tunnel) recoverPump() {
	if v := recover(); v != nil {
		t.h.logPanic(t, v)
		if t.decide(websocket.CloseInternalServerErr, byServer, errors.New("internal error")) {
			t.sendClose(websocket.CloseInternalServerErr, "internal error")
		}
		t.up.Close()
		t.client.Close()
	}
}

// clientToUpstream streams client messages to the upstream, fragment by
// fragment as they arrive, until the client's Close or an error.
func (t *tunnel) clientToUpstream() error {
	var utf8v utf8Stream
	var b64 base64Stream
	if t.base64 {
		b64.raw = make([]byte, len(t.out.buf))
	}
	for {
		mt, r, err := t.ws.NextReader()
		if err != nil {
			if ferr := t.out.flush(); ferr != nil {
				return ferr
			}
			return err
		}
		t.msgsIn.Add(1)
		decode := t.base64 && mt == websocket.TextMessage
		validate := t.h.ValidateUTF8 && mt == websocket.TextMessage && !decode
		for {
			room, err := t.out.room()
			if err != nil {
				return err
			}
			var n int
			var rerr error
			if decode {
				n, rerr = b64.read(r, room)
			} else {
				n, rerr = r.Read(room)
				if validate && !utf8v.valid(room[:n]) {
					return &policyError{websocket.CloseInvalidFramePayloadData, "invalid UTF-8 in text message"}
				}
			}
			t.out.end += n
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return rerr
			}
		}
		if validate && !utf8v.complete() {
			return &policyError{websocket.CloseInvalidFramePayloadData, "text message ends inside a UTF-8 sequence"}
		}
	}
}

// clientEnded acts on the end of the client pump, when it is the first end
// of the tunnel, and then waits for the upstream pump.
func (t *tunnel) clientEnded(err error) {
	var ce *websocket.CloseError
	var pe *policyError
	var ue *upstreamError
	switch {
	case errors.As(err, &ue) || errors.As(err, &pe):
		code, reason := websocket.CloseTryAgainLater, "bad gateway"
		by := byUpstream
		if pe != nil {
			code, reason, by = pe.code, pe.reason, byClient
		}
		if !t.decide(code, by, err) {
			return
		}
		t.sendClose(code, reason)
		t.up.Close()
		t.lingerClose()
	case errors.Is(err, websocket.ErrReadLimit):
		// gorilla has sent 1009 already.
		if !t.decide(websocket.CloseMessageTooBig, byClient, err) {
			return
		}
		t.up.Close()
		t.lingerClose()
	case errors.As(err, &ce):
		if !t.decide(ce.Code, byClient, nil) {
			return
		}
		// All client data is written: half-close the upstream so it sees
		// EOF after the last byte, echo the Close, and let the upstream pump
		// drain what the upstream still sends until it closes too.
		closeWrite(t.up)
		t.up.SetReadDeadline(time.Now().Add(closeGrace))
		t.sendClose(ce.Code, "")
		t.client.Close()
	default: // the client vanished, or broke the protocol
		if !t.decide(websocket.CloseAbnormalClosure, byClient, err) {
			return
		}
		t.up.Close()
		t.client.Close()
	}
}

// upstreamToClient sends each upstream read to the client as one message.
func (t *tunnel) upstreamToClient() error {
	bp := t.h.bufPool.Get().(*[]byte)
	defer t.h.bufPool.Put(bp)
	buf := *bp
	var scratch []byte // base64 or repaired text
	if t.base64 {
		scratch = make([]byte, base64.StdEncoding.EncodedLen(len(buf)))
	}
	text := t.h.messageType == websocket.TextMessage && !t.base64
	carry := 0 // the start of a UTF-8 sequence split by the last read
	draining := false
	for {
		n, err := t.up.Read(buf[carry:])
		if n > 0 && !draining {
			msg, mt, tail := buf[:carry+n], t.h.messageType, 0
			switch {
			case t.base64:
				base64.StdEncoding.Encode(scratch, msg)
				msg, mt = scratch[:base64.StdEncoding.EncodedLen(len(msg))], websocket.TextMessage
			case text:
				if err == nil {
					tail = incompleteTail(msg)
				}
				msg = msg[:len(msg)-tail]
				if !utf8.Valid(msg) {
					scratch = appendValidUTF8(scratch[:0], msg)
					msg = scratch
				}
			}
			if len(msg) > 0 {
				if werr := t.writeMessage(mt, msg); werr != nil {
					if !t.ended() {
						return werr
					}
					// The tunnel is closing: read on what the upstream still
					// sends, so that closing it sends no RST.
					draining = true
				}
			}
			t.bytesOut.Add(int64(n))
			carry = copy(buf, buf[carry+n-tail:carry+n])
		}
		if err != nil {
			return &upstreamError{err}
		}
	}
}

// upstreamEnded acts on the end of the upstream pump, when it is the first
// end of the tunnel.
func (t *tunnel) upstreamEnded(err error) {
	var ue *upstreamError
	if !errors.As(err, &ue) {
		// Writing to the client failed: it vanished or stopped reading
		// for write_timeout.
		if t.decide(websocket.CloseAbnormalClosure, byClient, err) {
			t.up.Close()
			t.client.Close()
		}
		return
	}
	code, reason := websocket.CloseNormalClosure, ""
	if !errors.Is(err, io.EOF) {
		code, reason = websocket.CloseTryAgainLater, "bad gateway"
	}
	if !t.decide(code, byUpstream, err) {
		return
	}
	// Every byte read is written; now close, and give the client pump the
	// grace period to receive the client's Close and finish.
	t.sendClose(code, reason)
	t.client.SetReadDeadline(time.Now().Add(closeGrace))
}

// terminate ends the tunnel from the server's side (reload, stop, admin).
func (t *tunnel) terminate(code int, reason string) {
	if !t.decide(code, byServer, nil) {
		return
	}
	t.sendClose(code, reason)
	t.up.Close()
	t.client.SetReadDeadline(time.Now().Add(closeGrace))
}

// ended reports whether the tunnel's end has been decided.
func (t *tunnel) ended() bool { return t.ending.Load() }

// writeMessage writes one data message under the write lock, within
// write_timeout.
func (t *tunnel) writeMessage(mt int, data []byte) error {
	t.writeMu.Lock()
	defer t.writeMu.Unlock()
	t.ws.SetWriteDeadline(time.Now().Add(time.Duration(t.h.WriteTimeout)))
	if err := t.ws.WriteMessage(mt, data); err != nil {
		return err
	}
	t.msgsOut.Add(1)
	return nil
}

// sendClose sends a Close frame; it is safe beside a data writer.
func (t *tunnel) sendClose(code int, reason string) {
	msg := websocket.FormatCloseMessage(code, reason)
	if code == websocket.CloseNoStatusReceived {
		msg = nil // echo an empty Close as an empty Close
	}
	t.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(closeGrace))
}

// lingerClose closes the client connection after the server's Close frame,
// once the client has closed too or closeGrace has passed. Closing a socket
// with unread input sends an RST, which can destroy the Close frame before
// the client reads it.
func (t *tunnel) lingerClose() {
	closeWrite(t.client.Conn)
	t.client.Conn.SetReadDeadline(time.Now().Add(closeGrace))
	io.Copy(io.Discard, t.client.Conn)
	t.client.Close()
}

// closeWrite half-closes a connection that supports it (TCP, Unix, TLS).
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

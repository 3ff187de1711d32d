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
)

// closeGrace bounds the closing handshake: how long a closing side waits for
// the peer's Close frame (client) or FIN (upstream) before it closes anyway.
const closeGrace = 2 * time.Second

// headroom is kept in front of the data in every relay buffer: room for a
// frame header and for a UTF-8 sequence carried over from the last read.
// It is a cache line, so that upstream data lands at an aligned address:
// the kernel's copy into a misaligned buffer ran at half speed here (AMD
// EPYC), which cost a third of the download throughput.
const headroom = 64

// Who ended a tunnel, as logs and events report it.
const (
	byClient   = "client"
	byUpstream = "upstream"
	byServer   = "server"
)

var (
	errCloseSent = errors.New("close frame sent")
	errEnding    = errors.New("tunnel ending")
)

var noHeader [headroom]byte // the headroom of a buffer built by appending

// upstreamError marks an error of the upstream side.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return "upstream: " + e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// clientClose is the client's Close frame.
type clientClose struct {
	code   int
	reason string
}

func (e *clientClose) Error() string { return "client sent Close" }

// tunnel is one client relayed to one upstream, by two pumps: one
// goroutine each way.
type tunnel struct {
	h           *Handler
	id          string
	client, up  net.Conn
	clientRd    *socketReader
	upRd        *socketReader
	upstream    string
	subprotocol string
	remote      string
	user        string
	channel     string // the handler's channel template, expanded
	release     func() // frees the handler's connection-limit slots; nil when none; called once, by pumpDone
	started     time.Time
	base64      bool // websockify's base64 subprotocol
	opcode      byte // of messages to the client

	bytesIn, bytesOut atomic.Int64 // client -> upstream, upstream -> client
	msgsIn, msgsOut   atomic.Int64

	writeLock   chan struct{} // one frame writer at a time; a channel, to wait with a timeout
	closeSent   bool          // under writeLock
	writeBroke  bool          // under writeLock: a write failed midway, the stream is unusable
	deadlineSet time.Time     // under writeLock: when the data write deadline was last set

	endOnce   sync.Once
	ending    atomic.Bool // set by the first decide
	closeCode int         // how the tunnel ended, set once by decide
	closedBy  string
	closeErr  error
	pumps     atomic.Int32  // pumps still running; the last one finishes
	done      chan struct{} // closed by the first decide; nil unless throttled

	// Heartbeat, idle timeout and throttle; all nil or zero when off.
	hbTimer, idleTimer *time.Timer
	pingAt, nextPing   int64        // oldest unanswered ping, next ping due (since start); heartbeat timer only
	lastHeard          atomic.Int64 // when the client last sent anything (since start)
	lastData           atomic.Int64 // when data last went either way (since start)
	readLim, writeLim  *limiter     // client to upstream, upstream to client
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
		opcode:      opBinary,
		writeLock:   make(chan struct{}, 1),
	}
	if h.MessageType == "text" || t.base64 {
		t.opcode = opText
	}
	if th := h.Throttle; th != nil {
		t.readLim = newLimiter(th.Read, th.Burst, h.BufferSize)
		t.writeLim = newLimiter(th.Write, th.Burst, h.BufferSize)
		t.done = make(chan struct{})
	}
	t.upRd = newSocketReader(up, h.bufPool)
	return t
}

// start relays on two goroutines of its own, so that the HTTP server's
// goroutine, its buffers and its deep stack are freed for the tunnel's life.
func (t *tunnel) start(client net.Conn) {
	t.client = client
	t.clientRd = newSocketReader(client, t.h.bufPool)
	register(t)
	t.startTimers()
	t.pumps.Store(2)
	go func() {
		defer t.pumpDone()
		defer t.recoverPump()
		t.clientEnded(t.clientToUpstream())
	}()
	go func() {
		defer t.pumpDone()
		defer t.recoverPump()
		t.upstreamEnded(t.upstreamToClient())
	}()
}

// pumpDone finishes the tunnel when the second pump ends.
func (t *tunnel) pumpDone() {
	if t.pumps.Add(-1) > 0 {
		return
	}
	t.stopTimers()
	t.up.Close()
	t.client.Close()
	unregister(t)
	if t.release != nil {
		t.release()
	}
	t.h.logClosed(t)
}

// recoverPump turns a panic in a pump into a 1011 close of its tunnel
// instead of the end of the whole server.
func (t *tunnel) recoverPump() {
	if v := recover(); v != nil {
		t.h.logPanic(t, v)
		if t.decide(closeInternalError, byServer, errors.New("internal error")) {
			t.sendClose(closeInternalError, "internal error")
		}
		t.up.Close()
		t.client.Close()
	}
}

// decide records how the tunnel ends; only the first call counts, and its
// caller acts on it.
func (t *tunnel) decide(code int, by string, err error) bool {
	first := false
	t.endOnce.Do(func() {
		t.closeCode, t.closedBy, t.closeErr = code, by, err
		t.ending.Store(true)
		if t.done != nil {
			close(t.done)
		}
		first = true
	})
	return first
}

// clientToUpstream parses client frames out of one buffer, unmasks their
// payload in place and gathers it at the buffer's front; what is gathered
// goes to the upstream in one write whenever the client has nothing more
// ready. A burst of small messages thus costs one upstream write, a
// message is streamed fragment by fragment however large, and a client
// whose upstream does not read is not read either (backpressure).
func (t *tunnel) clientToUpstream() (err error) {
	var (
		bp         *[]byte // nil while no bytes are pending
		buf        []byte
		ps, pe     int   // buf[ps:pe]: payload ready for the upstream
		r, w       int   // buf[r:w]: bytes not parsed yet; pe <= r
		remaining  int64 // payload bytes of the current data frame still to come
		fin        bool  // the current data frame ends its message
		key        [4]byte
		keyPos     int
		msgOp      byte  // opcode of the message in progress; 0 between messages
		msgLen     int64 // its length so far
		utf8v      utf8Stream
		b64        base64Stream
		maxMessage = t.h.MaxMessageSize
	)
	defer func() {
		if bp != nil {
			t.h.bufPool.Put(bp)
		}
	}()
	trackHeard := t.h.HeartbeatInterval > 0
	for {
		// The payload of the current data frame, as far as it is here:
		// unmasked where it lies when it continues the pending bytes (a
		// large frame is never moved), else moved up behind them.
		if remaining > 0 && r < w {
			n := int(min(remaining, int64(w-r)))
			src := buf[r : r+n]
			if ps == pe {
				ps, pe = r, r
			}
			keyPos = unmask(buf[pe:], src, key, keyPos)
			chunk := buf[pe : pe+n]
			r += n
			remaining -= int64(n)
			switch {
			case msgOp == opText && t.base64:
				m, err := b64.decode(buf[pe:], chunk)
				if err != nil {
					return errors.Join(t.toUpstream(buf[ps:pe]), err)
				}
				pe += m
			case msgOp == opText && t.h.ValidateUTF8 && !utf8v.valid(chunk):
				return errors.Join(t.toUpstream(buf[ps:pe]), errInvalidUTF8)
			default:
				pe += n
			}
			if remaining == 0 && fin {
				if cerr := t.endMessage(msgOp, &utf8v, &b64); cerr != nil {
					return errors.Join(t.toUpstream(buf[ps:pe]), cerr)
				}
				msgOp = 0
			}
			continue
		}

		// The next frame header, when the whole header is here.
		if remaining == 0 && r < w {
			h, size, perr := parseHeader(buf[r:w])
			if perr != nil {
				return errors.Join(t.toUpstream(buf[ps:pe]), perr)
			}
			if size > 0 && h.opcode >= opClose {
				if int64(w-r-size) < h.length {
					size = 0 // wait for the whole control frame
				} else {
					payload := buf[r+size : r+size+int(h.length)]
					unmask(payload, payload, h.mask, 0)
					r += size + int(h.length)
					if cerr := t.control(h.opcode, payload); cerr != nil {
						return errors.Join(t.toUpstream(buf[ps:pe]), cerr)
					}
					continue
				}
			}
			if size > 0 {
				r += size
				switch {
				case h.opcode == opContinuation && msgOp == 0:
					return errors.Join(t.toUpstream(buf[ps:pe]), protocolError("continuation frame outside a message"))
				case h.opcode != opContinuation && msgOp != 0:
					return errors.Join(t.toUpstream(buf[ps:pe]), protocolError("new message inside a fragmented one"))
				case h.opcode != opContinuation:
					msgOp, msgLen = h.opcode, 0
					t.msgsIn.Add(1)
				}
				msgLen += h.length
				if maxMessage > 0 && msgLen > maxMessage {
					return errors.Join(t.toUpstream(buf[ps:pe]), &closeError{closeMessageTooBig, "message too big"})
				}
				remaining, fin, key, keyPos = h.length, h.fin, h.mask, 0
				if remaining == 0 && fin {
					if cerr := t.endMessage(msgOp, &utf8v, &b64); cerr != nil {
						return errors.Join(t.toUpstream(buf[ps:pe]), cerr)
					}
					msgOp = 0
				}
				continue
			}
		}

		// Nothing more to parse: write what is gathered, keep a partial
		// header, and read more. The buffer goes back to the pool when
		// nothing is pending, so an idle client holds none.
		err = t.toUpstream(buf[ps:pe])
		ps, pe = 0, 0
		if err != nil {
			return err
		}
		pending := r < w
		if pending {
			w = copy(buf, buf[r:w])
		} else {
			w = 0
		}
		r = 0
		var n int
		bp, n, err = t.clientRd.read(bp, w, 0, !pending)
		if err != nil {
			return err
		}
		if trackHeard {
			t.lastHeard.Store(t.since())
		}
		buf = *bp
		w += n
	}
}

// toUpstream writes client payload to the upstream, paced by the read
// throttle when there is one.
func (t *tunnel) toUpstream(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if t.h.IdleTimeout > 0 {
		t.lastData.Store(t.since())
	}
	for len(p) > 0 {
		k := len(p)
		if t.readLim != nil {
			k = min(k, t.readLim.burst)
			if !t.readLim.wait(k, t.done) {
				return errEnding
			}
		}
		n, err := t.up.Write(p[:k])
		t.bytesIn.Add(int64(n))
		if err != nil {
			return &upstreamError{err}
		}
		p = p[k:]
	}
	return nil
}

var errInvalidUTF8 = &closeError{closeInvalidPayload, "invalid UTF-8 in text message"}

// endMessage checks a finished message.
func (t *tunnel) endMessage(op byte, utf8v *utf8Stream, b64 *base64Stream) error {
	if op != opText {
		return nil
	}
	if t.base64 {
		return b64.complete()
	}
	if t.h.ValidateUTF8 && !utf8v.complete() {
		return &closeError{closeInvalidPayload, "text message ends inside a UTF-8 sequence"}
	}
	return nil
}

// control handles a client control frame.
func (t *tunnel) control(op byte, payload []byte) error {
	switch op {
	case opPing:
		return t.writeControl(opPong, payload, time.Duration(t.h.WriteTimeout))
	case opClose:
		code, reason, perr := parseClosePayload(payload)
		if perr != nil {
			return perr
		}
		return &clientClose{code, reason}
	}
	return nil // a pong
}

// clientEnded acts on the end of the client pump, when it is the tunnel's
// first end.
func (t *tunnel) clientEnded(err error) {
	var cc *clientClose
	var ce *closeError
	var ue *upstreamError
	switch {
	case errors.As(err, &cc):
		if !t.decide(cc.code, byClient, nil) {
			return
		}
		// All client data is written: half-close the upstream so that it
		// reads EOF after the last byte, echo the Close, and let the
		// upstream pump drain what the upstream still sends until it
		// closes too (closing with unread input would send an RST).
		closeWrite(t.up)
		t.up.SetReadDeadline(time.Now().Add(closeGrace))
		t.sendClose(cc.code, "")
		t.client.Close()
	case errors.As(err, &ue), errors.As(err, &ce):
		code, reason, by := closeBadGateway, "bad gateway", byUpstream
		if ce != nil {
			code, reason, by = ce.code, ce.reason, byClient
		}
		if !t.decide(code, by, err) {
			return
		}
		t.sendClose(code, reason)
		t.up.Close()
		t.lingerClose()
	default: // the client vanished, or its read deadline passed
		if t.decide(closeAbnormal, byClient, err) {
			t.up.Close()
		}
		t.client.Close()
	}
}

// upstreamToClient sends each upstream read to the client as one message,
// framed in place in the buffer it was read into.
func (t *tunnel) upstreamToClient() error {
	text := t.opcode == opText && !t.base64
	var carry [utf8.UTFMax]byte // a UTF-8 sequence split by the last read
	nc := 0
	var repaired []byte // text mode: upstream bytes that are not UTF-8
	draining := false
	trackData := t.h.IdleTimeout > 0
	readEnd := 0 // the whole buffer
	if t.writeLim != nil {
		readEnd = headroom + min(t.h.BufferSize, t.writeLim.burst)
	}
	var bp *[]byte
	defer func() {
		if bp != nil {
			t.h.bufPool.Put(bp)
		}
	}()
	for {
		var n int
		var err error
		bp, n, err = t.upRd.read(bp, headroom, readEnd, true)
		if n > 0 && trackData {
			t.lastData.Store(t.since())
		}
		if n > 0 && t.writeLim != nil && !draining && !t.writeLim.wait(n, t.done) {
			draining = true // the tunnel is ending
		}
		if n > 0 && !draining {
			buf := *bp
			start, end := headroom, headroom+n
			var werr error
			switch {
			case t.base64:
				werr = t.writeBase64(buf[start:end])
			case text:
				start -= copy(buf[start-nc:start], carry[:nc])
				tail := 0
				if err == nil {
					tail = incompleteTail(buf[start:end])
				}
				nc = copy(carry[:], buf[end-tail:end])
				end -= tail
				if !utf8.Valid(buf[start:end]) {
					repaired = appendValidUTF8(append(repaired[:0], noHeader[:]...), buf[start:end])
					buf, start, end = repaired, headroom, len(repaired)
				}
				fallthrough
			default:
				if end > start {
					werr = t.writeFrame(t.opcode, buf, start, end-start)
				}
			}
			if werr == nil {
				t.bytesOut.Add(int64(n))
			} else if !t.ending.Load() {
				return werr
			} else {
				// The tunnel is closing: read on what the upstream still
				// sends, so that closing it sends no RST.
				draining = true
			}
		}
		if err != nil {
			return &upstreamError{err}
		}
	}
}

// writeBase64 sends p as one base64 text message.
func (t *tunnel) writeBase64(p []byte) error {
	bp := t.h.b64Pool.Get().(*[]byte)
	defer t.h.b64Pool.Put(bp)
	enc := *bp
	n := base64.StdEncoding.EncodedLen(len(p))
	base64.StdEncoding.Encode(enc[headroom:], p)
	return t.writeFrame(opText, enc, headroom, n)
}

// upstreamEnded acts on the end of the upstream pump, when it is the
// tunnel's first end.
func (t *tunnel) upstreamEnded(err error) {
	var ue *upstreamError
	if !errors.As(err, &ue) {
		// Writing to the client failed: it vanished, or accepted nothing
		// for write_timeout.
		if t.decide(closeAbnormal, byClient, err) {
			t.up.Close()
			t.client.Close()
		}
		return
	}
	code, reason := closeNormal, ""
	if !errors.Is(err, io.EOF) {
		code, reason = closeBadGateway, "bad gateway"
	}
	if !t.decide(code, byUpstream, err) {
		return
	}
	// Every byte read is written. Close, and give the client pump the
	// grace period to receive the client's Close (or the last client data).
	t.sendClose(code, reason)
	t.client.SetReadDeadline(time.Now().Add(closeGrace))
}

// terminate ends the tunnel from the server's side (reload, stop, admin).
func (t *tunnel) terminate(code int, reason string) {
	if !t.decide(code, byServer, errors.New(reason)) {
		return
	}
	t.sendClose(code, reason)
	t.up.Close()
	t.client.SetReadDeadline(time.Now().Add(closeGrace))
}

// lockWrite takes the write lock, waiting at most timeout.
func (t *tunnel) lockWrite(timeout time.Duration) bool {
	select {
	case t.writeLock <- struct{}{}:
		return true
	default:
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case t.writeLock <- struct{}{}:
		return true
	case <-timer.C:
		return false
	}
}

func (t *tunnel) unlockWrite() { <-t.writeLock }

// writeFrame sends buf[start:start+n] as one message, with its header put
// in the headroom before start, within write_timeout.
func (t *tunnel) writeFrame(op byte, buf []byte, start, n int) error {
	hs := putHeader(buf, start, op, n)
	t.writeLock <- struct{}{}
	defer t.unlockWrite()
	if t.closeSent || t.writeBroke {
		return errCloseSent
	}
	t.refreshWriteDeadline()
	if _, err := t.client.Write(buf[hs : start+n]); err != nil {
		t.writeBroke = true
		return err
	}
	t.msgsOut.Add(1)
	return nil
}

// writeControl sends a control frame (ping, pong), waiting at most timeout.
func (t *tunnel) writeControl(op byte, payload []byte, timeout time.Duration) error {
	var frame [maxHeader + maxControlPayload]byte
	n := copy(frame[2:], payload)
	frame[0], frame[1] = 0x80|op, byte(n)
	if !t.lockWrite(timeout) {
		return errWriteLockTimeout
	}
	defer t.unlockWrite()
	if t.closeSent || t.writeBroke {
		return nil // the Close is on its way: nothing more to say
	}
	t.client.SetWriteDeadline(time.Now().Add(timeout))
	t.deadlineSet = time.Time{}
	if _, err := t.client.Write(frame[:2+n]); err != nil {
		t.writeBroke = true
		return err
	}
	return nil
}

// refreshWriteDeadline moves the client's write deadline to write_timeout
// from now. Moving it costs a timer update, so it is moved only when it
// has come 1/64 of write_timeout nearer: a stuck client is dropped after
// between 63/64 of write_timeout and write_timeout. Under writeLock.
func (t *tunnel) refreshWriteDeadline() {
	timeout := time.Duration(t.h.WriteTimeout)
	now := time.Now()
	if now.Sub(t.deadlineSet) > timeout/64 || t.deadlineSet.IsZero() {
		t.client.SetWriteDeadline(now.Add(timeout))
		t.deadlineSet = now
	}
}

var errWriteLockTimeout = errors.New("timed out waiting to write to the client")

// sendClose sends a Close frame, once. A client that has not accepted the
// previous message within closeGrace gets none.
func (t *tunnel) sendClose(code int, reason string) {
	var frame [2 + maxControlPayload]byte
	payload := closePayload(frame[2:2], code, reason)
	frame[0], frame[1] = 0x80|opClose, byte(len(payload))
	if !t.lockWrite(closeGrace) {
		return
	}
	defer t.unlockWrite()
	if t.closeSent || t.writeBroke {
		return
	}
	t.closeSent = true
	t.client.SetWriteDeadline(time.Now().Add(closeGrace))
	if _, err := t.client.Write(frame[:2+len(payload)]); err != nil {
		t.writeBroke = true
	}
}

// lingerClose closes the client connection after the server's Close frame,
// once the client has closed too or closeGrace has passed: closing a socket
// with unread input sends an RST, which can destroy the Close frame before
// the client reads it.
func (t *tunnel) lingerClose() {
	closeWrite(t.client)
	t.client.SetReadDeadline(time.Now().Add(closeGrace))
	io.Copy(io.Discard, t.client)
	t.client.Close()
}

// closeWrite half-closes a connection that supports it (TCP, Unix, TLS).
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

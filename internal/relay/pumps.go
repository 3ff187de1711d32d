package relay

import (
	"encoding/base64"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

var noHeader [headroom]byte // the headroom of a buffer built by appending

// clientToUpstream parses client frames out of one buffer, their payload
// unmasked in place, and gathers the payload at the front of what is
// pending; what is gathered goes to the upstream in one write whenever the
// client has nothing more ready. A burst of small messages thus costs one
// upstream write, a large frame is never moved, a message is streamed
// fragment by fragment however large, and a client whose upstream does not
// read is not read either (backpressure).
func (t *Tunnel) clientToUpstream() error {
	var (
		bp     *[]byte // nil while no bytes are pending
		buf    []byte
		ps, pe int // buf[ps:pe]: payload ready for the upstream
		r, w   int // buf[r:w]: bytes not parsed yet; pe <= r
		parser = &t.parser
		utf8v  = &t.utf8v
		b64    = &t.b64
	)
	defer func() {
		if bp != nil {
			t.cfg.bufs.Put(bp)
		}
	}()
	// flushThen writes what is gathered, then ends the pump with err:
	// data that came before a protocol error still reaches the upstream.
	flushThen := func(err error) error {
		if werr := t.toUpstream(buf[ps:pe]); werr != nil {
			return errors.Join(werr, err)
		}
		return err
	}
	trackHeard := t.cfg.HeartbeatInterval > 0
	readEnd := t.cfg.bufLen - tailroom
	for {
		for r < w {
			ev, n, err := parser.Next(buf[r:w])
			if err != nil {
				return flushThen(err)
			}
			if ev.Kind == wsframe.More {
				break
			}
			r += n
			if ev.Kind == wsframe.Control {
				if err := t.control(ev.Op, ev.Payload); err != nil {
					return flushThen(err)
				}
				continue
			}
			if ev.First {
				t.msgsIn.Add(1)
			}
			if k := len(ev.Payload); k > 0 {
				at := r - k
				if ps == pe {
					ps, pe = at, at // nothing pending: the payload stays where it is
				} else if pe != at {
					copy(buf[pe:], ev.Payload)
				}
				chunk := buf[pe : pe+k]
				switch {
				case ev.Op == wsframe.OpText && t.base64:
					m, err := b64.Decode(buf[pe:], chunk)
					if err != nil {
						return flushThen(err)
					}
					pe += m
				case ev.Op == wsframe.OpText && t.cfg.ValidateUTF8 && !utf8v.Valid(chunk):
					return flushThen(errInvalidUTF8)
				default:
					pe += k
				}
			}
			if ev.Last {
				if err := t.endMessage(ev.Op, utf8v, b64); err != nil {
					return flushThen(err)
				}
			}
		}

		// Nothing more to parse: write what is gathered, keep a partial
		// frame, and read more. The buffer goes back to the pool when
		// nothing is pending, so an idle client holds none.
		if err := t.toUpstream(buf[ps:pe]); err != nil {
			return err
		}
		ps, pe = 0, 0
		pending := r < w
		if pending {
			w = copy(buf, buf[r:w])
		} else {
			w = 0
		}
		r = 0
		if t.answering.Load() {
			// Counted from here, not from the last read: writing the
			// answer to a slow local program is not the server's pause.
			t.clientRd.setReadDeadline(time.Now().Add(t.cfg.CloseGrace))
		}
		var n int
		var err error
		bp, n, err = t.clientRd.read(bp, w, readEnd, !pending)
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
// throttle when there is one, each write within write_timeout: an upstream
// that stops reading cannot hold the pump (and the tunnel) forever.
func (t *Tunnel) toUpstream(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if t.cfg.IdleTimeout > 0 {
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
		t.upDeadline = refreshDeadline(t.up, t.upDeadline, t.cfg.WriteTimeout)
		n, err := t.up.Write(p[:k])
		t.bytesIn.Add(int64(n))
		if err != nil {
			return &upstreamError{err}
		}
		p = p[k:]
	}
	return nil
}

// endMessage checks a finished message.
func (t *Tunnel) endMessage(op byte, utf8v *wsframe.UTF8Stream, b64 *wsframe.Base64Stream) error {
	if op != wsframe.OpText {
		return nil
	}
	if t.base64 {
		return b64.Complete()
	}
	if t.cfg.ValidateUTF8 && !utf8v.Complete() {
		return &wsframe.CloseError{Code: wsframe.CloseInvalidPayload, Reason: "text message ends inside a UTF-8 sequence"}
	}
	return nil
}

// control handles a client control frame.
func (t *Tunnel) control(op byte, payload []byte) error {
	switch op {
	case wsframe.OpPing:
		return t.writeControl(wsframe.OpPong, payload)
	case wsframe.OpClose:
		code, _, err := wsframe.ParseClosePayload(payload)
		if err != nil {
			return err
		}
		t.peerCode = code
		return errClientClose
	}
	return nil // a pong
}

// upstreamToClient sends each upstream read to the client as one message,
// framed in place in the buffer it was read into.
func (t *Tunnel) upstreamToClient() error {
	text := t.opcode == wsframe.OpText && !t.base64
	trackData := t.cfg.IdleTimeout > 0
	readEnd := 0 // the whole buffer
	if t.writeLim != nil {
		readEnd = headroom + min(t.cfg.BufferSize, t.writeLim.burst)
	}
	var bp *[]byte
	defer func() {
		if bp != nil {
			t.cfg.bufs.Put(bp)
		}
	}()
	for {
		if t.halfOpen.Load() == halfOpening {
			// The answer to a half-close may pause up to the grace
			// between reads, counted from when the relay is ready to read
			// again: time spent writing to a slow client is not the
			// upstream's pause. The reaper still bounds the answer as a
			// whole, so that an upstream that streams on and never closes
			// cannot keep a closing tunnel open.
			t.upRd.setReadDeadline(time.Now().Add(t.cfg.CloseGrace))
		}
		var n int
		var err error
		bp, n, err = t.upRd.read(bp, headroom, readEnd, true)
		if err == errPark {
			return err
		}
		if n > 0 && trackData {
			t.lastData.Store(t.since())
		}
		if n > 0 && t.writeLim != nil && !t.draining && !t.writeLim.wait(n, t.done) && t.halfOpen.Load() != halfOpening {
			t.draining = true // the tunnel is ending
		}
		if n > 0 && !t.draining {
			buf := *bp
			start, end := headroom, headroom+n
			var werr error
			switch {
			case t.base64:
				werr = t.writeBase64(buf[start:end])
			case text:
				start -= copy(buf[start-t.nc:start], t.carry[:t.nc])
				tail := 0
				if err == nil {
					tail = wsframe.IncompleteTail(buf[start:end])
				}
				t.nc = copy(t.carry[:], buf[end-tail:end])
				end -= tail
				if !utf8.Valid(buf[start:end]) {
					t.repaired = wsframe.AppendValidUTF8(append(t.repaired[:0], noHeader[:]...), buf[start:end])
					buf, start, end = t.repaired, headroom, len(t.repaired)
				}
				fallthrough
			default:
				if end > start {
					werr = t.writeData(t.opcode, buf, start, end-start)
				}
			}
			if werr == nil {
				t.bytesOut.Add(int64(n))
			} else if !t.ending.Load() {
				return werr
			} else {
				// The tunnel is closing: read on what the upstream still
				// sends, so that closing it sends no RST.
				t.draining = true
			}
		}
		if err != nil {
			return &upstreamError{err}
		}
	}
}

// writeBase64 sends p as one base64 text message.
func (t *Tunnel) writeBase64(p []byte) error {
	bp := t.cfg.b64.Get().(*[]byte)
	defer t.cfg.b64.Put(bp)
	enc := *bp
	n := base64.StdEncoding.EncodedLen(len(p))
	base64.StdEncoding.Encode(enc[headroom:], p)
	return t.writeData(wsframe.OpText, enc, headroom, n)
}

// since is the time since the tunnel started, on the monotonic clock, as
// the atomics that record activity store it.
func (t *Tunnel) since() int64 { return int64(time.Since(t.started)) }

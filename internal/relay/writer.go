package relay

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Everything the server says to the client goes through writeClient: the
// relayed messages, pongs, heartbeats, the messages the admin API injects
// and the Close frame. One lock, so that frames never interleave; one
// deadline rule; one place that knows the stream is finished once a Close
// went out or a write broke off midway.

// writeKind tells writeClient how long it may take.
type writeKind uint8

const (
	writeData  writeKind = iota // within write_timeout
	writeClose                  // within the closing grace, and the last frame
)

// writeClient writes p, whole frames, to the client in one write. It
// waits for the lock at most as long as the holder can keep it (its write
// is bounded by the same deadlines), so no caller blocks forever.
func (t *Tunnel) writeClient(p []byte, kind writeKind) error {
	wait := t.cfg.WriteTimeout + t.cfg.CloseGrace
	if kind == writeClose {
		wait = t.cfg.CloseGrace
	}
	if !t.lockWrite(wait) {
		return ErrWriteLockTimeout
	}
	defer t.unlockWrite()
	if t.closeSent || t.writeBroke {
		return ErrClosing
	}
	if kind == writeClose {
		t.closeSent = true
		t.client.SetWriteDeadline(time.Now().Add(t.cfg.CloseGrace))
		t.deadlineSet = time.Time{}
	} else {
		t.deadlineSet = refreshDeadline(t.client, t.deadlineSet, t.cfg.WriteTimeout)
	}
	if _, err := t.client.Write(p); err != nil {
		t.writeBroke = true
		return err
	}
	return nil
}

// writeData sends buf[start:start+n] as one relayed message, with its
// header put in the headroom before start. A client tunnel masks the
// payload in place.
func (t *Tunnel) writeData(op byte, buf []byte, start, n int) error {
	var hs int
	if t.cfg.Client {
		hs = wsframe.PutMaskedHeader(buf, start, op, n, maskKey())
	} else {
		hs = wsframe.PutHeader(buf, start, op, n)
	}
	if err := t.writeClient(buf[hs:start+n], writeData); err != nil {
		return err
	}
	t.msgsOut.Add(1)
	return nil
}

// controlFrame is room for one control frame, masked or not.
type controlFrame [2 + 4 + wsframe.MaxControlPayload]byte

// frame puts the header of the control frame whose payload (at most 125
// bytes) is at f[6:6+n] before it, masked for a client tunnel, and returns
// the frame.
func (f *controlFrame) frame(client bool, op byte, n int) []byte {
	if client {
		return f[wsframe.PutMaskedHeader(f[:], 6, op, n, maskKey()) : 6+n]
	}
	f[4], f[5] = 0x80|op, byte(n)
	return f[4 : 6+n]
}

// maskKey is a fresh mask key for a client frame. RFC 6455 §10.3 asks for
// keys a page's script cannot predict; the runtime's generator (ChaCha8,
// seeded by the system) is that, and costs no system call or allocation
// per message, unlike crypto/rand.
func maskKey() (k [4]byte) {
	binary.LittleEndian.PutUint32(k[:], rand.Uint32())
	return k
}

// writeControl sends a ping or pong of at most 125 bytes.
func (t *Tunnel) writeControl(op byte, payload []byte) error {
	var f controlFrame
	n := copy(f[6:], payload)
	err := t.writeClient(f.frame(t.cfg.Client, op, n), writeData)
	if errors.Is(err, ErrClosing) {
		return nil // the Close is on its way: nothing more to say
	}
	return err
}

// sendClose sends a Close frame, once. A client that has not accepted the
// previous message within the grace gets none.
func (t *Tunnel) sendClose(code int, reason string) {
	var f controlFrame
	payload := wsframe.ClosePayload(f[6:6], code, reason)
	t.writeClient(f.frame(t.cfg.Client, wsframe.OpClose, len(payload)), writeClose)
}

// lockWrite takes the write lock, waiting at most timeout.
func (t *Tunnel) lockWrite(timeout time.Duration) bool {
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

func (t *Tunnel) unlockWrite() { <-t.writeLock }

// deadliner is a side of the tunnel whose writes can be bounded.
type deadliner interface{ SetWriteDeadline(time.Time) error }

// refreshDeadline moves c's write deadline to timeout from now, and returns
// when it did. Moving it costs a timer update, so it is moved only when it
// has come 1/64 of timeout nearer since set: a stuck peer is dropped after
// between 63/64 of timeout and timeout.
func refreshDeadline(c deadliner, set time.Time, timeout time.Duration) time.Time {
	now := time.Now()
	if set.IsZero() || now.Sub(set) > timeout/64 {
		c.SetWriteDeadline(now.Add(timeout))
		return now
	}
	return set
}

// Messages injected by the server (admin API, heartbeat text) are sent as
// they are, whatever the tunnel's message type or base64 subprotocol, each
// whole in one write, so that they never land inside a relayed message.
// They are not counted in Stats (relayed traffic) nor throttled. A failed
// write leaves the client's stream cut inside a frame: the tunnel then ends
// as when a client does not accept data.

// Send sends payload to the client as one message of type op
// (wsframe.OpText or wsframe.OpBinary). The payload is copied.
func (t *Tunnel) Send(op byte, payload []byte) error {
	return t.WritePrepared(wsframe.Prepare(op, payload))
}

// WritePrepared writes a frame made by wsframe.Prepare. frame is only
// read, so the same bytes can go to many tunnels at once.
func (t *Tunnel) WritePrepared(frame []byte) error {
	if t.ending.Load() {
		return ErrClosing
	}
	return t.injected(t.writeClient(frame, writeData))
}

// Ping sends a ping with payload (at most 125 bytes) to the client.
func (t *Tunnel) Ping(payload []byte) error {
	if t.ending.Load() {
		return ErrClosing
	}
	return t.injected(t.writeControl(wsframe.OpPing, payload))
}

// injected ends the tunnel after a failed injected write; waiting too long
// for the lock is not a failure of the stream (its holder fails on its own
// deadline).
func (t *Tunnel) injected(err error) error {
	if err != nil && !errors.Is(err, ErrClosing) && !errors.Is(err, ErrWriteLockTimeout) {
		t.fail(wsframe.CloseAbnormal, ByClient, err)
	}
	return err
}

package wstotcp

import (
	"errors"
	"time"
)

// Messages the admin API injects into a tunnel. They go through the
// tunnel's write lock like the relay's own messages, each written whole in
// one write, so that an injected message never lands inside a relayed one.
// They are sent as they are, whatever the tunnel's message_type or base64
// subprotocol, and are not counted in its bytes and messages (which count
// relayed traffic) nor throttled.

// prepareFrame returns payload framed as one final, unmasked server
// message of type op: what writePrepared writes, built once for any number
// of tunnels.
func prepareFrame(op byte, payload []byte) []byte {
	buf := make([]byte, maxHeader+len(payload))
	copy(buf[maxHeader:], payload)
	return buf[putHeader(buf, maxHeader, op, len(payload)):]
}

// sendMessage sends payload to the client as one message of type op
// (opText or opBinary). The payload is copied: the caller may reuse it.
func (t *tunnel) sendMessage(op byte, payload []byte) error {
	return t.writePrepared(prepareFrame(op, payload))
}

// writePrepared writes a frame made by prepareFrame, in one write under the
// write lock, within write_timeout. frame is only read, so the same bytes
// can be written to many tunnels at once. A write that fails leaves the
// client's stream cut inside a frame: the tunnel is then ended as the relay
// ends it when a client does not accept data.
func (t *tunnel) writePrepared(frame []byte) error {
	if t.ending.Load() {
		return errCloseSent
	}
	timeout := time.Duration(t.h.WriteTimeout)
	if !t.lockWrite(timeout) {
		return errWriteLockTimeout // the writer holding it fails on its own deadline
	}
	err := t.writeLocked(frame)
	t.unlockWrite()
	if err != nil && !errors.Is(err, errCloseSent) {
		t.writeFailed(err)
	}
	return err
}

func (t *tunnel) writeLocked(frame []byte) error {
	if t.closeSent || t.writeBroke {
		return errCloseSent
	}
	t.refreshWriteDeadline()
	if _, err := t.client.Write(frame); err != nil {
		t.writeBroke = true
		return err
	}
	return nil
}

// ping sends a ping with payload (at most 125 bytes) to the client.
func (t *tunnel) ping(payload []byte) error {
	if t.ending.Load() {
		return errCloseSent
	}
	err := t.writeControl(opPing, payload, time.Duration(t.h.WriteTimeout))
	if err != nil && !errors.Is(err, errWriteLockTimeout) {
		t.writeFailed(err)
	}
	return err
}

// writeFailed ends the tunnel after a failed write to the client.
func (t *tunnel) writeFailed(err error) {
	if t.decide(closeAbnormal, byClient, err) {
		t.up.Close()
	}
	t.client.Close()
}

package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// runTunnel is one tunnel's client, from the handshake to its end.
func (s *soak) runTunnel(t *tunnel) {
	defer close(t.clientDone)
	t.start = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	st, br, release, err := s.open(ctx, t)
	cancel()
	t.connect = time.Since(t.start)
	t.handshake = time.Since(t.reqAt)
	if t.handshake > time.Second && os.Getenv("SOAK_DEBUG") != "" {
		logf("slow handshake %s %s %s: %v (connect %v) err=%v", t.name, t.transport, t.route, t.handshake, t.connect, err)
	}
	if err != nil {
		var he *handshakeError
		if errors.As(err, &he) {
			t.status, t.retryAfter = he.status, he.retryAfter
		} else {
			t.openErr = err.Error()
		}
		s.stats.refused(t)
		return
	}
	defer release()
	s.stats.opened(t)
	defer s.stats.closed(t)
	r := &tunnelRun{s: s, t: t, st: st, ws: newWSConn(st, br),
		gotClose: make(chan struct{}), readDone: make(chan struct{}),
		paused: make(chan struct{}), resume: make(chan struct{})}
	go r.reader()
	r.writer()
	t.clientEnd = time.Now()
}

// open dials the tunnel's transport and route.
func (s *soak) open(ctx context.Context, t *tunnel) (stream, *bufio.Reader, func(), error) {
	path := t.route + "?t=" + t.name
	sending := func() { t.reqAt = time.Now() }
	switch t.transport {
	case trH1:
		st, br, err := dialH1(ctx, s.httpAddr, s.httpAddr, path, nil, sending)
		return st, br, func() {}, err
	case trH1TLS:
		st, br, err := dialH1(ctx, s.httpsAddr, s.authority, path, s.tlsConf("http/1.1"), sending)
		return st, br, func() {}, err
	}
	// A stream that is not read holds its share of the connection's
	// flow-control window, each way. Downloads: on HTTP/3, quic-go's client
	// allows 15 MB a connection and 6 MB a stream, so three tunnels whose
	// client stops reading stall the others. Uploads: Go's HTTP/2 server
	// gives a connection the window of one stream (1 MiB), and the relay
	// stops reading a tunnel whose upstream stalls, so one such tunnel
	// stalls every upload on its connection — Pongs too, and on HTTP/3 new
	// streams' requests — until write_timeout ends it
	// (docs/http2-http3.md). Such tunnels get connections of their own, so
	// that the other tunnels measure Caddy, not that; those that stall
	// uploads apart from those that freeze, which answer Pongs until their
	// fault strikes.
	pools := s.pools
	switch {
	case kinds[t.kind].blast:
		pools = s.stallPools
	case t.kind == kindStopRead || t.kind == kindFreeze:
		pools = s.quietPools
	}
	st, release, err := pools[t.transport].open(ctx, path, sending)
	return st, nil, release, err
}

type tunnelRun struct {
	s  *soak
	t  *tunnel
	st stream
	ws *wsConn

	gotClose chan struct{} // the reader got the server's Close
	readDone chan struct{} // the reader has ended
	pause    atomic.Bool   // the reader holds the next frame unanswered
	paused   chan struct{} // closed when the reader stopped reading (stop-read)
	resume   chan struct{} // closed to let the reader go on
	sentOurs bool
}

// reader checks every echoed byte, answers pings, counts broadcasts and
// takes the server's Close.
func (r *tunnelRun) reader() {
	defer close(r.readDone)
	t := r.t
	info := t.info()
	closed := false
	for {
		op, p, err := r.ws.read()
		if err != nil {
			if !closed {
				t.clientErr = err.Error()
			}
			return
		}
		if r.pause.Load() {
			<-r.resume
		}
		if closed {
			r.s.v.add("client", "%s (%s): a frame (opcode %d) after the server's Close", t.name, t.transport, op)
			continue
		}
		switch op {
		case opBinary:
			t.echo.check(p)
			r.s.stats.bytes.Add(int64(len(p)))
			if !info.flood && t.echo.off > t.sent.Load() {
				r.s.v.add("data", "%s (%s): %d bytes echoed, only %d sent", t.name, t.transport, t.echo.off, t.sent.Load())
			}
			if info.flood && t.echo.off >= 64<<10 && t.clientFault.IsZero() {
				// Stop reading: the upstream floods on, Caddy's writes
				// to us must time out (write_timeout).
				t.clientFault = time.Now()
				t.struck.Store(true)
				r.pause.Store(true)
				close(r.paused)
			}
		case opText:
			r.broadcast(p)
		case opPing:
			r.ws.write(opPong, p)
		case opPong:
		case opClose:
			closed = true
			t.closeCode = 1005
			if len(p) >= 2 {
				t.closeCode = int(binary.BigEndian.Uint16(p))
			}
			close(r.gotClose)
		default:
			r.s.v.add("client", "%s (%s): frame with opcode %d", t.name, t.transport, op)
		}
	}
}

// broadcast checks an injected message: one of the soak's, in order.
func (r *tunnelRun) broadcast(p []byte) {
	t := r.t
	seq, err := strconv.ParseInt(strings.TrimPrefix(string(p), broadcastPrefix), 10, 64)
	if !strings.HasPrefix(string(p), broadcastPrefix) || err != nil {
		r.s.v.add("client", "%s (%s): text message %q is no broadcast of the soak's", t.name, t.transport, p)
		return
	}
	if seq <= t.lastText {
		r.s.v.add("client", "%s (%s): broadcast %d after %d", t.name, t.transport, seq, t.lastText)
	}
	t.lastText = seq
	t.texts++
	r.s.stats.texts.Add(1)
}

// writer sends the tunnel's traffic until its planned end, its fault, the
// end of the run, or the server's Close.
func (r *tunnelRun) writer() {
	t, s := r.t, r.s
	info := t.info()
	life := time.NewTimer(t.life)
	defer life.Stop()
	pace := time.NewTimer(r.nextGap())
	defer pace.Stop()
	stop := s.stop
	var giveUp <-chan time.Time // the run is over and the fault has had its time
	for {
		select {
		case <-giveUp:
			// A fault that struck without ending the tunnel (the verdict
			// says so): end it now, so that the run ends.
			r.closeNormally()
			return
		case <-r.gotClose:
			r.answerClose()
			return
		case <-r.readDone:
			r.st.abort()
			return
		case <-r.paused: // stop-read: the reader stopped; wait for the upstream's end
			r.awaitUpstream()
			return
		case <-stop:
			if !t.struck.Load() {
				r.closeNormally()
				return
			}
			stop = nil
			giveUp = time.After(info.bound(&s.cfg) + 2*s.cfg.closeGrace + 2*s.cfg.slack)
		case <-life.C:
			if r.plannedEnd() {
				return
			}
		case <-pace.C:
			if info.blast && t.sent.Load() >= t.faultAt {
				if r.blast() {
					return
				}
				continue
			}
			if t.kind == kindStopRead {
				continue // the upstream floods; the client sends nothing
			}
			if err := r.send(r.nextSize()); err != nil {
				r.afterWriteError(err)
				return
			}
			pace.Reset(r.nextGap())
		}
	}
}

// plannedEnd ends the tunnel as its kind says when its life is up, and
// reports whether the writer is done.
func (r *tunnelRun) plannedEnd() bool {
	t := r.t
	switch t.kind {
	case kindVanish:
		t.clientFault = time.Now()
		t.struck.Store(true)
		r.st.abort()
		r.wait(r.readDone, r.s.cfg.slack)
		return true
	case kindFreeze:
		t.clientFault = time.Now()
		t.struck.Store(true)
		r.pause.Store(true)
		r.awaitUpstream()
		return true
	case kindAdminKill:
		t.clientFault = time.Now()
		t.struck.Store(true)
		if err := r.s.admin.disconnect(t.name); err != nil {
			r.s.v.add("admin", "disconnect %s: %v", t.name, err)
		}
		return false // the Close 1001 comes to the reader
	case kindNormal:
		r.closeNormally()
		return true
	}
	// An upstream fault that never came (too few bytes sent): end normally.
	if !t.struck.Load() {
		r.closeNormally()
		return true
	}
	return false
}

// awaitUpstream waits, not reading, until the upstream connection has
// ended (Caddy closed it) or well past the bound, then reads what is left.
func (r *tunnelRun) awaitUpstream() {
	r.wait(r.t.upClosed, r.t.info().bound(&r.s.cfg)+r.s.cfg.closeGrace+2*r.s.cfg.slack)
	r.pause.Store(false)
	close(r.resume)
	r.wait(r.readDone, r.s.cfg.closeGrace+r.s.cfg.slack)
	r.st.abort()
	<-r.readDone
}

// closeNormally sends Close 1000 after the last message, then reads the
// echo to its end and the server's Close (README: a client's Close 1000 is
// a half-close).
func (r *tunnelRun) closeNormally() {
	r.t.closeSentAt = time.Now()
	r.sentOurs = true
	if err := r.ws.writeClose(1000); err != nil {
		r.afterWriteError(err)
		return
	}
	bound := r.s.cfg.writeTimeout + r.s.cfg.closeGrace + r.s.cfg.slack
	if r.wait(r.gotClose, bound) {
		r.answerClose()
		return
	}
	r.st.abort()
	<-r.readDone
}

// answerClose echoes the server's Close (unless ours went first), lets the
// reader see the end of the stream, and closes our side.
func (r *tunnelRun) answerClose() {
	if !r.sentOurs {
		r.sentOurs = true
		r.ws.writeClose(r.t.closeCode)
	}
	r.wait(r.readDone, r.s.cfg.closeGrace+r.s.cfg.slack)
	r.st.finish()
	r.wait(r.readDone, r.s.cfg.slack)
	r.st.abort()
	<-r.readDone
}

// afterWriteError: the stream broke under a write. The reader tells why.
func (r *tunnelRun) afterWriteError(err error) {
	if r.wait(r.gotClose, r.s.cfg.closeGrace+r.s.cfg.slack) {
		r.answerClose()
		return
	}
	r.t.writeErr = err.Error()
	r.st.abort()
	<-r.readDone
}

// blast sends as fast as it can until the server's Close: a stalled
// upstream must make Caddy's writes to it time out. It reports whether the
// writer is done.
func (r *tunnelRun) blast() bool {
	for {
		select {
		case <-r.gotClose:
			r.answerClose()
			return true
		case <-r.readDone:
			r.st.abort()
			return true
		default:
		}
		if err := r.send(32 << 10); err != nil {
			r.afterWriteError(err)
			return true
		}
	}
}

// wait waits for ch at most d, and reports whether it came.
func (r *tunnelRun) wait(ch <-chan struct{}, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ch:
		return true
	case <-tm.C:
		return false
	}
}

// send writes the next n bytes of the tunnel's stream as one message.
func (r *tunnelRun) send(n int) error {
	t := r.t
	p := r.s.payload(n)
	defer r.s.putPayload(p)
	fillPattern(p, t.seed, t.sent.Load())
	t.sent.Add(int64(n))
	r.s.stats.bytes.Add(int64(n))
	return r.ws.write(opBinary, p)
}

// Traffic classes (README: idle, interactive and bulk tunnels side by side).
func (r *tunnelRun) nextSize() int {
	switch r.t.class {
	case classBulk:
		return 4<<10 + rand.IntN(124<<10)
	case classInteractive:
		return 1 + rand.IntN(1024)
	}
	return 1 + rand.IntN(64)
}

func (r *tunnelRun) nextGap() time.Duration {
	switch r.t.class {
	case classBulk:
		// ~64 KiB a message at bulkRate bytes per second.
		return time.Duration(float64(66<<10) / float64(r.s.cfg.bulkRate) * float64(time.Second))
	case classInteractive:
		return time.Duration(20+rand.IntN(280)) * time.Millisecond
	}
	return time.Duration(2000+rand.IntN(6000)) * time.Millisecond
}

const broadcastPrefix = "soak-broadcast "

func broadcastMessage(seq int64) string { return fmt.Sprintf("%s%d", broadcastPrefix, seq) }

package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// upstream is a TCP server in the soak's process: for each connection
// Caddy dials, it reads the preamble ("SOAK <tunnel> <config>\n", from the
// configuration's preamble template), finds the tunnel's record, checks
// every byte against the tunnel's stream and echoes it, or does what the
// tunnel's kind says (reset, half-close, stall, flood).
type upstream struct {
	reg *registry
	v   *violations

	mu    sync.Mutex
	addr  string
	ln    net.Listener
	conns map[net.Conn]*tunnel
	wg    sync.WaitGroup
}

func startUpstream(reg *registry, v *violations) (*upstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u := &upstream{reg: reg, v: v, addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]*tunnel{}}
	u.wg.Add(1)
	go u.accept(ln)
	return u, nil
}

func (u *upstream) accept(ln net.Listener) {
	defer u.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		u.mu.Lock()
		u.conns[c] = nil
		u.mu.Unlock()
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			u.serve(c)
			u.mu.Lock()
			delete(u.conns, c)
			u.mu.Unlock()
			c.Close()
		}()
	}
}

// restart closes the listener, resets every connection (RST) and listens
// again on the same port after down: an upstream process restarting. The
// tunnels it carried are marked, for the verdict.
func (u *upstream) restart(down time.Duration) (start time.Time, err error) {
	u.mu.Lock()
	u.ln.Close()
	start = time.Now()
	for c, t := range u.conns {
		if t != nil && t.upRestart.IsZero() {
			t.upRestart = start
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	u.mu.Unlock()
	<-time.After(down) // the upstream's downtime: pacing, not a wait for a condition
	ln, err := net.Listen("tcp", u.addr)
	if err != nil {
		return start, err
	}
	u.mu.Lock()
	u.ln = ln
	u.mu.Unlock()
	u.wg.Add(1)
	go u.accept(ln)
	return start, nil
}

// close stops the server and waits for its connections to end.
func (u *upstream) close() {
	u.mu.Lock()
	u.ln.Close()
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// stallCap bounds how long a stalled upstream holds its connection when
// the client never ends: well past any bound of the verdict.
const stallCap = time.Minute

func (u *upstream) serve(c net.Conn) {
	br := bufio.NewReaderSize(c, 32<<10)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := br.ReadString('\n')
	c.SetReadDeadline(time.Time{})
	f := strings.Fields(line)
	if err != nil || len(f) != 3 || f[0] != "SOAK" {
		u.v.add("upstream", "connection without the preamble (%q, %v)", line, err)
		return
	}
	t := u.reg.find(f[1])
	if t == nil {
		u.v.add("upstream", "preamble names an unknown tunnel %q", f[1])
		return
	}
	if t.upSeen {
		u.v.add("upstream", "%s: a second upstream connection", t.name)
		return
	}
	t.upSeen, t.upTag = true, f[2]
	u.mu.Lock()
	u.conns[c] = t
	u.mu.Unlock()
	defer func() {
		t.upEnd = time.Now()
		close(t.upClosed)
	}()
	if t.info().flood {
		t.upEndErr = errString(u.flood(c, br, t))
		return
	}
	t.upEndErr = errString(u.echo(c, br, t))
}

// echo checks and echoes until EOF, or until the tunnel's fault strikes.
func (u *upstream) echo(c net.Conn, br *bufio.Reader, t *tunnel) error {
	buf := make([]byte, 32<<10)
	info := t.info()
	halfClosed := false
	for {
		n, err := br.Read(buf)
		if n > 0 {
			t.up.check(buf[:n])
			p := buf[:n]
			if info.atBytes && !halfClosed && t.up.off >= t.faultAt {
				// Echo up to the K-th byte, then strike.
				k := max(0, n-int(t.up.off-t.faultAt))
				if werr := u.write(c, t, p[:k]); werr != nil {
					return werr
				}
				switch t.kind {
				case kindUpReset:
					t.upFault = time.Now()
					t.struck.Store(true)
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
					return errors.New("reset by the soak")
				case kindUpHalfClose:
					t.upFault = time.Now()
					t.struck.Store(true)
					c.(*net.TCPConn).CloseWrite()
					halfClosed = true
					p = nil
				case kindUpHalfCloseStall:
					// Stop reading while the client sends on, so that
					// Caddy's writes to us block, then half-close.
					t.struck.Store(true)
					<-time.After(300 * time.Millisecond)
					t.upFault = time.Now()
					t.struck.Store(true)
					c.(*net.TCPConn).CloseWrite()
					return u.hold(t)
				case kindUpStall:
					t.upFault = time.Now()
					t.struck.Store(true)
					return u.hold(t)
				}
			}
			if !halfClosed {
				if werr := u.write(c, t, p); werr != nil {
					return werr
				}
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (u *upstream) write(c net.Conn, t *tunnel, p []byte) error {
	n, err := c.Write(p)
	t.upEcho += int64(n)
	return err
}

// hold keeps a stalled connection, unread, until the client has ended.
func (u *upstream) hold(t *tunnel) error {
	select {
	case <-t.clientDone:
	case <-time.After(stallCap):
	}
	return errors.New("stalled by the soak")
}

// flood sends the tunnel's stream at full speed (the client stops reading
// it) and reads, checking, whatever the client sends, until either ends.
func (u *upstream) flood(c net.Conn, br *bufio.Reader, t *tunnel) error {
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := br.Read(buf)
			t.up.check(buf[:n])
			if err != nil {
				done <- err
				return
			}
		}
	}()
	buf := make([]byte, 16<<10)
	var werr error
	for werr == nil {
		fillPattern(buf, t.seed, t.upEcho)
		werr = u.write(c, t, buf)
	}
	c.Close()
	if rerr := <-done; !errors.Is(rerr, io.EOF) && !errors.Is(rerr, net.ErrClosed) {
		return rerr
	}
	return werr
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

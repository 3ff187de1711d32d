package relay

import (
	"bytes"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// The timers run under testing/synctest: virtual time, so each test checks
// the exact moment a rule fires, with no margin for a loaded machine.

// frameReader reads server frames (unmasked) from the client's end.
type frameReader struct {
	c   net.Conn
	buf []byte
}

// next returns the next frame's opcode and payload.
func (r *frameReader) next(t *testing.T) (byte, []byte) {
	t.Helper()
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(r.c, hdr); err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	n := int(hdr[1] & 0x7f)
	switch n {
	case 126:
		ext := make([]byte, 2)
		io.ReadFull(r.c, ext)
		n = int(ext[0])<<8 | int(ext[1])
	case 127:
		ext := make([]byte, 8)
		io.ReadFull(r.c, ext)
		n = 0
		for _, b := range ext {
			n = n<<8 | int(b)
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r.c, p); err != nil {
		t.Fatalf("reading a payload: %v", err)
	}
	return hdr[0] & 0x0f, p
}

// closeCode is the code of a Close frame's payload.
func closeCode(p []byte) int {
	if len(p) < 2 {
		return wsframe.CloseNoStatus
	}
	return int(p[0])<<8 | int(p[1])
}

func TestHeartbeatTimeoutCloses1008(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		client, clientSide := net.Pipe()
		upSide, upstream := net.Pipe()
		cfg := testConfig(func(c *Config) { c.HeartbeatInterval, c.HeartbeatTimeout = time.Second, 3*time.Second })
		start := time.Now()
		_, ended := started(cfg, clientSide, upSide, false)
		upEOF := make(chan time.Time, 1)
		go func() {
			io.Copy(io.Discard, upstream)
			upEOF <- time.Now()
		}()

		fr := &frameReader{c: client}
		// Pings every second while the first is unanswered; the client
		// says nothing, so the tunnel ends 3s after the first ping.
		for i := 1; i <= 3; i++ {
			op, _ := fr.next(t)
			if op != wsframe.OpPing || time.Since(start) != time.Duration(i)*time.Second {
				t.Fatalf("frame %d: op %d at %v, want a ping at %ds", i, op, time.Since(start), i)
			}
		}
		op, p := fr.next(t)
		if op != wsframe.OpClose || closeCode(p) != wsframe.ClosePolicyViolation || time.Since(start) != 4*time.Second {
			t.Fatalf("op %d code %d at %v, want Close 1008 at 4s", op, closeCode(p), time.Since(start))
		}
		// and the upstream is closed then, not after the closing grace
		if at := <-upEOF; at.Sub(start) != 4*time.Second {
			t.Fatalf("upstream closed at %v, want 4s", at.Sub(start))
		}
		client.Close()
		if e := <-ended; e.Code != wsframe.ClosePolicyViolation || e.By != ByServer {
			t.Fatalf("ended %+v", e)
		}
		upstream.Close()
	})
}

func TestHeartbeatAnsweredKeepsTheTunnel(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		client, clientSide := net.Pipe()
		upSide, upstream := net.Pipe()
		cfg := testConfig(func(c *Config) { c.HeartbeatInterval = time.Second })
		start := time.Now()
		tn, ended := started(cfg, clientSide, upSide, false)
		go io.Copy(io.Discard, upstream)
		fr := &frameReader{c: client}
		for i := 1; i <= 20; i++ {
			op, p := fr.next(t)
			if op != wsframe.OpPing {
				t.Fatalf("op %d at %v", op, time.Since(start))
			}
			client.Write(maskedFrame(0x80|wsframe.OpPong, p))
		}
		if tn.Ending() || time.Since(start) != 20*time.Second {
			t.Fatalf("ending %v at %v", tn.Ending(), time.Since(start))
		}
		tn.Terminate(wsframe.CloseGoingAway, "test over")
		client.Close()
		<-ended
		upstream.Close()
	})
}

func TestHeartbeatTextPayload(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		client, clientSide := net.Pipe()
		upSide, upstream := net.Pipe()
		cfg := testConfig(func(c *Config) { c.HeartbeatInterval, c.HeartbeatText = time.Second, "keepalive" })
		tn, ended := started(cfg, clientSide, upSide, false)
		go io.Copy(io.Discard, upstream)
		fr := &frameReader{c: client}
		if op, p := fr.next(t); op != wsframe.OpText || string(p) != "keepalive" {
			t.Fatalf("heartbeat op %d %q", op, p)
		}
		if tn.Stats().MessagesOut != 0 {
			t.Fatal("a heartbeat counted as relayed")
		}
		tn.Terminate(wsframe.CloseGoingAway, "")
		client.Close()
		<-ended
		upstream.Close()
	})
}

func TestIdleTimeoutCountsDataOnly(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		client, clientSide := net.Pipe()
		upSide, upstream := net.Pipe()
		cfg := testConfig(func(c *Config) { c.IdleTimeout = 5 * time.Second })
		start := time.Now()
		_, ended := started(cfg, clientSide, upSide, false)
		fr := &frameReader{c: client}

		time.Sleep(3 * time.Second) // virtual
		// Data at 3s: the tunnel is idle from then on. A ping at 4s is not
		// data and does not count.
		go client.Write(maskedFrame(0x82, []byte("x")))
		got := make([]byte, 1)
		io.ReadFull(upstream, got)
		time.Sleep(time.Second) // virtual time: the test runs in a synctest bubble
		go client.Write(maskedFrame(0x89, nil))
		if op, _ := fr.next(t); op != wsframe.OpPong {
			t.Fatalf("op %d, want a pong", op)
		}
		op, p := fr.next(t)
		if op != wsframe.OpClose || closeCode(p) != wsframe.ClosePolicyViolation || time.Since(start) != 8*time.Second {
			t.Fatalf("op %d code %d at %v, want Close 1008 at 8s", op, closeCode(p), time.Since(start))
		}
		client.Close()
		upstream.Close()
		<-ended
	})
}

func TestThrottlePacesBothWays(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		client, clientSide := net.Pipe()
		upSide, upstream := net.Pipe()
		// 1000 B/s with a 500-byte burst: 4500 bytes pass in 4s.
		cfg := testConfig(func(c *Config) { c.ReadRate, c.WriteRate, c.Burst = 1000, 1000, 500 })
		tn, ended := started(cfg, clientSide, upSide, false)
		payload := bytes.Repeat([]byte("z"), 4500)

		start := time.Now()
		go client.Write(maskedFrame(0x82, payload))
		got := make([]byte, len(payload))
		if _, err := io.ReadFull(upstream, got); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("upstream got %d bytes: %v", len(got), err)
		}
		if d := time.Since(start); d != 4*time.Second {
			t.Fatalf("client to upstream took %v, want 4s", d)
		}

		start = time.Now()
		go upstream.Write(payload)
		fr := &frameReader{c: client}
		var down []byte
		for len(down) < len(payload) {
			_, p := fr.next(t)
			down = append(down, p...)
		}
		if d := time.Since(start); d != 4*time.Second || !bytes.Equal(down, payload) {
			t.Fatalf("upstream to client took %v (%d bytes), want 4s", d, len(down))
		}
		tn.Terminate(wsframe.CloseGoingAway, "")
		client.Close()
		upstream.Close()
		<-ended
	})
}

// A client that accepts nothing is dropped exactly write_timeout after the
// write that it stopped taking, and its upstream is closed.
func TestWriteTimeoutDropsStuckClient(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		client, clientSide := net.Pipe() // the client never reads
		upSide, upstream := net.Pipe()
		cfg := testConfig(func(c *Config) { c.WriteTimeout = 5 * time.Second })
		start := time.Now()
		_, ended := started(cfg, clientSide, upSide, false)
		upGone := make(chan time.Time, 1)
		go func() {
			for {
				if _, err := upstream.Write([]byte("data nobody reads")); err != nil {
					upGone <- time.Now()
					return
				}
			}
		}()
		e := <-ended
		if e.Code != wsframe.CloseAbnormal || e.By != ByClient || time.Since(start) != 5*time.Second {
			t.Fatalf("ended %+v at %v, want 1006 by the client at 5s", e, time.Since(start))
		}
		if at := <-upGone; at.Sub(start) != 5*time.Second {
			t.Fatalf("upstream closed at %v", at.Sub(start))
		}
		client.Close()
		upstream.Close()
	})
}

// A throttled tunnel keeps backpressure both ways: a peer that sends as
// fast as it can gets ahead of what was delivered by at most one buffer,
// while the delivered bytes follow the rate.
func TestThrottleKeepsBackpressure(t *testing.T) {
	t.Parallel()
	const rate, burst, bufSize, window = 1000, 500, 4096, 10 * time.Second
	for _, dir := range []string{"client to upstream", "upstream to client"} {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				client, clientSide := net.Pipe()
				upSide, upstream := net.Pipe()
				cfg := testConfig(func(c *Config) {
					c.BufferSize, c.ReadRate, c.WriteRate, c.Burst = bufSize, rate, rate, burst
				})
				tn, ended := started(cfg, clientSide, upSide, false)
				var accepted, delivered atomic.Int64
				sender, receiver := client, upstream
				msg := maskedFrame(0x82, make([]byte, 100))
				read := func() (int, error) { // the receiver's payload bytes
					return receiver.Read(make([]byte, 64<<10))
				}
				if dir == "upstream to client" {
					sender, receiver = upstream, client
					msg = make([]byte, 100)
					read = func() (int, error) {
						_, p, err := readFrame(client)
						return len(p), err
					}
				}
				// The sender offers three times what may pass in the window,
				// then stops: without pacing it would all be through.
				go func() {
					for sent := 0; sent < 3*(burst+rate*int(window/time.Second)); sent += 100 {
						n, err := sender.Write(msg)
						accepted.Add(int64(n))
						if err != nil {
							return
						}
					}
				}()
				go func() {
					for {
						n, err := read()
						delivered.Add(int64(n))
						if err != nil {
							return
						}
					}
				}()
				time.Sleep(window) // virtual time: the test runs in a synctest bubble
				synctest.Wait()
				got := delivered.Load()
				ahead := accepted.Load()*100/int64(len(msg)) - got // in payload bytes
				t.Logf("after %v: %d bytes delivered, the sender %d bytes ahead", window, got, ahead)
				if want := int64(burst + rate*window/time.Second); got > want || got < want-bufSize {
					t.Errorf("%d bytes delivered in %v, want %d at most and not one buffer less", got, window, want)
				}
				if ahead > bufSize+int64(len(msg)) {
					t.Errorf("the sender got %d bytes ahead of the receiver: more than a buffer piled up", ahead)
				}
				tn.Terminate(wsframe.CloseGoingAway, "")
				client.Close()
				upstream.Close()
				<-ended
			})
		})
	}
}

// readFrame reads one server frame (unmasked) from r, for the goroutines
// that read until the tunnel ends (frameReader fails the test instead).
func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [10]byte
	if _, err := io.ReadFull(r, hdr[:2]); err != nil {
		return 0, nil, err
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		if _, err := io.ReadFull(r, hdr[2:4]); err != nil {
			return 0, nil, err
		}
		n = uint64(hdr[2])<<8 | uint64(hdr[3])
	case 127:
		if _, err := io.ReadFull(r, hdr[2:10]); err != nil {
			return 0, nil, err
		}
		n = 0
		for _, b := range hdr[2:10] {
			n = n<<8 | uint64(b)
		}
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r, p)
	return hdr[0] & 0x0f, p, err
}

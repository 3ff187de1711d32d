package wstotcp

import (
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// A client that stops answering (here: never reads, so it never sees a
// ping) is dropped within interval + timeout, and its upstream sees EOF.
func TestHeartbeatDropsSilentClient(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		heartbeat 400ms 400ms
	}
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	start := time.Now()
	readEOF(t, uc, ioTimeout)
	el := time.Since(start)
	if el < 700*time.Millisecond || el > 800*time.Millisecond+5*time.Second {
		t.Fatalf("upstream closed %v after connect; want interval+timeout = 800ms (+ scheduling)", el)
	}
}

// A client that answers pings (gorilla does while it reads) stays.
func TestHeartbeatKeepsLiveClient(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		heartbeat 200ms 1s
	}
}`)
	c := s.dial("/", nil)
	defer c.Close()
	var pings atomic.Int32
	enough := make(chan struct{})
	c.SetPingHandler(func(p string) error {
		if pings.Add(1) == 5 {
			close(enough)
		}
		return c.WriteControl(websocket.PongMessage, []byte(p), time.Now().Add(time.Second))
	})
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	select {
	case <-enough:
	case <-time.After(ioTimeout):
		t.Fatalf("only %d pings", pings.Load())
	}
	// after 5 pings (> 1s of heartbeats) the tunnel still relays
	if err := c.WriteMessage(websocket.BinaryMessage, []byte("still here")); err != nil {
		t.Fatal(err)
	}
}

// heartbeat_payload text: the heartbeat is a text message; a client that
// reads but sends nothing back is closed with 1008.
func TestHeartbeatTextPayload(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		heartbeat 300ms 300ms
		heartbeat_payload text "keepalive"
	}
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	mt, b, err := c.ReadMessage()
	if err != nil || mt != websocket.TextMessage || string(b) != "keepalive" {
		t.Fatalf("heartbeat: type %d %q %v", mt, b, err)
	}
	if code := expectClose(t, c, ioTimeout); code != websocket.ClosePolicyViolation {
		t.Fatalf("close %d, want 1008", code)
	}
	readEOFOrReset(t, uc)
}

// A silent tunnel is closed at idle_timeout while a busy one stays.
func TestIdleTimeoutClosesOnlySilentTunnel(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		idle_timeout 1s
	}
}`)
	busy := s.dial("/", nil)
	defer busy.Close()
	silent := s.dial("/", nil)
	defer silent.Close()

	stop := make(chan struct{})
	busyErr := make(chan error, 1)
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				busyErr <- nil
				return
			case <-tick.C:
			}
			busy.SetReadDeadline(time.Now().Add(ioTimeout))
			if err := busy.WriteMessage(websocket.BinaryMessage, []byte("x")); err != nil {
				busyErr <- err
				return
			}
			if _, _, err := busy.ReadMessage(); err != nil {
				busyErr <- err
				return
			}
		}
	}()
	start := time.Now()
	if code := expectClose(t, silent, ioTimeout); code != websocket.ClosePolicyViolation {
		t.Fatalf("silent tunnel: close %d, want 1008", code)
	}
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Fatalf("silent tunnel closed after %v, before idle_timeout", el)
	}
	// The busy tunnel outlives another full idle_timeout.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		select {
		case err := <-busyErr:
			t.Fatalf("busy tunnel ended: %v", err)
		case <-time.After(time.Until(deadline)):
		}
	}
	close(stop)
	if err := <-busyErr; err != nil {
		t.Fatalf("busy tunnel: %v", err)
	}
}

// The throttle holds each direction within ±10 % of its cap over 10 s, at
// 1 Mbps up and 100 Mbps down, and a throttled upload piles nothing up in
// the proxy.
func TestThrottleAccuracy(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		throttle {
			read 1Mbps
			write 100Mbps
		}
	}
}`)
	const window = 10 * time.Second
	upC := s.dial("/", nil)
	defer upC.Close()
	upU := up.accept(t)
	downC := s.dial("/", nil)
	defer downC.Close()
	downU := up.accept(t)

	heapBefore := heapInUse()
	// Upload: the client writes as fast as the proxy takes it.
	go func() {
		msg := make([]byte, 16<<10)
		for upC.WriteMessage(websocket.BinaryMessage, msg) == nil {
		}
	}()
	// Download: the upstream writes as fast as the proxy takes it.
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := downU.Write(chunk); err != nil {
				return
			}
		}
	}()
	type result struct {
		rate float64 // bits per second
		err  error
	}
	measure := func(read func([]byte) (int, error)) result {
		buf := make([]byte, 64<<10)
		if _, err := read(buf); err != nil { // the first bytes start the clock
			return result{0, err}
		}
		start := time.Now()
		var n int64
		for time.Since(start) < window {
			k, err := read(buf)
			if err != nil {
				return result{0, err}
			}
			n += int64(k)
		}
		return result{float64(n*8) / time.Since(start).Seconds(), nil}
	}
	upRes := make(chan result, 1)
	go func() {
		upU.SetReadDeadline(time.Now().Add(window + ioTimeout))
		upRes <- measure(upU.Read)
	}()
	downC.SetReadDeadline(time.Now().Add(window + ioTimeout))
	msgs := &messageStream{c: downC}
	down := measure(msgs.Read)
	upload := <-upRes
	growth := heapInUse() - heapBefore
	t.Logf("upload %.3f Mbps (cap 1), download %.2f Mbps (cap 100), heap growth %d KiB",
		upload.rate/1e6, down.rate/1e6, growth>>10)
	if upload.err != nil || down.err != nil {
		t.Fatalf("errors: %v / %v", upload.err, down.err)
	}
	if upload.rate < 0.9e6 || upload.rate > 1.1e6 {
		t.Errorf("upload at %.3f Mbps, want 1 ± 10%%", upload.rate/1e6)
	}
	if down.rate < 90e6 || down.rate > 110e6 {
		t.Errorf("download at %.2f Mbps, want 100 ± 10%%", down.rate/1e6)
	}
	if growth > 4<<20 {
		t.Errorf("heap grew %d KiB while throttled peers pushed: no backpressure", growth>>10)
	}
}

// messageStream reads a WebSocket's messages as a byte stream.
type messageStream struct {
	c   *websocket.Conn
	cur io.Reader
}

func (m *messageStream) Read(p []byte) (int, error) {
	for {
		if m.cur != nil {
			n, err := m.cur.Read(p)
			if err != io.EOF || n > 0 {
				return n, nil
			}
		}
		_, r, err := m.c.NextReader()
		if err != nil {
			return 0, err
		}
		m.cur = r
	}
}

package relay

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Parking (poller.go): a quiet tunnel's pumps end their goroutines and
// resume when their socket is readable or the tunnel closes. These tests
// need the poller (Linux) and real sockets on both sides.

// parkedTunnel starts a tunnel over loopback TCP on both sides, relays
// one message each way, and waits until both pumps have parked. It
// returns the test's ends of the client and upstream connections.
func parkedTunnel(t *testing.T, edit func(*Config)) (*Tunnel, <-chan End, net.Conn, net.Conn) {
	t.Helper()
	if sharedPoller() == nil {
		t.Skip("no poller on this system: pumps never park")
	}
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	client.SetReadDeadline(time.Now().Add(ioTimeout))
	ended := make(chan End, 1)
	tun := New(testConfig(edit), clientSide, upSide, false)
	tun.parkEvent = func(client bool, event string) { parkEvents.hear(tun, client, event) }
	tun.Start(func(e End) { ended <- e })
	roundTripParked(t, tun, client, upstream, "hello")
	return tun, ended, client, upstream
}

// roundTripParked relays msg both ways, then waits until both pumps park.
func roundTripParked(t *testing.T, tun *Tunnel, client, upstream net.Conn, msg string) {
	t.Helper()
	client.Write(maskedFrame(0x80|wsframe.OpBinary, []byte(msg)))
	if got := readRaw(t, upstream, len(msg)); string(got) != msg {
		t.Fatalf("upstream read %q, want %q", got, msg)
	}
	upstream.Write([]byte(msg))
	fr := &frameReader{c: client}
	if op, p := fr.next(t); op != wsframe.OpBinary || string(p) != msg {
		t.Fatalf("client read op %d %q, want %q", op, p, msg)
	}
	waitParked(t, tun)
}

// readRaw reads n bytes from the upstream's end.
func readRaw(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("upstream: %v", err)
	}
	return b
}

// parkEvents hears the parking tunnels' events (Tunnel.parkEvent): each
// one wakes the tests that wait on pump states.
var parkEvents = &parkHub{}

type parkHub struct {
	mu      sync.Mutex
	changed chan struct{}  // closed and replaced at each event
	quiet   map[pumpOf]int // park deadlines passed, by pump
}

// pumpOf names one pump of a tunnel.
type pumpOf struct {
	t      *Tunnel
	client bool
}

func (h *parkHub) hear(t *Tunnel, client bool, event string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if event == "quiet" {
		if h.quiet == nil {
			h.quiet = map[pumpOf]int{}
		}
		h.quiet[pumpOf{t, client}]++
	}
	if h.changed != nil {
		close(h.changed)
	}
	h.changed = make(chan struct{})
}

// waitFor waits, up to ioTimeout, until cond holds, looking again at each
// parking event.
func (h *parkHub) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(ioTimeout)
	for {
		h.mu.Lock()
		if h.changed == nil {
			h.changed = make(chan struct{})
		}
		changed := h.changed
		h.mu.Unlock()
		if cond() {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// quietCount is how many times the park deadline of tun's client pump (or
// upstream pump) passed.
func (h *parkHub) quietCount(tun *Tunnel, client bool) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.quiet[pumpOf{tun, client}]
}

// waitParked waits until both pumps of tun are parked.
func waitParked(t *testing.T, tun *Tunnel) {
	t.Helper()
	parkEvents.waitFor(t, "both pumps to park", func() bool {
		return tun.clientRd.state.Load() == pumpParked && tun.upRd.state.Load() == pumpParked
	})
}

func TestQuietTunnelParksAndResumes(t *testing.T) {
	t.Parallel()
	tun, ended, client, upstream := parkedTunnel(t, nil)
	if g := pumpGoroutines(tun); g != "" {
		t.Fatalf("both pumps parked, yet a goroutine runs one:\n%s", g)
	}
	// Parked, it relays both ways as before, and parks again.
	for i := range 3 {
		roundTripParked(t, tun, client, upstream, strings.Repeat("x", 1+i*1000))
	}
	// The client's Close wakes the client pump; the upstream's EOF, the
	// upstream one.
	client.Write(maskedFrame(0x80|wsframe.OpClose, []byte{0x03, 0xe8}))
	expectUpstreamEnd(t, upstream)
	upstream.Close()
	if e := <-ended; e.Code != wsframe.CloseNormal || e.By != ByClient {
		t.Fatalf("ended %+v, want 1000 by the client", e)
	}
}

// pumpGoroutines returns the stacks of the goroutines that run a pump of
// tun (its address is the receiver in their stacks).
func pumpGoroutines(tun *Tunnel) string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	addr := fmt.Sprintf("(%p", tun)
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "relay.(*Tunnel).run") && strings.Contains(g, addr) {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

func TestParkedUpstreamEOFClosesTheClient(t *testing.T) {
	t.Parallel()
	_, ended, client, upstream := parkedTunnel(t, nil)
	upstream.Close()
	fr := &frameReader{c: client}
	if op, p := fr.next(t); op != wsframe.OpClose || closeCode(p) != wsframe.CloseNormal {
		t.Fatalf("op %d code %d, want Close 1000", op, closeCode(p))
	}
	client.Write(maskedFrame(0x80|wsframe.OpClose, []byte{0x03, 0xe8}))
	if e := <-ended; e.Code != wsframe.CloseNormal || e.By != ByUpstream {
		t.Fatalf("ended %+v, want 1000 by the upstream", e)
	}
}

// A parked tunnel closed by the server, whose client then says nothing,
// ends within the closing grace: the closing resumes the parked pumps (the
// upstream's close alone wakes no one), and a park deadline does not
// replace the grace.
func TestParkedTunnelEndsWhenTheServerCloses(t *testing.T) {
	t.Parallel()
	tun, ended, client, upstream := parkedTunnel(t, func(c *Config) { c.CloseGrace = 3 * parkAfter })
	if !tun.Terminate(wsframe.CloseGoingAway, "bye") {
		t.Fatal("Terminate: the tunnel was not open")
	}
	fr := &frameReader{c: client}
	if op, p := fr.next(t); op != wsframe.OpClose || closeCode(p) != wsframe.CloseGoingAway {
		t.Fatalf("op %d code %d, want Close 1001", op, closeCode(p))
	}
	expectUpstreamEnd(t, upstream)
	select {
	case e := <-ended:
		if e.Code != wsframe.CloseGoingAway || e.By != ByServer {
			t.Fatalf("ended %+v, want 1001 by the server", e)
		}
	case <-time.After(ioTimeout):
		t.Fatal("the tunnel did not end: its parked pumps were not resumed")
	}
	// The client's socket is closed: EOF (or a reset) after the Close.
	client.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("the client's connection is still open")
	}
}

// The idle timeout and the heartbeat run on timers, which a parked tunnel
// keeps; a pong wakes the client pump, so that the heartbeat hears it.
func TestParkedTunnelKeepsItsTimers(t *testing.T) {
	t.Parallel()
	t.Run("heartbeat", func(t *testing.T) {
		t.Parallel()
		// A pong left unread would close the tunnel 1 s after its ping,
		// before the tenth ping.
		tun, ended, client, _ := parkedTunnel(t, func(c *Config) {
			c.HeartbeatInterval, c.HeartbeatTimeout = 2*parkAfter, 10*parkAfter
		})
		fr := &frameReader{c: client}
		for i := range 10 {
			op, p := fr.next(t)
			if op != wsframe.OpPing {
				t.Fatalf("frame %d: op %d (%q), want a ping", i, op, p)
			}
			waitParked(t, tun)
			client.Write(maskedFrame(0x80|wsframe.OpPong, p))
			// heard: the next ping is due once the client pump read it
		}
		tun.Terminate(wsframe.CloseGoingAway, "done")
		client.Close()
		if e := <-ended; e.Code != wsframe.CloseGoingAway {
			t.Fatalf("ended %+v, want the test's 1001: a heartbeat went unheard", e)
		}
	})
	t.Run("idle timeout", func(t *testing.T) {
		t.Parallel()
		// The reaper (write_timeout + the grace) would end the tunnel
		// whatever the pumps do: it comes after the test's patience.
		_, ended, client, upstream := parkedTunnel(t, func(c *Config) {
			c.IdleTimeout, c.WriteTimeout = 5*parkAfter, 2*ioTimeout
		})
		fr := &frameReader{c: client}
		if op, p := fr.next(t); op != wsframe.OpClose || closeCode(p) != wsframe.ClosePolicyViolation {
			t.Fatalf("op %d code %d, want Close 1008", op, closeCode(p))
		}
		expectUpstreamEnd(t, upstream)
		client.Write(maskedFrame(0x80|wsframe.OpClose, []byte{0x03, 0xf0}))
		select {
		case e := <-ended:
			if e.Code != wsframe.ClosePolicyViolation || e.By != ByServer {
				t.Fatalf("ended %+v, want 1008 by the server", e)
			}
		case <-time.After(ioTimeout):
			t.Fatal("the tunnel did not end: its parked upstream pump was not resumed")
		}
	})
}

// A frame cut by pauses longer than parkAfter is relayed whole: inside
// its header, the pump holds the bytes read and does not park; inside its
// payload, it parks and resumes where the frame stands.
func TestFrameSplitByPausesLongerThanParkAfter(t *testing.T) {
	t.Parallel()
	tun, ended, client, upstream := parkedTunnel(t, nil)
	msg := bytes.Repeat([]byte("0123456789"), 100)
	frame := maskedFrame(0x80|wsframe.OpBinary, msg) // an 8-byte header
	quiet := parkEvents.quietCount(tun, true)
	client.Write(frame[:5])
	// The client pump's park deadline passes while it holds the partial
	// header: it must stay, not park.
	parkEvents.waitFor(t, "a client pump's park deadline", func() bool { return parkEvents.quietCount(tun, true) > quiet })
	if st := tun.clientRd.state.Load(); st == pumpParked {
		t.Fatal("the client pump parked holding a partial frame header")
	}
	client.Write(frame[5:500])
	if got := readRaw(t, upstream, 500-8); !bytes.Equal(got, msg[:500-8]) {
		t.Fatal("the frame's first part was not relayed")
	}
	waitParked(t, tun)
	client.Write(frame[500:])
	if got := readRaw(t, upstream, len(msg)-(500-8)); !bytes.Equal(got, msg[500-8:]) {
		t.Fatal("the frame's rest was not relayed")
	}
	roundTripParked(t, tun, client, upstream, "after")
	client.Close()
	if e := <-ended; e.By != ByClient {
		t.Fatalf("ended %+v, want by the client", e)
	}
}

package relay

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Bugs the soak (bench/soak, docs/soak.md) found, each pinned here.

// The pause allowed to the upstream's answer after a half-close (README:
// "pausing at most 2 s between reads") is the upstream's pause: time the
// relay spends writing the answer to a slow client does not count. Before,
// the read deadline was set when a read returned, so a client that took
// longer than the grace to accept one message cut the answer short, and
// the rest was dropped behind a Close 1000 that said all had come (seen on
// HTTP/3, whose connection-wide flow control can hold one tunnel's writes
// while others do not read).
func TestHalfCloseAnswerSurvivesASlowClient(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		client, clientSide := net.Pipe()
		upSide, upstream := net.Pipe()
		cfg := testConfig(func(c *Config) { c.HalfClose = true }) // grace 2s, write_timeout 30s
		_, ended := started(cfg, clientSide, upSide, false)

		// The client's Close 1000 (a half-close); once the relay has taken
		// it, the upstream answers in two pieces and closes.
		client.Write(maskedFrame(0x88, []byte{0x03, 0xe8}))
		synctest.Wait()
		var got bytes.Buffer
		go func() {
			upstream.Write([]byte("first"))
			upstream.Write([]byte("second")) // read by the relay once "first" is written
			upstream.Close()
		}()

		// The client takes 3 s (more than the grace) to accept the first
		// piece; nothing else is slow.
		time.Sleep(3 * time.Second) // virtual time: the test runs in a synctest bubble
		fr := &frameReader{c: client}
		for {
			op, p := fr.next(t)
			if op == wsframe.OpClose {
				if closeCode(p) != wsframe.CloseNormal {
					t.Fatalf("Close %d", closeCode(p))
				}
				break
			}
			got.Write(p)
		}
		if got.String() != "firstsecond" {
			t.Fatalf("the client got %q before the Close, want the whole answer %q", got.String(), "firstsecond")
		}
		client.Close()
		<-ended
	})
}

// An upstream that resets while the client sends ends the tunnel 1014 by
// the upstream, whichever pump sees the reset first. Linux reports a reset
// once: when the client pump's write takes it, the upstream pump's read
// returns EOF, as after a clean end, and the tunnel ended 1000 "by
// upstream", saying all had come (2 tunnels in 880 upstream resets of a
// 30-minute soak). resetOrder makes that order certain: the read waits
// for the write's error, and the write returns it only after the read
// has returned.
func TestUpstreamResetSeenByTheWriteEnds1014(t *testing.T) {
	t.Parallel()
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	up := &resetOrder{Conn: upSide, writeFailed: make(chan struct{}), readDone: make(chan struct{})}
	_, ended := started(testConfig(nil), clientSide, up, false)

	// The upstream takes the first message, then resets.
	client.Write(maskedFrame(0x82, []byte("first")))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(upstream, buf); err != nil {
		t.Fatal(err)
	}
	upstream.(*net.TCPConn).SetLinger(0)
	upstream.Close()
	// The client sends on until the relay's write to the upstream fails.
	go func() {
		for {
			if _, err := client.Write(maskedFrame(0x82, []byte("more"))); err != nil {
				return
			}
			select {
			case <-up.writeFailed:
				return
			default:
			}
		}
	}()
	select {
	case e := <-ended:
		if e.Code != wsframe.CloseBadGateway || e.By != ByUpstream {
			t.Fatalf("ended %d by %s (%v), want 1014 by upstream", e.Code, e.By, e.Err)
		}
	case <-time.After(ioTimeout):
		t.Fatal("the tunnel did not end")
	}
	if !up.readEOF.Load() {
		t.Fatal("the upstream pump's read did not return EOF after the write took the reset: the test did not set up the case")
	}
}

// resetOrder is an upstream connection whose first failed write waits
// until a read has returned, and whose reads wait for a failed write.
// Embedding the net.Conn interface hides the socket (SyscallConn), so the
// relay reads through Read; NetConn gives the relay the TCP connection, as
// a TLS upstream does.
type resetOrder struct {
	net.Conn
	once        sync.Once
	writeFailed chan struct{}
	readDone    chan struct{}
	readEOF     atomic.Bool
}

func (c *resetOrder) NetConn() net.Conn { return c.Conn }

func (c *resetOrder) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil {
		c.once.Do(func() { close(c.writeFailed) })
		<-c.readDone
	}
	return n, err
}

func (c *resetOrder) Read(p []byte) (int, error) {
	<-c.writeFailed
	n, err := c.Conn.Read(p)
	if err == io.EOF {
		c.readEOF.Store(true)
	}
	select {
	case <-c.readDone:
	default:
		close(c.readDone)
	}
	return n, err
}

// An upstream reset in the middle of its answer to a half-close ends the
// answer with Close 1014, not with the echo of the client's 1000, which
// would tell the client it had the whole answer (docs/operations.md: an
// upstream reset is 1014). The soak saw a restart cut an answer so, and
// the client was told 1000.
func TestUpstreamResetDuringTheHalfCloseAnswerIs1014(t *testing.T) {
	t.Parallel()
	a := answeringHalfClose(t)
	upstream, fr, ended := a.upstream, a.fr, a.ended
	upstream.(*net.TCPConn).SetLinger(0)
	upstream.Close() // a reset
	if op, p := fr.next(t); op != wsframe.OpClose || closeCode(p) != wsframe.CloseBadGateway {
		t.Fatalf("op %d %q, want Close 1014 after a reset cut the answer", op, p)
	}
	<-ended
}

// A tunnel the server closes (a reload, the admin API) while the upstream
// answers a half-close is not reported to the client as the upstream's
// failure: the read that the closing cut is not a reset (the soak saw a
// reload turn such an answer's end into 1014).
func TestServerClosingDuringTheHalfCloseAnswerIsNot1014(t *testing.T) {
	t.Parallel()
	a := answeringHalfClose(t)
	client, tun, ended := a.client, a.tun, a.ended
	tun.Terminate(wsframe.CloseGoingAway, "configuration reloaded") // closing already: closed at once
	<-ended
	// Whatever reached the client before its connection closed, it is not
	// a Close 1014.
	for {
		h, p, err := readFrame(client)
		if err != nil {
			return
		}
		if h == wsframe.OpClose && closeCode(p) == wsframe.CloseBadGateway {
			t.Fatal("the client got Close 1014: the server's own closing was taken for an upstream failure")
		}
	}
}

// halfCloseAnswer is a HalfClose tunnel whose client has sent a question
// and Close 1000, whose upstream has read the question to its EOF and
// begun to answer, and whose client has that first part.
type halfCloseAnswer struct {
	client, upstream net.Conn
	tun              *Tunnel
	ended            <-chan End
	fr               *frameReader
}

func answeringHalfClose(t *testing.T) halfCloseAnswer {
	t.Helper()
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	tun, ended := started(testConfig(func(c *Config) { c.HalfClose = true }), clientSide, upSide, false)
	client.Write(maskedFrame(0x82, []byte("question")))
	client.Write(maskedFrame(0x88, []byte{0x03, 0xe8}))
	upstream.SetReadDeadline(time.Now().Add(ioTimeout))
	if all, err := io.ReadAll(upstream); err != nil || string(all) != "question" {
		t.Fatalf("upstream read %q, %v", all, err)
	}
	upstream.Write([]byte("the first part of the answer"))
	fr := &frameReader{c: client}
	client.SetReadDeadline(time.Now().Add(ioTimeout))
	if op, p := fr.next(t); op != wsframe.OpBinary || string(p) != "the first part of the answer" {
		t.Fatalf("op %d %q, want the first part of the answer", op, p)
	}
	return halfCloseAnswer{client: client, upstream: upstream, tun: tun, ended: ended, fr: fr}
}

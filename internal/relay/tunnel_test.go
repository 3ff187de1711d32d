package relay

import (
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"testing"
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Tunnel tests over real loopback sockets (the socket fast path) and
// net.Pipe (a client stream without a file descriptor, as an HTTP/2 stream
// is), without Caddy, in parallel.

type pairFunc func(testing.TB) (net.Conn, net.Conn)

func pipePair(tb testing.TB) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	tb.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

var transports = map[string]pairFunc{"tcp": tcpPair, "pipe": pipePair}

// readMessages reads server frames from c until it has n payload bytes.
func readPayload(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	fr := &frameReader{c: c}
	var out []byte
	for len(out) < n {
		op, p := fr.next(t)
		if op != wsframe.OpBinary {
			t.Fatalf("op %d (%q) after %d bytes", op, p, len(out))
		}
		out = append(out, p...)
	}
	return out
}

func TestRelayByteExactBothWays(t *testing.T) {
	t.Parallel()
	for name, pair := range transports {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			client, clientSide := pair(t)
			upSide, upstream := tcpPair(t)
			_, ended := started(testConfig(func(c *Config) { c.BufferSize = 4096 }), clientSide, upSide, false)
			go io.Copy(upstream, upstream) // echo

			data := make([]byte, 2<<20)
			rand.Read(data)
			// Messages of many sizes, some fragmented, with pings between.
			go func() {
				rest := data
				for i := 0; len(rest) > 0; i++ {
					n := min(len(rest), 1+i*997%70000)
					msg := rest[:n]
					rest = rest[n:]
					if i%3 == 0 && n > 2 {
						client.Write(maskedFrame(wsframe.OpBinary, msg[:n/2]))
						client.Write(maskedFrame(0x80|wsframe.OpPing, []byte("hi")))
						client.Write(maskedFrame(0x80|wsframe.OpContinuation, msg[n/2:]))
					} else {
						client.Write(maskedFrame(0x80|wsframe.OpBinary, msg))
					}
				}
			}()
			fr := &frameReader{c: client}
			var got []byte
			for len(got) < len(data) {
				op, p := fr.next(t)
				switch op {
				case wsframe.OpPong:
				case wsframe.OpBinary:
					got = append(got, p...)
				default:
					t.Fatalf("op %d", op)
				}
			}
			if sha256.Sum256(got) != sha256.Sum256(data) {
				t.Fatal("echoed bytes differ")
			}
			// Client Close: echoed with its code, the upstream sees EOF.
			client.Write(maskedFrame(0x80|wsframe.OpClose, []byte{0x0f, 0xa0})) // 4000
			for {
				op, p := fr.next(t)
				if op == wsframe.OpClose {
					if closeCode(p) != 4000 {
						t.Fatalf("echoed Close %d", closeCode(p))
					}
					break
				}
			}
			if e := <-ended; e.Code != 4000 || e.By != ByClient || e.Err != nil {
				t.Fatalf("ended %+v", e)
			}
		})
	}
}

func TestCloseCodes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		cfg  func(*Config)
		act  func(client, upstream net.Conn)
		code int
		by   string
	}{
		{"upstream EOF", nil, func(_, up net.Conn) { up.Write([]byte("last")); up.Close() }, wsframe.CloseNormal, ByUpstream},
		{"upstream reset", nil, func(_, up net.Conn) { up.(*net.TCPConn).SetLinger(0); up.Close() }, wsframe.CloseBadGateway, ByUpstream},
		{"invalid UTF-8", func(c *Config) { c.ValidateUTF8 = true }, func(cl, _ net.Conn) { cl.Write(maskedFrame(0x81, []byte{0xff})) }, wsframe.CloseInvalidPayload, ByClient},
		{"message too big", func(c *Config) { c.MaxMessageSize = 10 }, func(cl, _ net.Conn) { cl.Write(maskedFrame(0x82, make([]byte, 11))) }, wsframe.CloseMessageTooBig, ByClient},
		{"protocol error", nil, func(cl, _ net.Conn) { cl.Write([]byte{0x82, 0x01, 'x'}) }, wsframe.CloseProtocolError, ByClient},
		{"terminate", nil, nil, wsframe.CloseGoingAway, ByServer},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			client, clientSide := tcpPair(t)
			upSide, upstream := tcpPair(t)
			tn, ended := started(testConfig(c.cfg), clientSide, upSide, false)
			go io.Copy(io.Discard, upstream)
			if c.act != nil {
				c.act(client, upstream)
			} else {
				tn.Terminate(wsframe.CloseGoingAway, "bye")
			}
			client.SetReadDeadline(time.Now().Add(ioTimeout))
			fr := &frameReader{c: client}
			for {
				op, p := fr.next(t)
				if op == wsframe.OpClose {
					if closeCode(p) != c.code {
						t.Fatalf("Close %d, want %d", closeCode(p), c.code)
					}
					break
				}
			}
			client.Close()
			if e := <-ended; e.Code != c.code || e.By != c.by {
				t.Fatalf("ended %+v, want %d by %s", e, c.code, c.by)
			}
		})
	}
}

// An upstream that half-closes and stops reading, while the client keeps
// sending, cannot pin the tunnel: the write to it times out, and the
// tunnel ends (before this, it stayed until the upstream closed, if ever).
func TestUpstreamThatStopsReadingCannotPinTheTunnel(t *testing.T) {
	t.Parallel()
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	cfg := testConfig(func(c *Config) { c.WriteTimeout = 500 * time.Millisecond; c.CloseGrace = time.Hour })
	_, ended := started(cfg, clientSide, upSide, false)
	go func() {
		frame := maskedFrame(0x82, make([]byte, 64<<10))
		for {
			if _, err := client.Write(frame); err != nil {
				return
			}
		}
	}()
	go io.Copy(io.Discard, client)
	// Let the pipes fill, then the upstream sends FIN and never reads.
	readN(t, upstream, 1<<20)
	upstream.(*net.TCPConn).CloseWrite()
	select {
	case e := <-ended:
		if e.Code != wsframe.CloseNormal || e.By != ByUpstream {
			t.Fatalf("ended %+v", e)
		}
	case <-time.After(ioTimeout):
		t.Fatal("the tunnel is still open")
	}
}

func readN(t *testing.T, c net.Conn, n int64) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := io.CopyN(io.Discard, c, n); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Time{})
}

// Terminate on a tunnel that is already closing (here: waiting for the
// client's Close) closes it at once: the admin API, reload_close_after
// and stop are never ignored.
func TestTerminateClosesAClosingTunnel(t *testing.T) {
	t.Parallel()
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	cfg := testConfig(func(c *Config) { c.CloseGrace = time.Hour })
	tn, ended := started(cfg, clientSide, upSide, false)
	upstream.Close() // upstream EOF: Close 1000 sent, waiting an hour for the client's
	fr := &frameReader{c: client}
	client.SetReadDeadline(time.Now().Add(ioTimeout))
	if op, _ := fr.next(t); op != wsframe.OpClose {
		t.Fatalf("op %d", op)
	}
	if !tn.Ending() {
		t.Fatal("not closing")
	}
	tn.Terminate(wsframe.CloseGoingAway, "admin")
	select {
	case <-ended:
	case <-time.After(ioTimeout):
		t.Fatal("still open after Terminate")
	}
}

func TestBase64Subprotocol(t *testing.T) {
	t.Parallel()
	client, clientSide := pipePair(t)
	upSide, upstream := tcpPair(t)
	_, ended := started(testConfig(nil), clientSide, upSide, true)
	go client.Write(maskedFrame(0x81, []byte("aGVsbG8="))) // "hello"
	got := make([]byte, 5)
	upstream.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := io.ReadFull(upstream, got); err != nil || string(got) != "hello" {
		t.Fatalf("upstream got %q %v", got, err)
	}
	go upstream.Write([]byte("world"))
	fr := &frameReader{c: client}
	client.SetReadDeadline(time.Now().Add(ioTimeout))
	if op, p := fr.next(t); op != wsframe.OpText || string(p) != "d29ybGQ=" {
		t.Fatalf("client got op %d %q", op, p)
	}
	go client.Write(maskedFrame(0x81, []byte("!!!!")))
	for {
		op, p := fr.next(t)
		if op == wsframe.OpClose {
			if closeCode(p) != wsframe.CloseInvalidPayload {
				t.Fatalf("Close %d", closeCode(p))
			}
			break
		}
	}
	client.Close()
	<-ended
}

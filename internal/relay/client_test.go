package relay

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Client mode (Config.Client, caddy tcp-to-ws): the tunnel's "client" is
// a WebSocket server, played here by the test; its "upstream" is the local
// program's connection.

func clientConfig(edit func(*Config)) *Config {
	return testConfig(func(c *Config) {
		c.Client = true
		if edit != nil {
			edit(c)
		}
	})
}

// maskedReader reads the masked frames a client tunnel writes, as a server
// does, and fails the test on an unmasked one.
type maskedReader struct {
	c      net.Conn
	buf    []byte
	parser wsframe.Parser
	keys   map[[4]byte]bool // every mask key seen
}

// next returns the next whole message or control frame.
func (r *maskedReader) next(t testing.TB) (byte, []byte) {
	t.Helper()
	var msg []byte
	var op byte
	for {
		ev, n, err := r.parser.Next(r.buf)
		if err != nil {
			t.Fatalf("parsing the client's frames: %v", err)
		}
		if ev.Kind == wsframe.More || n == 0 {
			if len(r.buf) >= 6 && r.keys != nil {
				r.noteKey()
			}
			tmp := make([]byte, 64<<10)
			r.c.SetReadDeadline(time.Now().Add(ioTimeout))
			k, err := r.c.Read(tmp)
			if err != nil {
				t.Fatalf("reading the client's frames: %v", err)
			}
			r.buf = append(r.buf, tmp[:k]...)
			continue
		}
		if r.keys != nil {
			r.noteKey()
		}
		r.buf = r.buf[n:]
		if ev.Kind == wsframe.Control {
			return ev.Op, bytes.Clone(ev.Payload)
		}
		if ev.First {
			op = ev.Op
		}
		msg = append(msg, ev.Payload...)
		if ev.Last {
			return op, msg
		}
	}
}

// noteKey records the mask key of the frame header at the start of buf.
func (r *maskedReader) noteKey() {
	b := r.buf
	if len(b) < 2 || b[1]&0x80 == 0 {
		return
	}
	at := 2
	switch b[1] & 0x7f {
	case 126:
		at = 4
	case 127:
		at = 10
	}
	if len(b) >= at+4 {
		r.keys[[4]byte(b[at:at+4])] = true
	}
}

// serverFrame is an unmasked frame as a server sends it.
func serverFrame(b0 byte, payload []byte) []byte {
	buf := make([]byte, wsframe.MaxHeader+len(payload))
	copy(buf[wsframe.MaxHeader:], payload)
	s := wsframe.PutHeader(buf, wsframe.MaxHeader, b0&0x0f, len(payload))
	buf[s] = b0
	return buf[s:]
}

func TestClientModeByteExactBothWays(t *testing.T) {
	t.Parallel()
	server, serverSide := tcpPair(t)
	localSide, local := tcpPair(t)
	_, ended := started(clientConfig(func(c *Config) { c.BufferSize = 4096 }), serverSide, localSide, false)

	up := make([]byte, 3<<20)
	down := make([]byte, 3<<20)
	rand.Read(up)
	rand.Read(down)
	// Local program to server: masked messages, every one with its own key.
	go func() { local.Write(up) }()
	// Server to local program: fragmented messages with pings between.
	go func() {
		rest := down
		for i := 0; len(rest) > 0; i++ {
			n := min(len(rest), 1+i*1231%70000)
			msg := rest[:n]
			rest = rest[n:]
			if i%2 == 0 && n > 2 {
				server.Write(serverFrame(wsframe.OpBinary, msg[:n/2]))
				server.Write(serverFrame(0x80|wsframe.OpPing, []byte("hi")))
				server.Write(serverFrame(0x80|wsframe.OpContinuation, msg[n/2:]))
			} else {
				server.Write(serverFrame(0x80|wsframe.OpBinary, msg))
			}
		}
	}()
	gotDown := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(down))
		local.SetReadDeadline(time.Now().Add(ioTimeout))
		io.ReadFull(local, b)
		gotDown <- b
	}()
	r := &maskedReader{c: server, keys: map[[4]byte]bool{}}
	var got []byte
	pongs, frames := 0, 0
	for len(got) < len(up) {
		op, p := r.next(t)
		frames++
		switch op {
		case wsframe.OpPong:
			if string(p) != "hi" {
				t.Fatalf("pong %q", p)
			}
			pongs++
		case wsframe.OpBinary:
			got = append(got, p...)
		default:
			t.Fatalf("op %d", op)
		}
	}
	if sha256.Sum256(got) != sha256.Sum256(up) {
		t.Fatal("the server received other bytes than the local program sent")
	}
	if b := <-gotDown; sha256.Sum256(b) != sha256.Sum256(down) {
		t.Fatal("the local program received other bytes than the server sent")
	}
	// One key per frame, nearly always: a repeated key among hundreds is
	// a broken generator.
	if len(r.keys) < frames*9/10 {
		t.Fatalf("%d mask keys for %d frames", len(r.keys), frames)
	}
	t.Logf("%d frames up, %d distinct keys, %d pongs", frames, len(r.keys), pongs)

	// The local program's EOF: a masked Close 1000, and the tunnel ends
	// when the server echoes it.
	local.(*net.TCPConn).CloseWrite()
	op, p := r.next(t)
	for op == wsframe.OpPong { // the answers to the last pings
		op, p = r.next(t)
	}
	if op != wsframe.OpClose || closeCode(p) != wsframe.CloseNormal {
		t.Fatalf("after the local EOF: op %d %q, want Close 1000", op, p)
	}
	server.Write(serverFrame(0x80|wsframe.OpClose, []byte{0x03, 0xe8}))
	select {
	case e := <-ended:
		if e.Code != wsframe.CloseNormal || e.By != ByUpstream {
			t.Fatalf("ended %+v", e)
		}
	case <-time.After(ioTimeout):
		t.Fatal("tunnel did not end")
	}
}

// The server's Close half-closes the local connection after every byte:
// the local program reads EOF, and what it still sends is not relayed.
func TestClientModeServerClose(t *testing.T) {
	t.Parallel()
	server, serverSide := tcpPair(t)
	localSide, local := tcpPair(t)
	_, ended := started(clientConfig(nil), serverSide, localSide, false)
	server.Write(serverFrame(0x80|wsframe.OpBinary, []byte("last words")))
	server.Write(serverFrame(0x80|wsframe.OpClose, []byte{0x03, 0xe8}))
	local.SetReadDeadline(time.Now().Add(ioTimeout))
	b, err := io.ReadAll(local)
	if err != nil || string(b) != "last words" {
		t.Fatalf("local read %q, %v; want the last words, then EOF", b, err)
	}
	r := &maskedReader{c: server}
	if op, p := r.next(t); op != wsframe.OpClose || closeCode(p) != wsframe.CloseNormal {
		t.Fatalf("op %d %q, want the Close echoed", op, p)
	}
	local.Close()
	if e := <-ended; e.Code != wsframe.CloseNormal || e.By != ByClient {
		t.Fatalf("ended %+v", e)
	}
}

// A masked frame from the server is a protocol error (RFC 6455 §5.1).
func TestClientModeRefusesMaskedFrames(t *testing.T) {
	t.Parallel()
	server, serverSide := tcpPair(t)
	localSide, _ := tcpPair(t)
	_, ended := started(clientConfig(nil), serverSide, localSide, false)
	server.Write(maskedFrame(0x80|wsframe.OpBinary, []byte("masked")))
	r := &maskedReader{c: server}
	if op, p := r.next(t); op != wsframe.OpClose || closeCode(p) != wsframe.CloseProtocolError {
		t.Fatalf("op %d %q, want Close 1002", op, p)
	}
	server.Close()
	if e := <-ended; e.Code != wsframe.CloseProtocolError {
		t.Fatalf("ended %+v", e)
	}
}

// The client relay's throughput, next to the server's pumps: run with
//
//	go test -run XXX -bench Pump -benchmem ./internal/relay
func BenchmarkPumpClientMode(b *testing.B) {
	for _, size := range []int{1 << 10, 32 << 10} {
		b.Run(fmt.Sprintf("upload/%dKiB", size>>10), func(b *testing.B) {
			server, serverSide := tcpPair(b)
			localSide, local := tcpPair(b)
			started(clientConfig(nil), serverSide, localSide, false)
			done := make(chan error, 1)
			total := int64(b.N) * int64(size)
			go func() { done <- countMaskedPayload(server, total) }()
			chunk := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := local.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
		b.Run(fmt.Sprintf("download/%dKiB", size>>10), func(b *testing.B) {
			server, serverSide := tcpPair(b)
			localSide, local := tcpPair(b)
			started(clientConfig(nil), serverSide, localSide, false)
			batch := max(1, (256<<10)/size)
			frame := serverFrame(0x80|wsframe.OpBinary, make([]byte, size))
			frames := bytes.Repeat(frame, batch)
			done := make(chan error, 1)
			total := int64(b.N) * int64(size)
			go func() { done <- countRaw(local, total) }()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for sent := 0; sent < b.N; sent += batch {
				n := min(batch, b.N-sent)
				if _, err := server.Write(frames[:n*len(frame)]); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// countMaskedPayload reads masked frames until total payload bytes have
// come.
func countMaskedPayload(c net.Conn, total int64) error {
	buf := make([]byte, 64<<10)
	var p wsframe.Parser
	var got int64
	r, w := 0, 0
	for got < total {
		ev, n, err := p.Next(buf[r:w])
		if err != nil {
			return err
		}
		if ev.Kind == wsframe.More || n == 0 {
			w = copy(buf, buf[r:w])
			r = 0
			k, err := c.Read(buf[w:])
			if err != nil {
				return err
			}
			w += k
			continue
		}
		r += n
		got += int64(len(ev.Payload))
	}
	return nil
}

// HalfClose: the peer's Close 1000 is the upstream's EOF, and the answer
// the upstream gives to it still reaches the peer before the Close echo.
func TestHalfCloseRelaysTheAnswer(t *testing.T) {
	t.Parallel()
	for _, half := range []bool{true, false} {
		t.Run(fmt.Sprint("HalfClose=", half), func(t *testing.T) {
			t.Parallel()
			client, clientSide := tcpPair(t)
			upSide, upstream := tcpPair(t)
			_, ended := started(testConfig(func(c *Config) { c.HalfClose = half }), clientSide, upSide, false)
			input := make([]byte, 1<<20)
			rand.Read(input)
			client.Write(maskedFrame(0x80|wsframe.OpBinary, input))
			client.Write(maskedFrame(0x80|wsframe.OpClose, []byte{0x03, 0xe8}))
			// The upstream program answers its input's end with a digest.
			upstream.SetReadDeadline(time.Now().Add(ioTimeout))
			all, err := io.ReadAll(upstream)
			if err != nil || !bytes.Equal(all, input) {
				t.Fatalf("upstream read %d bytes, %v", len(all), err)
			}
			sum := sha256.Sum256(all)
			upstream.Write(sum[:])
			upstream.Close()
			fr := &frameReader{c: client}
			client.SetReadDeadline(time.Now().Add(ioTimeout))
			op, p := fr.next(t)
			if !half {
				if op != wsframe.OpClose {
					t.Fatalf("without HalfClose: op %d, want the Close echoed at once", op)
				}
				<-ended
				return
			}
			if op != wsframe.OpBinary || !bytes.Equal(p, sum[:]) {
				t.Fatalf("op %d %x, want the digest", op, p)
			}
			if op, p = fr.next(t); op != wsframe.OpClose || closeCode(p) != wsframe.CloseNormal {
				t.Fatalf("op %d %q, want Close 1000", op, p)
			}
			if e := <-ended; e.Code != wsframe.CloseNormal || e.By != ByClient {
				t.Fatalf("ended %+v", e)
			}
		})
	}
}

// HalfClose does not let an upstream that streams on and never closes keep
// a closing tunnel open: the reaper ends it.
func TestHalfCloseIsBounded(t *testing.T) {
	t.Parallel()
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	_, ended := started(testConfig(func(c *Config) {
		c.HalfClose = true
		c.WriteTimeout = 300 * time.Millisecond
		c.CloseGrace = 200 * time.Millisecond
	}), clientSide, upSide, false)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // streams, whatever it reads
		chunk := make([]byte, 1024)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := upstream.Write(chunk); err != nil {
				return
			}
		}
	}()
	go io.Copy(io.Discard, client) // the client reads on
	client.Write(maskedFrame(0x80|wsframe.OpClose, []byte{0x03, 0xe8}))
	select {
	case e := <-ended:
		if e.Code != wsframe.CloseNormal {
			t.Fatalf("ended %+v", e)
		}
	case <-time.After(ioTimeout):
		t.Fatal("a streaming upstream kept the half-closed tunnel open")
	}
}

// HalfClose when the upstream closes at the moment the peer's Close
// arrives: whichever pump comes second, the peer gets its Close echoed.
func TestHalfCloseRace(t *testing.T) {
	t.Parallel()
	for i := range 200 {
		client, clientSide := tcpPair(t)
		upSide, upstream := tcpPair(t)
		_, ended := started(testConfig(func(c *Config) { c.HalfClose = true }), clientSide, upSide, false)
		go upstream.Close()
		client.Write(maskedFrame(0x80|wsframe.OpClose, []byte{0x03, 0xe8}))
		fr := &frameReader{c: client}
		client.SetReadDeadline(time.Now().Add(ioTimeout))
		if op, _ := fr.next(t); op != wsframe.OpClose {
			t.Fatalf("round %d: op %d, want a Close", i, op)
		}
		<-ended
		client.Close()
	}
}

// After the local program's EOF the client sends Close 1000 and the
// server (half_close) answers with the rest of its upstream's output
// before its Close. That answer may pause up to the grace between reads,
// as on the server's side; the reaper bounds it as a whole. Before, the
// client gave the whole answer one grace from its Close and cut the rest
// (seen as a lost tail in TestTCPToWSListen on a loaded machine).
func TestClientModeAnswerAfterLocalEOFMayPause(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		server, serverSide := net.Pipe()
		in, inSide := net.Pipe()   // the local program's output, read by the tunnel
		outSide, out := net.Pipe() // the tunnel's writes to the local program
		local := &splitConn{r: inSide, w: outSide}
		_, ended := started(clientConfig(func(c *Config) { c.HalfClose = true }), serverSide, local, false) // grace 2s

		go func() {
			in.Write([]byte("request"))
			in.Close() // the program's EOF
		}()
		r := &maskedReader{c: server}
		if op, p := r.next(t); op != wsframe.OpBinary || string(p) != "request" {
			t.Fatalf("op %d %q, want the request", op, p)
		}
		if op, p := r.next(t); op != wsframe.OpClose || closeCode(p) != wsframe.CloseNormal {
			t.Fatalf("op %d %q, want Close 1000", op, p)
		}
		// The answer comes in three pieces 1.5 s apart: 3 s in all, each
		// pause within the grace.
		go func() {
			for i, piece := range []string{"a", "b", "c"} {
				if i > 0 {
					time.Sleep(1500 * time.Millisecond) // virtual time: the test runs in a synctest bubble
				}
				server.Write(serverFrame(0x80|wsframe.OpBinary, []byte(piece)))
			}
			server.Write(serverFrame(0x80|wsframe.OpClose, []byte{0x03, 0xe8}))
		}()
		got, _ := io.ReadAll(out)
		server.Close()
		if string(got) != "abc" {
			t.Fatalf("the local program got %q, want the whole answer %q", got, "abc")
		}
		if e := <-ended; e.Code != wsframe.CloseNormal {
			t.Fatalf("ended %+v, want 1000", e)
		}
	})
}

// splitConn is a local connection whose two directions are separate pipes,
// so that its input can end (EOF) while its output stays open, as a TCP
// half-close does.
type splitConn struct{ r, w net.Conn }

func (c *splitConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *splitConn) Write(p []byte) (int, error)        { return c.w.Write(p) }
func (c *splitConn) CloseWrite() error                  { return c.w.Close() }
func (c *splitConn) Close() error                       { c.w.Close(); return c.r.Close() }
func (c *splitConn) LocalAddr() net.Addr                { return c.r.LocalAddr() }
func (c *splitConn) RemoteAddr() net.Addr               { return c.r.RemoteAddr() }
func (c *splitConn) SetDeadline(t time.Time) error      { c.w.SetDeadline(t); return c.r.SetDeadline(t) }
func (c *splitConn) SetReadDeadline(t time.Time) error  { return c.r.SetReadDeadline(t) }
func (c *splitConn) SetWriteDeadline(t time.Time) error { return c.w.SetWriteDeadline(t) }

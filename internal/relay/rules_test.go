package relay

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// The relay's framing and close rules, each checked on the wire without
// Caddy (they were end-to-end tests through Caddy before; one end-to-end
// test per setting stays at the root).

// untilClose reads frames until a Close and returns its payload; it fails
// on a data frame when data is nil, else appends data frames to *data.
func untilClose(t *testing.T, fr *frameReader, data *[]byte) []byte {
	t.Helper()
	for {
		op, p := fr.next(t)
		switch op {
		case wsframe.OpClose:
			return p
		case wsframe.OpPing, wsframe.OpPong:
		default:
			if data == nil {
				t.Fatalf("op %d (%q) before the Close", op, p)
			}
			*data = append(*data, p...)
		}
	}
}

// expectUpstreamEnd fails unless c is closed (EOF or reset) within
// ioTimeout, whatever it still reads.
func expectUpstreamEnd(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := io.Copy(io.Discard, c); err != nil && strings.Contains(err.Error(), "timeout") {
		t.Fatal("the upstream is still open")
	}
}

// An upstream reset after its last bytes: the client gets the bytes, then
// Close 1014 "bad gateway", exactly.
func TestUpstreamResetAfterLastWords(t *testing.T) {
	t.Parallel()
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	_, ended := started(testConfig(nil), clientSide, upSide, false)
	upstream.Write([]byte("last words"))
	upstream.(*net.TCPConn).SetLinger(0) // close with RST
	upstream.Close()
	client.SetReadDeadline(time.Now().Add(ioTimeout))
	fr := &frameReader{c: client}
	if op, p := fr.next(t); op != wsframe.OpBinary || string(p) != "last words" {
		t.Fatalf("op %d %q, want the last words", op, p)
	}
	if op, p := fr.next(t); op != wsframe.OpClose || !bytes.Equal(p, append([]byte{0x03, 0xF6}, "bad gateway"...)) {
		t.Fatalf("op %d %q, want Close 1014 \"bad gateway\"", op, p)
	}
	client.Close()
	if e := <-ended; e.Code != wsframe.CloseBadGateway || e.By != ByUpstream {
		t.Fatalf("ended %+v", e)
	}
}

// A client that vanishes without a Close: the upstream gets what it sent,
// then EOF.
func TestClientVanishingClosesUpstream(t *testing.T) {
	t.Parallel()
	for name, pair := range transports {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			client, clientSide := pair(t)
			upSide, upstream := tcpPair(t)
			_, ended := started(testConfig(nil), clientSide, upSide, false)
			go func() {
				client.Write(maskedFrame(0x82, []byte("abc")))
				client.Close()
			}()
			upstream.SetReadDeadline(time.Now().Add(ioTimeout))
			if b, err := io.ReadAll(upstream); err != nil || string(b) != "abc" {
				t.Fatalf("upstream got %q, %v; want abc then EOF", b, err)
			}
			if e := <-ended; e.Code != wsframe.CloseAbnormal || e.By != ByClient {
				t.Fatalf("ended %+v", e)
			}
		})
	}
}

// message_type text: every message is valid UTF-8 even when the
// upstream's writes split a sequence.
func TestTextMessagesNeverSplitUTF8(t *testing.T) {
	t.Parallel()
	for name, pair := range transports {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			client, clientSide := pair(t)
			upSide, upstream := pair(t)
			_, ended := started(testConfig(func(c *Config) { c.Text = true }), clientSide, upSide, false)
			text := []byte(strings.Repeat("añ€😀", 50))
			go func() {
				for i := range text { // one byte at a time: every sequence split
					upstream.Write(text[i : i+1])
				}
				upstream.Close()
			}()
			client.SetReadDeadline(time.Now().Add(ioTimeout))
			fr := &frameReader{c: client}
			var got []byte
			for {
				op, p := fr.next(t)
				if op == wsframe.OpClose {
					break
				}
				if op != wsframe.OpText || !utf8.Valid(p) {
					t.Fatalf("op %d, valid UTF-8 %v: %q", op, utf8.Valid(p), p)
				}
				got = append(got, p...)
			}
			if !bytes.Equal(got, text) {
				t.Fatalf("got %q", got)
			}
			client.Close()
			<-ended
		})
	}
}

// validate_utf8: text split inside a sequence across fragments passes;
// invalid text across fragments, and a text message that ends inside a
// sequence, close with 1007; binary messages are not checked.
func TestValidateUTF8AcrossFragments(t *testing.T) {
	t.Parallel()
	euro := []byte("€") // E2 82 AC
	cases := []struct {
		name   string
		frames [][]byte
		passed []byte // what reaches the upstream
		code   int    // the Close; 0: none
	}{
		{"valid, split in 3 fragments", [][]byte{maskedFrame(0x01, euro[:1]), maskedFrame(0x00, euro[1:2]), maskedFrame(0x80, euro[2:])}, euro, 0},
		{"invalid across fragments", [][]byte{maskedFrame(0x01, []byte{0xE2}), maskedFrame(0x80, []byte("abc"))}, nil, wsframe.CloseInvalidPayload},
		{"binary is not checked", [][]byte{maskedFrame(0x82, []byte{0xE2, 'a'})}, []byte{0xE2, 'a'}, 0},
		{"text ending inside a sequence", [][]byte{maskedFrame(0x81, []byte{'o', 'k', 0xE2, 0x82})}, nil, wsframe.CloseInvalidPayload},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			client, clientSide := tcpPair(t)
			upSide, upstream := tcpPair(t)
			_, ended := started(testConfig(func(c *Config) { c.ValidateUTF8 = true }), clientSide, upSide, false)
			for _, f := range c.frames {
				client.Write(f)
			}
			if c.code == 0 {
				if got := readPayloadN(t, upstream, len(c.passed)); !bytes.Equal(got, c.passed) {
					t.Fatalf("upstream got %q, want %q", got, c.passed)
				}
				client.Close()
				<-ended
				return
			}
			client.SetReadDeadline(time.Now().Add(ioTimeout))
			if p := untilClose(t, &frameReader{c: client}, nil); closeCode(p) != c.code {
				t.Fatalf("Close %d, want %d", closeCode(p), c.code)
			}
			expectUpstreamEnd(t, upstream)
			client.Close()
			if e := <-ended; e.Code != c.code || e.By != ByClient {
				t.Fatalf("ended %+v", e)
			}
		})
	}
}

// readPayloadN reads n bytes from the upstream.
func readPayloadN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("upstream: %v", err)
	}
	return b
}

// max_message_size: a message at the limit passes, one byte more closes
// with 1009 and closes the upstream.
func TestMaxMessageSizeAtTheLimit(t *testing.T) {
	t.Parallel()
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	_, ended := started(testConfig(func(c *Config) { c.MaxMessageSize = 1024 }), clientSide, upSide, false)
	client.Write(maskedFrame(0x82, make([]byte, 1024)))
	readPayloadN(t, upstream, 1024)
	client.Write(maskedFrame(0x82, make([]byte, 1025)))
	client.SetReadDeadline(time.Now().Add(ioTimeout))
	if p := untilClose(t, &frameReader{c: client}, nil); closeCode(p) != wsframe.CloseMessageTooBig {
		t.Fatalf("Close %d, want 1009", closeCode(p))
	}
	expectUpstreamEnd(t, upstream)
	client.Close()
	<-ended
}

// Fragments reach the upstream as they arrive: the first fragments of a
// message that is not finished yet are already there.
func TestFragmentsStreamedBeforeMessageEnds(t *testing.T) {
	t.Parallel()
	for name, pair := range transports {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			client, clientSide := pair(t)
			upSide, upstream := tcpPair(t)
			_, ended := started(testConfig(nil), clientSide, upSide, false)
			go func() {
				client.Write(maskedFrame(0x02, []byte("first ")))  // binary, not final
				client.Write(maskedFrame(0x00, []byte("second "))) // continuation, not final
			}()
			if got := readPayloadN(t, upstream, len("first second ")); string(got) != "first second " {
				t.Fatalf("got %q", got)
			}
			go func() {
				client.Write(maskedFrame(0x80, []byte("last"))) // final continuation
				client.Write(maskedFrame(0x82, []byte("!")))    // and a whole message after
			}()
			if got := readPayloadN(t, upstream, len("last!")); string(got) != "last!" {
				t.Fatalf("got %q", got)
			}
			client.Close()
			<-ended
		})
	}
}

// buffer_size bounds the messages to the client: an upstream read is one
// message.
func TestBufferSizeBoundsMessages(t *testing.T) {
	t.Parallel()
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	_, ended := started(testConfig(func(c *Config) { c.BufferSize = 1024 }), clientSide, upSide, false)
	go func() {
		upstream.Write(bytes.Repeat([]byte("x"), 64<<10))
		upstream.Close()
	}()
	client.SetReadDeadline(time.Now().Add(ioTimeout))
	fr := &frameReader{c: client}
	total := 0
	for {
		op, p := fr.next(t)
		if op == wsframe.OpClose {
			break
		}
		if len(p) > 1024 {
			t.Fatalf("a message of %d bytes with a 1 KiB buffer", len(p))
		}
		total += len(p)
	}
	if total != 64<<10 {
		t.Fatalf("got %d bytes", total)
	}
	client.Close()
	<-ended
}

// Protocol errors close with 1002, and close the upstream.
func TestProtocolErrorsClose1002(t *testing.T) {
	t.Parallel()
	cases := map[string][]byte{
		"unmasked frame":                 {0x82, 0x01, 'x'},
		"reserved bit":                   maskedFrame(0xC2, []byte("x")),
		"continuation outside a message": maskedFrame(0x80, []byte("x")),
		"unknown opcode":                 maskedFrame(0x83, nil),
		"fragmented ping":                maskedFrame(0x09, nil),
	}
	for name, frame := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			client, clientSide := tcpPair(t)
			upSide, upstream := tcpPair(t)
			_, ended := started(testConfig(nil), clientSide, upSide, false)
			client.Write(frame)
			client.SetReadDeadline(time.Now().Add(ioTimeout))
			if p := untilClose(t, &frameReader{c: client}, nil); closeCode(p) != wsframe.CloseProtocolError {
				t.Fatalf("Close %d, want 1002", closeCode(p))
			}
			expectUpstreamEnd(t, upstream)
			client.Close()
			if e := <-ended; e.Code != wsframe.CloseProtocolError || e.By != ByClient {
				t.Fatalf("ended %+v", e)
			}
		})
	}
}

// A ping is answered with a pong carrying its payload, before the data
// that follows it.
func TestPingIsAnsweredWithPong(t *testing.T) {
	t.Parallel()
	client, clientSide := pipePair(t)
	upSide, upstream := tcpPair(t)
	_, ended := started(testConfig(nil), clientSide, upSide, false)
	go io.Copy(upstream, upstream) // echo
	go func() {
		client.Write(maskedFrame(0x89, []byte("are you there")))
		client.Write(maskedFrame(0x82, []byte("data")))
	}()
	client.SetReadDeadline(time.Now().Add(ioTimeout))
	fr := &frameReader{c: client}
	if op, p := fr.next(t); op != wsframe.OpPong || string(p) != "are you there" {
		t.Fatalf("op %d %q, want the pong", op, p)
	}
	if op, p := fr.next(t); op != wsframe.OpBinary || string(p) != "data" {
		t.Fatalf("op %d %q, want the echo", op, p)
	}
	client.Close()
	<-ended
}

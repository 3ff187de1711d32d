package wstotcp

import (
	"bytes"
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

func TestSubprotocolNegotiation(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	route /any {
		ws_to_tcp `+up.addr+`
	}
	route /mqtt {
		ws_to_tcp `+up.addr+` {
			subprotocols mqttv3.1 mqtt
		}
	}
	route /novnc {
		ws_to_tcp `+up.addr+` {
			subprotocols binary base64
		}
	}
}`)
	cases := []struct {
		path    string
		offer   []string
		status  int    // 101 or the refusal
		echoed  string // the negotiated protocol
		comment string
	}{
		{"/any", nil, 101, "", "no offer, no echo"},
		{"/any", []string{"mqtt", "mqttv3.1"}, 101, "mqtt", "client's first offer"},
		{"/any", []string{"chat.v2", "chat"}, 101, "chat.v2", "browser-style offer must be echoed"},
		{"/mqtt", []string{"mqtt", "mqttv3.1"}, 101, "mqttv3.1", "server preference wins"},
		{"/mqtt", []string{"mqtt"}, 101, "mqtt", ""},
		{"/mqtt", []string{"stomp"}, 400, "", "none accepted"},
		{"/mqtt", nil, 400, "", "offer required"},
		{"/novnc", []string{"binary"}, 101, "binary", ""},
		{"/novnc", []string{"base64", "binary"}, 101, "binary", "server order: binary first"},
		{"/novnc", []string{"base64"}, 101, "base64", ""},
	}
	for _, tc := range cases {
		d := websocket.Dialer{Subprotocols: tc.offer, HandshakeTimeout: 10 * time.Second}
		c, resp, err := d.Dial(s.wsURL(tc.path), nil)
		if tc.status != 101 {
			if err == nil || resp == nil || resp.StatusCode != tc.status {
				t.Errorf("%s %v: want %d, got %v %v", tc.path, tc.offer, tc.status, resp, err)
			}
			if c != nil {
				c.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %v (%s): %v", tc.path, tc.offer, tc.comment, err)
			continue
		}
		if got := c.Subprotocol(); got != tc.echoed {
			t.Errorf("%s %v (%s): echoed %q, want %q", tc.path, tc.offer, tc.comment, got, tc.echoed)
		}
		c.Close()
	}
}

// websockify's base64 subprotocol: client text frames are base64 decoded,
// upstream bytes go out as base64 text frames; bad base64 closes with 1007.
func TestBase64Subprotocol(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		subprotocols binary base64
	}
}`)
	d := websocket.Dialer{Subprotocols: []string{"base64"}}
	c, _, err := d.Dial(s.wsURL("/"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := []byte("\x00\x01binary\xff\xfe over base64")
	c.WriteMessage(websocket.TextMessage, []byte(base64.StdEncoding.EncodeToString(payload)))
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	mt, b, err := c.ReadMessage()
	if err != nil || mt != websocket.TextMessage {
		t.Fatalf("got type %d, %v", mt, err)
	}
	dec, err := base64.StdEncoding.DecodeString(string(b))
	if err != nil || !bytes.Equal(dec, payload) {
		t.Fatalf("echo %q decodes to %q (%v)", b, dec, err)
	}
	c.WriteMessage(websocket.TextMessage, []byte("not*base64"))
	if code := expectClose(t, c, ioTimeout); code != websocket.CloseInvalidFramePayloadData {
		t.Fatalf("bad base64: close %d, want 1007", code)
	}
}

// message_type text: every message is valid UTF-8 even when the upstream's
// writes split a sequence.
func TestTextMessagesNeverSplitUTF8(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		message_type text
	}
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	text := []byte(strings.Repeat("añ€😀", 50))
	go func() {
		// one byte at a time: every sequence is split across reads
		for i := range text {
			uc.Write(text[i : i+1])
		}
		uc.Close()
	}()
	var got []byte
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	for {
		mt, b, err := c.ReadMessage()
		if err != nil {
			break
		}
		if mt != websocket.TextMessage || !utf8.Valid(b) {
			t.Fatalf("message type %d, valid UTF-8 %v: %q", mt, utf8.Valid(b), b)
		}
		got = append(got, b...)
	}
	if !bytes.Equal(got, text) {
		t.Fatalf("got %q", got)
	}
}

func TestValidateUTF8(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		validate_utf8
	}
}`)
	// Valid UTF-8 fragmented inside a sequence passes.
	c := s.dial("/", nil)
	uc := up.accept(t)
	euro := []byte("€") // E2 82 AC
	fragment(t, c, [][]byte{euro[:1], euro[1:2], euro[2:]})
	uc.SetReadDeadline(time.Now().Add(ioTimeout))
	got := make([]byte, 3)
	if _, err := io.ReadFull(uc, got); err != nil || !bytes.Equal(got, euro) {
		t.Fatalf("upstream got %q %v", got, err)
	}
	// Invalid: a lead byte followed by ASCII, across fragments.
	fragment(t, c, [][]byte{{0xE2}, []byte("abc")})
	if code := expectClose(t, c, ioTimeout); code != websocket.CloseInvalidFramePayloadData {
		t.Fatalf("close %d, want 1007", code)
	}
	c.Close()
	readEOFOrReset(t, uc)

	// A binary message with the same bytes is not checked.
	c2 := s.dial("/", nil)
	defer c2.Close()
	uc2 := up.accept(t)
	c2.WriteMessage(websocket.BinaryMessage, []byte{0xE2, 'a'})
	uc2.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := io.ReadFull(uc2, got[:2]); err != nil || got[0] != 0xE2 {
		t.Fatalf("binary: upstream got %q %v", got[:2], err)
	}
	// A text message ending inside a sequence is invalid.
	c2.WriteMessage(websocket.TextMessage, []byte{'o', 'k', 0xE2, 0x82})
	if code := expectClose(t, c2, ioTimeout); code != websocket.CloseInvalidFramePayloadData {
		t.Fatalf("truncated sequence: close %d, want 1007", code)
	}
}

// fragment writes one text message with each part in a frame of its own,
// by hand: gorilla's writer decides frame boundaries itself.
func fragment(t testing.TB, c *websocket.Conn, parts [][]byte) {
	t.Helper()
	raw := c.UnderlyingConn()
	for i, p := range parts {
		op := byte(0x0) // continuation
		if i == 0 {
			op = 0x1 // text
		}
		if i == len(parts)-1 {
			op |= 0x80
		}
		if _, err := raw.Write(maskedFrame(op, p)); err != nil {
			t.Fatal(err)
		}
	}
}

// maskedFrame builds one client frame (RFC 6455 §5.2) with a zero mask.
func maskedFrame(b0 byte, payload []byte) []byte {
	f := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	case n < 1<<16:
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	default:
		f = append(f, 0x80|127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	f = append(f, 0, 0, 0, 0) // mask key 0: payload unchanged
	return append(f, payload...)
}

func readEOFOrReset(t testing.TB, c interface {
	Read([]byte) (int, error)
	SetReadDeadline(time.Time) error
}) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			if strings.Contains(err.Error(), "timeout") {
				t.Fatal("upstream was not closed")
			}
			return
		}
	}
}

func TestMaxMessageSize(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		max_message_size 1KiB
	}
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	c.WriteMessage(websocket.BinaryMessage, make([]byte, 1024)) // at the limit: fine
	uc.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := io.ReadFull(uc, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	c.WriteMessage(websocket.BinaryMessage, make([]byte, 1025))
	if code := expectClose(t, c, ioTimeout); code != websocket.CloseMessageTooBig {
		t.Fatalf("close %d, want 1009", code)
	}
	readEOFOrReset(t, uc)
}

// Fragments reach the upstream as they arrive: the first fragments of a
// message that is not finished yet are already there.
func TestFragmentsStreamedBeforeMessageEnds(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	raw := c.UnderlyingConn()
	raw.Write(maskedFrame(0x2, []byte("first ")))  // binary, not final
	raw.Write(maskedFrame(0x0, []byte("second "))) // continuation, not final
	uc.SetReadDeadline(time.Now().Add(ioTimeout))
	got := make([]byte, len("first second "))
	if _, err := io.ReadFull(uc, got); err != nil {
		t.Fatalf("fragments not streamed before the final one: %v", err)
	}
	raw.Write(maskedFrame(0x80, []byte("last"))) // final continuation
	rest := make([]byte, 4)
	if _, err := io.ReadFull(uc, rest); err != nil || string(got)+string(rest) != "first second last" {
		t.Fatalf("got %q%q %v", got, rest, err)
	}
	// A whole message after the fragmented one is relayed too.
	c.WriteMessage(websocket.BinaryMessage, []byte("!"))
	if _, err := io.ReadFull(uc, rest[:1]); err != nil || rest[0] != '!' {
		t.Fatalf("got %q %v", rest[:1], err)
	}
}

func TestBufferSizeBoundsMessages(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		buffer_size 1KiB
	}
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	go func() {
		uc.Write(bytes.Repeat([]byte("x"), 64<<10))
		uc.Close()
	}()
	total := 0
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	for {
		_, b, err := c.ReadMessage()
		if err != nil {
			break
		}
		if len(b) > 1024 {
			t.Fatalf("message of %d bytes with buffer_size 1KiB", len(b))
		}
		total += len(b)
	}
	if total != 64<<10 {
		t.Fatalf("got %d bytes", total)
	}
}

func TestCrossOriginRefusedByDefault(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	hdr := http.Header{"Origin": {"https://evil.example"}}
	if _, resp, err := s.tryDial("/", hdr); err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("cross-site origin: want 403, got %v %v", resp, err)
	}
	hdr.Set("Origin", s.httpURL(""))
	c := s.dial("/", hdr) // same origin
	c.Close()
}

func TestProtocolErrorsClose1002(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	cases := map[string][]byte{
		"unmasked frame":                 {0x82, 0x01, 'x'},
		"reserved bit":                   maskedFrame(0xC2, []byte("x")),
		"continuation outside a message": maskedFrame(0x80, []byte("x")),
		"unknown opcode":                 maskedFrame(0x83, nil),
		"fragmented ping":                maskedFrame(0x09, nil),
	}
	for name, frame := range cases {
		c := s.dial("/", nil)
		uc := up.accept(t)
		c.UnderlyingConn().Write(frame)
		if code := expectClose(t, c, ioTimeout); code != websocket.CloseProtocolError {
			t.Errorf("%s: close %d, want 1002", name, code)
		}
		readEOFOrReset(t, uc)
		c.Close()
	}
}

func TestPingIsAnsweredWithPong(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	defer c.Close()
	pong := make(chan string, 1)
	c.SetPongHandler(func(p string) error { pong <- p; return nil })
	c.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(time.Second))
	c.WriteMessage(websocket.BinaryMessage, []byte("data")) // to have something to read
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, b, err := c.ReadMessage(); err != nil || string(b) != "data" {
		t.Fatalf("got %q %v", b, err)
	}
	select {
	case p := <-pong:
		if p != "are you there" {
			t.Fatalf("pong %q", p)
		}
	default:
		t.Fatal("no pong before the echo")
	}
}

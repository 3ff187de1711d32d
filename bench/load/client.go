package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
)

// target is where the load goes: a WebSocket URL (ws_to_tcp, websockify),
// over TLS on one of three transports for wss://, or a TCP address (the
// plain relay).
type target struct {
	ws         bool
	tls        bool     // wss://
	proto      string   // wss://: h1, h2 or h3 (transport.go)
	addr       string   // host:port dialled
	authority  string   // the Host header (HTTP/1.1) or :authority
	path       string   // the request URI
	serverName string   // TLS SNI
	mux        *muxPool // h2 and h3: the connections carrying the tunnels
}

// parseTarget reads -target. For wss:// targets, proto picks the transport,
// serverName (when set) replaces the URL's host in SNI and in the Host
// header (the port stays), and perConn is how many tunnels an HTTP/2 or
// HTTP/3 connection carries.
func parseTarget(s, proto, serverName string, perConn int) (target, error) {
	u, err := url.Parse(s)
	if err != nil {
		return target{}, err
	}
	t := target{addr: u.Host, authority: u.Host, path: u.RequestURI(), serverName: u.Hostname()}
	switch u.Scheme {
	case "ws":
		t.ws = true
		if proto != "" && proto != "h1" {
			return target{}, fmt.Errorf("-proto %s needs a wss:// target", proto)
		}
		return t, nil
	case "wss":
		t.ws, t.tls = true, true
		if serverName != "" {
			t.serverName = serverName
			t.authority = net.JoinHostPort(serverName, u.Port())
		}
		switch proto {
		case "", "h1":
			t.proto = "h1"
		case "h2", "h3":
			t.proto = proto
			t.mux = newMuxPool(proto, t.addr, t.serverName, perConn)
		default:
			return target{}, fmt.Errorf("-proto %q: want h1, h2 or h3", proto)
		}
		return t, nil
	case "tcp":
		return target{addr: u.Host}, nil
	}
	return target{}, fmt.Errorf("target %q: want ws://host:port/path, wss://host:port/path or tcp://host:port", s)
}

// client is one connection through the proxy. Upload data is written as
// pre-built wire bytes straight to the socket: for a WebSocket, whole frames
// (FIN + binary, masked with key 0, one frame per message, as browsers
// send); for TCP, the bare payload in writes of the same size. Downloads are
// read as a byte stream (the payloads of the binary messages, for a
// WebSocket). On HTTP/2 and HTTP/3, the "socket" is the tunnel's stream.
type client struct {
	ws     bool // a WebSocket, else TCP
	nc     net.Conn
	frames *frameStream // the WebSocket's data, read from nc
}

func dial(ctx context.Context, t target, readBuf int) (*client, error) {
	var nc net.Conn
	var err error
	switch {
	case t.mux != nil:
		var mc muxConn
		if mc, err = t.mux.conn(ctx); err != nil {
			return nil, err
		}
		if nc, err = mc.open(ctx, t); err != nil {
			return nil, err
		}
		// The extended CONNECT was the handshake: frames follow.
		return &client{ws: true, nc: nc, frames: &frameStream{nc: nc, buf: make([]byte, max(readBuf, 4096))}}, nil
	case t.tls:
		nc, err = (&tls.Dialer{Config: benchTLS(t.serverName, "http/1.1")}).DialContext(ctx, "tcp", t.addr)
	default:
		nc, err = (&net.Dialer{}).DialContext(ctx, "tcp", t.addr)
	}
	if err != nil || !t.ws {
		return &client{nc: nc}, err
	}
	c := &client{ws: true, nc: nc, frames: &frameStream{nc: nc, buf: make([]byte, max(readBuf, 4096))}}
	if err := c.handshake(ctx, t); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// The opening handshake (RFC 6455 §4.1), written by hand with a fixed key:
// a WebSocket library's dialer costs the client several times what a TCP
// connect does, on the cores the proxy runs on, and the new-connections
// scenario would measure the client.
const (
	handshakeKey    = "dGhlIHNhbXBsZSBub25jZQ=="
	handshakeAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" // RFC 6455 §1.3's example
)

func (c *client) handshake(ctx context.Context, t target) error {
	if dl, ok := ctx.Deadline(); ok {
		c.nc.SetDeadline(dl)
		defer c.nc.SetDeadline(time.Time{})
	}
	req := "GET " + t.path + " HTTP/1.1\r\nHost: " + t.authority +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + handshakeKey +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(c.nc, req); err != nil {
		return err
	}
	// Read the response into the frame buffer; what follows it is data.
	s := c.frames
	for {
		if i := bytes.Index(s.buf[:s.w], []byte("\r\n\r\n")); i >= 0 {
			head := string(s.buf[:i])
			s.r = i + 4
			if !strings.HasPrefix(head, "HTTP/1.1 101") {
				status, _, _ := strings.Cut(head, "\r\n")
				return fmt.Errorf("bad handshake (%s)", status)
			}
			if !strings.Contains(head, handshakeAccept) {
				return errors.New("bad handshake: wrong Sec-WebSocket-Accept")
			}
			return nil
		}
		if s.w == len(s.buf) {
			return errors.New("bad handshake: response too long")
		}
		n, err := c.nc.Read(s.buf[s.w:])
		s.w += n
		if err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
	}
}

// frameHeader appends the header of a masked FIN frame with mask key 0.
func frameHeader(dst []byte, opcode byte, n int) []byte {
	dst = append(dst, 0x80|opcode)
	switch {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n < 1<<16:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return append(dst, 0, 0, 0, 0) // masking key 0: payload XOR 0 = payload
}

// wire returns the bytes that carry payload as one message.
func wire(ws bool, payload []byte) []byte {
	if !ws {
		return append([]byte(nil), payload...)
	}
	b := frameHeader(make([]byte, 0, 14+len(payload)), 0x2, len(payload))
	return append(b, payload...)
}

// payloadOffset is where the payload starts in wire(ws, payload).
func payloadOffset(ws bool, n int) int {
	if !ws {
		return 0
	}
	return len(frameHeader(nil, 0x2, n))
}

func (c *client) write(b []byte) error {
	_, err := c.nc.Write(b)
	return err
}

// send writes payload as one message.
func (c *client) send(payload []byte) error { return c.write(wire(c.ws, payload)) }

// Read reads the byte stream from the proxy. For a WebSocket, a Close 1000
// (or 1001) from the server is io.EOF; another close code is an error.
// WebSocket frames are parsed here rather than by gorilla, whose reader
// costs an allocation per message and copies each payload through its own
// buffer: the client must cost about the same for a WebSocket as for TCP,
// or the client's CPU, on the same cores as the proxy, is what we measure.
func (c *client) Read(p []byte) (int, error) {
	if !c.ws {
		return c.nc.Read(p)
	}
	return c.frames.Read(p)
}

// frameStream reads the payload of the server's binary frames as a byte
// stream. It reads the socket in reads as large as its buffer, as the TCP
// client reads into its own, whatever the frame size: the same number of
// system calls per megabyte for both, and a memory copy for the frames.
type frameStream struct {
	nc        net.Conn
	buf       []byte
	r, w      int
	remaining int64 // payload of the current frame still to come
}

func (s *frameStream) Read(p []byte) (int, error) {
	for {
		if s.remaining > 0 {
			k := int(min(int64(len(p)), s.remaining))
			var n int
			var err error
			if s.r == s.w && k >= len(s.buf) {
				n, err = s.nc.Read(p[:k])
				s.remaining -= int64(n)
				return n, err
			}
			if s.r == s.w {
				s.r = 0
				s.w, err = s.nc.Read(s.buf)
				if s.w == 0 {
					return 0, err
				}
			}
			n = copy(p[:k], s.buf[s.r:s.w])
			s.r += n
			s.remaining -= int64(n)
			return n, nil
		}
		op, length, err := s.header()
		if err != nil {
			return 0, err
		}
		switch op {
		case 0x0, 0x2:
			s.remaining = length
		case 0x8:
			payload, err := s.take(int(length))
			if err != nil {
				return 0, err
			}
			code := 1005
			if len(payload) >= 2 {
				code = int(binary.BigEndian.Uint16(payload))
			}
			if code == 1000 || code == 1001 {
				return 0, io.EOF
			}
			return 0, fmt.Errorf("server closed with %d %q", code, payload[min(2, len(payload)):])
		case 0x9, 0xA: // ping, pong: not used by the benchmark's configs
			if _, err := s.take(int(length)); err != nil {
				return 0, err
			}
		default:
			return 0, fmt.Errorf("got a frame with opcode %d, want binary", op)
		}
	}
}

// header parses the next frame header (server frames are not masked).
func (s *frameStream) header() (byte, int64, error) {
	h, err := s.take(2)
	if err != nil {
		return 0, 0, err
	}
	op, n := h[0]&0x0F, int64(h[1]&0x7F)
	switch n {
	case 126:
		ext, err := s.take(2)
		if err != nil {
			return 0, 0, err
		}
		n = int64(binary.BigEndian.Uint16(ext))
	case 127:
		ext, err := s.take(8)
		if err != nil {
			return 0, 0, err
		}
		n = int64(binary.BigEndian.Uint64(ext))
	}
	return op, n, nil
}

// take returns the next n buffered bytes (n is small), reading as needed.
func (s *frameStream) take(n int) ([]byte, error) {
	for s.w-s.r < n {
		if s.r > 0 {
			s.w = copy(s.buf, s.buf[s.r:s.w])
			s.r = 0
		}
		k, err := s.nc.Read(s.buf[s.w:])
		s.w += k
		if err != nil && s.w-s.r < n {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	b := s.buf[s.r : s.r+n]
	s.r += n
	return b, nil
}

// closeSend ends our sending side: a Close 1000 frame, or a TCP half-close.
func (c *client) closeSend() error {
	if !c.ws {
		return c.nc.(*net.TCPConn).CloseWrite()
	}
	f := frameHeader(make([]byte, 0, 16), 0x8, 2)
	return c.write(binary.BigEndian.AppendUint16(f, 1000))
}

// finish ends the connection politely: closeSend, then read (discarding)
// until the server's Close or EOF, then close. Data arriving meanwhile is
// an error when strict.
func (c *client) finish(timeout time.Duration, strict bool) error {
	defer c.nc.Close()
	if err := c.closeSend(); err != nil {
		return err
	}
	c.nc.SetReadDeadline(time.Now().Add(timeout))
	var buf [4096]byte
	for {
		n, err := c.Read(buf[:])
		if n > 0 && strict {
			return fmt.Errorf("%d unexpected bytes after the data", n)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if c.ws && errors.Is(err, io.ErrUnexpectedEOF) {
				// The server closed without a Close frame after ours.
				return nil
			}
			return err
		}
	}
}

func (c *client) close() { c.nc.Close() }

// msgTable holds K distinct messages of one size, pre-built as wire bytes:
// message j of a stream is entry j % K. Entry k's payload is a window of a
// pseudo-random block, so that neighbouring messages differ and reordering
// or loss shows in the content check.
type msgTable struct {
	ws      bool
	size    int
	wires   [][]byte
	payload [][]byte
}

var block = sync.OnceValue(func() []byte {
	b := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
})

func newMsgTable(ws bool, size int) *msgTable {
	k := max(16, min(4096, (4<<20)/size))
	t := &msgTable{ws: ws, size: size}
	blk := block()
	src := make([]byte, size)
	for i := range k {
		off := (i * 4099) % len(blk)
		for n := 0; n < size; {
			n += copy(src[n:], blk[(off+n)%len(blk):])
		}
		w := wire(ws, src)
		t.wires = append(t.wires, w)
		t.payload = append(t.payload, w[len(w)-size:])
	}
	return t
}

func (t *msgTable) k() int { return len(t.wires) }

// pattern is the source upstream's stream: byte i is byte(i ^ i>>9 ^ i>>17),
// which repeats every 32 MiB.
var patternOnce = sync.OnceValue(func() []byte {
	p := make([]byte, 32<<20)
	for i := range p {
		p[i] = byte(i ^ i>>9 ^ i>>17)
	}
	return p
})

func isClosedErr(err error) bool {
	return err != nil && (errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "use of closed"))
}

package main

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"
)

// The soak's WebSocket client: the same RFC 6455 framing on every
// transport, written here rather than taken from a library so that a
// fault (dropping the connection without a Close, ceasing to read) is one
// line and a frame is checked byte by byte.

// stream is a tunnel's byte stream to Caddy: a TCP or TLS connection for
// HTTP/1.1, a request stream for HTTP/2 and HTTP/3.
type stream interface {
	io.ReadWriter
	finish() // after the closing handshake: end our side in good order
	abort()  // drop it without a word
}

type netStream struct{ net.Conn }

func (s netStream) finish() { s.Conn.Close() }
func (s netStream) abort()  { s.Conn.Close() }

// handshakeError is a refused handshake: the HTTP status and Retry-After.
type handshakeError struct {
	status     int
	retryAfter string
}

func (e *handshakeError) Error() string { return fmt.Sprintf("handshake refused: HTTP %d", e.status) }

// dialH1 opens a WebSocket over HTTP/1.1 (with TLS when conf is set): the
// handshake with a fresh key, its answer checked.
func dialH1(ctx context.Context, addr, authority, path string, conf *tls.Config, sending func()) (stream, *bufio.Reader, error) {
	var nc net.Conn
	var err error
	if conf != nil {
		nc, err = (&tls.Dialer{Config: conf}).DialContext(ctx, "tcp", addr)
	} else {
		nc, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	var k [16]byte
	crand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + authority +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
	sending()
	if _, err := io.WriteString(nc, req); err != nil {
		nc.Close()
		return nil, nil, err
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		nc.Close()
		return nil, nil, &handshakeError{resp.StatusCode, resp.Header.Get("Retry-After")}
	}
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(h[:]) {
		nc.Close()
		return nil, nil, errors.New("wrong Sec-WebSocket-Accept")
	}
	nc.SetDeadline(time.Time{})
	return netStream{nc}, br, nil
}

// wsConn frames messages on a stream: client frames masked with a fresh
// key each, server frames read whole (the relay never fragments).
type wsConn struct {
	s  stream
	br *bufio.Reader

	wmu  sync.Mutex
	wbuf []byte
	rbuf []byte
}

func newWSConn(s stream, br *bufio.Reader) *wsConn {
	if br == nil {
		br = bufio.NewReaderSize(s, 4096)
	}
	return &wsConn{s: s, br: br}
}

const (
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	opPong   = 0xA
)

// write sends p as one frame.
func (c *wsConn) write(op byte, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := append(c.wbuf[:0], 0x80|op)
	switch n := len(p); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n < 1<<16:
		b = binary.BigEndian.AppendUint16(append(b, 0x80|126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, 0x80|127), uint64(n))
	}
	key := rand.Uint32()
	b = binary.BigEndian.AppendUint32(b, key)
	start := len(b)
	b = append(b, p...)
	mask(b[start:], key)
	c.wbuf = b
	_, err := c.s.Write(b)
	return err
}

func mask(p []byte, key uint32) {
	var k [8]byte
	binary.BigEndian.PutUint32(k[:], key)
	binary.BigEndian.PutUint32(k[4:], key)
	k8 := binary.LittleEndian.Uint64(k[:])
	i := 0
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], binary.LittleEndian.Uint64(p[i:])^k8)
	}
	for ; i < len(p); i++ {
		p[i] ^= k[i&3]
	}
}

func (c *wsConn) writeClose(code int) error {
	return c.write(opClose, binary.BigEndian.AppendUint16(nil, uint16(code)))
}

// read returns the next frame; its payload is valid until the next read.
func (c *wsConn) read() (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 || h[0]&0x70 != 0 {
		return 0, nil, fmt.Errorf("frame header %#02x: fragmented or reserved bits", h[0])
	}
	if h[1]&0x80 != 0 {
		return 0, nil, errors.New("server frame is masked")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		if _, err := io.ReadFull(c.br, e[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		if _, err := io.ReadFull(c.br, e[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(e[:])
	}
	if n > 4<<20 {
		return 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	if uint64(cap(c.rbuf)) < n {
		c.rbuf = make([]byte, n)
	}
	p := c.rbuf[:n]
	if _, err := io.ReadFull(c.br, p); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0f, p, nil
}

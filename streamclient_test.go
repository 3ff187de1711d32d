package wstotcp

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Clients for WebSockets over HTTP/2 (RFC 8441, with x/net/http2's
// transport) and HTTP/3 (RFC 9220, with quic-go's), written by others; the
// RFC 6455 framing on the stream is the few lines of streamWS.

// streamWS is a WebSocket client on a stream: frames masked with a fresh
// random key each, as RFC 6455 wants of clients.
type streamWS struct {
	r     *bufio.Reader
	w     io.Writer
	close func() error // ends the stream (both ways)

	wmu sync.Mutex
}

// write sends one frame (fin set unless more).
func (c *streamWS) writeFrame(op byte, fin bool, p []byte) error {
	var key [4]byte
	rand.Read(key[:])
	b0 := op
	if fin {
		b0 |= 0x80
	}
	var f []byte
	switch n := len(p); {
	case n < 126:
		f = []byte{b0, 0x80 | byte(n)}
	case n < 1<<16:
		f = binary.BigEndian.AppendUint16([]byte{b0, 0x80 | 126}, uint16(n))
	default:
		f = binary.BigEndian.AppendUint64([]byte{b0, 0x80 | 127}, uint64(n))
	}
	f = append(f, key[:]...)
	start := len(f)
	f = append(f, p...)
	wsframe.Unmask(f[start:], f[start:], key, 0)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.w.Write(f)
	return err
}

func (c *streamWS) write(op byte, p []byte) error { return c.writeFrame(op, true, p) }

// closeWith sends a Close frame with code.
func (c *streamWS) closeWith(code int) error {
	return c.write(wsframe.OpClose, binary.BigEndian.AppendUint16(nil, uint16(code)))
}

// read returns the next frame the server sent (it never fragments).
func (c *streamWS) read() (op byte, payload []byte, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
		return 0, nil, err
	}
	if hdr[1]&0x80 != 0 {
		return 0, nil, errors.New("server frame is masked")
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(c.r, ext[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(c.r, ext[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(ext[:])
	}
	if n > 64<<20 {
		return 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(c.r, payload); err != nil {
		return 0, nil, err
	}
	return hdr[0] & 0x0f, payload, nil
}

// readData returns the next data message, answering pings; a Close is an
// error carrying its code.
func (c *streamWS) readData() (byte, []byte, error) {
	for {
		op, p, err := c.read()
		if err != nil {
			return 0, nil, err
		}
		switch op {
		case wsframe.OpPing:
			c.write(wsframe.OpPong, p)
		case wsframe.OpPong:
		case wsframe.OpClose:
			code, _, _ := wsframe.ParseClosePayload(p)
			return op, p, &closeReceived{code}
		default:
			return op, p, nil
		}
	}
}

type closeReceived struct{ code int }

func (e *closeReceived) Error() string { return fmt.Sprintf("Close %d", e.code) }

// closeCodeOf is the code of a Close the server sent, or 0.
func closeCodeOf(err error) int {
	var cr *closeReceived
	if errors.As(err, &cr) {
		return cr.code
	}
	return 0
}

// testTLS trusts anything: the tests' Caddy uses `tls internal`.
func testTLS(protos ...string) *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, NextProtos: protos, ServerName: "localhost"}
}

// h2Client is one HTTP/2 connection, on which tunnels are opened.
type h2Client struct {
	cc   *http2.ClientConn
	addr string
}

func newH2Client(t testing.TB, addr string) *h2Client {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, testTLS("h2"))
	if err != nil {
		t.Fatalf("TLS dial %s: %v", addr, err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN %q, want h2", p)
	}
	cc, err := (&http2.Transport{}).NewClientConn(conn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &h2Client{cc: cc, addr: addr}
}

// connect opens a WebSocket on a new stream: CONNECT with :protocol
// websocket. On a refusal it returns the response and an error.
func (c *h2Client) connect(path string, hdr http.Header) (*streamWS, *http.Response, error) {
	pr, pw := io.Pipe()
	u := &url.URL{Scheme: "https", Host: c.addr, Path: path}
	if p, q, ok := cutQuery(path); ok {
		u.Path, u.RawQuery = p, q
	}
	req, err := http.NewRequest(http.MethodConnect, u.String(), pr)
	if err != nil {
		return nil, nil, err
	}
	req.Host = localhostAt(c.addr)
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set(":protocol", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	resp, err := c.cc.RoundTrip(req)
	if err != nil {
		pw.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		pw.Close()
		resp.Body.Close()
		return nil, resp, fmt.Errorf("status %d", resp.StatusCode)
	}
	return &streamWS{r: bufio.NewReaderSize(resp.Body, 64<<10), w: pw, close: func() error {
		pw.Close()
		return resp.Body.Close()
	}}, resp, nil
}

// h3Client is one HTTP/3 connection, on which tunnels are opened.
type h3Client struct {
	cc   *http3.ClientConn
	addr string
}

func newH3Client(t testing.TB, addr string) *h3Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	qc, err := quic.DialAddr(ctx, addr, testTLS(http3.NextProtoH3), &quic.Config{MaxIdleTimeout: time.Minute, KeepAlivePeriod: 10 * time.Second})
	if err != nil {
		t.Fatalf("QUIC dial %s: %v", addr, err)
	}
	cc := (&http3.Transport{}).NewClientConn(qc)
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	select {
	case <-cc.ReceivedSettings():
	case <-ctx.Done():
		t.Fatal("no SETTINGS from the server")
	}
	if !cc.Settings().EnableExtendedConnect {
		t.Fatal("the server does not advertise extended CONNECT")
	}
	return &h3Client{cc: cc, addr: addr}
}

func (c *h3Client) connect(path string, hdr http.Header) (*streamWS, *http.Response, error) {
	ctx := context.Background()
	rs, err := c.cc.OpenRequestStream(ctx)
	if err != nil {
		return nil, nil, err
	}
	u := &url.URL{Scheme: "https", Host: c.addr, Path: path}
	if p, q, ok := cutQuery(path); ok {
		u.Path, u.RawQuery = p, q
	}
	req, err := http.NewRequest(http.MethodConnect, u.String(), nil)
	if err != nil {
		return nil, nil, err
	}
	req.Proto = "websocket"
	req.Host = localhostAt(c.addr)
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Sec-WebSocket-Version", "13")
	if err := rs.SendRequestHeader(req); err != nil {
		return nil, nil, err
	}
	resp, err := rs.ReadResponse()
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		rs.Close()
		return nil, resp, fmt.Errorf("status %d", resp.StatusCode)
	}
	return &streamWS{r: bufio.NewReaderSize(rs, 64<<10), w: rs, close: func() error {
		rs.CancelRead(0)
		return rs.Close()
	}}, resp, nil
}

// localhostAt is the authority a browser sends for https://localhost:<port>.
func localhostAt(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return "localhost:" + port
}

func cutQuery(path string) (string, string, bool) {
	for i := 0; i < len(path); i++ {
		if path[i] == '?' {
			return path[:i], path[i+1:], true
		}
	}
	return path, "", false
}

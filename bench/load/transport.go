package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"

	"github.com/wstotcp/caddy-ws-to-tcp/bench/internal/wsstream"
)

// WebSockets over TLS on the three transports (README, HTTP/2 and HTTP/3):
//
//   - h1: an HTTP/1.1 upgrade on its own TLS connection, with the
//     hand-written handshake and frames of client.go on the tls.Conn;
//   - h2: an extended CONNECT (RFC 8441) on a stream of golang.org/x/net/http2's
//     ClientConn;
//   - h3: an extended CONNECT (RFC 9220) on a request stream of quic-go's
//     http3.ClientConn.
//
// On h2 and h3, tunnels share connections: each connection carries up to
// -per-conn tunnels (opened one after the other), and a new connection is
// dialled when the current one has had its share. The same pre-built
// frames as on h1 travel on the stream, so the scenarios are unchanged.

// benchTLS trusts any certificate: the benchmark's Caddy serves a
// self-signed one (load cert).
func benchTLS(serverName string, protos ...string) *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, ServerName: serverName, NextProtos: protos}
}

// muxPool hands out the HTTP/2 or HTTP/3 connection a new tunnel goes on.
type muxPool struct {
	proto      string // "h2" or "h3"
	addr       string // host:port dialled
	serverName string
	perConn    int

	mu    sync.Mutex
	cur   muxConn
	used  int // tunnels opened on cur
	conns []muxConn

	h2t *http2.Transport
	h3t *http3.Transport
}

// muxConn is one HTTP/2 or HTTP/3 connection.
type muxConn interface {
	open(ctx context.Context, t target) (net.Conn, error)
	close()
}

func newMuxPool(proto, addr, serverName string, perConn int) *muxPool {
	p := &muxPool{proto: proto, addr: addr, serverName: serverName, perConn: max(perConn, 1)}
	switch proto {
	case "h2":
		p.h2t = &http2.Transport{}
	case "h3":
		p.h3t = &http3.Transport{}
	}
	return p
}

// conn returns the connection for the next tunnel, dialling one when the
// current one has carried perConn tunnels.
func (p *muxPool) conn(ctx context.Context) (muxConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur != nil && p.used < p.perConn {
		p.used++
		return p.cur, nil
	}
	var c muxConn
	var err error
	if p.proto == "h2" {
		c, err = p.dialH2(ctx)
	} else {
		c, err = p.dialH3(ctx)
	}
	if err != nil {
		return nil, err
	}
	p.cur, p.used = c, 1
	p.conns = append(p.conns, c)
	return c, nil
}

// connections is how many connections were dialled.
func (p *muxPool) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

func (p *muxPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.close()
	}
	p.conns, p.cur = nil, nil
}

// ---- HTTP/2 ---------------------------------------------------------------

type h2Conn struct{ cc *http2.ClientConn }

func (p *muxPool) dialH2(ctx context.Context) (muxConn, error) {
	cc, err := wsstream.DialH2(ctx, p.h2t, p.addr, benchTLS(p.serverName))
	if err != nil {
		return nil, err
	}
	return &h2Conn{cc: cc}, nil
}

func (c *h2Conn) close() { c.cc.Close() }

// open opens a WebSocket stream (wsstream.OpenH2) and returns it once
// answered 200. The request body is a pipe: what the client writes goes
// out as DATA.
func (c *h2Conn) open(_ context.Context, t target) (net.Conn, error) {
	pw, body, err := wsstream.OpenH2(c.cc, t.authority, t.path)
	if err != nil {
		return nil, loadHandshakeError(err, 2)
	}
	s := &streamConn{r: body, w: pw}
	s.closeFn = func() error {
		pw.Close()
		return body.Close()
	}
	s.expire = func() { // a deadline passed: the stream cannot go on
		pw.CloseWithError(os.ErrDeadlineExceeded)
		body.Close()
	}
	return s, nil
}

// loadHandshakeError words a refused handshake as the load reports it.
func loadHandshakeError(err error, version int) error {
	var re *wsstream.RefusedError
	if errors.As(err, &re) {
		return fmt.Errorf("bad handshake (HTTP/%d status %d)", version, re.Status)
	}
	return err
}

// ---- HTTP/3 ---------------------------------------------------------------

type h3Conn struct {
	qc *quic.Conn
	cc *http3.ClientConn
}

func (p *muxPool) dialH3(ctx context.Context) (muxConn, error) {
	qc, cc, err := wsstream.DialH3(ctx, p.h3t, p.addr, benchTLS(p.serverName),
		&quic.Config{MaxIdleTimeout: 5 * time.Minute, KeepAlivePeriod: 10 * time.Second}, 30*time.Second)
	if err != nil {
		return nil, err
	}
	return &h3Conn{qc: qc, cc: cc}, nil
}

func (c *h3Conn) close() { c.qc.CloseWithError(0, "") }

// open opens a WebSocket stream on a new request stream (wsstream.OpenH3,
// which waits while the server's stream limit is reached).
func (c *h3Conn) open(ctx context.Context, t target) (net.Conn, error) {
	rs, err := wsstream.OpenH3(ctx, c.cc, t.authority, t.path)
	if err != nil {
		return nil, loadHandshakeError(err, 3)
	}
	return &streamConn{r: rs, w: rs, closeFn: func() error {
		rs.CancelRead(0)
		return rs.Close()
	}, deadlines: rs}, nil
}

// ---- a stream as a net.Conn ---------------------------------------------

// streamConn is a tunnel's stream seen as a net.Conn, so that the
// scenarios and the frame reader of client.go run on it unchanged.
// Deadlines: an HTTP/3 stream has its own; an HTTP/2 response body has
// none, so a passed deadline ends the stream (the scenarios use deadlines
// only to give up).
type streamConn struct {
	r       io.Reader
	w       io.Writer
	closeFn func() error

	deadlines interface {
		SetDeadline(time.Time) error
		SetReadDeadline(time.Time) error
		SetWriteDeadline(time.Time) error
	}
	expire func()

	mu        sync.Mutex
	timer     *time.Timer
	closeOnce sync.Once
	closeErr  error
}

func (s *streamConn) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *streamConn) Write(p []byte) (int, error) { return s.w.Write(p) }

func (s *streamConn) Close() error {
	s.closeOnce.Do(func() {
		s.SetDeadline(time.Time{})
		s.closeErr = s.closeFn()
	})
	return s.closeErr
}

func (s *streamConn) LocalAddr() net.Addr  { return streamAddr{} }
func (s *streamConn) RemoteAddr() net.Addr { return streamAddr{} }

func (s *streamConn) SetDeadline(t time.Time) error {
	if s.deadlines != nil {
		return s.deadlines.SetDeadline(t)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if !t.IsZero() {
		s.timer = time.AfterFunc(time.Until(t), s.expire)
	}
	return nil
}

func (s *streamConn) SetReadDeadline(t time.Time) error {
	if s.deadlines != nil {
		return s.deadlines.SetReadDeadline(t)
	}
	return s.SetDeadline(t)
}

func (s *streamConn) SetWriteDeadline(t time.Time) error {
	if s.deadlines != nil {
		return s.deadlines.SetWriteDeadline(t)
	}
	return s.SetDeadline(t)
}

type streamAddr struct{}

func (streamAddr) Network() string { return "stream" }
func (streamAddr) String() string  { return "stream" }

// ---- load cert --------------------------------------------------------------

// cmdCert writes a self-signed ECDSA P-256 certificate for 127.0.0.1, ::1
// and localhost, valid for a day, to DIR/cert.pem and DIR/key.pem.
func cmdCert(args []string) {
	fs := flag.NewFlagSet("cert", flag.ExitOnError)
	dir := fs.String("dir", ".", "where to write cert.pem and key.pem")
	fs.Parse(args)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fatalf("cert: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "ws_to_tcp benchmark"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		fatalf("cert: %v", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		fatalf("cert: %v", err)
	}
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(*dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			fatalf("cert: %v", err)
		}
	}
	write("cert.pem", "CERTIFICATE", der)
	write("key.pem", "EC PRIVATE KEY", kder)
}

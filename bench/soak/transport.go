package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"

	"github.com/wstotcp/caddy-ws-to-tcp/bench/internal/wsstream"
)

// WebSockets over HTTP/2 (RFC 8441, golang.org/x/net/http2's ClientConn)
// and HTTP/3 (RFC 9220, quic-go's http3.ClientConn), many tunnels to a
// connection as browsers do, as bench/load does. A reload shuts down the
// server that holds the connection (GOAWAY): the pool then dials a new one
// and closes the old one when its last tunnel has ended.

// perConn is how many tunnels a connection carries: below Go's HTTP/2
// limit of 250 streams and quic-go's 100.
var perConn = 90

type muxPool struct {
	proto     string // trH2 or trH3
	addr      string
	authority string
	tls       *tls.Config

	h2t *http2.Transport
	h3t *http3.Transport

	mu    sync.Mutex
	cur   *muxConn
	conns map[*muxConn]bool
}

type muxConn struct {
	h2      *http2.ClientConn
	qc      *quic.Conn
	h3      *http3.ClientConn
	streams int
	retired bool
}

func newMuxPool(proto, addr, authority string, conf *tls.Config) *muxPool {
	p := &muxPool{proto: proto, addr: addr, authority: authority, tls: conf, conns: map[*muxConn]bool{}}
	if proto == trH2 {
		p.h2t = &http2.Transport{}
	} else {
		p.h3t = &http3.Transport{}
	}
	return p
}

func (c *muxConn) usable() bool {
	if c.h2 != nil {
		return c.h2.CanTakeNewRequest()
	}
	return c.qc.Context().Err() == nil
}

func (c *muxConn) close() {
	if c.h2 != nil {
		c.h2.Close()
	} else {
		c.qc.CloseWithError(0, "")
	}
}

// get returns the connection for a new tunnel, counted on it.
func (p *muxPool) get(ctx context.Context) (*muxConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.cur; c != nil && !c.retired && c.streams < perConn && c.usable() {
		c.streams++
		return c, nil
	}
	if p.cur != nil {
		p.retireLocked(p.cur)
	}
	c, err := p.dial(ctx)
	if err != nil {
		return nil, err
	}
	c.streams = 1
	p.cur = c
	p.conns[c] = true
	return c, nil
}

func (p *muxPool) retireLocked(c *muxConn) {
	c.retired = true
	if p.cur == c {
		p.cur = nil
	}
	if c.streams == 0 && p.conns[c] {
		delete(p.conns, c)
		c.close()
	}
}

// release ends a tunnel's use of c; failed says the connection is unusable.
func (p *muxPool) release(c *muxConn, failed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c.streams--
	if failed || c.retired || !c.usable() {
		p.retireLocked(c)
	}
}

// retireAll retires every connection after a reload: the server that
// holds them is shutting down (GOAWAY) and waits, up to grace_period, for
// its clients to close them once their requests are done. Each is closed
// when its last tunnel ends, as a client honouring GOAWAY does
// (docs/soak.md, Findings).
func (p *muxPool) retireAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		p.retireLocked(c)
	}
}

func (p *muxPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.close()
	}
	p.conns, p.cur = map[*muxConn]bool{}, nil
}

func (p *muxPool) dial(ctx context.Context) (*muxConn, error) {
	if p.proto == trH2 {
		cc, err := wsstream.DialH2(ctx, p.h2t, p.addr, p.tls)
		if err != nil {
			return nil, err
		}
		return &muxConn{h2: cc}, nil
	}
	qc, cc, err := wsstream.DialH3(ctx, p.h3t, p.addr, p.tls,
		&quic.Config{MaxIdleTimeout: time.Minute, KeepAlivePeriod: 10 * time.Second}, 0)
	if err != nil {
		return nil, err
	}
	return &muxConn{qc: qc, h3: cc}, nil
}

// open opens a tunnel on a pooled connection; the returned release must
// be called when the tunnel has ended. A connection that a reload has just
// shut down is retired and the tunnel tried once more on a new one.
func (p *muxPool) open(ctx context.Context, path string, sending func()) (stream, func(), error) {
	var err error
	for range 2 {
		var c *muxConn
		if c, err = p.get(ctx); err != nil {
			return nil, nil, err
		}
		var s stream
		sending()
		if c.h2 != nil {
			s, err = openH2(c.h2, p.authority, path)
		} else {
			s, err = openH3(ctx, c.h3, p.authority, path)
		}
		var he *handshakeError
		if err == nil || errors.As(err, &he) {
			if err != nil {
				p.release(c, false)
				return nil, nil, err
			}
			return s, func() { p.release(c, false) }, nil
		}
		p.release(c, true)
	}
	return nil, nil, err
}

// h2Stream: the request body is a pipe whose writes go out as DATA frames.
type h2Stream struct {
	pw   *io.PipeWriter
	body io.ReadCloser
}

func (s *h2Stream) Read(p []byte) (int, error)  { return s.body.Read(p) }
func (s *h2Stream) Write(p []byte) (int, error) { return s.pw.Write(p) }
func (s *h2Stream) finish()                     { s.pw.Close(); s.body.Close() }

// abort resets the stream (RST_STREAM CANCEL): the client is gone.
func (s *h2Stream) abort() { s.body.Close(); s.pw.CloseWithError(errAborted) }

var errAborted = errors.New("aborted by the soak")

func openH2(cc *http2.ClientConn, authority, path string) (stream, error) {
	pw, body, err := wsstream.OpenH2(cc, authority, path)
	if err != nil {
		return nil, soakHandshakeError(err)
	}
	return &h2Stream{pw: pw, body: body}, nil
}

// soakHandshakeError turns a refused handshake into a *handshakeError,
// with the status and Retry-After.
func soakHandshakeError(err error) error {
	var re *wsstream.RefusedError
	if errors.As(err, &re) {
		return &handshakeError{re.Status, re.Header.Get("Retry-After")}
	}
	return err
}

type h3Stream struct{ rs *http3.RequestStream }

func (s h3Stream) Read(p []byte) (int, error)  { return s.rs.Read(p) }
func (s h3Stream) Write(p []byte) (int, error) { return s.rs.Write(p) }
func (s h3Stream) finish()                     { s.rs.Close(); s.rs.CancelRead(0) }
func (s h3Stream) abort()                      { s.rs.CancelWrite(0); s.rs.CancelRead(0) }

func openH3(ctx context.Context, cc *http3.ClientConn, authority, path string) (stream, error) {
	rs, err := wsstream.OpenH3(ctx, cc, authority, path)
	if err != nil {
		return nil, soakHandshakeError(err)
	}
	return h3Stream{rs}, nil
}

func init() {
	if v := os.Getenv("SOAK_PERCONN"); v != "" {
		fmt.Sscan(v, &perConn)
	}
}

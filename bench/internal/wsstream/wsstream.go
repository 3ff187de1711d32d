// Package wsstream dials HTTP/2 and HTTP/3 connections to a TLS server and
// opens WebSocket streams on them: an extended CONNECT with :protocol
// websocket, on golang.org/x/net/http2 (RFC 8441) or on quic-go's http3
// (RFC 9220).
//
// The benchmark programs bench/load and bench/soak both speak WebSockets
// over HTTP/2 and HTTP/3; this package is the client code they share, so
// that the two send the same handshake. Pooling connections, limits on
// streams per connection, deadlines and how a stream is closed stay with
// each program.
package wsstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
)

// RefusedError is a WebSocket handshake the server answered with a status
// other than 200. It carries the status and the response headers so that
// each caller can build the error it reports (bench/soak, for one, keeps
// Retry-After).
type RefusedError struct {
	Status int
	Header http.Header
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("WebSocket handshake refused: HTTP status %d", e.Status)
}

// DialH2 dials addr over TCP and TLS with ALPN "h2" (conf is cloned, its
// NextProtos replaced) and starts an HTTP/2 client connection on it with
// t. It fails if the server does not negotiate h2.
func DialH2(ctx context.Context, t *http2.Transport, addr string, conf *tls.Config) (*http2.ClientConn, error) {
	conf = conf.Clone()
	conf.NextProtos = []string{"h2"}
	nc, err := (&tls.Dialer{Config: conf}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if proto := nc.(*tls.Conn).ConnectionState().NegotiatedProtocol; proto != "h2" {
		nc.Close()
		return nil, fmt.Errorf("ALPN %q, want h2", proto)
	}
	cc, err := t.NewClientConn(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return cc, nil
}

// DialH3 dials addr over QUIC with ALPN "h3" (conf is cloned, its
// NextProtos replaced; qconf as given) and starts an HTTP/3 client
// connection on it with t. It waits for the server's SETTINGS, until ctx
// is done or, if settingsWait is not zero, for at most settingsWait, and
// fails unless they enable extended CONNECT: without it no WebSocket
// stream can be opened.
func DialH3(ctx context.Context, t *http3.Transport, addr string, conf *tls.Config, qconf *quic.Config, settingsWait time.Duration) (*quic.Conn, *http3.ClientConn, error) {
	conf = conf.Clone()
	conf.NextProtos = []string{http3.NextProtoH3}
	qc, err := quic.DialAddr(ctx, addr, conf, qconf)
	if err != nil {
		return nil, nil, err
	}
	cc := t.NewClientConn(qc)
	var timeout <-chan time.Time
	if settingsWait > 0 {
		timeout = time.After(settingsWait)
	}
	select {
	case <-cc.ReceivedSettings():
	case <-ctx.Done():
		qc.CloseWithError(0, "")
		return nil, nil, errors.New("no SETTINGS from the server")
	case <-timeout:
		qc.CloseWithError(0, "")
		return nil, nil, errors.New("no SETTINGS from the server")
	}
	if !cc.Settings().EnableExtendedConnect {
		qc.CloseWithError(0, "")
		return nil, nil, errors.New("the server does not advertise extended CONNECT")
	}
	return qc, cc, nil
}

// OpenH2 opens a WebSocket stream on cc: CONNECT https://authority+path
// with :protocol websocket and Sec-WebSocket-Version 13 (x/net/http2 waits
// for the server's SETTINGS to allow it). The request body is a pipe:
// what is written to w goes out as DATA frames, and body reads the
// server's. On any answer but 200 the stream is closed and the error is a
// *RefusedError.
func OpenH2(cc *http2.ClientConn, authority, path string) (w *io.PipeWriter, body io.ReadCloser, err error) {
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodConnect, "https://"+authority+path, pr)
	if err != nil {
		return nil, nil, err
	}
	req.Host = authority
	req.Header.Set(":protocol", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	resp, err := cc.RoundTrip(req)
	if err != nil {
		pw.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		pw.Close()
		resp.Body.Close()
		return nil, nil, &RefusedError{Status: resp.StatusCode, Header: resp.Header}
	}
	return pw, resp.Body, nil
}

// OpenH3 opens a WebSocket stream on a new request stream of cc: CONNECT
// https://authority+path with :protocol websocket (quic-go takes it from
// req.Proto) and Sec-WebSocket-Version 13. Opening the request stream
// waits, within ctx, while the server's stream limit is reached. If the
// handshake fails the stream is cancelled; on any answer but 200 the
// error is a *RefusedError.
func OpenH3(ctx context.Context, cc *http3.ClientConn, authority, path string) (*http3.RequestStream, error) {
	rs, err := cc.OpenRequestStream(ctx)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(http.MethodConnect, "https://"+authority+path, nil)
	if err != nil {
		return nil, err
	}
	req.Proto = "websocket"
	req.Host = authority
	req.Header.Set("Sec-WebSocket-Version", "13")
	if err := rs.SendRequestHeader(req); err != nil {
		rs.CancelRead(0)
		rs.Close()
		return nil, err
	}
	resp, err := rs.ReadResponse()
	if err != nil {
		rs.CancelRead(0)
		rs.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		rs.CancelRead(0)
		rs.Close()
		return nil, &RefusedError{Status: resp.StatusCode, Header: resp.Header}
	}
	return rs, nil
}

package wstotcp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/relay"
	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:      "tcp-to-ws",
		Usage:     "[--listen <addr>] <ws[s]://host/path> [flags]",
		Short:     "Relays a TCP connection or standard input and output to a WebSocket (the client end of ws-to-tcp)",
		Long:      tcpToWSLong,
		CobraFunc: tcpToWSCobra,
	})
}

const tcpToWSLong = `
The other end of 'caddy ws-to-tcp' and of the ws_to_tcp handler, for
programs that speak only TCP (ssh, psql, mosquitto_sub, ...): it opens a
WebSocket to the URL and relays bytes both ways, each chunk of input as
one binary message, byte for byte.

Without --listen, it relays standard input and output, for ssh's
ProxyCommand:

  ssh -o ProxyCommand='caddy tcp-to-ws wss://example.com/ssh' user@example.com

The end of standard input is a half-close: it sends Close 1000, the
server shuts the write side of its TCP connection (the server program
reads EOF after the last byte), and the program's answer still arrives
until it closes its side (ws_to_tcp relays it before echoing the Close).
The end of the server program's output (the server's Close 1000) closes
standard output after the last byte.

With --listen ADDR, it accepts TCP connections on ADDR and opens one
WebSocket for each:

  caddy tcp-to-ws --listen 127.0.0.1:5432 wss://example.com/pg
  psql 'host=127.0.0.1 port=5432 user=app'

Credentials come from the environment or from files, never from the
command line (where other users can read them in the process list):
  TCP_TO_WS_TOKEN      a bearer token (Authorization: Bearer ...);
                       or --token-file FILE
  TCP_TO_WS_USER       with TCP_TO_WS_PASSWORD (or --password-file FILE):
                       HTTP basic credentials; --user NAME also sets the
                       user name
--header 'Name: value' adds a request header (repeatable),
--subprotocol NAME offers WebSocket subprotocols (repeatable, in order of
preference), --origin URL sends an Origin header (for servers that accept
only some origins).

wss:// checks the server's certificate against the system's roots, or
against the PEM certificates in --ca FILE; --insecure checks nothing (for
tests only).

The exit status says how it ended (stdio mode; --listen logs one line per
connection instead and runs until stopped):
  0  the WebSocket closed normally (1000): end of input, or the server's
     TCP connection ended
  1  the WebSocket ended otherwise: another close code (1014: the
     server's TCP connection failed), or the connection was lost
  2  usage error (flags, credentials files)
  3  the server could not be reached (DNS, refused, timed out)
  4  TLS failed (certificate not trusted, wrong name, not TLS)
  5  401: credentials missing or wrong
  6  403: refused (origin, client address or target not allowed)
  7  404: no WebSocket at this URL
  8  502 or 504: the server could not reach its TCP upstream
  9  any other refusal of the WebSocket handshake
`

const tcpToWSExample = `  # ssh through a firewall that passes only HTTPS
  ssh -o ProxyCommand='caddy tcp-to-ws wss://example.com/ssh' user@example.com

  # psql and any TCP client: a local port for the remote PostgreSQL
  caddy tcp-to-ws --listen 127.0.0.1:5432 wss://example.com/pg

  # with a bearer token from a file and the mqtt subprotocol
  caddy tcp-to-ws --token-file ~/.mqtt-token --subprotocol mqtt --listen 127.0.0.1:1883 wss://example.com/mqtt`

// Exit statuses of caddy tcp-to-ws (see tcpToWSLong).
const (
	exitClientOK = iota
	exitClientAbnormal
	exitClientUsage
	exitClientConnect
	exitClientTLS
	exitClientUnauthorized
	exitClientForbidden
	exitClientNotFound
	exitClientBadGateway
	exitClientRefused
)

// Environment variables that carry credentials.
const (
	envClientToken    = "TCP_TO_WS_TOKEN"
	envClientUser     = "TCP_TO_WS_USER"
	envClientPassword = "TCP_TO_WS_PASSWORD"
)

func tcpToWSCobra(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringP("listen", "l", "", "Accept TCP connections on this `address` (host:port), one WebSocket each, instead of relaying stdin and stdout")
	fl.StringArrayP("header", "H", nil, "Add this request `header` ('Name: value'; repeatable)")
	fl.StringSlice("subprotocol", nil, "Offer these WebSocket subprotocol `names`, in order of preference (repeatable, or comma-separated)")
	fl.String("origin", "", "Send this Origin `url`")
	fl.String("user", "", "The basic-auth user `name` (default $"+envClientUser+"; the password comes from $"+envClientPassword+" or --password-file)")
	fl.String("password-file", "", "Read the basic-auth password from this `file`")
	fl.String("token-file", "", "Read a bearer token from this `file` (default $"+envClientToken+")")
	fl.String("ca", "", "Trust the PEM certificates in this `file` for wss:// instead of the system's roots")
	fl.Bool("insecure", false, "Do not check the server's certificate (tests only)")
	fl.Duration("connect-timeout", 30*time.Second, "Give up connecting and the handshake after this `duration`")
	fl.Duration("heartbeat", 0, "Ping the server every `duration` and give up when it answers nothing for as long (default: off)")
	cmd.Args = cobra.ExactArgs(1)
	cmd.Example = tcpToWSExample
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if status := runTCPToWS(fl, args[0], os.Getenv, os.Stderr); status != exitClientOK {
			os.Exit(status)
		}
		return nil
	}
}

// wsClient opens WebSockets to one URL and relays local connections
// through them.
type wsClient struct {
	url    string
	dialer websocket.Dialer
	header http.Header
	cfg    *relay.Config
	log    io.Writer
	logMu  sync.Mutex
}

// usageError is a mistake in the command line or the environment.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// newWSClient builds the client from the flags and the environment.
func newWSClient(fl *pflag.FlagSet, rawURL string, getenv func(string) string) (*wsClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, &usageError{fmt.Sprintf("the URL %q: %v", rawURL, err)}
	}
	switch u.Scheme {
	case "ws", "wss":
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	default:
		return nil, &usageError{fmt.Sprintf("the URL %q: the scheme must be ws:// or wss://", rawURL)}
	}
	if u.Host == "" {
		return nil, &usageError{fmt.Sprintf("the URL %q has no host", rawURL)}
	}
	c := &wsClient{url: u.String(), header: http.Header{}}

	headers, _ := fl.GetStringArray("header")
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, &usageError{fmt.Sprintf("--header %q: want 'Name: value'", h)}
		}
		c.header.Add(name, strings.TrimSpace(value))
	}
	if origin, _ := fl.GetString("origin"); origin != "" {
		c.header.Set("Origin", origin)
	}
	if err := c.credentials(fl, getenv); err != nil {
		return nil, err
	}

	tlsCfg := &tls.Config{NextProtos: []string{"http/1.1"}}
	if ca, _ := fl.GetString("ca"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, &usageError{fmt.Sprintf("--ca: %v", err)}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, &usageError{fmt.Sprintf("--ca %s: no PEM certificate in it", ca)}
		}
		tlsCfg.RootCAs = pool
	}
	tlsCfg.InsecureSkipVerify, _ = fl.GetBool("insecure")
	timeout, _ := fl.GetDuration("connect-timeout")
	subprotocols, _ := fl.GetStringSlice("subprotocol")
	c.dialer = websocket.Dialer{
		HandshakeTimeout: timeout,
		Subprotocols:     subprotocols,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := new(net.Dialer).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &handshakeConn{Conn: conn}, nil
		},
		NetDialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := new(net.Dialer).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			cfg := tlsCfg.Clone()
			if cfg.ServerName == "" {
				cfg.ServerName, _, _ = net.SplitHostPort(addr)
			}
			tc := tls.Client(conn, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				conn.Close()
				return nil, &tlsError{err}
			}
			return &handshakeConn{Conn: tc}, nil
		},
	}

	heartbeat, _ := fl.GetDuration("heartbeat")
	c.cfg = &relay.Config{
		BufferSize:        32 << 10,
		WriteTimeout:      30 * time.Second,
		HeartbeatInterval: heartbeat,
		Client:            true,
		HalfClose:         true,
	}
	c.cfg.Prepare()
	return c, nil
}

// credentials sets the Authorization header from the environment or the
// files named by flags; a secret never has to be on the command line.
func (c *wsClient) credentials(fl *pflag.FlagSet, getenv func(string) string) error {
	token := getenv(envClientToken)
	if f, _ := fl.GetString("token-file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return &usageError{fmt.Sprintf("--token-file: %v", err)}
		}
		token = strings.TrimSpace(string(b))
	}
	user := getenv(envClientUser)
	if u, _ := fl.GetString("user"); u != "" {
		user = u
	}
	password := getenv(envClientPassword)
	if f, _ := fl.GetString("password-file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return &usageError{fmt.Sprintf("--password-file: %v", err)}
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	switch {
	case token != "" && user != "":
		return &usageError{"both a bearer token and a basic-auth user are set: give one"}
	case token != "":
		c.header.Set("Authorization", "Bearer "+token)
	case user != "":
		r := http.Request{Header: http.Header{}}
		r.SetBasicAuth(user, password)
		c.header.Set("Authorization", r.Header.Get("Authorization"))
	case password != "":
		return &usageError{"a basic-auth password is set but no user: set " + envClientUser + " or --user"}
	}
	return nil
}

// handshakeConn hands gorilla/websocket's HTTP reader one byte per read
// until the handshake is done, so that its buffer never holds the first
// frames the server sends right after the 101 response (SSH's banner, say):
// the relay then reads them from the connection itself.
type handshakeConn struct{ net.Conn }

func (c *handshakeConn) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return c.Conn.Read(p)
}

// tlsError marks a failed TLS handshake.
type tlsError struct{ err error }

func (e *tlsError) Error() string { return "TLS: " + e.err.Error() }
func (e *tlsError) Unwrap() error { return e.err }

// handshakeError is a failed WebSocket handshake, with the exit status it maps
// to and one line that says what to do about it.
type handshakeError struct {
	status int
	msg    string
}

func (e *handshakeError) Error() string { return e.msg }

// dial opens a WebSocket and returns the connection under it, the
// handshake done.
func (c *wsClient) dial(ctx context.Context) (net.Conn, error) {
	ws, resp, err := c.dialer.DialContext(ctx, c.url, c.header)
	if err != nil {
		return nil, c.dialFailure(resp, err)
	}
	conn := ws.UnderlyingConn().(*handshakeConn).Conn
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// dialFailure maps a failed handshake to its exit status and message.
func (c *wsClient) dialFailure(resp *http.Response, err error) error {
	if resp != nil {
		code := resp.StatusCode
		line := fmt.Sprintf("%s: %d %s", c.url, code, http.StatusText(code))
		switch code {
		case http.StatusUnauthorized:
			what := "no credentials were sent: set " + envClientToken + ", or " + envClientUser + " and " + envClientPassword
			if c.header.Get("Authorization") != "" {
				what = "the credentials were refused"
			}
			return &handshakeError{exitClientUnauthorized, line + ": " + what}
		case http.StatusForbidden:
			return &handshakeError{exitClientForbidden, line + ": refused (origin, client address or target not allowed)"}
		case http.StatusNotFound:
			return &handshakeError{exitClientNotFound, line + ": no WebSocket at this URL"}
		case http.StatusBadGateway:
			return &handshakeError{exitClientBadGateway, line + ": the server could not reach its TCP upstream"}
		case http.StatusGatewayTimeout:
			return &handshakeError{exitClientBadGateway, line + ": the server's TCP upstream did not answer in time"}
		case http.StatusSwitchingProtocols:
			return &handshakeError{exitClientRefused, line + ": not a valid WebSocket handshake (" + err.Error() + ")"}
		}
		return &handshakeError{exitClientRefused, line + ": WebSocket refused"}
	}
	var te *tlsError
	if errors.As(err, &te) {
		return &handshakeError{exitClientTLS, fmt.Sprintf("%s: %v", c.url, te)}
	}
	return &handshakeError{exitClientConnect, fmt.Sprintf("%s: cannot connect: %v", c.url, err)}
}

// tunnel relays local through a WebSocket already opened on ws, and
// returns how it ended.
func (c *wsClient) tunnel(ws net.Conn, local net.Conn) (relay.End, relay.Stats) {
	t := relay.New(c.cfg, ws, local, false)
	ended := make(chan relay.End, 1)
	t.Start(func(e relay.End) { ended <- e })
	e := <-ended
	return e, t.Stats()
}

// endStatus is the exit status and the message (empty for a normal end)
// of a tunnel's end. The relay names the WebSocket server "client" and the
// local side "upstream" (README, "The client command").
func endStatus(e relay.End) (int, string) {
	if e.Code == wsframe.CloseNormal {
		return exitClientOK, ""
	}
	switch {
	case e.Code == wsframe.CloseAbnormal:
		return exitClientAbnormal, fmt.Sprintf("connection to the server lost: %v", e.Err)
	case e.By == relay.ByClient && e.Err == nil:
		return exitClientAbnormal, fmt.Sprintf("the server closed the WebSocket with %d (%s)", e.Code, closeMeaning(e.Code))
	case e.By == relay.ByUpstream:
		return exitClientAbnormal, fmt.Sprintf("local side failed: %v", e.Err)
	}
	return exitClientAbnormal, fmt.Sprintf("closed with %d (%s): %v", e.Code, closeMeaning(e.Code), e.Err)
}

func closeMeaning(code int) string {
	switch code {
	case wsframe.CloseGoingAway:
		return "server going away, or disconnected by its admin"
	case wsframe.CloseProtocolError:
		return "protocol error"
	case wsframe.CloseInvalidPayload:
		return "invalid payload"
	case wsframe.ClosePolicyViolation:
		return "policy: heartbeat or idle timeout"
	case wsframe.CloseMessageTooBig:
		return "message too big"
	case wsframe.CloseInternalError:
		return "server error"
	case wsframe.CloseBadGateway:
		return "the server's TCP upstream failed"
	}
	return "see RFC 6455"
}

func (c *wsClient) logf(format string, args ...any) {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	fmt.Fprintf(c.log, "caddy tcp-to-ws: "+format+"\n", args...)
}

// runTCPToWS runs the command and returns its exit status.
func runTCPToWS(fl *pflag.FlagSet, rawURL string, getenv func(string) string, stderr io.Writer) int {
	c, err := newWSClient(fl, rawURL, getenv)
	if err != nil {
		fmt.Fprintf(stderr, "caddy tcp-to-ws: %v\n", err)
		return exitClientUsage
	}
	c.log = stderr
	if addr, _ := fl.GetString("listen"); addr != "" {
		return c.listen(addr)
	}
	return c.stdio()
}

// stdio relays standard input and output through one WebSocket.
func (c *wsClient) stdio() int {
	ws, err := c.dial(context.Background())
	if err != nil {
		c.logf("%v", err)
		var de *handshakeError
		if errors.As(err, &de) {
			return de.status
		}
		return exitClientConnect
	}
	local, restore := openStdio()
	defer restore()
	e, _ := c.tunnel(ws, local)
	status, msg := endStatus(e)
	if msg != "" {
		c.logf("%s", msg)
	}
	return status
}

// listen accepts TCP connections on addr and relays each through a
// WebSocket of its own, until the process is stopped.
func (c *wsClient) listen(addr string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		c.logf("--listen: %v", err)
		return exitClientUsage
	}
	c.logf("listening on %s, relaying each connection to %s", ln.Addr(), c.url)
	for {
		conn, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			c.logf("accepting: %v", err)
			return exitClientAbnormal
		}
		go c.serve(conn)
	}
}

// serve relays one accepted connection; a refused WebSocket closes it.
func (c *wsClient) serve(conn net.Conn) {
	from := conn.RemoteAddr()
	ws, err := c.dial(context.Background())
	if err != nil {
		c.logf("%s: %v", from, err)
		conn.Close()
		return
	}
	e, st := c.tunnel(ws, conn)
	_, msg := endStatus(e)
	if msg == "" {
		msg = "closed"
	}
	c.logf("%s: %s; %d bytes sent, %d received", from, msg, st.BytesOut, st.BytesIn)
}

// stdioConn is standard input and output as the local side of a tunnel.
// CloseWrite closes standard output: the server's Close is the program's
// EOF.
type stdioConn struct{ in, out *os.File }

// openStdio returns standard input and output in non-blocking mode, so
// that the runtime's poller serves them: reads and writes then honour
// deadlines and end when the tunnel closes them. restore puts the blocking
// mode back, for the terminal or shell that shares them.
func openStdio() (*stdioConn, func()) {
	nonblock := func(fd int) bool { return syscall.SetNonblock(fd, true) == nil }
	inNB, outNB := nonblock(0), nonblock(1)
	c := &stdioConn{in: os.NewFile(0, "stdin"), out: os.NewFile(1, "stdout")}
	return c, func() {
		if inNB {
			syscall.SetNonblock(0, false)
		}
		if outNB {
			syscall.SetNonblock(1, false)
		}
	}
}

func (c *stdioConn) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c *stdioConn) Write(p []byte) (int, error) { return c.out.Write(p) }
func (c *stdioConn) CloseWrite() error           { return c.out.Close() }
func (c *stdioConn) Close() error {
	c.out.Close()
	return c.in.Close()
}
func (c *stdioConn) LocalAddr() net.Addr  { return stdioAddr{} }
func (c *stdioConn) RemoteAddr() net.Addr { return stdioAddr{} }
func (c *stdioConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// Deadlines are best effort: a regular file or a terminal the poller cannot
// serve has none, and reads from it do not block for long anyway.
func (c *stdioConn) SetReadDeadline(t time.Time) error {
	c.in.SetReadDeadline(t)
	return nil
}

func (c *stdioConn) SetWriteDeadline(t time.Time) error {
	c.out.SetWriteDeadline(t)
	return nil
}

type stdioAddr struct{}

func (stdioAddr) Network() string { return "stdio" }
func (stdioAddr) String() string  { return "stdio" }

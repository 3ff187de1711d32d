package wstotcp

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// dialer opens every connection to an upstream, configured or dynamic
// target, for the request path and the active health checks alike: TCP or
// Unix, then the PROXY header, the TLS handshake of a tls/ upstream, and
// the preamble, all within one timeout (README, PROXY protocol and
// preamble).
type dialer struct {
	tls          *tls.Config   // upstream_tls; nil when no upstream can be tls/
	timeout      time.Duration // dial_timeout, for the request path
	proxyVersion int           // 1 or 2; 0: no PROXY header
	preamble     string        // escapes interpreted; placeholders expanded per request
}

func newDialer(h *Handler) (*dialer, error) {
	d := &dialer{
		tls:          h.upstreamTLS,
		timeout:      time.Duration(h.DialTimeout),
		proxyVersion: proxyVersion(h.ProxyProtocol),
	}
	var err error
	if d.preamble, err = unescape(h.Preamble); err != nil {
		return nil, fmt.Errorf("preamble: %v", err)
	}
	return d, nil
}

// prelude is what is written first on an upstream connection, before the
// client's bytes: the PROXY header, then the preamble. Either may be nil.
type prelude struct {
	header, preamble []byte
}

// requestPrelude is r's prelude, the same whichever upstream is dialled.
// The error is a 400: the preamble could not be expanded.
func (d *dialer) requestPrelude(r *http.Request) (prelude, error) {
	var p prelude
	if d.proxyVersion != 0 {
		src, dst := proxyAddrs(r)
		p.header = proxyHeader(d.proxyVersion, src, dst)
	}
	if d.preamble != "" {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		var err error
		if p.preamble, err = expandPreamble(d.preamble, repl); err != nil {
			return prelude{}, caddyhttp.Error(http.StatusBadRequest, err)
		}
	}
	return p, nil
}

// healthPrelude is the prelude of an active health check: a PROXY header
// that speaks for no client, then the check's send bytes.
func (d *dialer) healthPrelude(send []byte) prelude {
	p := prelude{preamble: send}
	if d.proxyVersion != 0 {
		p.header = proxyHealthHeader(d.proxyVersion)
	}
	return p
}

// dialRequest opens a connection to u for a client, within dial_timeout,
// and records its duration.
func (d *dialer) dialRequest(ctx context.Context, u *Upstream, p prelude) (net.Conn, error) {
	start := time.Now()
	conn, err := d.dial(ctx, u, d.timeout, p)
	if err != nil {
		return nil, err
	}
	observeDial(time.Since(start))
	return conn, nil
}

// dial connects to u and writes p, all within timeout. The PROXY header
// goes before the TLS handshake of a tls/ upstream: it is addressed to
// the upstream's TCP layer.
func (d *dialer) dial(ctx context.Context, u *Upstream, timeout time.Duration, p prelude) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	// Not Dialer.DialTCP, which would save resolving a literal address:
	// with no local address it still binds one before connecting, which
	// takes an ephemeral port for every destination at once, and runs out
	// of them under a high connection rate.
	conn, err := (&net.Dialer{}).DialContext(ctx, u.network, u.address)
	if err != nil {
		return nil, err
	}
	if len(p.header) == 0 && !u.useTLS && len(p.preamble) == 0 {
		return conn, nil // nothing to write: no deadline to set and clear
	}
	// The context bounds the dial and the TLS handshake; the deadline
	// bounds the writes too.
	conn.SetDeadline(deadline)
	if len(p.header) > 0 {
		if _, err := conn.Write(p.header); err != nil {
			conn.Close()
			return nil, fmt.Errorf("writing the PROXY header: %w", err)
		}
	}
	if u.useTLS {
		tc := tls.Client(conn, d.tlsConfig(u))
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		conn = tc
	}
	if len(p.preamble) > 0 {
		if _, err := conn.Write(p.preamble); err != nil {
			conn.Close()
			return nil, fmt.Errorf("writing the preamble: %w", err)
		}
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// tlsConfig is upstream_tls for u, with the server name sent and checked:
// upstream_tls's server_name, else the upstream's own name. The name of a
// dynamic target is the one allow_targets checked, although the checked
// IP address is what is dialled.
func (d *dialer) tlsConfig(u *Upstream) *tls.Config {
	cfg := d.tls.Clone()
	if cfg == nil {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = u.serverName
	}
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(u.address)
	}
	return cfg
}

// dialError is the handler error for a failed dial: 504 for a timeout,
// else 502.
func dialError(u *Upstream, err error) error {
	status := http.StatusBadGateway
	if isTimeout(err) {
		status = http.StatusGatewayTimeout
	}
	return caddyhttp.Error(status, fmt.Errorf("dialing upstream %s: %w", u.Dial, err))
}

// statusClientClosedRequest is what Caddy's reverse_proxy logs for a client
// that went away while the upstream was dialled (nginx's 499).
const statusClientClosedRequest = 499

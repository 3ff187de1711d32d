package wstotcp

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The server name sent and checked: upstream_tls's server_name, else the
// name allow_targets checked for a dynamic target, else the address's
// host.
func TestDialerServerName(t *testing.T) {
	tcp := &Upstream{Dial: "tls/127.0.0.1:5901"}
	named := &Upstream{Dial: "tls/vnc.test:5901"}
	for _, u := range []*Upstream{tcp, named} {
		if err := u.parse(); err != nil {
			t.Fatal(err)
		}
	}
	checked := *named
	checked.address, checked.serverName = "127.0.0.1:5901", "vnc.test" // as targets.go's check makes it
	for _, tt := range []struct {
		name string
		cfg  *tls.Config
		u    *Upstream
		want string
	}{
		{"address host", &tls.Config{}, tcp, "127.0.0.1"},
		{"address name", &tls.Config{}, named, "vnc.test"},
		{"checked name, not the checked address", &tls.Config{}, &checked, "vnc.test"},
		{"server_name wins", &tls.Config{ServerName: "other.test"}, &checked, "other.test"},
		{"no upstream_tls", nil, &checked, "vnc.test"},
	} {
		d := &dialer{tls: tt.cfg}
		cfg := d.tlsConfig(tt.u)
		if cfg.ServerName != tt.want || cfg.MinVersion == 0 && tt.cfg == nil {
			t.Errorf("%s: server name %q (min version %x), want %q", tt.name, cfg.ServerName, cfg.MinVersion, tt.want)
		}
		if tt.cfg != nil && tt.cfg.ServerName != "" && tt.cfg.ServerName != tt.want {
			t.Errorf("%s: the shared config was changed", tt.name)
		}
	}
}

// tlsUpstream serves TLS with cert on 127.0.0.1, after a PROXY header when
// withProxy is set, and echoes. Each connection's server name (SNI) is
// sent on the returned channel once its handshake is done.
func tlsUpstream(t testing.TB, cert tls.Certificate, withProxy bool) (string, <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	names := make(chan string, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(ioTimeout))
				if withProxy {
					if _, raw, err := readProxyHeader(c); err != nil {
						t.Errorf("PROXY header %q: %v", raw, err)
						return
					}
				}
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
				if err := tc.Handshake(); err != nil {
					return // the client refused the certificate
				}
				names <- tc.ConnectionState().ServerName
				c.SetDeadline(time.Time{})
				io.Copy(tc, tc)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String(), names
}

// A tls/ dynamic target allowed by its host name is dialled at the address
// allow_targets checked, and its certificate verified against the name,
// with or without a PROXY header before the handshake.
func TestDynamicTLSTargetServerName(t *testing.T) {
	cert, caFile := selfSigned(t, t.TempDir(), "vnc.test") // no IP address in it
	for _, proxy := range []string{"", "v1", "v2"} {
		t.Run("proxy_protocol "+proxy, func(t *testing.T) {
			addr, names := tlsUpstream(t, cert, proxy != "")
			_, port, _ := net.SplitHostPort(addr)
			h := provisioned(t, `{
				"targets": {"map": {"vm": "tls/vnc.test:`+port+`"}},
				"allow_targets": ["vnc.test:`+port+`"],
				"upstream_tls": {"ca": "`+caFile+`"},
				"proxy_protocol": "`+proxy+`"
			}`)
			h.targets.allow.lookup = fakeDNS(map[string][]string{"vnc.test": {"127.0.0.1"}})
			srv := serveSlotsHandler(t, h)
			c, status := wsDial(t, srv, "/?token=vm", "", nil, nil)
			if status != 101 {
				t.Fatalf("status %d, want 101 (the certificate is for vnc.test)", status)
			}
			if name := <-names; name != "vnc.test" {
				t.Fatalf("server name %q, want vnc.test", name)
			}
			if err := c.WriteMessage(websocket.BinaryMessage, []byte("over TLS")); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(ioTimeout))
			if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "over TLS" {
				t.Fatalf("echo %q %v", msg, err)
			}
			c.Close()
		})
	}
}

// What the dialer writes, in order, for a request and for a health check,
// to TCP, Unix and TLS upstreams: the PROXY header (before the TLS
// handshake), then the preamble or the check's bytes (inside TLS).
func TestDialerPrelude(t *testing.T) {
	cert, caFile := selfSigned(t, t.TempDir(), "localhost")
	type seen struct {
		header   proxyInfo
		preamble string
		err      error
	}
	// serve reads what one connection starts with.
	serve := func(ln net.Listener, useTLS bool, n int) <-chan seen {
		out := make(chan seen, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				out <- seen{err: err}
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(ioTimeout))
			var s seen
			if s.header, _, s.err = readProxyHeader(c); s.err != nil {
				out <- s
				return
			}
			var r io.Reader = c
			if useTLS {
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
				if s.err = tc.Handshake(); s.err != nil {
					out <- s
					return
				}
				r = tc
			}
			buf := make([]byte, n)
			_, s.err = io.ReadFull(r, buf)
			s.preamble = string(buf)
			out <- s
		}()
		return out
	}
	h := provisioned(t, `{"upstreams": [{"dial": "127.0.0.1:1"}], "proxy_protocol": "v2",
		"preamble": "LOGIN {http.request.uri.query.user}\\n", "upstream_tls": {"ca": "`+caFile+`"}}`)
	d := h.lb.dialer
	r := httptest.NewRequest(http.MethodGet, "/?user=alice", nil)
	r.RemoteAddr = "198.51.100.7:4000"
	r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, net.Addr(&net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 443})))
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), httptest.NewRecorder(), nil)
	request, err := d.requestPrelude(r)
	if err != nil {
		t.Fatal(err)
	}
	health := d.healthPrelude([]byte("PING\r\n"))

	sock := filepath.Join(t.TempDir(), "up.sock")
	for _, network := range []string{"tcp", "unix", "tls"} {
		for _, tt := range []struct {
			name     string
			p        prelude
			command  string
			preamble string
		}{
			{"request", request, "PROXY", "LOGIN alice\n"},
			{"health check", health, "LOCAL", "PING\r\n"},
		} {
			var ln net.Listener
			var err error
			u := &Upstream{Dial: "unix/" + sock}
			if network == "unix" {
				ln, err = net.Listen("unix", sock)
			} else {
				ln, err = net.Listen("tcp", "127.0.0.1:0")
				u.Dial = "tcp/" + ln.Addr().String()
				if network == "tls" {
					_, port, _ := net.SplitHostPort(ln.Addr().String())
					u.Dial = "tls/localhost:" + port
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := u.parse(); err != nil {
				t.Fatal(err)
			}
			if network == "tls" {
				u.address = ln.Addr().String() // dialled at the address, verified against the name
				u.serverName = "localhost"
			}
			got := serve(ln, network == "tls", len(tt.preamble))
			conn, err := d.dial(context.Background(), u, ioTimeout, tt.p)
			if err != nil {
				t.Fatalf("%s %s: %v", network, tt.name, err)
			}
			s := <-got
			conn.Close()
			ln.Close()
			if s.err != nil || s.header.command != tt.command || s.preamble != tt.preamble {
				t.Fatalf("%s %s: header %+v, then %q (%v); want %s, then %q", network, tt.name, s.header, s.preamble, s.err, tt.command, tt.preamble)
			}
			if tt.command == "PROXY" && (s.header.src != ap("198.51.100.7:4000") || s.header.dst != ap("192.0.2.1:443")) {
				t.Fatalf("%s %s: %v -> %v", network, tt.name, s.header.src, s.header.dst)
			}
		}
	}
}

// dial_timeout bounds the TLS handshake too: an upstream that accepts and
// then says nothing makes the dial time out, not hang.
func TestDialerTimeoutCoversHandshake(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	u := &Upstream{Dial: "tls/" + ln.Addr().String()}
	if err := u.parse(); err != nil {
		t.Fatal(err)
	}
	d := &dialer{timeout: 50 * time.Millisecond}
	errs := make(chan error, 1)
	go func() {
		_, err := d.dialRequest(context.Background(), u, prelude{header: proxyHeader(1, ap("192.0.2.1:1"), ap("192.0.2.2:2"))})
		errs <- err
	}()
	var dialErr error
	select {
	case dialErr = <-errs:
	case <-time.After(ioTimeout):
		t.Fatal("the dial did not end: nothing bounds the TLS handshake")
	}
	if !isTimeout(dialErr) {
		t.Fatalf("error %v, want a timeout", dialErr)
	}
	if status := handlerErrorStatus(dialError(u, dialErr)); status != 504 {
		t.Fatalf("status %d, want 504", status)
	}
	// the dialer closed its end: the upstream reads the header, then EOF
	c := <-accepted
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("the timed-out connection was left open: %v", err)
	}
	if !strings.HasPrefix(string(got), "PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n") {
		t.Fatalf("read %q", got)
	}
}

// BenchmarkProxyProtocolHandshake is the cost of one connection's setup through
// ServeHTTP, without Caddy: the client's TCP connection and WebSocket
// handshake, admission, the upstream dial and the upgrade, then the close.
func BenchmarkProxyProtocolHandshake(b *testing.B) {
	echo := echoUpstream(b)
	for _, proxy := range []string{"", "v2"} {
		b.Run("proxy_protocol "+proxy, func(b *testing.B) {
			h := provisioned(b, `{"upstreams": [{"dial": "`+echo.addr+`"}], "proxy_protocol": "`+proxy+`"}`)
			h.logger = zap.NewNop() // a line per tunnel would be most of the cost
			srv := serveSlotsHandler(b, h)
			url := "ws" + strings.TrimPrefix(srv.URL, "http")
			b.ReportAllocs()
			for b.Loop() {
				c, _, err := websocket.DefaultDialer.Dial(url, nil)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

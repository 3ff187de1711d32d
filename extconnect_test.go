package wstotcp

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// TestMain runs the tests with GODEBUG=http2xconnect=1, as the README says
// to run Caddy for WebSockets over HTTP/2: Go's HTTP/2 server reads it from
// the environment once, at start, so the test binary starts itself again
// with it set.
func TestMain(m *testing.M) {
	if !http2ExtendedConnect() {
		exe, err := os.Executable()
		if err == nil {
			godebug := strings.Trim(os.Getenv("GODEBUG")+",http2xconnect=1", ",")
			err = syscall.Exec(exe, os.Args, append(os.Environ(), "GODEBUG="+godebug))
		}
		fmt.Fprintln(os.Stderr, "restarting the tests with GODEBUG=http2xconnect=1:", err)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// streamDialer opens WebSockets over one HTTP/2 or HTTP/3 connection.
type streamDialer interface {
	connect(path string, hdr http.Header) (*streamWS, *http.Response, error)
}

// tlsSite is a Caddy whose sites may use {HTTPS} for an HTTPS site address
// (https://localhost:<port>) on a run-time port, which HTTP/3 shares over
// UDP, and {TLS} for its tls directive. The certificate is loaded from
// files rather than managed (`tls internal`): Caddy 2.11.9's managed
// certificates race with its TLS app's start, which -race reports.
type tlsSite struct {
	*testServer
	httpsPort int
	addr      string // 127.0.0.1:<port>
}

func startTLSSite(t *testing.T, sites string) *tlsSite {
	t.Helper()
	port := freePort(t)
	cert, key := writeServerCert(t, t.TempDir())
	s := startCaddyWith(t, caddyOptions{globals: fmt.Sprintf("https_port %d", port)}, strings.NewReplacer(
		"{HTTPS}", fmt.Sprintf("https://localhost:%d", port),
		"{TLS}", fmt.Sprintf("tls %s %s", cert, key),
	).Replace(sites))
	site := &tlsSite{testServer: s, httpsPort: port, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	// The listeners are up when Load returns; this checks the handshake.
	waitFor(t, ioTimeout, "the site's certificate", func() bool {
		c, err := tls.Dial("tcp", site.addr, testTLS("h2"))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return site
}

func (s *tlsSite) dialer(t *testing.T, transport string) streamDialer {
	if transport == transportH3 {
		return newH3Client(t, s.addr)
	}
	return newH2Client(t, s.addr)
}

var streamTransports = []string{transportH2, transportH3}

// A 16 MiB echo over each transport, sha256 checked both ways, with the
// closing handshake started by the client; the admin API lists the
// tunnel with its transport.
func TestExtendedConnectEcho(t *testing.T) {
	up := echoUpstream(t)
	s := startTLSSite(t, `{HTTPS} {
	{TLS}
	ws_to_tcp `+up.addr+` {
		subprotocols mqtt binary
	}
}`)
	for _, transport := range streamTransports {
		t.Run(transport, func(t *testing.T) {
			d := s.dialer(t, transport)
			ws, resp, err := d.connect("/", http.Header{"Sec-Websocket-Protocol": {"foo, binary"}})
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.Header.Get("Sec-Websocket-Protocol"); got != "binary" {
				t.Fatalf("subprotocol %q, want binary", got)
			}
			if resp.Header.Get("Sec-Websocket-Accept") != "" {
				t.Fatal("Sec-WebSocket-Accept on an extended CONNECT answer")
			}
			list := s.listConns("")
			if len(list) != 1 || list[0].Transport != transport {
				t.Fatalf("admin lists %+v, want one %s tunnel", list, transport)
			}

			data := make([]byte, 16<<20)
			rand.Read(data)
			sent := sha256.Sum256(data)
			go func() {
				for rest := data; len(rest) > 0; {
					n := min(len(rest), 100_000)
					ws.write(wsframe.OpBinary, rest[:n])
					rest = rest[n:]
				}
			}()
			h := sha256.New()
			for got := 0; got < len(data); {
				op, p, err := ws.readData()
				if err != nil || op != wsframe.OpBinary {
					t.Fatalf("after %d bytes: op %d, %v", got, op, err)
				}
				h.Write(p)
				got += len(p)
			}
			if [32]byte(h.Sum(nil)) != sent {
				t.Fatal("echoed bytes differ")
			}
			ws.closeWith(wsframe.CloseNormal)
			if _, _, err := ws.readData(); closeCodeOf(err) != wsframe.CloseNormal {
				t.Fatalf("after the client's Close: %v, want its echo", err)
			}
			ws.close()
			s.waitConns(0)
		})
	}
}

// The upstream ends the tunnel: every byte it sent arrives, then Close
// 1000, on each transport.
func TestExtendedConnectUpstreamEOF(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startTLSSite(t, `{HTTPS} {
	{TLS}
	ws_to_tcp `+up.addr+`
}`)
	for _, transport := range streamTransports {
		t.Run(transport, func(t *testing.T) {
			ws, _, err := s.dialer(t, transport).connect("/", nil)
			if err != nil {
				t.Fatal(err)
			}
			uc := up.accept(t)
			uc.Write([]byte("last words"))
			uc.Close()
			op, p, err := ws.readData()
			if err != nil || op != wsframe.OpBinary || string(p) != "last words" {
				t.Fatalf("op %d %q %v", op, p, err)
			}
			if _, _, err := ws.readData(); closeCodeOf(err) != wsframe.CloseNormal {
				t.Fatalf("%v, want Close 1000", err)
			}
			ws.closeWith(wsframe.CloseNormal)
			ws.close()
			s.waitConns(0)
		})
	}
}

// Refusals are plain statuses before anything is relayed, as on HTTP/1.1.
func TestExtendedConnectRefusals(t *testing.T) {
	up := echoUpstream(t)
	down := freePort(t)
	s := startTLSSite(t, `{HTTPS} {
	{TLS}
	route /auth {
		ws_to_tcp `+up.addr+` {
			auth {
				bearer secret-token
			}
		}
	}
	route /down {
		ws_to_tcp 127.0.0.1:`+fmt.Sprint(down)+`
	}
	route /token {
		ws_to_tcp {
			targets {
				map {
					known `+up.addr+`
				}
			}
		}
	}
	route /* {
		ws_to_tcp `+up.addr+`
	}
}`)
	cases := []struct {
		path   string
		hdr    http.Header
		status int
	}{
		{"/", http.Header{"Origin": {"https://evil.example"}}, 403},
		{"/auth", nil, 401},
		{"/auth?access_token=wrong", nil, 401},
		{"/down", nil, 502},
		{"/token?token=unknown", nil, 404},
	}
	for _, transport := range streamTransports {
		t.Run(transport, func(t *testing.T) {
			d := s.dialer(t, transport)
			for _, c := range cases {
				_, resp, err := d.connect(c.path, c.hdr)
				if err == nil || resp == nil || resp.StatusCode != c.status {
					status := 0
					if resp != nil {
						status = resp.StatusCode
					}
					t.Errorf("%s %v: status %d (%v), want %d", c.path, c.hdr, status, err, c.status)
				}
			}
			// And the same client is admitted where it should be: the
			// bearer token in the subprotocol carrier, and a known token.
			for _, c := range []struct {
				path string
				hdr  http.Header
			}{
				{"/auth", http.Header{"Sec-Websocket-Protocol": {"binary, bearer.secret-token"}}},
				{"/token?token=known", nil},
				{"/", http.Header{"Origin": {"https://localhost:" + fmt.Sprint(s.httpsPort)}}},
			} {
				ws, resp, err := d.connect(c.path, c.hdr)
				if err != nil {
					t.Fatalf("%s: %v", c.path, err)
				}
				if c.path == "/auth" && resp.Header.Get("Sec-Websocket-Protocol") != "binary" {
					t.Fatalf("echoed %q, want binary (never the token)", resp.Header.Get("Sec-Websocket-Protocol"))
				}
				ws.write(wsframe.OpBinary, []byte("ping"))
				if _, p, err := ws.readData(); err != nil || string(p) != "ping" {
					t.Fatalf("%s: %q %v", c.path, p, err)
				}
				ws.closeWith(wsframe.CloseNormal)
				ws.readData()
				ws.close()
			}
			s.waitConns(0)
		})
	}
}

// An extended CONNECT for another protocol is not ours: the next handler
// answers it.
func TestExtendedConnectOtherProtocolFallsThrough(t *testing.T) {
	up := echoUpstream(t)
	s := startTLSSite(t, `{HTTPS} {
	{TLS}
	route {
		ws_to_tcp `+up.addr+`
		respond "next handler" 299
	}
}`)
	c := newH2Client(t, s.addr)
	req, _ := http.NewRequest(http.MethodConnect, "https://"+s.addr+"/", nil)
	req.Host = "localhost"
	req.Header.Set(":protocol", "webtransport")
	resp, err := c.cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 299 || string(body) != "next handler" {
		t.Fatalf("status %d %q", resp.StatusCode, body)
	}
}

package wstotcp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

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
	expand    *strings.Replacer
}

// load reloads the configuration, {TLS} expanded ({HTTPS} is the
// harness's).
func (s *tlsSite) load(sites string) { s.testServer.load(s.expand.Replace(sites)) }

func startTLSSite(t *testing.T, sites string) *tlsSite {
	t.Helper()
	cert, key := writeServerCert(t, t.TempDir())
	site := &tlsSite{expand: strings.NewReplacer("{TLS}", fmt.Sprintf("tls %s %s", cert, key))}
	// A grace period long enough to write the Close frames of HTTP/3
	// tunnels before quic-go closes their connections (see the README).
	site.testServer = startCaddyWith(t, caddyOptions{globals: "https_port {HTTPS_PORT}\n\tgrace_period 10s"},
		site.expand.Replace(sites))
	site.httpsPort = site.testServer.httpsPort
	site.addr = fmt.Sprintf("127.0.0.1:%d", site.httpsPort)
	// The listeners are up when Load returns; this checks the handshake.
	eventually(t, "the site's certificate", func() bool {
		c, err := tls.Dial("tcp", site.addr, testTLS("h2"))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return site
}

// relaySite is a TLS site whose only handler is ws_to_tcp to upstream.
func relaySite(t *testing.T, upstream string) *tlsSite {
	return startTLSSite(t, "{HTTPS} {\n\t{TLS}\n\tws_to_tcp "+upstream+"\n}")
}

func (s *tlsSite) dialer(t *testing.T, transport string) streamDialer {
	if transport == transportH3 {
		return newH3Client(t, s.addr)
	}
	return newH2Client(t, s.addr)
}

var streamTransports = []string{transportH2, transportH3}

// A 4 MiB echo over each transport, sha256 checked both ways, with the
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
			list := s.waitConns(1) // registered right after the 200 is sent
			if len(list) != 1 || list[0].Transport != transport {
				t.Fatalf("admin lists %+v, want one %s tunnel", list, transport)
			}

			data := make([]byte, 4<<20)
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
	s := relaySite(t, up.addr)
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

// Node's built-in HTTP/2 client (not Go's) does the extended CONNECT: a
// 16 MiB echo checked by sha256 both ways with the closing handshake, and
// the refusals.
func TestExtendedConnectNodeHTTP2(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		unavailable(t, "node is not installed (Debian's nodejs; .ci/run installs it)")
	}
	up := echoUpstream(t)
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
		ws_to_tcp 127.0.0.1:`+fmt.Sprint(freePort(t))+`
	}
	route /* {
		ws_to_tcp `+up.addr+`
	}
}`)
	base := fmt.Sprintf("https://localhost:%d", s.httpsPort)
	run := func(args ...string) map[string]any {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*ioTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, node, append([]string{"testdata/node/h2ws.mjs", base}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("node %v: %v\n%s", args, err, stderr.String())
		}
		var res map[string]any
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("node printed %q: %v", out, err)
		}
		return res
	}
	res := run("echo", "/", "16")
	if res["sent"] != res["received"] || res["close"] != float64(1000) || res["subprotocol"] != "binary" {
		t.Fatalf("echo: %v", res)
	}
	res = run("status", "/", "/ https://evil.example", "/auth", "/down")
	want := map[string]any{"/": 200.0, "/ https://evil.example": 403.0, "/auth": 401.0, "/down": 502.0}
	for k, v := range want {
		if res[k] != v {
			t.Errorf("%s: status %v, want %v", k, res[k], v)
		}
	}
	s.waitConns(0)
}

// A reload shuts down the server that carries HTTP/2 and HTTP/3 tunnels:
// they end with 1001 and their upstreams close (README, HTTP/2 and
// HTTP/3), while an HTTP/1.1 tunnel opened at the same time survives.
func TestExtendedConnectReloadAndStop(t *testing.T) {
	for _, action := range []string{"reload", "stop"} {
		t.Run(action, func(t *testing.T) {
			up := newUpstream(t, "tcp", "127.0.0.1:0")
			site := `{HTTPS} {
	{TLS}
	ws_to_tcp ` + up.addr + `
}
{HTTP} {
	ws_to_tcp ` + up.addr + `
}`
			s := startTLSSite(t, site)
			type open struct {
				ws *streamWS
				uc net.Conn
			}
			var streams []open
			for _, transport := range streamTransports {
				ws, _, err := s.dialer(t, transport).connect("/", nil)
				if err != nil {
					t.Fatal(err)
				}
				uc := up.accept(t)
				ws.write(wsframe.OpBinary, []byte("hello"))
				uc.SetReadDeadline(time.Now().Add(ioTimeout))
				if _, err := io.ReadFull(uc, make([]byte, 5)); err != nil {
					t.Fatal(err)
				}
				streams = append(streams, open{ws, uc})
			}
			h1 := s.dial("/", nil)
			defer h1.Close()
			h1up := up.accept(t)
			s.waitConns(3)

			if action == "reload" {
				s.load(strings.Replace(site, "ws_to_tcp", "header X-Config 2\n\tws_to_tcp", 1))
			} else {
				caddy.Stop()
			}
			for i, o := range streams {
				if _, _, err := o.ws.readData(); closeCodeOf(err) != wsframe.CloseGoingAway {
					t.Fatalf("%s tunnel: %v, want Close 1001", streamTransports[i], err)
				}
				o.ws.closeWith(wsframe.CloseGoingAway)
				readEOFOrReset(t, o.uc)
				o.ws.close()
			}
			// An HTTP/1.1 tunnel is hijacked: it survives the reload. (Caddy
			// closes it when the process exits, which TestStopClosesTunnels
			// tests on the built binary; an in-process stop is not an exit.)
			roundTrip(t, h1, h1up, "the HTTP/1.1 tunnel survives")
			h1.Close()
			s.waitConns(0)
		})
	}
}

// Fifty tunnels share one HTTP/2 connection; one client stops reading.
// Its stream stalls under flow control, and the other 49 relay on.
func TestExtendedConnectStalledStreamStallsOnlyItself(t *testing.T) {
	up := echoUpstream(t)
	s := relaySite(t, up.addr)
	c := newH2Client(t, s.addr)
	stalled, _, err := c.connect("/", nil)
	if err != nil {
		t.Fatal(err)
	}
	const stallSend = 32 << 20 // far more than the flow-control windows and socket buffers hold
	go func() {
		chunk := make([]byte, 64<<10)
		for sent := 0; sent < stallSend; sent += len(chunk) {
			if stalled.write(wsframe.OpBinary, chunk) != nil {
				return
			}
		}
	}()
	// The stalled stream has taken most of what it can: the client's
	// stream window is 4 MiB (x/net's client), frame headers included.
	var stalledID string
	var most int64
	eventually(t, "the stalled tunnel to fill its window", func() bool {
		for _, ci := range s.listConns("") {
			stalledID = ci.ID
			most = max(most, ci.BytesOut)
			return ci.BytesOut >= 3<<20
		}
		return false
	})
	t.Logf("stalled at %d bytes out", most)

	var wg sync.WaitGroup
	errs := make(chan error, 49)
	for i := range 49 {
		wg.Go(func() {
			ws, _, err := c.connect("/", nil)
			if err != nil {
				errs <- err
				return
			}
			defer ws.close()
			msg := bytes.Repeat([]byte{byte(i)}, 32<<10)
			for range 8 { // 256 KiB each way
				if err := ws.write(wsframe.OpBinary, msg); err != nil {
					errs <- err
					return
				}
				for got := 0; got < len(msg); {
					_, p, err := ws.readData()
					if err != nil || !bytes.Equal(p, msg[:len(p)]) {
						errs <- fmt.Errorf("tunnel %d: %v", i, err)
						return
					}
					got += len(p)
				}
			}
			ws.closeWith(wsframe.CloseNormal)
			ws.readData()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var stalledInfo connInfo
	s.adminOK("GET", "/ws_to_tcp/connections/"+stalledID, "", nil, &stalledInfo)
	if stalledInfo.State != "open" || stalledInfo.BytesOut >= stallSend {
		t.Fatalf("the stalled tunnel: %+v", stalledInfo)
	}
	stalled.close()
	s.waitConns(0)
}

// The end of an HTTP/2 or HTTP/3 connection ends each of its tunnels and
// closes their upstreams; closing one tunnel first leaves the others be.
func TestExtendedConnectConnectionEndEndsItsTunnels(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := relaySite(t, up.addr)
	for _, transport := range streamTransports {
		t.Run(transport, func(t *testing.T) {
			var closeConn func()
			var d streamDialer
			if transport == transportH3 {
				c := newH3Client(t, s.addr)
				d, closeConn = c, func() { c.cc.CloseWithError(0, "bye") }
			} else {
				c := newH2Client(t, s.addr)
				d, closeConn = c, func() { c.cc.Close() }
			}
			var wss []*streamWS
			var ucs []net.Conn
			for range 3 {
				ws, _, err := d.connect("/", nil)
				if err != nil {
					t.Fatal(err)
				}
				wss = append(wss, ws)
				ucs = append(ucs, up.accept(t))
			}
			// One closes: its upstream reads EOF (a half-close) and closes
			// too, which the Close echo waits for; the other two still
			// relay.
			wss[0].closeWith(wsframe.CloseNormal)
			readEOFOrReset(t, ucs[0])
			ucs[0].Close()
			if _, _, err := wss[0].readData(); closeCodeOf(err) != wsframe.CloseNormal {
				t.Fatalf("%v, want the Close echoed", err)
			}
			for i := 1; i < 3; i++ {
				ucs[i].Write([]byte("still here"))
				if _, p, err := wss[i].readData(); err != nil || string(p) != "still here" {
					t.Fatalf("tunnel %d: %q %v", i, p, err)
				}
			}
			closeConn()
			readEOFOrReset(t, ucs[1])
			readEOFOrReset(t, ucs[2])
			s.waitConns(0)
		})
	}
}

// The admin API acts on HTTP/2 and HTTP/3 tunnels as on any other: send,
// broadcast (filtered by transport), ping and disconnect.
func TestExtendedConnectAdminActions(t *testing.T) {
	up := echoUpstream(t)
	s := relaySite(t, up.addr)
	for _, transport := range streamTransports {
		t.Run(transport, func(t *testing.T) {
			ws, _, err := s.dialer(t, transport).connect("/", nil)
			if err != nil {
				t.Fatal(err)
			}
			s.waitConns(1)
			list := s.listConns("?transport=" + transport)
			if len(list) != 1 {
				t.Fatalf("?transport=%s lists %d", transport, len(list))
			}
			id := list[0].ID
			var sent sentResult
			s.adminOK("POST", "/ws_to_tcp/connections/"+id+"/send", "text/plain", []byte("to one"), &sent)
			if op, p, err := ws.readData(); err != nil || op != wsframe.OpText || string(p) != "to one" {
				t.Fatalf("send: op %d %q %v", op, p, err)
			}
			s.adminOK("POST", "/ws_to_tcp/broadcast?transport="+transport, "application/octet-stream", []byte("to all"), &sent)
			if op, p, err := ws.readData(); err != nil || op != wsframe.OpBinary || string(p) != "to all" || sent.Sent != 1 {
				t.Fatalf("broadcast: op %d %q %v (%+v)", op, p, err, sent)
			}
			s.adminOK("POST", "/ws_to_tcp/ping", "", []byte("hb"), &sent)
			if op, p, err := ws.read(); err != nil || op != wsframe.OpPing || string(p) != "hb" {
				t.Fatalf("ping: op %d %q %v", op, p, err)
			}
			var closed closedResult
			s.adminOK("DELETE", "/ws_to_tcp/connections/"+id, "", nil, &closed)
			if _, _, err := ws.readData(); closeCodeOf(err) != wsframe.CloseGoingAway || closed.Closed != 1 {
				t.Fatalf("disconnect: %v (%+v), want Close 1001", err, closed)
			}
			ws.closeWith(wsframe.CloseGoingAway)
			ws.close()
			s.waitConns(0)
		})
	}
}

// With HTTP/2 on and extended CONNECT off (no GODEBUG), an HTTPS server
// with ws_to_tcp says so once, at INFO, whatever the number of handlers
// and reloads.
func TestExtendedConnectOffIsLoggedOnce(t *testing.T) {
	t.Setenv("GODEBUG", "") // as Caddy started without it; read at provision
	xconnectNoticed.Clear()
	up := echoUpstream(t)
	site := `{HTTPS} {
	{TLS}
	route /a {
		ws_to_tcp ` + up.addr + `
	}
	route /b {
		ws_to_tcp ` + up.addr + `
	}
}`
	s := startTLSSite(t, site)
	s.load(site + "\n")
	n := 0
	for _, m := range s.logLines("") {
		if msg, _ := m["msg"].(string); strings.HasPrefix(msg, "HTTP/2 extended CONNECT is off") {
			n++
			if m["level"] != "info" {
				t.Errorf("logged at %v, want info", m["level"])
			}
		}
	}
	if n != 1 {
		t.Fatalf("logged %d times, want once", n)
	}
}

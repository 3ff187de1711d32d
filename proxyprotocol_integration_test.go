package wstotcp

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// nginxStreamModule is where Debian's libnginx-mod-stream puts the module.
const nginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

// nginxServer is a real nginx (from Debian's packages) whose stream
// servers accept the PROXY protocol, as a subprocess of the test.
type nginxServer struct {
	addrs     []string // one per stream server
	accessLog string   // one line per session: the PROXY address nginx parsed, and its status
}

// startNginx runs nginx in the foreground (one process, no master) with n
// stream servers on free loopback ports, each listening with
// `proxy_protocol` and answering `ret` (nginx variables allowed), and kills
// it, by its PID, when the test ends.
func startNginx(t *testing.T, n int, ret string) *nginxServer {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx"
	}
	requireTools(t, "apt-get install -y nginx libnginx-mod-stream", bin, nginxStreamModule)
	dir := t.TempDir()
	ng := &nginxServer{accessLog: filepath.Join(dir, "access.log")}
	withFreePorts(t, n, func(ports []int) error {
		ng.addrs = nil
		var servers strings.Builder
		for _, port := range ports {
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			ng.addrs = append(ng.addrs, addr)
			fmt.Fprintf(&servers, "\tserver {\n\t\tlisten %s proxy_protocol;\n\t\treturn %q;\n\t}\n", addr, ret)
		}
		conf := fmt.Sprintf(`load_module %s;
daemon off;
master_process off;
pid %s/nginx.pid;
error_log %s/error.log info;
events {
	worker_connections 256;
}
stream {
	log_format pp "$proxy_protocol_addr $status";
	access_log %s pp;
%s}
`, nginxStreamModule, dir, dir, ng.accessLog, servers.String())
		confFile := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		out := new(lockedBuffer)
		cmd := exec.Command(bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", confFile)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting nginx: %v", err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		exited := func() bool {
			select {
			case <-done:
				return true
			default:
				return false
			}
		}
		t.Cleanup(func() {
			if !exited() {
				cmd.Process.Kill() // only the process this test started
				<-done
			}
		})
		// every server accepts connections, or nginx has exited
		eventually(t, "nginx's stream servers to accept connections", func() bool {
			if exited() {
				return true
			}
			for _, addr := range ng.addrs {
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err != nil {
					return false
				}
				c.Close()
			}
			return true
		})
		if exited() {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return fmt.Errorf("nginx did not start: %s\n%s", out, b)
		}
		t.Cleanup(func() {
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
				t.Logf("nginx's error log:\n%s", b)
			}
		})
		return nil
	})
	return ng
}

// sessions counts the lines of nginx's stream access log.
func (ng *nginxServer) sessions() []string {
	b, _ := os.ReadFile(ng.accessLog)
	if len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// A real PROXY-protocol server (nginx's stream module) reads the v1 and v2
// headers and sees the client's address: the TCP peer's address and port
// for a direct client, and Caddy's client IP with port 0 when it comes
// from X-Forwarded-For sent by a trusted proxy, IPv6 included (the server
// address is then sent as an IPv4-mapped IPv6 address).
func TestProxyProtocolNginx(t *testing.T) {
	ng := startNginx(t, 1, "$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port\n")
	s := startWithGlobals(t, `	servers {
		trusted_proxies static 127.0.0.1/32
	}`, "INFO", `{HTTP} {
	handle /v1 {
		ws_to_tcp `+ng.addrs[0]+` {
			proxy_protocol v1
		}
	}
	handle /v2 {
		ws_to_tcp `+ng.addrs[0]+` {
			proxy_protocol v2
		}
	}
}`)
	server := fmt.Sprintf("127.0.0.1 %d", s.httpPort)
	for _, v := range []string{"v1", "v2"} {
		for _, tc := range []struct {
			name, xff, want string // want: %d is the client's port
		}{
			{"direct", "", "127.0.0.1 %d " + server},
			// The client's own port is unknown: 0, which nginx shows as
			// an empty $proxy_protocol_port.
			{"X-Forwarded-For", "203.0.113.50", "203.0.113.50  " + server},
			{"X-Forwarded-For IPv6", "2001:db8::50", fmt.Sprintf("2001:db8::50  ::ffff:127.0.0.1 %d", s.httpPort)},
		} {
			t.Run(v+" "+tc.name, func(t *testing.T) {
				var hdr http.Header
				if tc.xff != "" {
					hdr = http.Header{"X-Forwarded-For": {tc.xff}}
				}
				c := s.dial("/"+v, hdr)
				defer c.Close()
				got, err := readTag(c)
				if err != nil {
					t.Fatalf("nginx said %q: %v", got, err)
				}
				want := tc.want
				if strings.Contains(want, "%d") {
					want = fmt.Sprintf(want, c.LocalAddr().(*net.TCPAddr).Port)
				}
				if got != want {
					t.Fatalf("nginx parsed %q, want %q", got, want)
				}
			})
		}
	}
}

// The active health check's header (v1 UNKNOWN, v2 LOCAL) is accepted by a
// real PROXY-protocol server, which answers the check; without the header
// the same server refuses the connection and the upstream is down.
func TestProxyProtocolHealthCheckNginx(t *testing.T) {
	ng := startNginx(t, 3, "ok\n")
	s := startWithGlobals(t, recordUpstreamEvents, "INFO", `{HTTP} {
	handle /v1 {
		ws_to_tcp `+ng.addrs[0]+` {
			proxy_protocol v1
			health_interval 50ms
			health_expect "ok\n"
		}
	}
	handle /v2 {
		ws_to_tcp `+ng.addrs[1]+` {
			proxy_protocol v2
			health_interval 50ms
			health_expect "ok\n"
		}
	}
	handle /none {
		ws_to_tcp `+ng.addrs[2]+` {
			health_interval 50ms
			health_timeout 300ms
			health_expect "ok\n"
		}
	}
}`)
	drainEvents()
	e := nextEvent(t, eventUpstreamDown, ioTimeout)
	wantData(t, eventUpstreamDown, e, map[string]any{"upstream": ng.addrs[2]})
	// Wait for checks of all three, logged by nginx when they end.
	eventually(t, "12 sessions in nginx's log", func() bool { return len(ng.sessions()) >= 12 })
	noMoreEvents(t)
	ups := s.upstreamsOf()
	if !ups[ng.addrs[0]].Healthy || !ups[ng.addrs[1]].Healthy || ups[ng.addrs[0]].Fails != 0 || ups[ng.addrs[1]].Fails != 0 {
		t.Fatalf("upstreams %+v", ups)
	}
	if ups[ng.addrs[2]].Healthy {
		t.Fatalf("the check without a PROXY header passed: %+v", ups[ng.addrs[2]])
	}
}

// A parser in the test reads the exact header bytes, first on the
// connection: it is there before the client sends anything, the client's
// bytes follow it directly, and on a tls/ upstream it comes before the TLS
// handshake (it is addressed to the TCP layer).
func TestProxyProtocolBytes(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")

	dir := t.TempDir()
	cert, caFile := selfSigned(t, dir, "upstream.test")
	rawTLS, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rawTLS.Close() })
	tlsConns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := rawTLS.Accept()
			if err != nil {
				return
			}
			tlsConns <- c
		}
	}()

	s := startCaddy(t, `{HTTP} {
	handle /v1 {
		ws_to_tcp `+up.addr+` {
			proxy_protocol v1
		}
	}
	handle /v2 {
		ws_to_tcp `+up.addr+` {
			proxy_protocol v2
		}
	}
	handle /tls {
		ws_to_tcp tls/`+rawTLS.Addr().String()+` {
			proxy_protocol v2
			upstream_tls {
				ca `+caFile+`
				server_name upstream.test
			}
		}
	}
}`)
	server := netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", s.httpPort))
	for _, v := range []int{1, 2} {
		c := s.dial(fmt.Sprintf("/v%d", v), nil)
		uc := up.accept(t)
		uc.SetReadDeadline(time.Now().Add(ioTimeout))
		info, raw, err := readProxyHeader(uc)
		if err != nil {
			t.Fatalf("v%d: %q: %v", v, raw, err)
		}
		client := c.LocalAddr().(*net.TCPAddr).AddrPort()
		if info.version != v || info.command != "PROXY" || info.family != "TCP4" ||
			info.src != netip.AddrPortFrom(client.Addr().Unmap(), client.Port()) || info.dst != server {
			t.Fatalf("v%d: %+v, want %v -> %v", v, info, client, server)
		}
		c.WriteMessage(websocket.BinaryMessage, []byte("client bytes"))
		if got := readFull(t, uc, len("client bytes")); string(got) != "client bytes" {
			t.Fatalf("v%d: after the header: %q", v, got)
		}
		c.Close()
	}

	// tls/: the header, then the TLS handshake.
	done := make(chan error, 1)
	go func() {
		c, resp, err := s.tryDial("/tls", nil)
		if err == nil {
			c.WriteMessage(websocket.BinaryMessage, []byte("over TLS"))
			c.SetReadDeadline(time.Now().Add(ioTimeout))
			_, _, err = c.ReadMessage() // until the test ends it
			c.Close()
			err = nil
		} else if resp != nil {
			err = fmt.Errorf("%v (status %d)", err, resp.StatusCode)
		}
		done <- err
	}()
	var raw net.Conn
	select {
	case raw = <-tlsConns:
	case <-time.After(ioTimeout):
		t.Fatal("no connection to the TLS upstream")
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(ioTimeout))
	info, hdr, err := readProxyHeader(raw)
	if err != nil || info.version != 2 || info.dst != server {
		t.Fatalf("tls/: %+v %q %v", info, hdr, err)
	}
	tc := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{cert}})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake after the PROXY header: %v", err)
	}
	if got := readFull(t, tc, len("over TLS")); string(got) != "over TLS" {
		t.Fatalf("tls/: %q", got)
	}
	tc.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

package wstotcp

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/spf13/cobra"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// parseCommand runs the command's flag parsing on args, as `caddy ws-to-tcp
// args...` would, and builds the configuration.
func parseCommand(t *testing.T, args ...string) (*caddy.Config, wsToTCPSummary, error) {
	t.Helper()
	cmd := &cobra.Command{Use: "ws-to-tcp"}
	wsToTCPCobra(cmd)
	if err := cmd.ParseFlags(args); err != nil {
		return nil, wsToTCPSummary{}, err
	}
	if err := cmd.Args(cmd, cmd.Flags().Args()); err != nil {
		return nil, wsToTCPSummary{}, err
	}
	return wsToTCPConfig(caddycmd.Flags{FlagSet: cmd.Flags()})
}

// commandConfig is the part of a built configuration the tests look at.
type commandConfig struct {
	server   *caddyhttp.Server
	handler  *Handler
	fallback map[string]any // the handler after ws_to_tcp
	matchers []map[string]json.RawMessage
	tls      map[string]any // the tls app, nil without one
}

func decodeCommandConfig(t *testing.T, cfg *caddy.Config) commandConfig {
	t.Helper()
	var c commandConfig
	var app caddyhttp.App
	if err := json.Unmarshal(cfg.AppsRaw["http"], &app); err != nil {
		t.Fatal(err)
	}
	if len(app.Servers) != 1 {
		t.Fatalf("%d servers, want 1", len(app.Servers))
	}
	for _, s := range app.Servers {
		c.server = s
	}
	if len(c.server.Routes) != 1 {
		t.Fatalf("%d routes, want 1", len(c.server.Routes))
	}
	r := c.server.Routes[0]
	if len(r.HandlersRaw) != 2 {
		t.Fatalf("%d handlers, want ws_to_tcp and one after it", len(r.HandlersRaw))
	}
	c.handler = new(Handler)
	if err := json.Unmarshal(r.HandlersRaw[0], c.handler); err != nil {
		t.Fatal(err)
	}
	var name struct {
		Handler string `json:"handler"`
	}
	if err := json.Unmarshal(r.HandlersRaw[0], &name); err != nil || name.Handler != "ws_to_tcp" {
		t.Fatalf("first handler %q (%v), want ws_to_tcp", name.Handler, err)
	}
	if err := json.Unmarshal(r.HandlersRaw[1], &c.fallback); err != nil {
		t.Fatal(err)
	}
	for _, ms := range r.MatcherSetsRaw {
		m := map[string]json.RawMessage{}
		for k, v := range ms {
			m[k] = v
		}
		c.matchers = append(c.matchers, m)
	}
	if raw, ok := cfg.AppsRaw["tls"]; ok {
		if err := json.Unmarshal(raw, &c.tls); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func TestCommandConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := writeServerCert(t, dir)

	t.Run("flags", func(t *testing.T) {
		cfg, sum, err := parseCommand(t, "--listen", "127.0.0.1:7000", "--to", "localhost:5900",
			"--subprotocol", "binary,base64", "--subprotocol", "mqtt", "--idle-timeout", "5m",
			"--heartbeat", "30s", "--origin", "https://*.example.com", "--access-log", "--debug")
		if err != nil {
			t.Fatal(err)
		}
		c := decodeCommandConfig(t, cfg)
		if got := c.server.Listen; len(got) != 1 || got[0] != "127.0.0.1:7000" {
			t.Errorf("listen = %v, want [127.0.0.1:7000]", got)
		}
		if c.server.AutoHTTPS == nil || !c.server.AutoHTTPS.Disabled || len(c.server.TLSConnPolicies) != 0 {
			t.Errorf("plain HTTP expected: automatic_https %+v, tls_connection_policies %v", c.server.AutoHTTPS, c.server.TLSConnPolicies)
		}
		if c.server.Logs == nil {
			t.Error("--access-log: no server logs")
		}
		h := c.handler
		if len(h.Upstreams) != 1 || h.Upstreams[0].Dial != "localhost:5900" {
			t.Errorf("upstreams = %+v", h.Upstreams)
		}
		if fmt.Sprint(h.Subprotocols) != "[binary base64 mqtt]" {
			t.Errorf("subprotocols = %v, want [binary base64 mqtt]", h.Subprotocols)
		}
		if time.Duration(h.IdleTimeout) != 5*time.Minute || time.Duration(h.HeartbeatInterval) != 30*time.Second {
			t.Errorf("idle_timeout %v, heartbeat_interval %v", time.Duration(h.IdleTimeout), time.Duration(h.HeartbeatInterval))
		}
		if fmt.Sprint(h.Origins) != "[https://*.example.com]" || h.TestPage {
			t.Errorf("origins %v, test_page %v", h.Origins, h.TestPage)
		}
		if c.fallback["handler"] != "static_response" || fmt.Sprint(c.fallback["status_code"]) != "426" {
			t.Errorf("without --web, non-WebSocket requests should get 426; handler: %v", c.fallback)
		}
		if len(c.matchers) != 0 || c.tls != nil {
			t.Errorf("no matcher and no tls app expected: %v %v", c.matchers, c.tls)
		}
		if !cfg.Admin.Disabled || cfg.Admin.Config == nil || *cfg.Admin.Config.Persist {
			t.Errorf("admin should be off and not persist: %+v", cfg.Admin)
		}
		if cfg.Logging == nil || cfg.Logging.Logs["default"].Level != "DEBUG" {
			t.Errorf("--debug: logging %+v", cfg.Logging)
		}
		if sum.url != "ws://127.0.0.1:7000/" {
			t.Errorf("url %q", sum.url)
		}
		if err := caddy.Validate(cfg); err != nil {
			t.Errorf("caddy validate: %v", err)
		}
	})

	t.Run("positional", func(t *testing.T) {
		for _, c := range []struct {
			args   []string
			listen string
		}{
			{[]string{"6080", "localhost:5900"}, ":6080"},
			{[]string{":6080", "localhost:5900"}, ":6080"},
			{[]string{"127.0.0.1:6081", "localhost:5900"}, "127.0.0.1:6081"},
			{[]string{"[::1]:6082", "localhost:5900"}, "[::1]:6082"},
			{[]string{"6083", "--to", "localhost:5900"}, ":6083"},
			{[]string{"--to", "localhost:5900"}, ":6080"}, // the default
		} {
			cfg, _, err := parseCommand(t, c.args...)
			if err != nil {
				t.Errorf("%q: %v", c.args, err)
				continue
			}
			cc := decodeCommandConfig(t, cfg)
			if got := cc.server.Listen; len(got) != 1 || got[0] != c.listen {
				t.Errorf("%q: listen %v, want %s", c.args, got, c.listen)
			}
			if cc.handler.Upstreams[0].Dial != "localhost:5900" {
				t.Errorf("%q: upstream %q", c.args, cc.handler.Upstreams[0].Dial)
			}
		}
	})

	t.Run("web", func(t *testing.T) {
		cfg, _, err := parseCommand(t, "--to", "localhost:5900", "--web", dir)
		if err != nil {
			t.Fatal(err)
		}
		c := decodeCommandConfig(t, cfg)
		if c.fallback["handler"] != "file_server" || c.fallback["root"] != dir {
			t.Errorf("--web: handler after ws_to_tcp = %v, want file_server with root %s", c.fallback, dir)
		}
		if err := caddy.Validate(cfg); err != nil {
			t.Errorf("caddy validate: %v", err)
		}
	})

	t.Run("test page", func(t *testing.T) {
		cfg, _, err := parseCommand(t, "--to", "localhost:5900", "--test-page")
		if err != nil {
			t.Fatal(err)
		}
		if c := decodeCommandConfig(t, cfg); !c.handler.TestPage {
			t.Error("--test-page: test_page is off")
		}
	})

	t.Run("domain", func(t *testing.T) {
		cfg, sum, err := parseCommand(t, "--domain", "vnc.example.com", "--to", "localhost:5900")
		if err != nil {
			t.Fatal(err)
		}
		c := decodeCommandConfig(t, cfg)
		if got := c.server.Listen; len(got) != 1 || got[0] != ":443" {
			t.Errorf("--domain: listen %v, want [:443]", got)
		}
		if c.server.AutoHTTPS != nil && c.server.AutoHTTPS.Disabled {
			t.Error("--domain: automatic HTTPS is disabled")
		}
		if len(c.matchers) != 1 || string(c.matchers[0]["host"]) != `["vnc.example.com"]` {
			t.Errorf("--domain: matchers %v, want host vnc.example.com", c.matchers)
		}
		if sum.url != "wss://vnc.example.com/" {
			t.Errorf("url %q", sum.url)
		}
		cfg, sum, err = parseCommand(t, "--domain", "vnc.example.com", "--listen", ":8443", "--to", "localhost:5900")
		if err != nil {
			t.Fatal(err)
		}
		if got := decodeCommandConfig(t, cfg).server.Listen[0]; got != ":8443" || sum.url != "wss://vnc.example.com:8443/" {
			t.Errorf("--domain --listen :8443: listen %s, url %s", got, sum.url)
		}
	})

	t.Run("allowed hosts", func(t *testing.T) {
		cfg, _, err := parseCommand(t, "--to", "localhost:5900", "--allowed-host", "vnc.lan, *.desk.lan", "--allowed-host", "pc.home.arpa")
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(decodeCommandConfig(t, cfg).handler.AllowedHosts); got != "[vnc.lan *.desk.lan pc.home.arpa]" {
			t.Errorf("--allowed-host: allowed_hosts %s", got)
		}
		cfg, _, err = parseCommand(t, "--domain", "vnc.example.com", "--to", "localhost:5900")
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(decodeCommandConfig(t, cfg).handler.AllowedHosts); got != "[vnc.example.com]" {
			t.Errorf("--domain: allowed_hosts %s, want its name", got)
		}
		if err := caddy.Validate(cfg); err != nil {
			t.Errorf("caddy validate: %v", err)
		}
	})

	t.Run("cert", func(t *testing.T) {
		cfg, sum, err := parseCommand(t, "--cert", certFile, "--key", keyFile, "--to", "localhost:5900")
		if err != nil {
			t.Fatal(err)
		}
		c := decodeCommandConfig(t, cfg)
		if c.server.Listen[0] != ":6080" || sum.url != "wss://localhost:6080/" {
			t.Errorf("--cert: listen %v, url %s", c.server.Listen, sum.url)
		}
		if c.server.AutoHTTPS == nil || !c.server.AutoHTTPS.Disabled {
			t.Error("--cert: automatic HTTPS should be off (no ACME, no port 80)")
		}
		if len(c.server.TLSConnPolicies) != 1 || c.server.TLSConnPolicies[0].CertSelection == nil ||
			fmt.Sprint(c.server.TLSConnPolicies[0].CertSelection.AnyTag) != "["+certTag+"]" {
			t.Errorf("--cert: connection policies %+v", c.server.TLSConnPolicies)
		}
		var files caddytls.FileLoader
		certs, _ := c.tls["certificates"].(map[string]any)
		raw, _ := json.Marshal(certs["load_files"])
		if err := json.Unmarshal(raw, &files); err != nil || len(files) != 1 ||
			files[0].Certificate != certFile || files[0].Key != keyFile {
			t.Errorf("--cert: tls app %v", c.tls)
		}
		if err := caddy.Validate(cfg); err != nil {
			t.Errorf("caddy validate: %v", err)
		}

		// websockify's self.pem holds both: the same file for both flags.
		certPEM, _ := os.ReadFile(certFile)
		keyPEM, _ := os.ReadFile(keyFile)
		both := filepath.Join(dir, "self.pem")
		if err := os.WriteFile(both, append(certPEM, keyPEM...), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, _, err = parseCommand(t, "--cert", both, "--key", both, "--to", "localhost:5900")
		if err != nil {
			t.Fatal(err)
		}
		if err := caddy.Validate(cfg); err != nil {
			t.Errorf("one PEM file with certificate and key: caddy validate: %v", err)
		}
	})

	t.Run("admin", func(t *testing.T) {
		cfg, sum, err := parseCommand(t, "--to", "localhost:5900", "--admin", "127.0.0.1:2999")
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Admin.Disabled || cfg.Admin.Listen != "127.0.0.1:2999" || sum.admin != "127.0.0.1:2999" {
			t.Errorf("--admin: %+v", cfg.Admin)
		}
	})
}

func TestCommandConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := writeServerCert(t, dir)
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "--to is required"},
		{[]string{"6080"}, "--to is required"},
		{[]string{"6080", "localhost:5900", "extra"}, "accepts at most 2 arg"},
		{[]string{"--listen", ":6080", "6081", "localhost:5900"}, "listen address is given twice"},
		{[]string{"6080", "localhost:5900", "--to", "localhost:5901"}, "upstream is given twice"},
		{[]string{"--to", "localhost:5900", "--listen", "localhost"}, "a port from 1 to 65535 is required"},
		{[]string{"--to", "localhost:5900", "--listen", "http://localhost:6080"}, "not a URL"},
		{[]string{"--to", "localhost:5900", "--listen", ":6080-6090"}, "one port, not a range"},
		{[]string{"--to", "localhost"}, "--to:"},
		{[]string{"--to", "ws://localhost:5900"}, "not a URL"},
		{[]string{"--to", "localhost:5900", "--web", filepath.Join(dir, "missing")}, "--web:"},
		{[]string{"--to", "localhost:5900", "--web", certFile}, "is not a directory"},
		{[]string{"--to", "localhost:5900", "--web", dir, "--test-page"}, "cannot be combined with --web"},
		{[]string{"--to", "localhost:5900", "--cert", certFile}, "--cert and --key go together"},
		{[]string{"--to", "localhost:5900", "--key", keyFile}, "--cert and --key go together"},
		{[]string{"--to", "localhost:5900", "--cert", filepath.Join(dir, "nope.pem"), "--key", keyFile}, "--cert:"},
		{[]string{"--to", "localhost:5900", "--domain", "https://vnc.example.com"}, "not a domain name"},
		{[]string{"--to", "localhost:5900", "--domain", "vnc.example.com", "--listen", ":80"}, "port 80"},
		{[]string{"--to", "localhost:5900", "--subprotocol", "bad name"}, "not a valid subprotocol"},
		{[]string{"--to", "localhost:5900", "--origin", "not an origin"}, "--origin:"},
		{[]string{"--to", "localhost:5900", "--allowed-host", "vnc.lan:6080"}, "--allowed-host:"},
		{[]string{"--to", "localhost:5900", "--allowed-host", "http://vnc.lan"}, "--allowed-host:"},
		{[]string{"--to", "localhost:5900", "--idle-timeout", "300"}, "--idle-timeout"},
		{[]string{"--to", "localhost:5900", "--idle-timeout", "-5m"}, "not a positive duration"},
		{[]string{"--to", "localhost:5900", "--heartbeat", "often"}, "--heartbeat"},
		{[]string{"--to", "localhost:5900", "--bogus"}, "unknown flag: --bogus"},
	} {
		_, _, err := parseCommand(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one containing %q", c.args, err, c.want)
		}
	}
}

// writeServerCert writes a self-signed certificate for 127.0.0.1 and
// localhost, and its key, as PEM files.
func writeServerCert(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "ws-to-tcp test"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pemBlock("CERTIFICATE", der), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pemBlock("EC PRIVATE KEY", keyDER), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// wsRoundTrip sends msg and reads until the same bytes came back (an echo
// upstream may split them over several messages).
func wsRoundTrip(t *testing.T, ws *websocket.Conn, msg []byte) {
	t.Helper()
	if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
		t.Fatalf("sending: %v", err)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer ws.SetReadDeadline(time.Time{})
	var got []byte
	for len(got) < len(msg) {
		_, b, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("echo: read %q, then %v", got, err)
		}
		got = append(got, b...)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
}

// startCommand runs the built binary as `caddy ws-to-tcp args(addrs)...`
// with n loopback addresses on free ports, and waits until the first one
// accepts connections; it tries other ports when one was taken meanwhile.
func startCommand(t *testing.T, n int, args func(addrs []string) []string) (*caddyProcess, []string) {
	t.Helper()
	bin := buildCaddy(t)
	var p *caddyProcess
	var addrs []string
	withFreePorts(t, n, func(ports []int) error {
		addrs = make([]string, n)
		for i, port := range ports {
			addrs[i] = fmt.Sprintf("127.0.0.1:%d", port)
		}
		p = runCaddy(t, bin, t.TempDir(), append([]string{"ws-to-tcp"}, args(addrs)...)...)
		return p.waitListening(t, addrs[0])
	})
	return p, addrs
}

// runCommand runs the built binary to its end (within 30 s) and returns its
// output and exit code.
func runCommand(t *testing.T, args ...string) (string, int) {
	t.Helper()
	bin := buildCaddy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"ws-to-tcp"}, args...)...)
	cmd.Dir = t.TempDir()
	cmd.Env = caddyEnv(t)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("caddy ws-to-tcp %q did not end within 30s:\n%s", args, out)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	default:
		t.Fatalf("caddy ws-to-tcp %q: %v", args, err)
		return "", 0
	}
}

func dialWS(t *testing.T, d *websocket.Dialer, url string, hdr http.Header) *websocket.Conn {
	t.Helper()
	ws, resp, err := d.Dial(url, hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("WebSocket %s: %v (status %d)", url, err, status)
	}
	t.Cleanup(func() { ws.Close() })
	return ws
}

var wsDialer = &websocket.Dialer{HandshakeTimeout: 10 * time.Second}

// TestCommandRelays runs `caddy ws-to-tcp --listen 127.0.0.1:<port> --to
// <echo>` and goes through it; then checks it bound that address only and
// that Ctrl-C stops it cleanly.
func TestCommandRelays(t *testing.T) {
	t.Parallel()
	echo := echoUpstream(t)
	p, addrs := startCommand(t, 1, func(a []string) []string { return []string{"--listen", a[0], "--to", echo.addr} })
	addr := addrs[0]
	_, port, _ := net.SplitHostPort(addr)

	for _, path := range []string{"/", "/websockify", "/any/path?token=x"} {
		ws := dialWS(t, wsDialer, "ws://"+addr+path, nil)
		wsRoundTrip(t, ws, []byte("hello through ws-to-tcp "+path))
		ws.Close()
	}

	// Not a WebSocket: 426 with Upgrade: websocket.
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired || resp.Header.Get("Upgrade") != "websocket" {
		t.Errorf("GET /: %d, Upgrade %q, %q; want 426 with Upgrade: websocket", resp.StatusCode, resp.Header.Get("Upgrade"), body)
	}

	// A page of another origin is refused; the same origin is accepted.
	_, resp, err = wsDialer.Dial("ws://"+addr+"/", http.Header{"Origin": {"https://evil.example"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-origin handshake: %v, %v; want 403", resp, err)
	}
	ws := dialWS(t, wsDialer, "ws://"+addr+"/", http.Header{"Origin": {"http://" + addr}})
	wsRoundTrip(t, ws, []byte("same origin"))
	ws.Close()

	// 127.0.0.1 only: another loopback address of this machine is not
	// served (it would be with a listener on all interfaces).
	if c, err := net.DialTimeout("tcp", "127.0.0.2:"+port, 5*time.Second); err == nil {
		c.Close()
		t.Errorf("--listen %s also accepts connections on 127.0.0.2: it should bind that address only", addr)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dialing 127.0.0.2:%s: %v, want connection refused", port, err)
	}

	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := p.waitExit(t, 15*time.Second); err != nil {
		t.Errorf("after SIGINT: %v, want exit status 0", err)
	}
	if out := p.output.String(); !strings.Contains(out, "relaying WebSocket clients to TCP") {
		t.Errorf("the output does not say what runs:\n%s", out)
	}
}

// TestCommandPositional runs websockify's form: caddy ws-to-tcp
// 127.0.0.1:<port> <echo>.
func TestCommandPositional(t *testing.T) {
	t.Parallel()
	echo := echoUpstream(t)
	_, addrs := startCommand(t, 1, func(a []string) []string { return []string{a[0], echo.addr} })
	addr := addrs[0]
	ws := dialWS(t, wsDialer, "ws://"+addr+"/websockify", nil)
	wsRoundTrip(t, ws, []byte("positional form"))
	wsRoundTrip(t, ws, bytes.Repeat([]byte{0, 1, 2, 0xff}, 20000))
}

// TestCommandWeb serves files with --web on the same listener as the
// WebSocket, as websockify --web does for noVNC.
func TestCommandWeb(t *testing.T) {
	t.Parallel()
	echo := echoUpstream(t)
	dir := t.TempDir()
	files := map[string]string{
		"index.html":     "<h1>index</h1>\n",
		"vnc.html":       "<title>vnc</title>\n",
		"app/ui.js":      "console.log('ui');\n",
		"sub/secret.txt": "listing must not show me\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, addrs := startCommand(t, 1, func(a []string) []string { return []string{"--listen", a[0], "--to", echo.addr, "--web", dir} })
	addr := addrs[0]

	client := &http.Client{Timeout: 10 * time.Second}
	get := func(path string) (int, string, string) {
		t.Helper()
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	for path, want := range map[string]string{"/": files["index.html"], "/vnc.html": files["vnc.html"], "/app/ui.js": files["app/ui.js"]} {
		if status, _, body := get(path); status != 200 || body != want {
			t.Errorf("GET %s: %d %q, want 200 %q", path, status, body, want)
		}
	}
	if _, ct, _ := get("/app/ui.js"); !strings.Contains(ct, "javascript") {
		t.Errorf("GET /app/ui.js: Content-Type %q, want a JavaScript type (noVNC loads ES modules)", ct)
	}
	if status, _, body := get("/sub/"); status != http.StatusNotFound || strings.Contains(body, "secret.txt") {
		t.Errorf("GET /sub/ (no index): %d %q, want 404 and no listing", status, body)
	}
	if status, _, _ := get("/nope.html"); status != http.StatusNotFound {
		t.Errorf("GET /nope.html: %d, want 404", status)
	}
	ws := dialWS(t, wsDialer, "ws://"+addr+"/vnc.html", nil)
	wsRoundTrip(t, ws, []byte("a WebSocket on a file's path"))
}

// TestCommandTLS serves wss:// with --cert and --key.
func TestCommandTLS(t *testing.T) {
	t.Parallel()
	echo := echoUpstream(t)
	dir := t.TempDir()
	certFile, keyFile := writeServerCert(t, dir)
	_, addrs := startCommand(t, 1, func(a []string) []string {
		return []string{"--listen", a[0], "--to", echo.addr, "--cert", certFile, "--key", keyFile, "--test-page"}
	})
	addr := addrs[0]

	pemBytes, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	for _, serverName := range []string{"", "localhost"} {
		// No SNI (an IP address, as browsers send it) and a name: both
		// get the certificate.
		d := &websocket.Dialer{HandshakeTimeout: 10 * time.Second,
			TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: serverName}}
		ws := dialWS(t, d, "wss://"+addr+"/", nil)
		wsRoundTrip(t, ws, []byte("over TLS, server name "+serverName))
		ws.Close()
	}

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err := client.Get("https://" + addr + "/")
	if err != nil {
		t.Fatalf("GET the test page over HTTPS: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(body, testPageHTML) {
		t.Errorf("GET https://%s/: %d, %d bytes; want 200 and the test page", addr, resp.StatusCode, len(body))
	}

	// TLS only, like websockify --ssl-only.
	resp, err = (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plain HTTP on the TLS listener: %d, want a refusal", resp.StatusCode)
		}
	}
}

// TestCommandSubprotocolsAndAdmin checks --subprotocol and --admin.
func TestCommandSubprotocolsAndAdmin(t *testing.T) {
	t.Parallel()
	echo := echoUpstream(t)
	p, addrs := startCommand(t, 2, func(a []string) []string {
		return []string{"--listen", a[0], "--to", echo.addr, "--subprotocol", "binary,base64", "--admin", a[1]}
	})
	addr, admin := addrs[0], addrs[1]

	_, resp, err := wsDialer.Dial("ws://"+addr+"/", http.Header{"Sec-WebSocket-Protocol": {"chat"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("offering only chat: %v %v, want 400", resp, err)
	}
	d := &websocket.Dialer{HandshakeTimeout: 10 * time.Second, Subprotocols: []string{"chat", "base64"}}
	ws := dialWS(t, d, "ws://"+addr+"/", nil)
	if ws.Subprotocol() != "base64" {
		t.Fatalf("subprotocol %q, want base64", ws.Subprotocol())
	}
	// base64 both ways: text frames of base64, the upstream sees bytes.
	if err := ws.WriteMessage(websocket.TextMessage, []byte(base64.StdEncoding.EncodeToString([]byte("b64 bytes")))); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, msg, err := ws.ReadMessage()
	if err != nil || typ != websocket.TextMessage {
		t.Fatalf("base64 echo: %v %v", typ, err)
	}
	if dec, err := base64.StdEncoding.DecodeString(string(msg)); err != nil || string(dec) != "b64 bytes" {
		t.Errorf("base64 echo: %q (%v)", msg, err)
	}

	// The admin API is on at --admin, and sees the tunnel.
	resp, err = (&http.Client{Timeout: 10 * time.Second}).Get("http://" + admin + "/ws_to_tcp/connections")
	if err != nil {
		t.Fatalf("admin API: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var conns []map[string]any
	if err := json.Unmarshal(body, &conns); resp.StatusCode != 200 || err != nil || len(conns) != 1 || conns[0]["subprotocol"] != "base64" {
		t.Errorf("GET /ws_to_tcp/connections: %d %s (%v), want the one tunnel", resp.StatusCode, body, err)
	}
	ws.Close()

	// caddy stop through the admin endpoint.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stop := exec.CommandContext(ctx, buildCaddy(t), "stop", "--address", admin)
	stop.Env = p.env
	if out, err := stop.CombinedOutput(); err != nil {
		t.Fatalf("caddy stop --address %s: %v\n%s", admin, err, out)
	}
	if err := p.waitExit(t, 15*time.Second); err != nil {
		t.Errorf("after caddy stop: %v, want exit status 0", err)
	}
}

// TestCommandHelp checks that --help describes every flag, both forms and
// the examples.
func TestCommandHelp(t *testing.T) {
	t.Parallel()
	out, code := runCommand(t, "--help")
	if code != 0 {
		t.Fatalf("--help: exit status %d\n%s", code, out)
	}
	for _, want := range []string{
		"caddy ws-to-tcp --to <host:port>", "caddy ws-to-tcp [<host>:]<port> <host:port>",
		"--listen", "--to", "--web", "--domain", "--cert", "--key", "--subprotocol", "--idle-timeout",
		"--heartbeat", "--origin", "--test-page", "--admin", "--access-log", "--debug",
		"Examples:", "--web /usr/share/novnc", "refused", "admin endpoint is off", "default :6080",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("--help does not mention %q", want)
		}
	}
	if t.Failed() {
		t.Logf("--help:\n%s", out)
	}
}

// TestCommandBadUsage checks that mistakes end the command at once with a
// clear message and a non-zero exit status.
func TestCommandBadUsage(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "--to is required"},
		{[]string{"--bogus"}, "unknown flag: --bogus"},
		{[]string{"1", "2", "3"}, "accepts at most 2 arg(s)"},
		{[]string{"--to", "localhost:5900", "--listen", "localhost"}, "a port from 1 to 65535 is required"},
		{[]string{"--to", "localhost:5900", "--idle-timeout", "soon"}, "--idle-timeout"},
		{[]string{"--to", "localhost:5900", "--web", "/nonexistent/dir"}, "--web"},
		{[]string{"--to", "localhost:5900", "--cert", "/nonexistent/cert.pem"}, "--cert and --key go together"},
	} {
		out, code := runCommand(t, c.args...)
		if code == 0 || !strings.Contains(out, c.want) {
			t.Errorf("caddy ws-to-tcp %q: exit status %d, output:\n%s\nwant a non-zero status and %q", c.args, code, out, c.want)
		}
	}
}

// TestCommandRebinding: `caddy ws-to-tcp --listen 127.0.0.1:<port>` is
// plain HTTP, where a page under an attacker's name pointed at 127.0.0.1
// (DNS rebinding) sends a Host and an Origin that agree: refused with 403.
// The address itself, localhost, and names given with --allowed-host or
// --origin are admitted.
func TestCommandRebinding(t *testing.T) {
	echo := echoUpstream(t)
	_, addrs := startCommand(t, 1, func(a []string) []string {
		_, p, _ := net.SplitHostPort(a[0])
		return []string{"--listen", a[0], "--to", echo.addr,
			"--allowed-host", "vnc.home.arpa", "--origin", "http://pc.lan:" + p}
	})
	addr := addrs[0]
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	at := func(name string) http.Header {
		hostport := fmt.Sprintf("%s:%d", name, port)
		return http.Header{"Host": {hostport}, "Origin": {"http://" + hostport}}
	}
	_, resp, err := wsDialer.Dial("ws://"+addr+"/", at("rebind.attacker.example"))
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("a rebound name: %v, %v; want 403", resp, err)
	}
	for _, name := range []string{"127.0.0.1", "localhost", "vnc.home.arpa", "pc.lan"} {
		ws := dialWS(t, wsDialer, "ws://"+addr+"/", at(name))
		wsRoundTrip(t, ws, []byte("through "+name))
		ws.Close()
	}
}

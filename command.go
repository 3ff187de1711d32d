package wstotcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/fileserver"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name: "ws-to-tcp",
		Usage: "--to <host:port> [--listen <addr>] [--web <dir>] [--domain <name> | --cert <file> --key <file>] [flags]\n" +
			"  caddy ws-to-tcp [<host>:]<port> <host:port> [flags]",
		Short:     "Relays WebSocket clients to a TCP server, like websockify",
		Long:      wsToTCPLong,
		CobraFunc: wsToTCPCobra,
	})
}

const wsToTCPLong = `
Relays every WebSocket client to a TCP (or Unix-socket) server, byte for
byte, as websockify does, e.g. for noVNC in front of a VNC server. It is
the ws_to_tcp handler in a configuration that this command builds and
runs, as 'caddy reverse-proxy' does for reverse_proxy.

  caddy ws-to-tcp --listen :6080 --to localhost:5900
  caddy ws-to-tcp 6080 localhost:5900          (websockify's form)

The WebSocket is served on every path. --listen, or the first positional
argument, is the address to bind: a port alone (6080 or :6080) binds all
interfaces, 127.0.0.1:6080 binds that address only. Default: :6080, or
:443 with --domain.

--to, or the second positional argument, is the server to relay to:
host:port, unix//path/to.sock, or tls/host:port (TLS to the server,
checked against the system's roots). --to may be repeated: the servers
are then used as the upstreams of one ws_to_tcp directive are (see the
README).

Requests that are not WebSocket upgrades get 426 Upgrade Required,
unless:
  --web DIR       serves the files in DIR on the same listener (like
                  websockify --web; no directory listings), e.g.
                  --web /usr/share/novnc for noVNC's vnc.html;
  --test-page     serves the built-in test page on every GET: a page to
                  connect, send text or hex, and see what comes back.
                  It cannot be combined with --web (both would answer
                  GET); use a Caddyfile for that (see the README).

The listener speaks plain HTTP (ws://) unless one of these is given:
  --domain NAME   HTTPS (wss://) for NAME, with a certificate that Caddy
                  obtains and renews itself (NAME must resolve to this
                  machine, and ports 80 and 443 must be reachable for the
                  ACME challenges). Only requests for NAME are answered.
  --cert FILE --key FILE
                  HTTPS (wss://) with that certificate and key (PEM
                  files), served whatever name the client asks for.
With HTTPS the listener accepts TLS only (websockify's --ssl-only).

Origins: browsers send an Origin header. A WebSocket opened by a page of
the same origin (scheme, host and port: the test page, or noVNC served by
--web) is accepted; one opened by a page of another origin is refused
with 403, unless --origin allows it (repeat it or separate patterns with
commas; e.g. --origin https://app.example.com, or
--origin 'https://*.example.com'). Clients that are not browsers send no
Origin and are accepted.

Over plain HTTP, a page is taken for the same origin only when the name
it was loaded from is an IP address, localhost (or *.localhost), or a
name given with --allowed-host (or in an --origin pattern): any other
name could be an attacker's, pointed at this machine after the page
loaded (DNS rebinding), and is refused with 403. E.g. for noVNC at
http://pc.lan:6080/vnc.html, add --allowed-host pc.lan. With --domain or
--cert the certificate binds the name, and this does not apply.

--subprotocol NAME accepts only these WebSocket subprotocols (repeat it or
separate names with commas), in order of preference: 'binary' and
'base64' as in websockify (base64 text frames both ways), any other name
is echoed and the data passed through. A client offering none of them
gets 400. Default: any offer is accepted and the client's first one
echoed.

--idle-timeout D closes a tunnel (Close 1008) that carried no data either
way for D, e.g. 10m. Not websockify's --idle-timeout, which stops the
whole server when no client has been connected for that long.
--heartbeat D pings each client every D; one that answers nothing within
D is dropped (Close 1008), with its upstream connection.

The admin endpoint is off, as with 'caddy reverse-proxy' and 'caddy
file-server' (so this command never collides with a running Caddy on
localhost:2019): stop it with Ctrl-C or SIGTERM. --admin ADDR turns it on
at ADDR (e.g. localhost:2020), for 'caddy stop --address ADDR' and the
ws_to_tcp admin API (GET /ws_to_tcp/connections and the rest).

Logs go to stderr: one line per closed tunnel; --access-log adds one line
per HTTP request and --debug turns on debug logs. For anything else
(authentication, connection limits, logs to files, several sites) write a
Caddyfile with the ws_to_tcp directive (see the README).
`

const wsToTCPExample = `  # noVNC at http://<this host>:6080/vnc.html, for the VNC server on port 5900
  caddy ws-to-tcp --listen :6080 --to localhost:5900 --web /usr/share/novnc

  # websockify's positional form, bound to the loopback interface only
  caddy ws-to-tcp 127.0.0.1:6080 localhost:5900

  # HTTPS with an automatic certificate: wss://vnc.example.com/
  caddy ws-to-tcp --domain vnc.example.com --to localhost:5900 --web /usr/share/novnc

  # HTTPS with certificate files; only binary and base64 clients
  caddy ws-to-tcp --listen :6080 --cert cert.pem --key key.pem --subprotocol binary,base64 --to localhost:5900

  # try the relay from a browser at http://localhost:6080/
  caddy ws-to-tcp --listen localhost:6080 --to localhost:7000 --test-page`

// wsToTCPCobra sets up the command's flags; it is also how the tests build
// the same flag set.
func wsToTCPCobra(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringP("listen", "l", "", "The `address` to listen on: [host]:port, or a port (default :6080, or :443 with --domain)")
	fl.StringArrayP("to", "t", nil, "The `server` to relay to: host:port, unix//path or tls/host:port (repeatable)")
	fl.StringP("web", "w", "", "Serve the files in `dir` to requests that are not WebSockets")
	fl.StringP("domain", "d", "", "Serve HTTPS for this domain `name`, with an automatic certificate")
	fl.String("cert", "", "Serve HTTPS with this certificate `file` (PEM; needs --key)")
	fl.String("key", "", "The private key `file` (PEM) of --cert")
	fl.StringSlice("subprotocol", nil, "Accepted WebSocket subprotocol `names`, in order of preference (repeatable, or comma-separated)")
	fl.String("idle-timeout", "", "Close a tunnel that carried no data for this `duration` (e.g. 10m; default: no limit)")
	fl.String("heartbeat", "", "Ping each client every `duration` and drop the silent ones (e.g. 30s; default: off)")
	fl.StringSlice("origin", nil, "Also accept WebSockets from pages of these `origins` (repeatable, or comma-separated)")
	fl.StringSlice("allowed-host", nil, "Over plain HTTP, also trust these host `names` for same-origin pages (repeatable, or comma-separated)")
	fl.Bool("test-page", false, "Serve the built-in test page on every GET")
	fl.String("admin", "", "Turn the admin endpoint on at this `address` (default: off)")
	fl.BoolP("access-log", "a", false, "Log every HTTP request")
	fl.BoolP("debug", "v", false, "Turn on debug logs")
	cmd.Args = cobra.MaximumNArgs(2)
	cmd.Example = wsToTCPExample
	cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdWSToTCP)
}

func cmdWSToTCP(fs caddycmd.Flags) (int, error) {
	caddy.TrapSignals()

	cfg, sum, err := wsToTCPConfig(fs)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if strings.HasPrefix(sum.url, "wss://") {
		serveHTTP2WebSockets()
	}
	if err := caddy.Run(cfg); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	fields := []zap.Field{
		zap.String("listen", sum.listen),
		zap.String("url", sum.url),
		zap.Strings("to", sum.to),
	}
	if sum.web != "" {
		fields = append(fields, zap.String("web", sum.web))
	}
	if sum.admin != "" {
		fields = append(fields, zap.String("admin", sum.admin))
	}
	caddy.Log().Info("relaying WebSocket clients to TCP", fields...)
	select {}
}

// wsToTCPSummary is what the command logs once it runs.
type wsToTCPSummary struct {
	listen string   // the listener address
	url    string   // ws:// or wss:// URL for clients
	to     []string // upstream addresses
	web    string   // absolute path of --web, if any
	admin  string   // admin address, "" when off
}

// certTag marks the certificate loaded from --cert, so that the
// connection policy serves it whatever server name a client sends (or
// none, as browsers do for IP addresses).
const certTag = "ws-to-tcp"

// wsToTCPConfig builds the configuration from the command line. It checks
// every value, so that mistakes are reported with the flag's name before
// anything starts.
func wsToTCPConfig(fs caddycmd.Flags) (*caddy.Config, wsToTCPSummary, error) {
	var sum wsToTCPSummary
	listen := fs.String("listen")
	to, err := fs.GetStringArray("to")
	if err != nil {
		return nil, sum, err
	}
	web := fs.String("web")
	domain := strings.TrimSpace(fs.String("domain"))
	certFile, keyFile := fs.String("cert"), fs.String("key")
	subprotocols, err := fs.GetStringSlice("subprotocol")
	if err != nil {
		return nil, sum, err
	}
	origins, err := fs.GetStringSlice("origin")
	if err != nil {
		return nil, sum, err
	}
	allowedHosts, err := fs.GetStringSlice("allowed-host")
	if err != nil {
		return nil, sum, err
	}
	testPage := fs.Bool("test-page")
	adminAddr := fs.String("admin")

	// websockify's positional form: [host:]port [host:port].
	switch args := fs.Args(); len(args) {
	case 2:
		if len(to) > 0 {
			return nil, sum, fmt.Errorf("the upstream is given twice: as the argument %q and with --to", args[1])
		}
		to = []string{args[1]}
		fallthrough
	case 1:
		if listen != "" {
			return nil, sum, fmt.Errorf("the listen address is given twice: as the argument %q and with --listen", args[0])
		}
		listen = args[0]
	case 0:
	default:
		return nil, sum, fmt.Errorf("expected at most two arguments, [host:]port and host:port; got %d", len(args))
	}

	useTLS := domain != "" || certFile != ""
	if listen == "" {
		listen = ":6080"
		if domain != "" {
			listen = ":443"
		}
	}
	listen, port, err := normalizeListen(listen)
	if err != nil {
		return nil, sum, err
	}
	if domain != "" {
		if strings.ContainsAny(domain, "/:*{} ") {
			return nil, sum, fmt.Errorf("--domain: %q is not a domain name (give the name alone, e.g. vnc.example.com)", domain)
		}
		if port == caddyhttp.DefaultHTTPPort && certFile == "" {
			return nil, sum, fmt.Errorf("--domain serves HTTPS, which Caddy does not do on the HTTP port 80: listen on another port (default :443)")
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, sum, fmt.Errorf("--cert and --key go together: give both files, or neither")
	}
	for _, f := range []struct{ flag, path string }{{"--cert", certFile}, {"--key", keyFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, sum, fmt.Errorf("%s: %v", f.flag, err)
		}
	}

	if len(to) == 0 {
		return nil, sum, fmt.Errorf("--to is required: the server to relay to, e.g. --to localhost:5900 " +
			"(or websockify's form: caddy ws-to-tcp 6080 localhost:5900)")
	}
	h := &Handler{TestPage: testPage}
	for _, a := range to {
		u := &Upstream{Dial: strings.TrimSpace(a)}
		if err := u.parse(); err != nil {
			return nil, sum, fmt.Errorf("--to: %v", err)
		}
		h.Upstreams = append(h.Upstreams, u)
	}
	for _, p := range subprotocols {
		p = strings.TrimSpace(p)
		if !isToken(p) {
			return nil, sum, fmt.Errorf("--subprotocol: %q is not a valid subprotocol name", p)
		}
		h.Subprotocols = append(h.Subprotocols, p)
	}
	for _, o := range origins {
		h.Origins = append(h.Origins, strings.TrimSpace(o))
	}
	if len(h.Origins) > 0 {
		if _, err := compileOrigins(h.Origins); err != nil {
			return nil, sum, fmt.Errorf("--origin: %v", err)
		}
	}
	for _, n := range allowedHosts {
		h.AllowedHosts = append(h.AllowedHosts, strings.TrimSpace(n))
	}
	if _, err := compileAllowedHosts(h.AllowedHosts); err != nil {
		return nil, sum, fmt.Errorf("--allowed-host: %v", err)
	}
	if domain != "" {
		// the name the certificate is for; over TLS the Host is bound by
		// it anyway, but the rule then reads the same whatever the listener
		h.AllowedHosts = append(h.AllowedHosts, domain)
	}
	if h.IdleTimeout, err = durationFlag(fs, "idle-timeout"); err != nil {
		return nil, sum, err
	}
	if h.HeartbeatInterval, err = durationFlag(fs, "heartbeat"); err != nil {
		return nil, sum, err
	}

	// Non-WebSocket requests: the test page, the files, or 426.
	handlers := []json.RawMessage{caddyconfig.JSONModuleObject(h, "handler", "ws_to_tcp", nil)}
	switch {
	case web != "" && testPage:
		return nil, sum, errors.New("--test-page answers every GET, so it cannot be combined with --web; " +
			"to have both, write a Caddyfile with the test page on a path of its own (see the README, \"Test page\")")
	case web != "":
		abs, err := filepath.Abs(web)
		if err != nil {
			return nil, sum, fmt.Errorf("--web: %v", err)
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return nil, sum, fmt.Errorf("--web: %v", err)
		}
		if !fi.IsDir() {
			return nil, sum, fmt.Errorf("--web: %s is not a directory", abs)
		}
		sum.web = abs
		handlers = append(handlers, caddyconfig.JSONModuleObject(&fileserver.FileServer{Root: abs}, "handler", "file_server", nil))
	default:
		handlers = append(handlers, caddyconfig.JSONModuleObject(&caddyhttp.StaticResponse{
			StatusCode: caddyhttp.WeakString(fmt.Sprint(http.StatusUpgradeRequired)),
			Headers:    http.Header{"Upgrade": {"websocket"}, "Content-Type": {"text/plain; charset=utf-8"}},
			Body:       "426 Upgrade Required: this address relays WebSocket connections to a TCP server; connect with a WebSocket client.\n",
		}, "handler", "static_response", nil))
	}

	route := caddyhttp.Route{HandlersRaw: handlers}
	if domain != "" {
		route.MatcherSetsRaw = []caddy.ModuleMap{{"host": caddyconfig.JSON(caddyhttp.MatchHost{domain}, nil)}}
	}
	server := &caddyhttp.Server{
		Listen:            []string{listen},
		Routes:            caddyhttp.RouteList{route},
		ReadHeaderTimeout: caddy.Duration(10 * time.Second),
		// WebSockets are upgraded over HTTP/1.1 only (extended CONNECT
		// over HTTP/2 and 3 is refused), so no HTTP/3: no UDP listener
		// and no Alt-Svc header inviting browsers to it. HTTP/2 only
		// with TLS, for --web's files.
		Protocols: []string{"h1"},
	}
	if useTLS {
		server.Protocols = []string{"h1", "h2"}
	}
	if fs.Bool("access-log") {
		server.Logs = &caddyhttp.ServerLogConfig{}
	}
	apps := caddy.ModuleMap{}
	switch {
	case certFile != "":
		// The given certificate for every connection; nothing automatic
		// (no ACME, no redirect listener on port 80).
		server.AutoHTTPS = &caddyhttp.AutoHTTPSConfig{Disabled: true}
		server.TLSConnPolicies = caddytls.ConnectionPolicies{{
			CertSelection: &caddytls.CustomCertSelectionPolicy{AnyTag: []string{certTag}},
		}}
		apps["tls"] = caddyconfig.JSON(caddytls.TLS{
			CertificatesRaw: caddy.ModuleMap{"load_files": caddyconfig.JSON(caddytls.FileLoader{{
				Certificate: certFile, Key: keyFile, Tags: []string{certTag},
			}}, nil)},
		}, nil)
	case domain != "":
		// Automatic HTTPS finds the name in the host matcher.
	default:
		server.AutoHTTPS = &caddyhttp.AutoHTTPSConfig{Disabled: true}
	}
	apps["http"] = caddyconfig.JSON(caddyhttp.App{Servers: map[string]*caddyhttp.Server{"ws_to_tcp": server}}, nil)

	persist := false
	cfg := &caddy.Config{
		Admin:   &caddy.AdminConfig{Disabled: true, Config: &caddy.ConfigSettings{Persist: &persist}},
		AppsRaw: apps,
	}
	if adminAddr != "" {
		if _, err := caddy.ParseNetworkAddress(adminAddr); err != nil {
			return nil, sum, fmt.Errorf("--admin: %v", err)
		}
		cfg.Admin.Disabled = false
		cfg.Admin.Listen = adminAddr
		sum.admin = adminAddr
	}
	if fs.Bool("debug") {
		cfg.Logging = &caddy.Logging{Logs: map[string]*caddy.CustomLog{
			"default": {BaseLog: caddy.BaseLog{Level: zap.DebugLevel.CapitalString()}},
		}}
	}

	sum.listen = listen
	sum.to = to
	scheme, host := "ws", listen
	if useTLS {
		scheme = "wss"
	}
	if domain != "" {
		host = domain
		if port != caddyhttp.DefaultHTTPSPort {
			host += ":" + strconv.Itoa(port)
		}
	} else if strings.HasPrefix(host, ":") {
		host = "localhost" + host
	}
	sum.url = scheme + "://" + host + "/"
	return cfg, sum, nil
}

// normalizeListen turns websockify's listen forms ("6080", "host:6080")
// into a Caddy listener address for exactly one port, and returns the
// port (0 for a Unix socket).
func normalizeListen(s string) (string, int, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "://") {
		return "", 0, fmt.Errorf("listen address %q: give [host]:port (or a port), not a URL", s)
	}
	if s != "" && strings.Trim(s, "0123456789") == "" {
		s = ":" + s // a port alone
	}
	na, err := caddy.ParseNetworkAddress(s)
	if err != nil {
		return "", 0, fmt.Errorf("listen address %q: %v (expected [host]:port, or a port)", s, err)
	}
	if na.IsUnixNetwork() || na.IsFdNetwork() {
		return s, 0, nil
	}
	if na.StartPort != na.EndPort {
		return "", 0, fmt.Errorf("listen address %q: give one port, not a range", s)
	}
	if na.StartPort == 0 || na.StartPort > 65535 {
		return "", 0, fmt.Errorf("listen address %q: a port from 1 to 65535 is required, e.g. :6080", s)
	}
	return s, int(na.StartPort), nil
}

// durationFlag parses a duration flag ("" for none) the way the Caddyfile
// does (5m, 1h30m, 2d).
func durationFlag(fs caddycmd.Flags, name string) (caddy.Duration, error) {
	s := strings.TrimSpace(fs.String(name))
	if s == "" {
		return 0, nil
	}
	d, err := caddy.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--%s: %q is not a positive duration (use a unit: 30s, 10m, 1h)", name, s)
	}
	return caddy.Duration(d), nil
}

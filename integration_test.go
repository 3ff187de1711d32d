package wstotcp

// The test suite, in tiers:
//
//   - unit tests of one function or type (the *_test.go files named after
//     the file they test);
//   - tunnel tests without Caddy, over real sockets and net.Pipe, and the
//     timers under testing/synctest: internal/relay and internal/wsframe;
//   - handler tests: a provisioned Handler served by net/http's server
//     (handlerServer, in testutil_test.go), no Caddy, in parallel;
//   - real-Caddy tests, for what needs Caddy (Caddyfile, reload, admin API,
//     events, metrics, other handlers of a route, stop): this file's
//     harness, one Caddy at a time in a process (the package's tests run
//     in a few processes: shards_test.go), and the core end-to-end tests;
//   - the built binary as a subprocess (example_test.go, command_test.go),
//     and real peers: Chromium, noVNC, nginx, Redis.
//
// No test asserts a wall-clock bound: timing rules are checked in virtual
// time (synctest), speed claims are benchmarks.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/testnet"
	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// ioTimeout bounds a test's wait for a peer or a state: generous, for
// -race on a loaded 2-core machine; a test that reaches it has failed.
const ioTimeout = 30 * time.Second

// TestMain runs the tests in shards (shards_test.go): processes of this
// binary, each with its share of the tests. A shard runs its tests, then
// checks that none left a tunnel or a relay goroutine behind: the tests in
// parallel cannot check the process-wide registry while others run, so the
// last word is here. It starts the browser tests' Chromium in the
// background first, when they are to run.
//
// First, it makes sure GODEBUG=http2xconnect=1 is set, as the README says
// to run Caddy for WebSockets over HTTP/2: Go's HTTP/2 server reads it
// from the environment once, at start, so the test binary starts itself
// again with it set.
func TestMain(m *testing.M) {
	if !http2ExtendedConnect() {
		exe, err := os.Executable()
		if err == nil {
			// One GODEBUG entry: with two, the first would win.
			var env []string
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "GODEBUG=") {
					env = append(env, kv)
				}
			}
			godebug := strings.Trim(os.Getenv("GODEBUG")+",http2xconnect=1", ",")
			err = syscall.Exec(exe, os.Args, append(env, "GODEBUG="+godebug))
		}
		fmt.Fprintln(os.Stderr, "restarting the tests with GODEBUG=http2xconnect=1:", err)
		os.Exit(2)
	}
	flag.Parse()
	if code, ok := runShards(); ok {
		// The shards ran the tests; this process only waited on them, so
		// it skips the race runtime's second of sleep at a clean exit
		// (see childEnv), which os.Exit would take on the run's critical
		// path. Nothing is buffered: the shards' output was written whole.
		syscall.Exit(code)
	}
	// The tests marked parallel wait on sockets and child processes more
	// than on a CPU: one per CPU, the default, leaves the machine idle.
	if f := flag.Lookup("test.parallel"); f.Value.String() == strconv.Itoa(runtime.GOMAXPROCS(0)) {
		f.Value.Set(strconv.Itoa(4 * runtime.GOMAXPROCS(0)))
	}
	if runs(browserTests...) && flagValue("test.list") == "" {
		go startChromium() // its start-up overlaps the tests before the browser's
	}
	code := m.Run()
	stopChromium()
	if code == 0 {
		if err := noTunnelsWithin(ioTimeout / 3); err != nil {
			fmt.Fprintln(os.Stderr, "after the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// runs reports whether the -run pattern selects one of the tests.
func runs(tests ...string) bool {
	pattern := flag.Lookup("test.run").Value.String()
	if pattern == "" {
		return true
	}
	re, err := regexp.Compile(strings.SplitN(pattern, "/", 2)[0])
	if err != nil {
		return true
	}
	return slices.ContainsFunc(tests, re.MatchString)
}

// eventually waits until cond holds and fails the test if it does not
// within ioTimeout: the one wait for a state that no event announces (a
// count, a list, a health flag, a log line, a server that listens).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !within(ioTimeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", ioTimeout, what)
	}
}

// within polls cond, quickly at first, until it holds (true) or d has
// passed (false). Tests call eventually; cleanups, which must go on after
// a failure, call this.
func within(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(2*pause, 20*time.Millisecond)
	}
	return true
}

// Free ports.

// freePort returns a loopback port that was free a moment ago. Another
// process may take it before the caller binds it: bind it through
// withFreePorts, which tries again.
func freePort(t testing.TB) int {
	t.Helper()
	return freePorts(t, 1)[0]
}

// freePorts returns n distinct loopback ports that were free a moment ago
// (testnet.FreePorts: outside the kernel's ephemeral range, so that no
// outgoing connection takes one meanwhile). Distinct: Caddy's listeners
// (SO_REUSEPORT) would share a port given twice — its admin endpoint and a
// site on one port, each answering half.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports, err := testnet.FreePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

// withFreePorts calls start with n ports that were free a moment ago,
// and again with others when it fails because one of them was taken in
// between (an error that says "address already in use", as Go, Caddy,
// nginx and Redis say it). Any other error fails the test.
func withFreePorts(t testing.TB, n int, start func(ports []int) error) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		err := start(freePorts(t, n))
		if err == nil {
			return
		}
		if attempt == 5 || !portTaken(err) {
			t.Fatal(err)
		}
	}
}

func portTaken(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(strings.ToLower(err.Error()), "address already in use")
}

// refusedAddr returns a loopback address where connections are refused,
// and stay refused until the test ends: a socket is bound to it, so that no
// other test or process can listen there, and does not listen. (A port
// that was free a moment ago can be taken by anyone.)
func refusedAddr(t testing.TB) string {
	t.Helper()
	port, release := holdPort(t, 0)
	t.Cleanup(release)
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// holdPort binds a socket that does not listen to 127.0.0.1:port (0: a
// free port), and returns the port and the function that closes it: while
// it is held, dials to the port are refused. A free port is held for this
// test alone; a given port (a listener's just closed, whose connections
// are still open) needs SO_REUSEADDR, which another SO_REUSEADDR socket
// could share: it is held against most, not all.
func holdPort(t testing.TB, port int) (int, func()) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if port != 0 {
		if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
			syscall.Close(fd)
			t.Fatal(err)
		}
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		t.Fatalf("holding port %d: %v", port, err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	var once sync.Once
	return sa.(*syscall.SockaddrInet4).Port, func() { once.Do(func() { syscall.Close(fd) }) }
}

// The real-Caddy harness.

// testServer is an in-process Caddy on ports chosen at run time, so that
// test runs do not collide with each other or with a real Caddy. Caddy
// runs one configuration per process: tests that start one run one at a
// time (they cannot be parallel).
type testServer struct {
	wsEndpoint
	httpPort  int
	adminPort int
	httpsPort int      // for {HTTPS} and {HTTPS_PORT}; chosen with the others, so that a retry changes it too
	logs      *logSink // every log line of this Caddy, in memory
	opts      caddyOptions
}

// caddyOptions adds to the harness's global options.
type caddyOptions struct {
	globals   string // more global options (an events block, say)
	logLevel  string // of the global log; default DEBUG
	logFormat string // the global log's format; default JSON (a filter, say)
}

// caddyMu is held by the test whose Caddy runs.
var caddyMu sync.Mutex

// startCaddy loads a Caddyfile whose site blocks may use {HTTP} for the
// site address (http://127.0.0.1:<port>) and {ADMIN} for the admin address.
// It stops Caddy when the test ends, after checking that no tunnel is left.
func startCaddy(t testing.TB, sites string) *testServer {
	t.Helper()
	return startCaddyWith(t, caddyOptions{}, sites)
}

// startCaddyWith is startCaddy with more global options.
func startCaddyWith(t testing.TB, opts caddyOptions, sites string) *testServer {
	t.Helper()
	caddyMu.Lock()
	s := &testServer{wsEndpoint: wsEndpoint{t: t}, logs: newLogSink(), opts: opts}
	activeLogs.Store(s.logs)
	t.Cleanup(func() {
		waitNoTunnels(t)
		caddy.Stop()
		caddyMu.Unlock()
		if t.Failed() {
			t.Logf("Caddy's log (tail):\n%s", s.logs.tail("", 16<<10))
		}
	})
	withFreePorts(t, 3, func(ports []int) error {
		s.httpPort, s.adminPort, s.httpsPort = ports[0], ports[1], ports[2]
		s.host = fmt.Sprintf("127.0.0.1:%d", s.httpPort)
		if err := s.tryLoad(sites); err != nil {
			return fmt.Errorf("loading config: %w", err)
		}
		return nil
	})
	return s
}

// load (re)loads the configuration, as `caddy reload` does.
func (s *testServer) load(sites string) {
	s.t.Helper()
	if err := s.tryLoad(sites); err != nil {
		s.t.Fatalf("loading config: %v", err)
	}
}

// loadWithGlobals reloads sites like load, with other global options and
// the global log at level.
func (s *testServer) loadWithGlobals(globals, level, sites string) {
	s.t.Helper()
	s.opts.globals, s.opts.logLevel = globals, level
	s.load(sites)
}

func (s *testServer) tryLoad(sites string) error {
	level, format := s.opts.logLevel, s.opts.logFormat
	if level == "" {
		level = "DEBUG"
	}
	if format == "" {
		format = "format json"
	}
	gracePeriod := "grace_period 1ns"
	if strings.Contains(s.opts.globals, "grace_period") {
		gracePeriod = ""
	}
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	http_port %d
	skip_install_trust
	%s
	persist_config off
	log {
		output ws_to_tcp_test
		level %s
		%s
	}
%s
}
`, s.adminPort, s.httpPort, gracePeriod, level, format, s.opts.globals) + sites
	cfg = strings.NewReplacer(
		"{HTTP}", "http://"+s.host,
		"{HTTPS}", fmt.Sprintf("https://localhost:%d", s.httpsPort),
		"{HTTPS_PORT}", fmt.Sprint(s.httpsPort),
		"{ADMIN}", fmt.Sprintf("127.0.0.1:%d", s.adminPort),
	).Replace(cfg)
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return err
	}
	return caddy.Load(js, true)
}

// startWithGlobals starts Caddy like startCaddy, with extra global options
// (an events block, say) and the global log at level.
func startWithGlobals(t *testing.T, globals, level, sites string) *testServer {
	t.Helper()
	return startCaddyWith(t, caddyOptions{globals: globals, logLevel: level}, sites)
}

// startCaddyWithLog is startCaddy with the default logger's format (a
// filter) set.
func startCaddyWithLog(t *testing.T, logSettings, sites string) *testServer {
	t.Helper()
	return startCaddyWith(t, caddyOptions{logFormat: logSettings}, sites)
}

// Caddy's logs, in memory.

func init() {
	caddy.RegisterModule(testLogWriter{})
}

// testLogWriter is a log output for the tests, `output ws_to_tcp_test
// [<stream>]`: it keeps the lines in memory, in the running test Caddy's
// logSink. The global log writes to the stream "", a site's access log
// to one it names.
type testLogWriter struct {
	Stream string `json:"stream,omitempty"`
	sink   *logSink
}

// activeLogs is the sink of the Caddy that runs (there is one at a time).
var activeLogs atomic.Pointer[logSink]

func (testLogWriter) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID: "caddy.logging.writers.ws_to_tcp_test",
		New: func() caddy.Module {
			return &testLogWriter{sink: activeLogs.Load()}
		},
	}
}

func (w *testLogWriter) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		w.Stream = d.Val()
	}
	return nil
}

func (w *testLogWriter) String() string { return "ws_to_tcp_test " + w.Stream }

// WriterKey is unique per sink: a writer of an earlier test is never
// reused.
func (w *testLogWriter) WriterKey() string {
	return fmt.Sprintf("ws_to_tcp_test:%p:%s", w.sink, w.Stream)
}

func (w *testLogWriter) OpenWriter() (io.WriteCloser, error) {
	if w.sink == nil {
		return nil, errors.New("ws_to_tcp_test: no test Caddy is running")
	}
	return w.sink.stream(w.Stream), nil
}

// logSink holds the lines written to each stream.
type logSink struct {
	mu      sync.Mutex
	streams map[string]*bytes.Buffer
}

func newLogSink() *logSink { return &logSink{streams: map[string]*bytes.Buffer{}} }

type sinkWriter struct {
	s    *logSink
	name string
}

func (w sinkWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.streams[w.name].Write(p)
}

func (sinkWriter) Close() error { return nil }

func (s *logSink) stream(name string) sinkWriter {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams[name] == nil {
		s.streams[name] = new(bytes.Buffer)
	}
	return sinkWriter{s, name}
}

// text is everything written to the stream so far.
func (s *logSink) text(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.streams[name]; b != nil {
		return b.String()
	}
	return ""
}

func (s *logSink) tail(name string, n int) string {
	text := s.text(name)
	return text[max(0, len(text)-n):]
}

// logLines returns the JSON lines of a stream ("" for Caddy's global log);
// a line that is not JSON fails the test.
func (s *testServer) logLines(stream string) []map[string]any {
	s.t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s.logs.text(stream)))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			s.t.Fatalf("log %q: a line that is not JSON: %q", stream, sc.Bytes())
		}
		out = append(out, m)
	}
	return out
}

// waitLog returns the first line of the stream that pred accepts, once it
// is written.
func (s *testServer) waitLog(stream, what string, pred func(map[string]any) bool) map[string]any {
	s.t.Helper()
	var found map[string]any
	eventually(s.t, fmt.Sprintf("a log line %s in log %q", what, stream), func() bool {
		for _, m := range s.logLines(stream) {
			if pred(m) {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// waitClosedAs waits for the "tunnel closed" line of the user's tunnel.
func (s *testServer) waitClosedAs(user string) map[string]any {
	s.t.Helper()
	return s.waitLog("", "tunnel closed with user "+user, func(m map[string]any) bool {
		return m["msg"] == "tunnel closed" && m["user"] == user
	})
}

// waitRejection waits for the module's log line of a refusal.
func (s *testServer) waitRejection(reason string, status int) map[string]any {
	s.t.Helper()
	return s.waitLog("", fmt.Sprintf("handshake rejected %s %d", reason, status), func(m map[string]any) bool {
		return m["msg"] == "handshake rejected" && m["reason"] == reason && m["status"] == float64(status)
	})
}

// waitLogLine returns the line with this message and conn_id.
func (s *testServer) waitLogLine(msg, connID string) map[string]any {
	s.t.Helper()
	return s.waitLog("", fmt.Sprintf("%q of %s", msg, connID), func(m map[string]any) bool {
		return m["msg"] == msg && m["conn_id"] == connID
	})
}

// WebSocket clients.

// endpoint is where a test opens WebSockets: a real Caddy (testServer) or
// a handler served without Caddy (handlerServer).
type endpoint interface {
	wsURL(path string) string
	httpURL(path string) string
	dial(path string, hdr http.Header) *websocket.Conn
	tryDial(path string, hdr http.Header) (*websocket.Conn, *http.Response, error)
}

// wsEndpoint implements endpoint for an HTTP server at host.
type wsEndpoint struct {
	t    testing.TB
	host string // 127.0.0.1:<port>
}

func (e *wsEndpoint) wsURL(path string) string   { return "ws://" + e.host + path }
func (e *wsEndpoint) httpURL(path string) string { return "http://" + e.host + path }

// dial opens a WebSocket; it fails the test if the handshake fails.
func (e *wsEndpoint) dial(path string, hdr http.Header) *websocket.Conn {
	e.t.Helper()
	c, resp, err := e.tryDial(path, hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		e.t.Fatalf("dial %s: %v (status %d)", path, err, status)
	}
	return c
}

func (e *wsEndpoint) tryDial(path string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: ioTimeout, ReadBufferSize: 64 << 10, WriteBufferSize: 64 << 10}
	for attempt := 0; ; attempt++ {
		c, resp, err := d.Dial(e.wsURL(path), hdr)
		// Right after a reload, a connection the old server accepted while
		// it shut down is closed or reset by it (Caddy shares the listener
		// between the two) before any response: not the handler's doing,
		// so try again.
		if err != nil && resp == nil && attempt < 3 &&
			(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF)) {
			continue
		}
		return c, resp, err
	}
}

// expectClose reads until the client gets a Close frame and returns its
// code. It answers the Close, as a client does, so that the tunnel ends
// at once instead of after its closing grace.
func expectClose(t testing.TB, c *websocket.Conn, timeout time.Duration) int {
	t.Helper()
	// gorilla's own handler fails the read when this side has sent its
	// Close already; this one only answers when it can.
	c.SetCloseHandler(func(code int, _ string) error {
		if code == websocket.CloseNoStatusReceived {
			code = websocket.CloseNormalClosure
		}
		c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
		return nil
	})
	c.SetReadDeadline(time.Now().Add(timeout))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		t.Fatalf("expected a Close frame, got %v (%T)", err, err)
		return 0
	}
}

// echoCheck checks that a tunnel to an echo upstream works.
func echoCheck(t testing.TB, c *websocket.Conn) {
	t.Helper()
	if err := c.WriteMessage(websocket.BinaryMessage, []byte("ping through")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, b, err := c.ReadMessage(); err != nil || string(b) != "ping through" {
		t.Fatalf("echo: %q %v", b, err)
	}
	c.SetReadDeadline(time.Time{})
}

// headerOf builds a header from name, value pairs.
func headerOf(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// basicAuthValue is the Authorization value of HTTP basic credentials.
func basicAuthValue(user, password string) string {
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth(user, password)
	return r.Header.Get("Authorization")
}

// dialStatus opens a WebSocket and returns the status of the handshake:
// 101 with the connection (closed when the test ends), or the refusal's
// status and response.
func dialStatus(t testing.TB, s endpoint, path string, hdr http.Header) (int, *websocket.Conn, *http.Response) {
	t.Helper()
	c, resp, err := s.tryDial(path, hdr)
	if err == nil {
		t.Cleanup(func() { c.Close() })
		return http.StatusSwitchingProtocols, c, resp
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	return resp.StatusCode, nil, resp
}

// expectHandshake dials and fails the test unless the handshake ends with
// want; on 101 it checks that the tunnel echoes.
func expectHandshake(t testing.TB, s endpoint, path string, hdr http.Header, want int) (*websocket.Conn, *http.Response) {
	t.Helper()
	got, c, resp := dialStatus(t, s, path, hdr)
	if got != want {
		t.Fatalf("%s: status %d, want %d", path, got, want)
	}
	if c != nil {
		echoCheck(t, c)
	}
	return c, resp
}

// roundTrip sends msg and expects the upstream connection to receive it
// and its reply to come back.
func roundTrip(t testing.TB, c *websocket.Conn, uc net.Conn, msg string) {
	t.Helper()
	if err := c.WriteMessage(websocket.BinaryMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	uc.SetDeadline(time.Now().Add(ioTimeout))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(uc, got); err != nil || string(got) != msg {
		t.Fatalf("upstream got %q %v", got, err)
	}
	uc.Write([]byte("re:" + msg))
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, b, err := c.ReadMessage(); err != nil || string(b) != "re:"+msg {
		t.Fatalf("client got %q %v", b, err)
	}
}

// Upstreams.

// upstream is a TCP (or Unix) server on a run-time address whose
// connections are handed to the test.
type upstream struct {
	ln    net.Listener
	conns chan net.Conn
	addr  string // as written in a Caddyfile
}

func newUpstream(t testing.TB, network, address string) *upstream {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{ln: ln, conns: make(chan net.Conn, 1024)}
	u.addr = ln.Addr().String()
	if network == "unix" {
		u.addr = "unix/" + address
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for {
			select {
			case c := <-u.conns:
				c.Close()
			default:
				return
			}
		}
	})
	return u
}

// accept returns the next connection, or fails the test after ioTimeout.
func (u *upstream) accept(t testing.TB) net.Conn {
	t.Helper()
	select {
	case c := <-u.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(ioTimeout):
		t.Fatalf("upstream: no connection within %v", ioTimeout)
		return nil
	}
}

// echoUpstream serves every connection by echoing it.
func echoUpstream(t testing.TB) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
			})
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return &upstream{ln: ln, addr: ln.Addr().String()}
}

// readFull reads n bytes from an upstream connection.
func readFull(t testing.TB, c interface {
	Read([]byte) (int, error)
	SetReadDeadline(time.Time) error
}, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	b := make([]byte, n)
	if k, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("upstream read after %d of %d bytes: %v", k, n, err)
	}
	return b
}

// readEOF reads conn until EOF and returns what it read; it fails on any
// other end or after the timeout.
func readEOF(t testing.TB, c net.Conn, timeout time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("upstream: expected EOF, got %v after %d bytes", err, len(b))
	}
	return b
}

// readEOFOrReset reads until the connection ends, by EOF or reset; it
// fails if it is still open after ioTimeout.
func readEOFOrReset(t testing.TB, c interface {
	Read([]byte) (int, error)
	SetReadDeadline(time.Time) error
}) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("upstream was not closed")
			}
			return
		}
	}
}

// patternReader yields a stream whose every byte depends on its position
// only, so both ends can recompute it whatever the read sizes. It repeats
// a table whose length is prime: a lost, doubled or reordered piece of the
// stream shows, unless its length is a multiple of that prime.
type patternReader struct{ pos int }

var patternTable = func() []byte {
	b := make([]byte, 65521)
	for x := range b {
		b[x] = byte(x ^ x>>9 ^ x>>3)
	}
	return b
}()

func (p *patternReader) Read(b []byte) (int, error) {
	for n := 0; n < len(b); {
		k := copy(b[n:], patternTable[p.pos%len(patternTable):])
		n += k
		p.pos += k
	}
	return len(b), nil
}

func patternHash(n int64) [32]byte {
	h := sha256.New()
	io.CopyBuffer(h, io.LimitReader(&patternReader{}, n), make([]byte, 1<<20))
	return [32]byte(h.Sum(nil))
}

// The leak check.

// openTunnels is the size of the tunnel registry.
func openTunnels() int {
	tunnels.Lock()
	defer tunnels.Unlock()
	return len(tunnels.m)
}

// waitNoTunnels fails the test unless every tunnel of the process ends
// and no relay goroutine is left: the test has closed its clients and
// upstreams, so anything still running has leaked. Only a test that runs
// alone (a real-Caddy test) may call it; handler tests wait for their own
// handler's tunnels (handlerServer), and TestMain checks the whole process
// at the end.
func waitNoTunnels(t testing.TB) {
	t.Helper()
	if err := noTunnelsWithin(ioTimeout / 3); err != nil {
		t.Error(err)
		// end them, so that the cleanups that wait for their upstreams
		// end too
		closeTunnels(nil, wsframe.CloseGoingAway, "test over")
	}
}

func noTunnelsWithin(d time.Duration) error {
	if within(d, func() bool { return openTunnels() == 0 && relayGoroutines() == "" }) {
		return nil
	}
	return fmt.Errorf("leak: %d tunnels still registered; relay goroutines:\n%s", openTunnels(), relayGoroutines())
}

// relayGoroutines returns the stacks of the goroutines running tunnel
// code: the relay's pumps, and this package's tunnel.
func relayGoroutines() string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if (strings.Contains(g, "caddy-ws-to-tcp/internal/relay.") || strings.Contains(g, "caddy-ws-to-tcp.(*tunnel)")) &&
			!strings.Contains(g, "caddy-ws-to-tcp.relayGoroutines") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// The core end-to-end tests: a Caddyfile site, a real client, a real
// upstream. The relay's rules are tested in internal/relay; here, that
// each goes through Caddy.

func TestPlainSiteWithoutLogEchoes(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	defer c.Close()
	if err := c.WriteMessage(websocket.BinaryMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	mt, b, err := c.ReadMessage()
	if err != nil || mt != websocket.BinaryMessage || string(b) != "hello" {
		t.Fatalf("got type %d %q %v", mt, b, err)
	}
	// A text message arrives upstream as its UTF-8 bytes.
	c.WriteMessage(websocket.TextMessage, []byte("grüß"))
	_, b, err = c.ReadMessage()
	if err != nil || string(b) != "grüß" {
		t.Fatalf("got %q %v", b, err)
	}
}

func TestNonUpgradeRequestFallsThrough(t *testing.T) {
	up := echoUpstream(t)
	// respond is ordered before ws_to_tcp; a route keeps the order written
	s := startCaddy(t, `{HTTP} {
	route {
		ws_to_tcp `+up.addr+`
		respond "next handler"
	}
}`)
	resp, err := http.Get(s.httpURL("/"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "next handler" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

func TestUpgradeBehindHeaderEncodeAndBasicAuth(t *testing.T) {
	up := echoUpstream(t)
	hash := bcryptHash(t, "s3cret")
	s := startCaddy(t, `{HTTP} {
	header -Server
	header X-Test yes
	encode gzip zstd
	basic_auth {
		alice `+hash+`
	}
	ws_to_tcp `+up.addr+`
}`)
	if _, resp, err := s.tryDial("/", nil); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("without credentials: want 401, got %v %v", resp, err)
	}
	c := s.dial("/", headerOf("Accept-Encoding", "gzip", "Authorization", basicAuthValue("alice", "s3cret")))
	defer c.Close()
	c.WriteMessage(websocket.BinaryMessage, []byte("through the middleware"))
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, b, err := c.ReadMessage(); err != nil || string(b) != "through the middleware" {
		t.Fatalf("got %q %v", b, err)
	}
}

// Streams each way through Caddy: from the client in messages of varied
// sizes, the upstream gets every byte, then EOF when the client closes;
// from the upstream, the client gets every byte, then Close 1000 when the
// upstream closes. (internal/relay streams 16 MiB each way.)
func TestStreamsThroughCaddy(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	const total = 4 << 20
	t.Run("upload then client close", func(t *testing.T) {
		c := s.dial("/", nil)
		defer c.Close()
		uc := up.accept(t)
		type result struct {
			n   int64
			sum [32]byte
		}
		got := make(chan result, 1)
		go func() {
			h := sha256.New()
			uc.SetReadDeadline(time.Now().Add(ioTimeout))
			n, _ := io.Copy(h, uc) // ends at EOF: the FIN sent after the client's Close
			uc.Close()
			got <- result{n, [32]byte(h.Sum(nil))}
		}()
		src := &patternReader{}
		sizes := []int{1, 100, 4096, 65536, 1 << 20, 7}
		buf := make([]byte, 1<<20)
		for sent, i := 0, 0; sent < total; i++ {
			k := min(sizes[i%len(sizes)], total-sent)
			src.Read(buf[:k])
			if err := c.WriteMessage(websocket.BinaryMessage, buf[:k]); err != nil {
				t.Fatal(err)
			}
			sent += k
		}
		c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
		if r := <-got; r.n != total || r.sum != patternHash(total) {
			t.Fatalf("upstream got %d bytes, hash match %v", r.n, r.sum == patternHash(total))
		}
		if code := expectClose(t, c, ioTimeout); code != websocket.CloseNormalClosure {
			t.Fatalf("close echo: got %d", code)
		}
	})
	t.Run("download then upstream close", func(t *testing.T) {
		c := s.dial("/", nil)
		defer c.Close()
		uc := up.accept(t)
		go func() {
			io.CopyN(uc, &patternReader{}, total)
			uc.Close()
		}()
		h := sha256.New()
		var n int64
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		for {
			mt, b, err := c.ReadMessage()
			if err != nil {
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
					t.Fatalf("after %d bytes: want Close 1000, got %v", n, err)
				}
				break
			}
			if mt != websocket.BinaryMessage || len(b) > defaultBufferSize {
				t.Fatalf("message type %d of %d bytes", mt, len(b))
			}
			h.Write(b)
			n += int64(len(b))
		}
		if n != total || [32]byte(h.Sum(nil)) != patternHash(total) {
			t.Fatalf("client got %d of %d bytes; hash match %v", n, total, [32]byte(h.Sum(nil)) == patternHash(total))
		}
	})
}

// Each relay setting, once through a Caddyfile: the subdirective reaches
// the tunnel. Its exact rule is tested in internal/relay, in virtual time
// where it is a timer.
func TestRelaySettingsFromCaddyfile(t *testing.T) {
	echo := echoUpstream(t)
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	route /base64 {
		ws_to_tcp `+echo.addr+` {
			subprotocols binary base64
		}
	}
	route /text {
		ws_to_tcp `+up.addr+` {
			message_type text
		}
	}
	route /utf8 {
		ws_to_tcp `+up.addr+` {
			validate_utf8
		}
	}
	route /max {
		ws_to_tcp `+up.addr+` {
			max_message_size 1KiB
		}
	}
	route /buffer {
		ws_to_tcp `+up.addr+` {
			buffer_size 1KiB
		}
	}
	route /write-timeout {
		ws_to_tcp `+up.addr+` {
			write_timeout 200ms
		}
	}
	route /heartbeat {
		ws_to_tcp `+up.addr+` {
			heartbeat 20ms 20ms
		}
	}
	route /heartbeat-live {
		ws_to_tcp `+echo.addr+` {
			heartbeat 20ms 10s
		}
	}
	route /heartbeat-text {
		ws_to_tcp `+up.addr+` {
			heartbeat 20ms 20ms
			heartbeat_payload text "keepalive"
		}
	}
	route /idle {
		ws_to_tcp `+up.addr+` {
			idle_timeout 50ms
		}
	}
	route /throttle {
		ws_to_tcp `+echo.addr+` {
			throttle {
				read 1Mbps
				write 100Mbps
			}
		}
	}
}`)
	open := func(t *testing.T, path string) (*websocket.Conn, net.Conn) {
		c := s.dial(path, nil)
		t.Cleanup(func() { c.Close() })
		return c, up.accept(t)
	}
	t.Run("subprotocols base64", func(t *testing.T) {
		d := websocket.Dialer{Subprotocols: []string{"base64"}}
		c, _, err := d.Dial(s.wsURL("/base64"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		payload := []byte("\x00\x01binary\xff\xfe over base64")
		c.WriteMessage(websocket.TextMessage, []byte(base64.StdEncoding.EncodeToString(payload)))
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		mt, b, err := c.ReadMessage()
		if err != nil || mt != websocket.TextMessage {
			t.Fatalf("got type %d, %v", mt, err)
		}
		if dec, err := base64.StdEncoding.DecodeString(string(b)); err != nil || !bytes.Equal(dec, payload) {
			t.Fatalf("echo %q decodes to %q (%v)", b, dec, err)
		}
		c.WriteMessage(websocket.TextMessage, []byte("not*base64"))
		if code := expectClose(t, c, ioTimeout); code != websocket.CloseInvalidFramePayloadData {
			t.Fatalf("bad base64: close %d, want 1007", code)
		}
	})
	t.Run("message_type text", func(t *testing.T) {
		c, uc := open(t, "/text")
		text := []byte(strings.Repeat("añ€😀", 20))
		go func() {
			for i := range text { // one byte at a time: sequences split
				uc.Write(text[i : i+1])
			}
			uc.Close()
		}()
		var got []byte
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		for {
			mt, b, err := c.ReadMessage()
			if err != nil {
				break
			}
			if mt != websocket.TextMessage || !utf8.Valid(b) {
				t.Fatalf("message type %d, valid UTF-8 %v: %q", mt, utf8.Valid(b), b)
			}
			got = append(got, b...)
		}
		if !bytes.Equal(got, text) {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("validate_utf8", func(t *testing.T) {
		c, uc := open(t, "/utf8")
		c.WriteMessage(websocket.TextMessage, []byte("€"))
		readFull(t, uc, len("€"))
		c.WriteMessage(websocket.TextMessage, []byte{0xE2, 'a'})
		if code := expectClose(t, c, ioTimeout); code != websocket.CloseInvalidFramePayloadData {
			t.Fatalf("close %d, want 1007", code)
		}
		readEOFOrReset(t, uc)
	})
	t.Run("max_message_size", func(t *testing.T) {
		c, uc := open(t, "/max")
		c.WriteMessage(websocket.BinaryMessage, make([]byte, 1024)) // at the limit: fine
		readFull(t, uc, 1024)
		c.WriteMessage(websocket.BinaryMessage, make([]byte, 1025))
		if code := expectClose(t, c, ioTimeout); code != websocket.CloseMessageTooBig {
			t.Fatalf("close %d, want 1009", code)
		}
		readEOFOrReset(t, uc)
	})
	t.Run("buffer_size", func(t *testing.T) {
		c, uc := open(t, "/buffer")
		go func() {
			uc.Write(bytes.Repeat([]byte("x"), 64<<10))
			uc.Close()
		}()
		total := 0
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		for {
			_, b, err := c.ReadMessage()
			if err != nil {
				break
			}
			if len(b) > 1024 {
				t.Fatalf("message of %d bytes with buffer_size 1KiB", len(b))
			}
			total += len(b)
		}
		if total != 64<<10 {
			t.Fatalf("got %d bytes", total)
		}
	})
	t.Run("write_timeout", func(t *testing.T) {
		_, uc := open(t, "/write-timeout") // the client reads nothing
		chunk := make([]byte, 64<<10)
		uc.SetWriteDeadline(time.Now().Add(ioTimeout))
		for {
			_, err := uc.Write(chunk)
			if err == nil {
				continue
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the stuck client was never dropped")
			}
			break // the proxy closed the upstream
		}
	})
	t.Run("heartbeat", func(t *testing.T) {
		c, uc := open(t, "/heartbeat")
		readEOF(t, uc, ioTimeout) // the client never read the pings, so never answered
		c.SetPingHandler(func(string) error { return nil })
		if code := expectClose(t, c, ioTimeout); code != websocket.ClosePolicyViolation {
			t.Fatalf("close %d, want 1008", code)
		}
	})
	t.Run("heartbeat answered", func(t *testing.T) {
		c := s.dial("/heartbeat-live", nil)
		defer c.Close()
		pings := make(chan struct{}, 100)
		c.SetPingHandler(func(p string) error {
			pings <- struct{}{}
			return c.WriteControl(websocket.PongMessage, []byte(p), time.Now().Add(time.Second))
		})
		echoed := make(chan error, 1)
		go func() {
			_, _, err := c.ReadMessage() // answers pings meanwhile
			echoed <- err
		}()
		for range 5 {
			select {
			case <-pings:
			case <-time.After(ioTimeout):
				t.Fatal("no heartbeat ping")
			}
		}
		if err := c.WriteMessage(websocket.BinaryMessage, []byte("still here")); err != nil {
			t.Fatal(err)
		}
		if err := <-echoed; err != nil {
			t.Fatalf("after the pings: %v", err)
		}
	})
	t.Run("heartbeat_payload text", func(t *testing.T) {
		c, uc := open(t, "/heartbeat-text")
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		mt, b, err := c.ReadMessage()
		if err != nil || mt != websocket.TextMessage || string(b) != "keepalive" {
			t.Fatalf("heartbeat: type %d %q %v", mt, b, err)
		}
		if code := expectClose(t, c, ioTimeout); code != websocket.ClosePolicyViolation {
			t.Fatalf("close %d, want 1008", code)
		}
		readEOFOrReset(t, uc)
	})
	t.Run("idle_timeout", func(t *testing.T) {
		c, uc := open(t, "/idle")
		if code := expectClose(t, c, ioTimeout); code != websocket.ClosePolicyViolation {
			t.Fatalf("silent tunnel: close %d, want 1008", code)
		}
		readEOFOrReset(t, uc)
	})
	t.Run("throttle", func(t *testing.T) {
		// the only tunnel, so that it is the one whose handler is looked at
		eventually(t, "the other tunnels' end", func() bool { return openTunnels() == 0 })
		c := s.dial("/throttle", nil)
		defer c.Close()
		echoCheck(t, c)
		h := anyTunnelHandler()
		if h == nil || h.relay.ReadRate != 125000 || h.relay.WriteRate != 12500000 {
			t.Fatalf("the tunnel's handler: %+v, want read 125000 B/s and write 12500000 B/s", h.relay)
		}
	})
}

// Package cluster tests `ws_to_tcp`'s cluster (README, Cluster) the way it
// runs: several real Caddy processes (the module's own build,
// ./cmd/caddy) and a real redis-server, each on free loopback ports.
//
// Each test starts its own redis-server and Caddy processes, so the tests
// run in parallel (as many at once as -parallel, by default one per CPU:
// each runs three Caddy processes).
package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/wstotcp/caddy-ws-to-tcp/internal/testbin"
	"github.com/wstotcp/caddy-ws-to-tcp/internal/testnet"
)

// ioTimeout bounds every wait: generous for -race on a loaded 2-core
// machine; a test that reaches it has failed.
const ioTimeout = 30 * time.Second

// caddyBin is the Caddy built once by TestMain.
var caddyBin string

// TestMain builds ./cmd/caddy once (with -race when the tests run with
// it, so that the module's cluster code runs under the race detector in
// its real processes), then runs the tests.
func TestMain(m *testing.M) {
	bin, err := testbin.Caddy(filepath.Join("..", ".."), raceEnabled)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	caddyBin = bin
	os.Exit(m.Run())
}

func inCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v != "" && v != "false" && v != "0"
}

// missingTool skips a test whose program is not installed, outside CI; in
// CI (CI=true), where .ci/run installs it, it fails.
func missingTool(t *testing.T, format string, args ...any) {
	t.Helper()
	if inCI() {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// eventually waits until cond holds, failing the test after ioTimeout.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", ioTimeout, what)
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// freePorts returns n distinct loopback ports that were free a moment ago
// (testnet.FreePorts).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports, err := testnet.FreePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// process is a subprocess started by a test; it is killed (by its PID)
// when the test ends.
type process struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

func startProcess(t *testing.T, env []string, bin string, args ...string) *process {
	t.Helper()
	p := &process{out: new(lockedBuffer), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(p.kill)
	return p
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill ends the process with SIGKILL and waits for it.
func (p *process) kill() {
	if !p.exited() {
		p.cmd.Process.Signal(syscall.SIGCONT) // in case a test stopped it
		p.cmd.Process.Kill()
		<-p.done
	}
}

// redisServer is a redis-server on a free loopback port, which a test may
// stop and start again on the same port.
type redisServer struct {
	t      *testing.T
	port   int
	dir    string
	proc   *process
	client *redis.Client
}

func startRedis(t *testing.T) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		missingTool(t, "redis-server is missing: install it with `apt-get install -y redis-server` (.ci/run does)")
	}
	rs := &redisServer{t: t, port: freePorts(t, 1)[0], dir: t.TempDir()}
	rs.client = redis.NewClient(&redis.Options{Addr: rs.addr(), DisableIdentity: true, MaxRetries: -1})
	t.Cleanup(func() { rs.client.Close() })
	rs.start()
	return rs
}

func (rs *redisServer) addr() string { return fmt.Sprintf("127.0.0.1:%d", rs.port) }

func (rs *redisServer) url() string { return "redis://" + rs.addr() }

// start starts redis-server on its port (again), without persistence, and
// waits until it answers PING.
func (rs *redisServer) start() {
	t := rs.t
	t.Helper()
	rs.proc = startProcess(t, nil, "redis-server", "--port", strconv.Itoa(rs.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", rs.dir, "--loglevel", "warning")
	eventually(t, "redis-server to answer PING", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return rs.proc.exited() || rs.client.Ping(ctx).Err() == nil
	})
	if rs.proc.exited() {
		t.Fatalf("redis-server on %s exited:\n%s", rs.addr(), rs.proc.out.String())
	}
}

// stop kills redis-server; its data is gone with it.
func (rs *redisServer) stop() { rs.proc.kill() }

// commandCalls returns the calls of each command since the server
// started, from INFO commandstats.
func (rs *redisServer) commandCalls(t *testing.T) map[string]int {
	t.Helper()
	info, err := rs.client.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	calls := make(map[string]int)
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		n, _, _ := strings.Cut(rest, ",")
		calls[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.Atoi(n)
	}
	return calls
}

// instance is one Caddy process of a cluster.
type instance struct {
	config    string // its Caddyfile
	name      string
	adminPort int
	httpPort  int
	proc      *process
}

// jwtSecret signs the users' tokens: the handlers' `auth { jwt }` makes
// the token's sub the user.
const jwtSecret = "cluster-test-secret-0123456789abcdef"

func token(t testing.TB, user string) string {
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": user}).SignedString([]byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startInstance runs Caddy with a site whose routes are site (the
// Caddyfile lines inside the site block), and waits until its admin
// endpoint answers and, when wantCluster, its cluster is up.
func startInstance(t *testing.T, name, site string, wantCluster bool) *instance {
	t.Helper()
	for attempt := 1; ; attempt++ {
		in, err := tryInstance(t, name, site, wantCluster)
		if err == nil {
			return in
		}
		// A free port taken by another process in between: new ports.
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
	}
}

func tryInstance(t *testing.T, name, site string, wantCluster bool) (*instance, error) {
	t.Helper()
	ports := freePorts(t, 2)
	in := &instance{name: name, adminPort: ports[0], httpPort: ports[1]}
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	auto_https off
	skip_install_trust
	persist_config off
	grace_period 1ns
	log {
		level WARN
	}
}

http://127.0.0.1:%d {
	bind 127.0.0.1
%s
}
`, in.adminPort, in.httpPort, site)
	in.config = cfg
	dir := t.TempDir()
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// Registered before startProcess's kill, so run after it: the
	// output is complete.
	t.Cleanup(func() {
		out := in.proc.out.String()
		if strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race", name)
		}
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, out)
		}
	})
	in.proc = startProcess(t, []string{"XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir, "HOME=" + dir, "CLUSTER_TEST_JWT=" + jwtSecret},
		caddyBin, "run", "--config", file, "--adapter", "caddyfile")
	var exited error
	eventually(t, name+" to serve its admin endpoint", func() bool {
		if in.proc.exited() {
			exited = fmt.Errorf("%s exited:\n%s", name, in.proc.out.String())
			return true
		}
		return in.metric("caddy_ws_to_tcp_cluster_up") == 1 || !wantCluster && in.adminUp()
	})
	return in, exited
}

func (in *instance) adminUp() bool {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/config/", in.adminPort))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// metric returns the value of an unlabelled metric, -1 when absent.
func (in *instance) metric(name string) float64 {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", in.adminPort))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// admin calls the admin API and decodes the JSON answer into out (when
// not nil); it returns the status.
func (in *instance) admin(t testing.TB, method, path, contentType, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d%s", in.adminPort, path), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s on %s: %v", method, path, in.name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s on %s: %v in %s", method, path, in.name, err, data)
		}
	}
	if resp.StatusCode != http.StatusOK {
		t.Logf("%s %s on %s: %d %s", method, path, in.name, resp.StatusCode, data)
	}
	return resp.StatusCode
}

// dial opens a WebSocket to path (query included) as user; it returns the
// connection, or the handshake's status when it was refused.
func (in *instance) dial(t testing.TB, path, user string) (*websocket.Conn, int) {
	t.Helper()
	return in.dialFrom(t, "", path, user)
}

// dialFrom is dial from the loopback address src ("" for any).
func (in *instance) dialFrom(t testing.TB, src, path, user string) (*websocket.Conn, int) {
	t.Helper()
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	u := fmt.Sprintf("ws://127.0.0.1:%d%s%saccess_token=%s", in.httpPort, path, sep, token(t, user))
	d := websocket.Dialer{HandshakeTimeout: ioTimeout}
	if src != "" {
		nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: ioTimeout}
		d.NetDialContext = nd.DialContext
	}
	c, resp, err := d.Dial(u, nil)
	if err != nil {
		if resp != nil {
			return nil, resp.StatusCode
		}
		t.Fatalf("dialing %s on %s: %v", path, in.name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, http.StatusSwitchingProtocols
}

// waitOpen waits until the instance lists n tunnels: a tunnel is listed
// from when its relay starts, a moment after its client has the 101.
func (in *instance) waitOpen(t testing.TB, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s to list %d tunnels", in.name, n), func() bool {
		var list []json.RawMessage
		return in.admin(t, "GET", "/ws_to_tcp/connections", "", "", &list) == http.StatusOK && len(list) == n
	})
}

// mustDial is dial that must be admitted.
func (in *instance) mustDial(t testing.TB, path, user string) *websocket.Conn {
	t.Helper()
	c, status := in.dial(t, path, user)
	if c == nil {
		t.Fatalf("%s on %s as %s: status %d, want 101", path, in.name, user, status)
	}
	return c
}

// echoServer is a TCP upstream that sends greeting() to each connection,
// then echoes what it reads.
type echoServer struct {
	addr     string
	mu       sync.Mutex
	greeting string
}

func startEcho(t *testing.T, greeting string) *echoServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{addr: l.Addr().String(), greeting: greeting}
	var wg sync.WaitGroup
	var conns sync.Map
	t.Cleanup(func() {
		l.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conns.Delete(c)
				defer c.Close()
				if g := e.greet(); g != "" {
					if _, err := c.Write([]byte(g)); err != nil {
						return
					}
				}
				io.Copy(c, c)
			}()
		}
	}()
	return e
}

func (e *echoServer) greet() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.greeting
}

func (e *echoServer) setGreeting(g string) {
	e.mu.Lock()
	e.greeting = g
	e.mu.Unlock()
}

// echo checks that the tunnel relays: a message comes back.
func echo(t testing.TB, c *websocket.Conn, msg string) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(ioTimeout))
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if err := c.WriteMessage(websocket.BinaryMessage, []byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	var got []byte
	for len(got) < len(msg) {
		_, b, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("read (after %q): %v", got, err)
		}
		got = append(got, b...)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
	c.SetReadDeadline(time.Time{})
}

// readText reads the next message.
func readText(t testing.TB, c *websocket.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	_, b, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	return string(b)
}

// closeCode reads until the connection closes and returns its close code.
func closeCode(t testing.TB, c *websocket.Conn) int {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	for {
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		if err != nil {
			t.Fatalf("read: %v (want a close frame)", err)
		}
	}
}

// clusterAnswer is the admin API's answer with ?scope=cluster.
type clusterAnswer struct {
	Scope       string           `json:"scope"`
	Error       string           `json:"error"`
	Missing     []string         `json:"missing"`
	Instances   []map[string]any `json:"instances"`
	Connections []struct {
		ID       string `json:"id"`
		User     string `json:"user"`
		Channel  string `json:"channel"`
		Instance string `json:"instance"`
	} `json:"connections"`
	Closed int `json:"closed"`
	Sent   int `json:"sent"`
	Failed int `json:"failed"`
}

// instancesOf returns the instance names of the answer.
func (a clusterAnswer) instanceNames() []string {
	var out []string
	for _, i := range a.Instances {
		out = append(out, fmt.Sprint(i["instance"]))
	}
	return out
}

// waitMembers waits until each instance's cluster answer lists all of
// them, none missing: they have seen each other's heartbeats.
func waitMembers(t *testing.T, all ...*instance) {
	t.Helper()
	for _, in := range all {
		eventually(t, in.name+" to see every instance", func() bool {
			var a clusterAnswer
			in.admin(t, "GET", "/ws_to_tcp/connections?scope=cluster", "", "", &a)
			return a.Scope == "cluster" && len(a.Instances) == len(all) && len(a.Missing) == 0
		})
	}
}

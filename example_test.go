package wstotcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/wstotcp/caddy-ws-to-tcp/internal/testbin"
)

// Tests in this file run the built binary (./cmd/caddy) as a subprocess,
// the way users run it.

// buildCaddy returns the built ./cmd/caddy of this checkout (without the
// race detector: the subprocess is the product as users build it).
func buildCaddy(t testing.TB) string {
	t.Helper()
	bin, err := testbin.Caddy(".", false)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// lockedBuffer collects a subprocess's output; the test reads it while the
// process may still write.
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

// caddyProcess is a Caddy subprocess started by a test.
type caddyProcess struct {
	cmd     *exec.Cmd
	output  *lockedBuffer // stdout and stderr (Caddy logs to stderr)
	env     []string
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid after done
}

// caddyEnv keeps Caddy's autosave, data and storage out of the user's
// home: every Caddy a test runs gets its own directories.
func caddyEnv(t testing.TB) []string {
	home := t.TempDir()
	// Without the GODEBUG that TestMain set for the in-process Caddy: the
	// built binary gets the environment a user's has.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	return append(env,
		"HOME="+home,
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"),
		"XDG_DATA_HOME="+filepath.Join(home, "data"),
	)
}

// runCaddy starts `bin args...` in dir. When the test ends, the process is
// killed if it is still running, and its output is printed if the test
// failed.
func runCaddy(t testing.TB, bin, dir string, args ...string) *caddyProcess {
	t.Helper()
	p := &caddyProcess{output: new(lockedBuffer), env: caddyEnv(t), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = dir
	p.cmd.Env = p.env
	p.cmd.Stdout = p.output
	p.cmd.Stderr = p.output
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s %s: %v", bin, strings.Join(args, " "), err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	// Cleanups run last-in first-out: kill first, then print the output.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("caddy (pid %d) output:\n%s", p.cmd.Process.Pid, p.output.String())
		}
	})
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill() // only the process this test started
			<-p.done
		}
	})
	return p
}

// exited reports whether the process has exited.
func (p *caddyProcess) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitExit waits up to d for the process to exit and returns its Wait error.
func (p *caddyProcess) waitExit(t testing.TB, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(d):
		t.Fatalf("caddy (pid %d) did not exit within %v", p.cmd.Process.Pid, d)
		return nil
	}
}

// waitListening waits until addr accepts TCP connections; it returns an
// error with the process's output if the process exits first (a port
// taken meanwhile, say: withFreePorts then tries others).
func (p *caddyProcess) waitListening(t testing.TB, addr string) error {
	t.Helper()
	eventually(t, addr+" to accept connections", func() bool {
		if p.exited() {
			return true
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if p.exited() {
		return fmt.Errorf("caddy exited (%v) before %s accepted connections:\n%s", p.waitErr, addr, p.output.String())
	}
	return nil
}

// portInUse reports whether something listens on the TCP port, or holds it
// so that a listener on all interfaces cannot bind it.
func portInUse(port int) bool {
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 500*time.Millisecond); err == nil {
		c.Close()
		return true
	}
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return true
	}
	l.Close()
	return false
}

// Texts from Caddyfile.example.
const (
	exampleRespond  = "ws_to_tcp is running: open a WebSocket to ws://localhost:8080/echo"
	exampleUpstream = "hello from the TCP upstream"
)

// TestExampleRunsAsIs runs Caddyfile.example, unmodified, with the built
// binary, and goes through the tunnel it sets up.
func TestExampleRunsAsIs(t *testing.T) {
	t.Parallel()
	// The only test with fixed ports: those of the example.
	for _, p := range []struct {
		port int
		what string
	}{{8080, "the example site"}, {8081, "the example's upstream"}, {2019, "the admin endpoint"}} {
		if portInUse(p.port) {
			unavailable(t, "port %d (%s in Caddyfile.example) is already in use: stop whatever listens on it (ss -ltnp 'sport = :%d') and run the test again",
				p.port, p.what, p.port)
		}
	}
	bin := buildCaddy(t)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	p := runCaddy(t, bin, wd, "run", "--config", "Caddyfile.example")
	for _, addr := range []string{"localhost:8080", "127.0.0.1:8081"} {
		if err := p.waitListening(t, addr); err != nil {
			t.Fatal(err)
		}
	}

	// A plain GET falls through to respond.
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://localhost:8080/")
	if err != nil {
		t.Fatalf("GET /: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("GET /: reading body: %v", err)
	}
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != exampleRespond {
		t.Fatalf("GET /: got %d %q, want 200 %q", resp.StatusCode, body, exampleRespond)
	}

	// Through the tunnel: an HTTP/1.0 request to the upstream, which answers
	// and closes.
	ws, resp, err := websocket.DefaultDialer.Dial("ws://localhost:8080/echo", nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		var body []byte
		if resp != nil {
			body, _ = io.ReadAll(io.LimitReader(resp.Body, 512))
		}
		t.Fatalf("WebSocket to /echo: %v (status %d, body %q)", err, status, body)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		t.Fatalf("sending the request: %v", err)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []byte
	for {
		_, msg, err := ws.ReadMessage()
		if err == nil {
			got = append(got, msg...)
			continue
		}
		if !bytes.Contains(got, []byte("HTTP/1.0 200")) || !bytes.Contains(got, []byte(exampleUpstream)) {
			t.Fatalf("the tunnel ended (%v) before the upstream's answer; got %q", err, got)
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
			t.Fatalf("after the answer: got %v, want Close 1000", err)
		}
		break
	}

	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatalf("SIGINT: %v", err)
	}
	if err := p.waitExit(t, 15*time.Second); err != nil {
		t.Errorf("caddy exited after SIGINT with %v, want status 0", err)
	}
}

// TestStopClosesTunnels checks that `caddy stop` closes open tunnels with
// 1001 on the client side and closes the upstream connection.
func TestStopClosesTunnels(t *testing.T) {
	t.Parallel()
	bin := buildCaddy(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		accepted <- c
	}()

	dir := t.TempDir()
	var p *caddyProcess
	var adminPort, httpPort int
	withFreePorts(t, 2, func(ports []int) error {
		adminPort, httpPort = ports[0], ports[1]
		cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	skip_install_trust
}

http://127.0.0.1:%d {
	ws_to_tcp %s
}
`, adminPort, httpPort, ln.Addr())
		if err := os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		p = runCaddy(t, bin, dir, "run", "--config", "Caddyfile")
		return p.waitListening(t, fmt.Sprintf("127.0.0.1:%d", httpPort))
	})

	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	ws, resp, err := d.Dial(fmt.Sprintf("ws://127.0.0.1:%d/", httpPort), nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("WebSocket: %v (status %d)", err, status)
	}
	defer ws.Close()

	var up net.Conn
	select {
	case up = <-accepted:
		t.Cleanup(func() { up.Close() })
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream got no connection within 10s")
	}
	msg := []byte("through the tunnel")
	if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
		t.Fatalf("sending: %v", err)
	}
	up.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(up, buf); err != nil || !bytes.Equal(buf, msg) {
		t.Fatalf("upstream read %q, %v; want %q", buf, err, msg)
	}

	// Watch both ends from now on.
	ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	up.SetReadDeadline(time.Now().Add(30 * time.Second))
	wsErr := make(chan error, 1)
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				wsErr <- err
				return
			}
		}
	}()
	upErr := make(chan error, 1)
	go func() {
		b := make([]byte, 4096)
		for {
			if _, err := up.Read(b); err != nil {
				upErr <- err
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stop := exec.CommandContext(ctx, bin, "stop", "--address", fmt.Sprintf("127.0.0.1:%d", adminPort))
	stop.Dir = dir
	stop.Env = p.env
	if out, err := stop.CombinedOutput(); err != nil {
		t.Fatalf("caddy stop: %v\n%s", err, out)
	}

	deadline := time.Now().Add(10 * time.Second)
	select {
	case err := <-wsErr:
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Errorf("WebSocket client: got %v, want Close 1001", err)
		}
	case <-time.After(time.Until(deadline)):
		t.Error("WebSocket client: no Close within 10s of caddy stop")
	}
	select {
	case err := <-upErr:
		var ne net.Error
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		case errors.As(err, &ne) && ne.Timeout():
			t.Errorf("upstream: connection still open 10s after caddy stop")
		default:
			t.Errorf("upstream: got %v, want EOF", err)
		}
	case <-time.After(time.Until(deadline)):
		t.Error("upstream: connection still open 10s after caddy stop")
	}
	if err := p.waitExit(t, 15*time.Second); err != nil {
		t.Errorf("caddy exited after stop with %v, want status 0", err)
	}
}

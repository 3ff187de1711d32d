package wstotcp

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Tests of `caddy tcp-to-ws`, the built binary, against a Caddy in the test
// process (or a plain Go TLS server, for the TLS cases).

// clientRun is one `caddy tcp-to-ws` process in stdio mode.
type clientRun struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout io.ReadCloser
	stderr *lockedBuffer
	done   chan struct{}
	err    error
}

// startClient starts `caddy tcp-to-ws args...` with env added to a clean
// environment, its standard input and output pipes to the test.
func startClient(t testing.TB, env []string, args ...string) *clientRun {
	t.Helper()
	bin := buildCaddy(t)
	r := &clientRun{stderr: new(lockedBuffer), done: make(chan struct{})}
	r.cmd = exec.Command(bin, append([]string{"tcp-to-ws"}, args...)...)
	r.cmd.Env = append(caddyEnv(t), env...)
	r.cmd.Stderr = r.stderr
	var err error
	if r.stdin, err = r.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	// Our own pipe, not StdoutPipe: Wait, which runs as soon as the process
	// exits, closes that one, and output not yet read would be lost.
	stdout, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.stdout, r.cmd.Stdout = stdout, w
	t.Cleanup(func() { stdout.Close() })
	err = r.cmd.Start()
	w.Close() // the child has its copy; EOF comes when it exits
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		r.err = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			r.cmd.Process.Kill() // only the process this test started
			<-r.done
		}
		if t.Failed() {
			t.Logf("tcp-to-ws stderr:\n%s", r.stderr.String())
		}
	})
	return r
}

// status waits for the process to exit and returns its exit status.
func (r *clientRun) status(t testing.TB) int {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("tcp-to-ws did not exit; stderr:\n%s", r.stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(r.err, &ee) {
		return ee.ExitCode()
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	return 0
}

// runClient runs `caddy tcp-to-ws args...` with stdin as its input and
// returns its output, its stderr and its exit status.
func runClient(t testing.TB, env []string, stdin []byte, args ...string) ([]byte, string, int) {
	t.Helper()
	r := startClient(t, env, args...)
	go func() {
		r.stdin.Write(stdin)
		r.stdin.Close()
	}()
	out, _ := io.ReadAll(r.stdout)
	status := r.status(t)
	return out, r.stderr.String(), status
}

// End of input is a half-close: the server's TCP program reads EOF after
// the last byte, what the server relayed before it arrives whole, and the
// process exits 0.
func TestTCPToWSStdioHalfClose(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	banner := make([]byte, 1<<20)
	rand.Read(banner)
	input := make([]byte, 8<<20)
	rand.Read(input)

	r := startClient(t, nil, s.wsURL("/"))
	conn := up.accept(t)
	go conn.Write(banner)
	got := make([]byte, len(banner))
	if _, err := io.ReadFull(r.stdout, got); err != nil || !bytes.Equal(got, banner) {
		t.Fatalf("stdout: %v; the banner arrived changed", err)
	}
	go func() {
		r.stdin.Write(input)
		r.stdin.Close()
	}()
	// The server program reads everything, then EOF.
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	all, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("upstream read: %v after %d bytes", err, len(all))
	}
	if sha256.Sum256(all) != sha256.Sum256(input) {
		t.Fatalf("upstream got %d bytes, not the %d bytes of input", len(all), len(input))
	}
	conn.Close()
	if rest, _ := io.ReadAll(r.stdout); len(rest) != 0 {
		t.Fatalf("%d bytes more on stdout", len(rest))
	}
	if st := r.status(t); st != exitClientOK {
		t.Fatalf("exit status %d, want 0", st)
	}
}

// The server's program ends first: every byte reaches stdout, then EOF,
// and the process exits 0 though its input is still open.
func TestTCPToWSStdioServerEnds(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	r := startClient(t, nil, s.wsURL("/"))
	conn := up.accept(t)
	data := make([]byte, 4<<20)
	rand.Read(data)
	go func(c net.Conn) {
		c.Write(data)
		c.Close()
	}(conn)
	out, err := io.ReadAll(r.stdout)
	if err != nil || !bytes.Equal(out, data) {
		t.Fatalf("stdout: %d bytes, %v; want the %d bytes sent", len(out), err, len(data))
	}
	// The reading program, at its EOF, exits and so closes its end of the
	// input too: the client then ends at once (TestTCPToWSBytesRightAfterHandshake
	// keeps the input open, which the client waits on up to the close grace).
	r.stdin.Close()
	if st := r.status(t); st != exitClientOK {
		t.Fatalf("exit status %d, want 0", st)
	}

	// The server's program fails (reset): exit 1, and the line says so.
	r = startClient(t, nil, s.wsURL("/"))
	conn = up.accept(t)
	conn.Write([]byte("x"))
	one := make([]byte, 1)
	io.ReadFull(r.stdout, one)
	conn.(*net.TCPConn).SetLinger(0)
	conn.Close()
	if st := r.status(t); st != exitClientAbnormal {
		t.Fatalf("exit status %d after an upstream reset, want 1", st)
	}
	if !strings.Contains(r.stderr.String(), "1014") {
		t.Fatalf("stderr %q does not name the close code", r.stderr.String())
	}
}

// --listen: one WebSocket per accepted connection, several at once, each
// byte-exact both ways.
func TestTCPToWSListen(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := runCaddy(t, buildCaddy(t), t.TempDir(), "tcp-to-ws", "--listen", addr, s.wsURL("/"))
	if err := p.waitListening(t, addr); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- echoThrough(addr, int64(1+i)<<18)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	// Eight lines, and one for waitListening's probe.
	eventually(t, "nine closed lines", func() bool {
		return strings.Count(p.output.String(), ": closed;") == 9
	})

	// A refused WebSocket closes the accepted connection, with one line
	// that says why; the listener goes on.
	addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p = runCaddy(t, buildCaddy(t), t.TempDir(), "tcp-to-ws", "--listen", addr, fmt.Sprintf("ws://127.0.0.1:%d/", freePort(t)))
	if err := p.waitListening(t, addr); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("read %d bytes, %v; want the connection closed", n, err)
		}
		c.Close()
	}
	eventually(t, "the refusals logged", func() bool {
		return strings.Count(p.output.String(), ": cannot connect: ") >= 3 // and waitListening's probe
	})
}

// echoThrough sends n bytes through addr to an echo server, and checks
// that the same bytes come back and the connection then closes.
func echoThrough(addr string, n int64) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	go func() {
		io.CopyN(c, &patternReader{}, n)
		c.(*net.TCPConn).CloseWrite()
	}()
	h := sha256.New()
	got, err := io.Copy(h, c)
	if err != nil {
		return fmt.Errorf("%d bytes back, then %v", got, err)
	}
	if got != n || [32]byte(h.Sum(nil)) != patternHash(n) {
		return fmt.Errorf("%d bytes back of %d, or other bytes", got, n)
	}
	return nil
}

// Every refusal of the handshake is one line on stderr and its own exit
// status.
func TestTCPToWSErrorStatuses(t *testing.T) {
	closed := freePort(t) // nothing listens there
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	route /auth {
		ws_to_tcp `+up.addr+` {
			auth {
				bearer right-token
			}
		}
	}
	route /origin {
		ws_to_tcp `+up.addr+` {
			origins https://app.example.com
		}
	}
	route /down {
		ws_to_tcp 127.0.0.1:`+fmt.Sprint(closed)+`
	}
	route /timeout {
		respond 504
	}
	route /teapot {
		respond 418
	}
	respond 404
}`)
	for _, c := range []struct {
		name   string
		env    []string
		args   []string
		status int
		line   string
	}{
		{"no credentials", nil, []string{s.wsURL("/auth")}, exitClientUnauthorized, "401 Unauthorized: no credentials were sent: set TCP_TO_WS_TOKEN"},
		{"wrong token", []string{"TCP_TO_WS_TOKEN=wrong"}, []string{s.wsURL("/auth")}, exitClientUnauthorized, "401 Unauthorized: the credentials were refused"},
		{"origin", nil, []string{"--origin", "https://evil.example.com", s.wsURL("/origin")}, exitClientForbidden, "403 Forbidden: refused"},
		{"no such path", nil, []string{s.wsURL("/nothing")}, exitClientNotFound, "404 Not Found: no WebSocket at this URL"},
		{"upstream down", nil, []string{s.wsURL("/down")}, exitClientBadGateway, "502 Bad Gateway: the server could not reach its TCP upstream"},
		{"upstream timeout", nil, []string{s.wsURL("/timeout")}, exitClientBadGateway, "504 Gateway Timeout"},
		{"other status", nil, []string{s.wsURL("/teapot")}, exitClientRefused, "418 I'm a teapot: WebSocket refused"},
		{"nothing listens", nil, []string{fmt.Sprintf("ws://127.0.0.1:%d/", closed)}, exitClientConnect, "cannot connect"},
		{"bad URL", nil, []string{"ftp://127.0.0.1/"}, exitClientUsage, "the scheme must be ws:// or wss://"},
		{"token and user", []string{"TCP_TO_WS_TOKEN=a", "TCP_TO_WS_USER=b"}, []string{s.wsURL("/auth")}, exitClientUsage, "both a bearer token and a basic-auth user"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, stderr, status := runClient(t, c.env, nil, c.args...)
			if status != c.status {
				t.Errorf("exit status %d, want %d; stderr %q", status, c.status, stderr)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], c.line) || !strings.HasPrefix(lines[0], "caddy tcp-to-ws: ") {
				t.Errorf("stderr %q, want one line with %q", stderr, c.line)
			}
			if len(out) != 0 {
				t.Errorf("stdout %q", out)
			}
		})
	}
}

// TLS: an untrusted certificate is exit 4 with one line; --ca with the
// server's certificate, or --insecure, gets through.
func TestTCPToWSTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		up := websocket.Upgrader{}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for { // echo, then close as the server's program ended
			typ, p, err := c.ReadMessage()
			if err != nil {
				return
			}
			c.WriteMessage(typ, p)
		}
	}))
	defer srv.Close()
	url := "wss://" + srv.Listener.Addr().String() + "/"
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)

	_, stderr, status := runClient(t, nil, nil, url)
	if status != exitClientTLS || !strings.Contains(stderr, "TLS: tls: failed to verify certificate") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("untrusted: exit %d, stderr %q; want 4 and one TLS line", status, stderr)
	}
	for _, args := range [][]string{{"--ca", caFile, url}, {"--insecure", url}} {
		r := startClient(t, nil, args...)
		r.stdin.Write([]byte("ping"))
		got := make([]byte, 4)
		if _, err := io.ReadFull(r.stdout, got); err != nil || string(got) != "ping" {
			t.Fatalf("%v: echoed %q, %v", args, got, err)
		}
		r.stdin.Close()
		r.status(t) // the echo server does not answer Close: it just drops
	}
}

// Credentials come from the environment or files; the server sees them.
func TestTCPToWSCredentials(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	route /bearer {
		ws_to_tcp `+up.addr+` {
			auth {
				bearer right-token
			}
		}
	}
	route /basic {
		ws_to_tcp `+up.addr+` {
			auth {
				basic {
					alice `+bcryptHash(t, "s3cret")+`
				}
			}
		}
	}
}`)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	passwordFile := filepath.Join(dir, "password")
	os.WriteFile(tokenFile, []byte("right-token\n"), 0o600)
	os.WriteFile(passwordFile, []byte("s3cret\n"), 0o600)
	for _, c := range []struct {
		name string
		env  []string
		args []string
	}{
		{"bearer from the environment", []string{"TCP_TO_WS_TOKEN=right-token"}, []string{s.wsURL("/bearer")}},
		{"bearer from a file", nil, []string{"--token-file", tokenFile, s.wsURL("/bearer")}},
		{"basic from the environment", []string{"TCP_TO_WS_USER=alice", "TCP_TO_WS_PASSWORD=s3cret"}, []string{s.wsURL("/basic")}},
		{"basic from a file", nil, []string{"--user", "alice", "--password-file", passwordFile, s.wsURL("/basic")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := startClient(t, c.env, c.args...)
			msg := []byte("hello through " + c.name)
			r.stdin.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(r.stdout, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("echoed %q, %v; stderr %q", got, err, r.stderr.String())
			}
			r.stdin.Close()
			if st := r.status(t); st != exitClientOK {
				t.Fatalf("exit status %d; stderr %q", st, r.stderr.String())
			}
		})
	}
}

// Custom headers, subprotocols and Origin reach the server as given.
func TestTCPToWSRequestHeaders(t *testing.T) {
	got := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		up := websocket.Upgrader{Subprotocols: []string{"mqtt"}, CheckOrigin: func(*http.Request) bool { return true }}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
		c.Close()
	}))
	defer srv.Close()
	_, stderr, status := runClient(t, nil, nil, "-H", "X-Trace: 42", "--header", "X-Other:  two words ",
		"--subprotocol", "mqtt,mqttv3.1", "--origin", "https://app.example.com", "ws"+strings.TrimPrefix(srv.URL, "http")+"/")
	if status != exitClientOK {
		t.Fatalf("exit %d: %s", status, stderr)
	}
	h := <-got
	for name, want := range map[string]string{"X-Trace": "42", "X-Other": "two words", "Sec-Websocket-Protocol": "mqtt, mqttv3.1", "Origin": "https://app.example.com"} {
		if h.Get(name) != want {
			t.Errorf("%s: %q, want %q", name, h.Get(name), want)
		}
	}
}

// The first bytes the server sends right after its 101 response (an SSH
// banner, say) are not lost in the handshake's reader.
func TestTCPToWSBytesRightAfterHandshake(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	go func() {
		for c := range up.conns {
			c.Write([]byte("SSH-2.0-banner\r\n"))
			c.Close()
		}
	}()
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	// Several clients at once, as the bytes may or may not share a read
	// with the 101 response; each waits out the close grace on its open
	// input, in parallel.
	runs := make([]*clientRun, 5)
	for i := range runs {
		runs[i] = startClient(t, nil, s.wsURL("/")) // input stays open
	}
	for _, r := range runs {
		out, _ := io.ReadAll(r.stdout)
		if st := r.status(t); string(out) != "SSH-2.0-banner\r\n" || st != exitClientOK {
			t.Fatalf("stdout %q, exit %d, stderr %q", out, st, r.stderr.String())
		}
	}
}

package wstotcp

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// testServer is an in-process Caddy on ports chosen at run time, so that
// test runs do not collide with each other or with a real Caddy.
type testServer struct {
	t         testing.TB
	httpPort  int
	adminPort int
	logFile   string // every log line of this Caddy, JSON
	opts      caddyOptions
}

// caddyOptions adds to the harness's global options.
type caddyOptions struct {
	globals   string // more global options (an events block, say)
	logLevel  string // of the global log; default DEBUG
	logFormat string // the global log's format; default JSON (a filter, say)
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// caddyMu serialises the tests that run a Caddy: there is one per process.
var caddyMu sync.Mutex

// startCaddy loads a Caddyfile whose site blocks may use {HTTP} for the
// site address (http://127.0.0.1:<port>) and {ADMIN} for the admin address.
// It stops Caddy when the test ends.
func startCaddy(t testing.TB, sites string) *testServer {
	t.Helper()
	return startCaddyWith(t, caddyOptions{}, sites)
}

// startCaddyWith is startCaddy with more global options.
func startCaddyWith(t testing.TB, opts caddyOptions, sites string) *testServer {
	t.Helper()
	caddyMu.Lock()
	s := &testServer{t: t, httpPort: freePort(t), adminPort: freePort(t),
		logFile: filepath.Join(t.TempDir(), "caddy.log"), opts: opts}
	t.Cleanup(func() {
		waitNoTunnels(t)
		caddy.Stop()
		caddyMu.Unlock()
		if t.Failed() {
			b, _ := os.ReadFile(s.logFile)
			if len(b) > 16<<10 {
				b = b[len(b)-16<<10:]
			}
			t.Logf("Caddy's log (tail):\n%s", b)
		}
	})
	// The free port may be taken by another process before Caddy binds it:
	// then pick others.
	for attempt := 0; ; attempt++ {
		err := s.tryLoad(sites)
		if err == nil {
			return s
		}
		if attempt == 4 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("loading config: %v", err)
		}
		s.httpPort, s.adminPort = freePort(t), freePort(t)
	}
}

// load (re)loads the configuration, as `caddy reload` does.
func (s *testServer) load(sites string) {
	s.t.Helper()
	if err := s.tryLoad(sites); err != nil {
		s.t.Fatalf("loading config: %v", err)
	}
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
		output file %s
		level %s
		%s
	}
%s
}
`, s.adminPort, s.httpPort, gracePeriod, s.logFile, level, format, s.opts.globals) + strings.NewReplacer(
		"{HTTP}", fmt.Sprintf("http://127.0.0.1:%d", s.httpPort),
		"{ADMIN}", fmt.Sprintf("127.0.0.1:%d", s.adminPort),
	).Replace(sites)
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return err
	}
	return caddy.Load(js, true)
}

func (s *testServer) wsURL(path string) string {
	return fmt.Sprintf("ws://127.0.0.1:%d%s", s.httpPort, path)
}

func (s *testServer) httpURL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", s.httpPort, path)
}

// dial opens a WebSocket; it fails the test if the handshake fails.
func (s *testServer) dial(path string, hdr http.Header) *websocket.Conn {
	s.t.Helper()
	c, resp, err := s.tryDial(path, hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		s.t.Fatalf("dial %s: %v (status %d)", path, err, status)
	}
	return c
}

func (s *testServer) tryDial(path string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: ioTimeout, ReadBufferSize: 64 << 10, WriteBufferSize: 64 << 10}
	for attempt := 0; ; attempt++ {
		c, resp, err := d.Dial(s.wsURL(path), hdr)
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

// accept returns the next connection, or fails the test after 10 s.
func (u *upstream) accept(t testing.TB) net.Conn {
	t.Helper()
	select {
	case c := <-u.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("upstream: no connection within 10s")
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
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return &upstream{ln: ln, addr: ln.Addr().String()}
}

// deterministic data: a reproducible stream whose hash both ends compute.
// patternReader yields a stream whose every byte depends on its position
// only, so both ends can recompute it whatever the read sizes.
type patternReader struct{ pos uint64 }

func (p *patternReader) Read(b []byte) (int, error) {
	for k := range b {
		x := p.pos
		b[k] = byte(x ^ x>>9 ^ x>>17)
		p.pos++
	}
	return len(b), nil
}

func patternHash(n int64) [32]byte {
	h := sha256.New()
	io.CopyN(h, &patternReader{}, n)
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

func withTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitNoTunnels fails the test unless, within 10 s, every tunnel has ended
// and no goroutine of the relay is left: the test has closed its clients
// and upstreams, so anything still running has leaked.
func waitNoTunnels(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		tunnels.Lock()
		open := len(tunnels.m)
		tunnels.Unlock()
		stacks := relayGoroutines()
		if open == 0 && stacks == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("leak: %d tunnels still registered; relay goroutines:\n%s", open, stacks)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// relayGoroutines returns the stacks of the goroutines running tunnel code.
func relayGoroutines() string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "caddy-ws-to-tcp.(*tunnel)") && !strings.Contains(g, "caddy-ws-to-tcp.relayGoroutines") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// waitFor polls cond until it holds, and fails the test if it does not
// within timeout: the wait for a state that no event announces (a count,
// a list, a health flag).
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

package wstotcp

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// dialCounter is an upstream that tells how many connections a handshake
// made to it: it accepts and closes every connection (so that an admitted
// tunnel ends at once) and records the peer address of each.
type dialCounter struct {
	addr     string
	accepted chan string // the remote address of each accepted connection
}

func newDialCounter(tb testing.TB) *dialCounter {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	d := &dialCounter{addr: ln.Addr().String(), accepted: make(chan string, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d.accepted <- c.RemoteAddr().String()
			c.Close()
		}
	}()
	tb.Cleanup(func() { ln.Close(); <-done })
	return d
}

// dials returns how many connections were made to the upstream since the
// last call. The kernel queues connections in the order their handshakes
// complete, and a dial returns once its handshake has: so after a call to
// ServeHTTP has returned, its connections are queued ahead of a sentinel
// dialled now, and counting what is accepted before the sentinel counts
// them, with no timing guess.
func (d *dialCounter) dials(tb testing.TB) int {
	tb.Helper()
	c, err := net.DialTimeout("tcp", d.addr, 10*time.Second)
	if err != nil {
		tb.Fatalf("sentinel dial: %v", err)
	}
	defer c.Close()
	sentinel := c.LocalAddr().String()
	n := 0
	for {
		select {
		case a := <-d.accepted:
			if a == sentinel {
				return n
			}
			n++
		case <-time.After(10 * time.Second):
			tb.Fatal("the upstream did not accept the sentinel within 10s")
		}
	}
}

// hijackRecorder is a ResponseRecorder that can be hijacked, as a real
// HTTP/1.1 connection can: the hijacked side is one end of a pipe whose
// other end reads the status line of the 101 and then closes, so that an
// admitted tunnel ends at once.
type hijackRecorder struct {
	*httptest.ResponseRecorder
	statusLine chan string // the response head written on the hijacked connection
	hijacked   bool
}

func newHijackRecorder() *hijackRecorder {
	return &hijackRecorder{ResponseRecorder: httptest.NewRecorder(), statusLine: make(chan string, 1)}
}

func (w *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.hijacked = true
	server, client := net.Pipe()
	go func() {
		// the status line and the headers, up to the blank line
		br := bufio.NewReader(client)
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			head.WriteString(line)
			if err != nil || line == "\r\n" {
				break
			}
		}
		w.statusLine <- head.String()
		client.Close()
	}()
	return server, bufio.NewReadWriter(bufio.NewReader(server), bufio.NewWriter(server)), nil
}

// handshakeResult is what a handshake through ServeHTTP gave.
type handshakeResult struct {
	status int    // the refusal's status, 101 for an upgrade, else what was written
	head   string // the 101 response's head
	err    error  // ServeHTTP's
	next   bool   // passed to the next handler
}

// serveHandshake runs r (prepared with prepareHandshake) through h's
// ServeHTTP, as Caddy's server would, and waits until any tunnel it opened
// has ended.
func serveHandshake(tb testing.TB, h *Handler, r *http.Request, w *hijackRecorder) handshakeResult {
	tb.Helper()
	var res handshakeResult
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		res.next = true
		return nil
	})
	res.err = h.ServeHTTP(w, r, next)
	switch {
	case res.err != nil:
		res.status = handlerErrorStatus(res.err)
		if res.status == 0 {
			res.status = http.StatusInternalServerError
		}
	case w.hijacked:
		if res.head = <-w.statusLine; strings.HasPrefix(res.head, "HTTP/1.1 101 ") {
			res.status = http.StatusSwitchingProtocols
		}
	default:
		res.status = w.Code
	}
	waitFor(tb, 10*time.Second, "the handshake's tunnel to end", func() bool {
		tunnels.Lock()
		defer tunnels.Unlock()
		return len(tunnels.m) == 0
	})
	return res
}

// prepareHandshake makes a valid WebSocket handshake for host (the Host
// header), prepared as Caddy's server prepares a request (replacer, vars,
// server); origin "" sends none; withTLS marks it as received over TLS.
// srv may be nil.
func prepareHandshake(host, origin string, withTLS bool, srv *caddyhttp.Server, w http.ResponseWriter) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://"+host+"/", nil)
	r.Host = host
	r.RemoteAddr = "127.0.0.1:40000"
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	if origin != "" {
		r.Header.Set("Origin", origin)
	}
	if withTLS {
		r.TLS = &tls.ConnectionState{HandshakeComplete: true, ServerName: host}
	}
	return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, srv)
}

// goroutineBaseline waits until the number of goroutines is back to at
// most n, and fails the test if it is not within 10 s.
func waitGoroutines(tb testing.TB, n int) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			tb.Fatalf("%d goroutines, %d before: left running:\n%s", runtime.NumGoroutine(), n, buf)
		}
		time.Sleep(time.Millisecond)
	}
}

var _ = bytes.MinRead
var _ = fmt.Sprint
var _ io.Reader
var _ sync.Mutex

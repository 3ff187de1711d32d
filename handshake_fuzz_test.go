package wstotcp

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
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
	eventually(tb, "the handshake's tunnel to end", func() bool {
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

// ownGoroutines counts the goroutines running code of this module (the
// handler, the relay, these tests' helpers), the current one included:
// other tests' leftovers of Caddy or net/http may still be winding down,
// and are not this test's business.
func ownGoroutines() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "caddy-ws-to-tcp") {
			n++
		}
	}
	return n
}

// waitOwnGoroutines waits until at most n goroutines run this module's
// code, and fails the test if that does not happen.
func waitOwnGoroutines(tb testing.TB, n int) {
	tb.Helper()
	eventually(tb, fmt.Sprintf("at most %d goroutines running this module's code", n), func() bool {
		return ownGoroutines() <= n
	})
}

// FuzzHandshake sends arbitrary requests (method, target, header lines,
// body, over TLS or not, as an HTTP/1.1 upgrade or an HTTP/2 extended
// CONNECT) through ServeHTTP of two provisioned handlers, one with the
// defaults and one with every admission setting (auth, origins,
// allowed_hosts, subprotocols, limits, targets). No request panics or
// leaves a goroutine behind; a request is either passed to the next
// handler, refused with a 4xx or 5xx, or admitted; and only an admitted
// one dials the upstream, once.
func FuzzHandshake(f *testing.F) {
	up := newDialCounter(f)
	password := "fuzz-password"
	tokenSum := sha256.Sum256([]byte("fuzz-token"))
	plain := provisioned(f, `{"upstreams": [{"dial": "`+up.addr+`"}], "channel": "{http.request.uri.query.room}"}`)
	guarded := provisioned(f, `{
		"auth": {"basic": [{"username": "alice", "password": "`+bcryptHash(f, password)+`"}],
			"bearer": ["sha256:`+hex.EncodeToString(tokenSum[:])+`"], "token_query": "access_token"},
		"origins": ["https://app.example.com", "null"],
		"allowed_hosts": ["vnc.lan"],
		"subprotocols": ["binary", "base64"],
		"max_connections": 4, "max_connections_per_ip": 2, "max_connections_per_user": 1,
		"targets": {"query": "vm", "map": {"vm1": "`+up.addr+`"}},
		"allow_targets": ["127.0.0.0/8"],
		"channel": "{http.request.header.X-Room}"}`)

	const upgrade = "Connection: Upgrade\nUpgrade: websocket\nSec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n"
	for _, s := range []struct {
		flags                   uint8
		method, target, headers string
		body                    string
	}{
		{0, "GET", "/", upgrade, ""},
		{0, "GET", "/?room=r1", upgrade + "Origin: http://127.0.0.1:6080\nHost: 127.0.0.1:6080", ""},
		{0, "GET", "/", upgrade + "Origin: http://rebind.example:6080\nHost: rebind.example:6080", ""},
		{2, "GET", "/", upgrade + "Origin: http://vnc.example\nHost: vnc.example", ""},
		{0, "GET", "/", upgrade + "Sec-WebSocket-Protocol: chat, " + strings.Repeat("x", 100), ""},
		{0, "GET", "/", "Connection: Upgrade\nUpgrade: websocket\nSec-WebSocket-Version: 13\nSec-WebSocket-Key: x", ""},
		{0, "POST", "/", upgrade, "data"},
		{0, "GET", "/", "", ""},
		{1, "GET", "/?vm=vm1&access_token=fuzz-token", upgrade + "Sec-WebSocket-Protocol: binary", ""},
		{1, "GET", "/?vm=vm1", upgrade + "Sec-WebSocket-Protocol: binary, bearer.fuzz-token\nOrigin: https://app.example.com", ""},
		{1, "GET", "/?vm=vm1", upgrade + "Sec-WebSocket-Protocol: base64\nAuthorization: Basic YWxpY2U6ZnV6ei1wYXNzd29yZA==", ""},
		{1, "GET", "/?vm=vm2", upgrade + "Sec-WebSocket-Protocol: binary\nAuthorization: Bearer fuzz-token", ""},
		{1, "GET", "/?vm=..", upgrade + "Sec-WebSocket-Protocol: binary\nCookie: access_token=fuzz-token", ""},
		{1, "GET", "/?vm=vm1", upgrade + "Sec-WebSocket-Protocol: bearer.fuzz-token", ""},
		{1, "GET", "/?vm=vm1", upgrade + "Sec-WebSocket-Protocol: binary\nAuthorization: Bearer fuzz-token\nOrigin: http://vnc.lan\nHost: vnc.lan", ""},
		{4, "CONNECT", "/", "Sec-WebSocket-Version: 13", "\x82\x85\x00\x00\x00\x00hello\x88\x80\x00\x00\x00\x00"},
		{6, "CONNECT", "/", "Sec-WebSocket-Version: 13\nOrigin: https://127.0.0.1:6080", "\x81\x02hi"},
		{5, "CONNECT", "/?vm=vm1&access_token=fuzz-token", "Sec-WebSocket-Version: 13\nSec-WebSocket-Protocol: binary", "\x82\x80\x01\x02\x03\x04"},
	} {
		f.Add(s.flags, s.method, s.target, s.headers, []byte(s.body))
	}
	baseline := -1
	f.Fuzz(func(t *testing.T, flags uint8, method, target, headers string, body []byte) {
		if baseline < 0 {
			baseline = ownGoroutines()
		}
		h := plain
		if flags&1 != 0 {
			h = guarded
		}
		// The request as Caddy's server reads it off the wire: what net/http
		// cannot parse never reaches a handler.
		var raw bytes.Buffer
		fmt.Fprintf(&raw, "%s %s HTTP/1.1\r\n", method, target)
		hasHost := false
		for line := range strings.SplitSeq(headers, "\n") {
			if line == "" || strings.ContainsAny(line, "\r") {
				continue
			}
			hasHost = hasHost || strings.HasPrefix(strings.ToLower(line), "host:")
			raw.WriteString(line + "\r\n")
		}
		if !hasHost {
			raw.WriteString("Host: 127.0.0.1:6080\r\n")
		}
		fmt.Fprintf(&raw, "Content-Length: %d\r\n\r\n", len(body))
		raw.Write(body)
		r, err := http.ReadRequest(bufio.NewReader(&raw))
		if err != nil {
			return
		}
		r.RemoteAddr = "127.0.0.1:40000"
		if flags&2 != 0 {
			r.TLS = &tls.ConnectionState{HandshakeComplete: true}
		}
		if flags&4 != 0 {
			// an HTTP/2 extended CONNECT, as Go's HTTP/2 server hands it over
			r.ProtoMajor, r.ProtoMinor, r.Proto = 2, 0, "HTTP/2.0"
			r.Header.Set(":protocol", "websocket")
		}
		w := newHijackRecorder()
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
		what := fmt.Sprintf("%s %q (flags %d, headers %q, %d bytes of body)", method, target, flags, headers, len(body))

		res := serveHandshake(t, h, r, w)
		dials := up.dials(t)
		switch {
		case res.err != nil:
			if st := handlerErrorStatus(res.err); st < 400 || st > 599 {
				t.Fatalf("%s: ServeHTTP returned %v, not a 4xx or 5xx refusal", what, res.err)
			}
			if dials != 0 {
				t.Fatalf("%s: refused with %d after %d dials: %v", what, res.status, dials, res.err)
			}
		case res.next:
			if dials != 0 {
				t.Fatalf("%s: passed to the next handler after %d dials", what, dials)
			}
		default: // admitted: one dial, then the upgrade or the stream's 200
			if dials != 1 || (res.status != http.StatusSwitchingProtocols && res.status != http.StatusOK) {
				t.Fatalf("%s: admitted with %d dials, answered %d (head %q)", what, dials, res.status, res.head)
			}
		}
		waitOwnGoroutines(t, baseline)
	})
}

// TestInvalidWebSocketKeyRefusedBeforeDial: found by FuzzHandshake. A
// Sec-WebSocket-Key that is not the base64 of 16 bytes passed admission,
// had the upstream dialled, and was then refused by gorilla's Upgrade
// (400): now it is refused before any dial.
func TestInvalidWebSocketKeyRefusedBeforeDial(t *testing.T) {
	up := newDialCounter(t)
	h := provisioned(t, `{"upstreams": [{"dial": "`+up.addr+`"}]}`)
	for key, want := range map[string]int{
		"dGhlIHNhbXBsZSBub25jZQ==":     101,
		"00":                           400,
		"x":                            400,
		"dGhlIHNhbXBsZSBub25jZQ":       400, // no padding
		"dGhlIHNhbXBsZSBub25j":         400, // 15 bytes
		"dGhlIHNhbXBsZSBub25jZQ==AA==": 400,
		"dGhlIHNhbXBsZSBub25jZXg=":     400, // 17 bytes
	} {
		w := newHijackRecorder()
		r := prepareHandshake("127.0.0.1:6080", "", false, nil, w)
		r.Header.Set("Sec-WebSocket-Key", key)
		res := serveHandshake(t, h, r, w)
		dials := up.dials(t)
		if res.status != want || want == 400 && (dials != 0 || res.err == nil) {
			t.Errorf("key %q: status %d (%v) after %d dials, want %d", key, res.status, res.err, dials, want)
		}
	}
}

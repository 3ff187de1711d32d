package wstotcp

import (
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The upstream reads, in this order and before the client sends anything:
// the PROXY header, then the preamble with the request's placeholders
// (the user from basic_auth, a header, a query parameter whose newline a
// client slipped in is removed) and the template's escapes; then the
// client's bytes.
func TestPreambleOrder(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	basic_auth {
		alice `+bcryptHash(t, "pw")+`
	}
	ws_to_tcp `+up.addr+` {
		proxy_protocol v1
		preamble "LOGIN {http.auth.user.id} room={http.request.header.X-Room} lang={http.request.uri.query.lang}{http.request.uri.query.missing}\r\n\x00\x01"
	}
}`)
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth("alice", "pw")
	r.Header.Set("X-Room", "r1")
	c := s.dial("/?lang=fr%0D%0AADMIN", r.Header)
	defer c.Close()
	uc := up.accept(t)

	client := c.LocalAddr().(*net.TCPAddr)
	header := fmt.Sprintf("PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n", client.Port, s.httpPort)
	preamble := "LOGIN alice room=r1 lang=frADMIN\r\n\x00\x01"
	// All of it is there with the client silent.
	if got := readFull(t, uc, len(header)+len(preamble)); string(got) != header+preamble {
		t.Fatalf("upstream read\n%q, want\n%q", got, header+preamble)
	}
	// Nothing more until the client writes.
	uc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := uc.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("the upstream got %d more bytes before the client wrote (%v)", n, err)
	}
	c.WriteMessage(websocket.BinaryMessage, []byte("client data"))
	if got := readFull(t, uc, len("client data")); string(got) != "client data" {
		t.Fatalf("then %q", got)
	}
	// And the upstream's answer reaches the client as usual.
	uc.Write([]byte("welcome"))
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, b, err := c.ReadMessage(); err != nil || string(b) != "welcome" {
		t.Fatalf("client read %q %v", b, err)
	}
}

// Without proxy_protocol the preamble is the first thing on the
// connection.
func TestPreambleWithoutProxyHeader(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		preamble "HELLO {http.request.uri.query.name}\n"
	}
}`)
	c := s.dial("/?name=bob", nil)
	defer c.Close()
	uc := up.accept(t)
	if got := readFull(t, uc, len("HELLO bob\n")); string(got) != "HELLO bob\n" {
		t.Fatalf("upstream read %q", got)
	}
}

package wstotcp

import (
	"testing"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// `caddy ws-to-tcp` over HTTPS serves WebSockets over HTTP/2 without
// GODEBUG in its environment: it sets it for itself.
func TestCommandTLSServesHTTP2WebSockets(t *testing.T) {
	echo := echoUpstream(t)
	certFile, keyFile := writeServerCert(t, t.TempDir())
	_, addrs := startCommand(t, 1, func(a []string) []string {
		return []string{"--listen", a[0], "--to", echo.addr, "--cert", certFile, "--key", keyFile}
	})
	addr := addrs[0]

	ws, _, err := newH2Client(t, addr).connect("/", nil)
	if err != nil {
		t.Fatalf("WebSocket over HTTP/2: %v", err)
	}
	ws.write(wsframe.OpBinary, []byte("over HTTP/2"))
	if _, p, err := ws.readData(); err != nil || string(p) != "over HTTP/2" {
		t.Fatalf("echo: %q %v", p, err)
	}
	ws.closeWith(wsframe.CloseNormal)
	ws.readData()
	ws.close()
}

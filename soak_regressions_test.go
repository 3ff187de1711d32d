package wstotcp

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Bugs the soak (bench/soak, docs/soak.md) found in the module, each pinned
// here. The relay's are in internal/relay/soak_regressions_test.go.

// An HTTP/2 or HTTP/3 handshake that is being admitted when its server
// begins to shut down (a reload) gets its tunnel closed with 1001, as the
// tunnels already open do (README, HTTP/2 and HTTP/3). Before, the
// server's shutdown hook had listed the tunnels without the late one, which
// then lived until grace_period cut it without a Close frame (and the
// shutdown logged an ERROR): the soak saw it on HTTP/3 during reloads.
func TestStreamTunnelAdmittedDuringShutdownIsClosed(t *testing.T) {
	for _, transport := range streamTransports {
		t.Run(transport, func(t *testing.T) {
			up := echoUpstream(t)
			// forward_auth holds the "late" handshake before ws_to_tcp
			// until the test lets it go.
			arrived, gate := make(chan struct{}), make(chan struct{})
			auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.Header.Get("X-Forwarded-Uri"), "late") {
					close(arrived)
					<-gate
				}
			}))
			t.Cleanup(auth.Close)
			site := `{HTTPS} {
	{TLS}
	route {
		forward_auth ` + auth.Listener.Addr().String() + ` {
			uri /auth
		}
		ws_to_tcp ` + up.addr + `
	}
}`
			s := startTLSSite(t, site)
			d := s.dialer(t, transport)

			// A tunnel open before the reload: its Close 1001 says the
			// shutdown hook has run.
			early, _, err := d.connect("/early", nil)
			if err != nil {
				t.Fatal(err)
			}
			type opened struct {
				ws  *streamWS
				err error
			}
			late := make(chan opened, 1)
			go func() {
				ws, _, err := d.connect("/late", nil)
				late <- opened{ws, err}
			}()
			<-arrived

			loaded := make(chan error, 1)
			go func() { loaded <- s.testServer.tryLoad(s.expand.Replace(site + "\n# reloaded")) }()
			if code := streamCloseCode(t, early); code != wsframe.CloseGoingAway {
				close(gate)
				t.Fatalf("the open tunnel ended with %d, want 1001", code)
			}
			close(gate)
			o := <-late
			if o.err != nil {
				t.Fatalf("the held handshake: %v", o.err)
			}
			// Without the fix no Close comes: on HTTP/3 the stream is cut
			// when grace_period ends, on HTTP/2 it outlives its server.
			lateCode := make(chan int, 1)
			go func() { lateCode <- streamCloseCode(t, o.ws) }()
			select {
			case code := <-lateCode:
				if code != wsframe.CloseGoingAway {
					t.Fatalf("the tunnel admitted during the shutdown ended with %d, want Close 1001", code)
				}
			case <-time.After(ioTimeout):
				t.Fatalf("the tunnel admitted during the shutdown got no Close in %v", ioTimeout)
			}
			o.ws.closeWith(wsframe.CloseGoingAway)
			if err := <-loaded; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// streamCloseCode reads data messages until the server's Close and returns its
// code (0 when the stream ended without one).
func streamCloseCode(t *testing.T, ws *streamWS) int {
	t.Helper()
	for {
		_, _, err := ws.readData()
		var cr *closeReceived
		if errors.As(err, &cr) {
			return cr.code
		}
		if err != nil {
			t.Logf("the stream ended without a Close: %v", err)
			return 0
		}
	}
}

package wstotcp

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/zap"
)

// panickyConn is an upstream whose Read panics: a bug in the relay's
// reading code, as far as the relay can tell.
type panickyConn struct{ net.Conn }

func (panickyConn) Read([]byte) (int, error) { panic("boom") }

// A panic in a pump closes that tunnel with 1011 and its upstream, and
// leaves the server running.
func TestPanicInPumpCloses1011(t *testing.T) {
	h := provisioned(t, `{"upstreams": [{"dial": "127.0.0.1:9"}]}`)
	h.logger = zap.NewNop()
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	tn := newTunnel(h, panickyConn{upSide}, "test", "", "127.0.0.1")
	tn.start(clientSide)

	client.SetReadDeadline(time.Now().Add(ioTimeout))
	want := append([]byte{0x88, 16, 0x03, 0xF3}, "internal error"...)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(client, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("client got %x (%v), want Close 1011 %x", got, err, want)
	}
	upstream.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := upstream.Read(make([]byte, 1)); err == nil {
		t.Fatal("the upstream was not closed")
	}
	client.Close()
	waitNoTunnels(t)
}

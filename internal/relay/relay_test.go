package relay

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// panickyConn is an upstream whose Read panics: a bug in the relay's
// reading code, as far as the relay can tell.
type panickyConn struct{ net.Conn }

func (panickyConn) Read([]byte) (int, error) { panic("boom") }

// A panic in a pump closes that tunnel with 1011 and its upstream, and
// leaves the server running.
func TestPanicInPumpCloses1011(t *testing.T) {
	t.Parallel()
	client, clientSide := tcpPair(t)
	upSide, upstream := tcpPair(t)
	_, ended := started(testConfig(nil), clientSide, panickyConn{upSide}, false)

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
	e := <-ended
	var perr *PanicError
	if e.Code != 1011 || e.By != ByServer || !errors.As(e.Err, &perr) || perr.Value != "boom" || len(perr.Stack) == 0 {
		t.Fatalf("ended %+v, want 1011 by the server with the panic", e)
	}
}

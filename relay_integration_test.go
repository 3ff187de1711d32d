package wstotcp

import (
	"bytes"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestSmokeEcho(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	defer c.Close()
	c.WriteMessage(websocket.BinaryMessage, []byte("hello"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	mt, b, err := c.ReadMessage()
	if err != nil || mt != websocket.BinaryMessage || !bytes.Equal(b, []byte("hello")) {
		t.Fatalf("got %d %q %v", mt, b, err)
	}
}

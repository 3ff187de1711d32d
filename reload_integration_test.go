package wstotcp

import (
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestTunnelSurvivesReload(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	roundTrip(t, c, uc, "before reload")

	s.load(`{HTTP} {
	header X-Config 2
	ws_to_tcp /new ` + up.addr + `
}`)
	roundTrip(t, c, uc, "after reload") // the old tunnel lives on

	c2 := s.dial("/new", nil) // and the new config serves new ones
	defer c2.Close()
	roundTrip(t, c2, up.accept(t), "new config")
}

func TestReloadCloseAfterClosesOldTunnels(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		reload_close_after 500ms
	}
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	roundTrip(t, c, uc, "before reload")

	reloaded := time.Now()
	s.load(`{HTTP} {
	ws_to_tcp ` + up.addr + ` {
		reload_close_after 500ms
	}
	header X-Config 2
}`)
	c2 := s.dial("/", nil) // opened under the new config: not closed
	defer c2.Close()
	uc2 := up.accept(t)

	if code := expectClose(t, c, ioTimeout); code != websocket.CloseGoingAway {
		t.Fatalf("close %d, want 1001", code)
	}
	if el := time.Since(reloaded); el < 450*time.Millisecond {
		t.Fatalf("closed %v after the reload, before reload_close_after", el)
	}
	readEOFOrReset(t, uc)
	roundTrip(t, c2, uc2, "the new config's tunnel is open")
}

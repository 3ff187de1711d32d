package wstotcp

import (
	"bytes"
	"io"
	"net"
	"testing"
	"testing/synctest"
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
	ws_to_tcp /old `+up.addr+` {
		reload_close_after 100ms
	}
}`)
	c := s.dial("/old", nil)
	defer c.Close()
	uc := up.accept(t)
	roundTrip(t, c, uc, "before reload")

	s.load(`{HTTP} {
	ws_to_tcp /new ` + up.addr + ` {
		reload_close_after 100ms
	}
}`)
	// Opened under the new configuration, which alone has /new: a
	// connection the old server accepted while it shut down (Caddy shares
	// the listener) is refused there, and tried again.
	var c2 *websocket.Conn
	eventually(t, "a tunnel of the new configuration", func() bool {
		var err error
		c2, _, err = s.tryDial("/new", nil)
		return err == nil
	})
	defer c2.Close()
	uc2 := up.accept(t)

	if code := expectClose(t, c, ioTimeout); code != websocket.CloseGoingAway {
		t.Fatalf("close %d, want 1001", code)
	}
	readEOFOrReset(t, uc)
	roundTrip(t, c2, uc2, "the new config's tunnel is open")
}

// reload_close_after, in virtual time: on an unload that is a reload, the
// handler's tunnels get Close 1001 exactly reload_close_after later, and
// those of other handlers (the new configuration's) stay.
func TestReloadCloseAfterTiming(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		old := provisioned(t, `{"upstreams": [{"dial": "127.0.0.1:9"}], "reload_close_after": "30s"}`)
		current := provisioned(t, `{"upstreams": [{"dial": "127.0.0.1:9"}]}`)
		open := func(h *Handler) (*tunnel, net.Conn) {
			client, clientSide := net.Pipe()
			upSide, upstream := net.Pipe()
			t.Cleanup(func() { client.Close(); upstream.Close() })
			go io.Copy(io.Discard, upstream)
			tn := newTunnel(h, "127.0.0.1:9", "", "192.0.2.1", transportHTTP1)
			tn.start(clientSide, upSide)
			return tn, client
		}
		oldTunnel, oldClient := open(old)
		curTunnel, _ := open(current)
		start := time.Now()
		if err := old.Cleanup(); err != nil { // a reload: caddy.Exiting() is false
			t.Fatal(err)
		}
		time.Sleep(30*time.Second - time.Nanosecond) // virtual time: the test runs in a synctest bubble
		synctest.Wait()
		if oldTunnel.Ending() {
			t.Fatalf("closing %v after the reload, before reload_close_after", time.Since(start))
		}
		want := append([]byte{0x88, 24, 0x03, 0xE9}, "configuration reloaded"...)
		frame := make([]byte, len(want))
		if _, err := io.ReadFull(oldClient, frame); err != nil || !bytes.Equal(frame, want) {
			t.Fatalf("the old tunnel's client got %q (%v), want Close 1001 %q", frame, err, want)
		}
		if el := time.Since(start); el != 30*time.Second {
			t.Fatalf("Close after %v, want reload_close_after (30s)", el)
		}
		synctest.Wait()
		if curTunnel.Ending() {
			t.Fatal("the new configuration's tunnel is closing too")
		}
	})
}

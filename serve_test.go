package wstotcp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Handler tests: a provisioned Handler served without Caddy
// (handlerServer), real clients and upstreams, in parallel.

func TestSubprotocolNegotiation(t *testing.T) {
	t.Parallel()
	up := echoUpstream(t)
	serve := func(subprotocols ...string) *handlerServer {
		js, _ := json.Marshal(map[string]any{"upstreams": []map[string]string{{"dial": up.addr}}, "subprotocols": subprotocols})
		return serveJSON(t, string(js))
	}
	servers := map[string]*handlerServer{
		"any":   serve(),
		"mqtt":  serve("mqttv3.1", "mqtt"),
		"novnc": serve("binary", "base64"),
	}
	cases := []struct {
		handler string
		offer   []string
		status  int    // 101 or the refusal
		echoed  string // the negotiated protocol
		comment string
	}{
		{"any", nil, 101, "", "no offer, no echo"},
		{"any", []string{"mqtt", "mqttv3.1"}, 101, "mqtt", "client's first offer"},
		{"any", []string{"chat.v2", "chat"}, 101, "chat.v2", "browser-style offer must be echoed"},
		{"mqtt", []string{"mqtt", "mqttv3.1"}, 101, "mqttv3.1", "server preference wins"},
		{"mqtt", []string{"mqtt"}, 101, "mqtt", ""},
		{"mqtt", []string{"stomp"}, 400, "", "none accepted"},
		{"mqtt", nil, 400, "", "offer required"},
		{"novnc", []string{"binary"}, 101, "binary", ""},
		{"novnc", []string{"base64", "binary"}, 101, "binary", "server order: binary first"},
		{"novnc", []string{"base64"}, 101, "base64", ""},
	}
	for _, tc := range cases {
		d := websocket.Dialer{Subprotocols: tc.offer, HandshakeTimeout: ioTimeout}
		c, resp, err := d.Dial(servers[tc.handler].wsURL("/"), nil)
		if tc.status != 101 {
			if err == nil || resp == nil || resp.StatusCode != tc.status {
				t.Errorf("%s %v: want %d, got %v %v", tc.handler, tc.offer, tc.status, resp, err)
			}
			if c != nil {
				c.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %v (%s): %v", tc.handler, tc.offer, tc.comment, err)
			continue
		}
		if got := c.Subprotocol(); got != tc.echoed {
			t.Errorf("%s %v (%s): echoed %q, want %q", tc.handler, tc.offer, tc.comment, got, tc.echoed)
		}
		c.Close()
	}
}

func TestCrossOriginRefusedByDefault(t *testing.T) {
	t.Parallel()
	up := echoUpstream(t)
	s := serveJSON(t, `{"upstreams": [{"dial": "`+up.addr+`"}]}`)
	hdr := http.Header{"Origin": {"https://evil.example"}}
	if c, resp, err := s.tryDial("/", hdr); err == nil || resp == nil || resp.StatusCode != 403 {
		if c != nil {
			c.Close()
		}
		t.Fatalf("cross-site origin: want 403, got %v %v", resp, err)
	}
	hdr.Set("Origin", s.httpURL(""))
	c := s.dial("/", hdr) // same origin
	defer c.Close()
	echoCheck(t, c)
}

// 500 clients at once, each echoing 16 KiB through its tunnel intact.
func TestConcurrentClientsEcho(t *testing.T) {
	t.Parallel()
	up := echoUpstream(t)
	// The dial timeout is the I/O timeout of the tests: 500 dials at once
	// on a loaded 2-core machine can take longer than the default 5 s.
	s := serveJSON(t, `{"upstreams": [{"dial": "`+up.addr+`"}], "dial_timeout": "30s"}`)
	const clients, size, msg = 500, 16 << 10, 4 << 10
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Go(func() {
			c, resp, err := s.tryDial("/", nil)
			if err != nil {
				if resp != nil {
					err = fmt.Errorf("%w: %s", err, resp.Status)
				}
				errs <- err
				return
			}
			defer c.Close()
			data := make([]byte, size)
			for k := range data {
				data[k] = byte(i + k*31)
			}
			go func() {
				for off := 0; off < size; off += msg {
					c.WriteMessage(websocket.BinaryMessage, data[off:off+msg])
				}
			}()
			got := make([]byte, 0, size)
			c.SetReadDeadline(time.Now().Add(2 * ioTimeout))
			for len(got) < size {
				_, b, err := c.ReadMessage()
				if err != nil {
					errs <- fmt.Errorf("client %d after %d bytes: %w", i, len(got), err)
					return
				}
				got = append(got, b...)
			}
			if !bytes.Equal(got, data) {
				errs <- fmt.Errorf("client %d: echo differs", i)
			}
		})
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed++; failed <= 5 {
			t.Error(err)
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d clients failed", failed, clients)
	}
}

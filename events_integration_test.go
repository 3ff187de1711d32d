package wstotcp

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(eventRecorder{})
}

// eventRecorder is an event handler module for the tests: it records every
// event it is subscribed to in recordedEvents.
type eventRecorder struct{}

type recordedEvent struct {
	name string
	data map[string]any
}

var (
	recordedEvents = make(chan recordedEvent, 10000)
	eventsDropped  atomic.Int64
)

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "events.handlers.ws_to_tcp_test_recorder",
		New: func() caddy.Module { return new(eventRecorder) },
	}
}

func (*eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	select {
	case recordedEvents <- recordedEvent{name: e.Name(), data: maps.Clone(e.Data)}:
	default:
		eventsDropped.Add(1)
	}
	return nil
}

func (*eventRecorder) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name; no options
	return nil
}

// drainEvents forgets the events recorded so far.
func drainEvents() {
	for {
		select {
		case <-recordedEvents:
		default:
			return
		}
	}
}

// nextEvent returns the next recorded event named name (others of the
// ws_to_tcp family in between fail the test), or fails after the timeout.
func nextEvent(t testing.TB, name string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case e := <-recordedEvents:
			if !strings.HasPrefix(e.name, "ws_to_tcp.") {
				continue // Caddy's own events, with a catch-all subscription
			}
			if e.name != name {
				t.Fatalf("got event %s %v, want %s", e.name, e.data, name)
			}
			return e.data
		case <-deadline:
			t.Fatalf("no %s event within %v", name, timeout)
			return nil
		}
	}
}

// noMoreEvents fails if a ws_to_tcp event was recorded and not consumed.
func noMoreEvents(t testing.TB) {
	t.Helper()
	for {
		select {
		case e := <-recordedEvents:
			if strings.HasPrefix(e.name, "ws_to_tcp.") {
				t.Fatalf("unexpected event %s %v", e.name, e.data)
			}
		default:
			if n := eventsDropped.Load(); n > 0 {
				t.Fatalf("the recorder dropped %d events", n)
			}
			return
		}
	}
}

const recordAllEvents = `	events {
		on ws_to_tcp.connect ws_to_tcp_test_recorder
		on ws_to_tcp.disconnect ws_to_tcp_test_recorder
		on ws_to_tcp.rejected ws_to_tcp_test_recorder
	}`

// wantData checks the event's data has these values (numbers as JSON
// would give them: compared after fmt.Sprint).
func wantData(t testing.TB, name string, data map[string]any, want map[string]any) {
	t.Helper()
	for k, v := range want {
		got, ok := data[k]
		if !ok {
			t.Errorf("%s: no %q in %v", name, k, data)
			continue
		}
		if fmt.Sprint(got) != fmt.Sprint(v) {
			t.Errorf("%s: %s = %v (%T), want %v", name, k, got, got, v)
		}
	}
}

// Connect, disconnect and rejected events reach a subscribed handler with
// their data, and the tunnel's one INFO log line has the fields of docs/operations.md, Logs.
func TestEventsConnectDisconnectRejectedAndLogLine(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	hash := bcryptHash(t, "pw")
	sites := `{HTTP} {
	basic_auth {
		alice ` + hash + `
	}
	ws_to_tcp ` + up.addr + ` {
		channel room-{http.request.uri.query.room}
	}
}`
	s := startWithGlobals(t, recordAllEvents, "DEBUG", sites)
	drainEvents()

	hdr := http.Header{"Authorization": {opsBasicAuth("alice", "pw")}, "Sec-Websocket-Protocol": {"chat"}}
	c := s.dial("/?room=red", hdr)
	defer c.Close()
	uc := up.accept(t)
	conn := nextEvent(t, eventConnect, ioTimeout)
	id, _ := conn["conn_id"].(string)
	if id == "" {
		t.Fatalf("connect event without conn_id: %v", conn)
	}
	wantData(t, "connect", conn, map[string]any{"remote_ip": "127.0.0.1", "user": "alice",
		"upstream": up.addr, "subprotocol": "chat", "channel": "room-red"})

	// 3 messages of 5 bytes in, 2 reads of 4 bytes out
	for range 3 {
		c.WriteMessage(websocket.BinaryMessage, []byte("12345"))
	}
	readFull(t, uc, 15)
	for _, m := range []string{"abcd", "efgh"} {
		uc.Write([]byte(m))
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		if _, b, err := c.ReadMessage(); err != nil || string(b) != m {
			t.Fatalf("client read %q %v", b, err)
		}
	}
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "bye"), time.Now().Add(time.Second))
	readEOF(t, uc, ioTimeout)
	uc.Close()
	disc := nextEvent(t, eventDisconnect, ioTimeout)
	wantData(t, "disconnect", disc, map[string]any{"conn_id": id, "remote_ip": "127.0.0.1", "user": "alice",
		"upstream": up.addr, "subprotocol": "chat", "channel": "room-red",
		"bytes_in": 15, "bytes_out": 8, "messages_in": 3, "messages_out": 2,
		"close_code": 4001, "closed_by": "client"})
	if d, ok := disc["duration"].(float64); !ok || d <= 0 || d > 60 {
		t.Errorf("disconnect: duration %v (%T), want seconds as a float", disc["duration"], disc["duration"])
	}

	// The log line of the same tunnel.
	line := s.waitLogLine("tunnel closed", id)
	for _, k := range []string{"conn_id", "remote_ip", "user", "upstream", "duration", "bytes_in", "bytes_out",
		"close_code", "closed_by", "channel", "subprotocol", "messages_in", "messages_out"} {
		if _, ok := line[k]; !ok {
			t.Errorf("log line lacks %q: %v", k, line)
		}
	}
	wantData(t, "log line", line, map[string]any{"level": "info", "logger": "http.handlers.ws_to_tcp",
		"conn_id": id, "remote_ip": "127.0.0.1", "user": "alice", "upstream": up.addr, "channel": "room-red",
		"bytes_in": 15, "bytes_out": 8, "close_code": 4001, "closed_by": "client"})
	if d, ok := line["duration"].(float64); !ok || d <= 0 {
		t.Errorf("log line: duration %v, want seconds", line["duration"])
	}

	// A cross-origin handshake is refused with 403, and says so.
	hdr.Set("Origin", "http://evil.example")
	if _, resp, err := s.tryDial("/", hdr); err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("cross-origin handshake: want 403, got %v %v", resp, err)
	}
	rej := nextEvent(t, eventRejected, ioTimeout)
	wantData(t, "rejected", rej, map[string]any{"reason": "origin", "remote_ip": "127.0.0.1", "status": 403})
	// Without credentials: basic_auth refuses before ws_to_tcp runs: no event.
	if _, resp, err := s.tryDial("/", nil); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("without credentials: want 401, got %v %v", resp, err)
	}
	noMoreEvents(t)
}

func opsBasicAuth(user, pw string) string {
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth(user, pw)
	return r.Header.Get("Authorization")
}

// Events are per tunnel, never per message: 1000 messages each way give
// one connect and one disconnect, even with a catch-all subscription.
func TestEventsNeverPerMessage(t *testing.T) {
	up := echoUpstream(t)
	sites := `{HTTP} {
	ws_to_tcp ` + up.addr + `
}`
	s := startWithGlobals(t, `	events {
		on * ws_to_tcp_test_recorder
	}`, "INFO", sites)
	drainEvents()
	c := s.dial("/", nil)
	defer c.Close()
	nextEvent(t, eventConnect, ioTimeout)
	for i := range 1000 {
		msg := fmt.Sprintf("message %d", i)
		c.WriteMessage(websocket.TextMessage, []byte(msg))
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		if _, b, err := c.ReadMessage(); err != nil || string(b) != msg {
			t.Fatalf("echo %d: %q %v", i, b, err)
		}
	}
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	expectClose(t, c, ioTimeout)
	d := nextEvent(t, eventDisconnect, ioTimeout)
	wantData(t, "disconnect", d, map[string]any{"messages_in": 1000, "close_code": 1000, "closed_by": "client"})
	noMoreEvents(t)
}

// Nothing is built or emitted for an event no one subscribes to (with
// logging at INFO, Caddy's events app has no other observer).
func TestEventsNotBuiltWithoutSubscriber(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	sites := `{HTTP} {
	ws_to_tcp ` + up.addr + `
}`
	s := startWithGlobals(t, `	events {
		on ws_to_tcp.connect ws_to_tcp_test_recorder
	}`, "INFO", sites)
	drainEvents()
	c := s.dial("/", nil)
	defer c.Close()
	up.accept(t)
	nextEvent(t, eventConnect, ioTimeout)
	list := selectTunnels(nil)
	if len(list) != 1 {
		t.Fatalf("%d tunnels", len(list))
	}
	h := list[0].h
	if h.events == nil {
		t.Fatal("the handler has no events app")
	}
	if h.events.ShouldEmit(eventDisconnect) || h.events.ShouldEmit(eventRejected) {
		t.Fatal("the events app would emit events no one subscribes to")
	}
	built := false
	h.emit(eventDisconnect, func() map[string]any { built = true; return nil })
	h.emit(eventRejected, func() map[string]any { built = true; return nil })
	if built {
		t.Fatal("event data built for an event without subscribers")
	}
	c.Close()
	noMoreEvents(t)
}

// After a reload, tunnels of the unloaded configuration emit nothing (its
// events app is stopped); the new configuration's tunnels do.
func TestEventsAcrossReload(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	sites := `{HTTP} {
	ws_to_tcp ` + up.addr + `
}`
	s := startWithGlobals(t, recordAllEvents, "DEBUG", sites)
	drainEvents()
	old := s.dial("/", nil)
	defer old.Close()
	oldUp := up.accept(t)
	oldID := nextEvent(t, eventConnect, ioTimeout)["conn_id"]

	s.loadWithGlobals(recordAllEvents, "DEBUG", `{HTTP} {
	header X-Config 2
	ws_to_tcp `+up.addr+`
}`)
	// The old tunnel ends: no disconnect event from it.
	oldUp.Close()
	expectClose(t, old, ioTimeout)
	old.Close()
	waitTunnelGone(t, oldID.(string))

	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	id := nextEvent(t, eventConnect, ioTimeout)["conn_id"]
	if id == oldID {
		t.Fatal("same id")
	}
	uc.Close()
	expectClose(t, c, ioTimeout)
	c.Close()
	wantData(t, "disconnect", nextEvent(t, eventDisconnect, ioTimeout),
		map[string]any{"conn_id": id, "closed_by": "upstream", "close_code": 1000})
	noMoreEvents(t)
}

// waitTunnelGone waits until the tunnel is unregistered and its
// goroutines, which log and emit after that, have ended.
func waitTunnelGone(t testing.TB, id string) {
	t.Helper()
	eventually(t, "the end of tunnel "+id, func() bool { return findTunnel(id) == nil && relayGoroutines() == "" })
}

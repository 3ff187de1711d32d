package wstotcp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/relay"
)

// admin sends a request to the admin endpoint and returns the status, the
// headers and the body.
func (s *testServer) admin(method, path, contentType string, body []byte) (int, http.Header, []byte) {
	s.t.Helper()
	req, err := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d%s", s.adminPort, path), bytes.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, b
}

var adminClient = &http.Client{Timeout: time.Minute}

// adminOK sends a request that must answer 200 with JSON, decoded into out.
func (s *testServer) adminOK(method, path, contentType string, body []byte, out any) {
	s.t.Helper()
	status, hdr, b := s.admin(method, path, contentType, body)
	if status != 200 {
		s.t.Fatalf("%s %s: status %d: %s", method, path, status, b)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		s.t.Fatalf("%s %s: Content-Type %q", method, path, ct)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			s.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

func (s *testServer) listConns(query string) []connInfo {
	s.t.Helper()
	var list []connInfo
	s.adminOK("GET", "/ws_to_tcp/connections"+query, "", nil, &list)
	return list
}

func connIDs(list []connInfo) []string {
	var ids []string
	for _, c := range list {
		ids = append(ids, c.ID)
	}
	slices.Sort(ids)
	return ids
}

// waitConns waits until n connections are listed: a tunnel registers
// right after its 101 response, so a client can be a moment ahead of the
// list.
func (s *testServer) waitConns(n int) []connInfo {
	s.t.Helper()
	var list []connInfo
	eventually(s.t, fmt.Sprintf("%d connections listed", n), func() bool {
		list = s.listConns("")
		return len(list) == n
	})
	return list
}

// onlyConnID returns the id of the one open connection.
func (s *testServer) onlyConnID() string {
	s.t.Helper()
	return s.waitConns(1)[0].ID
}

// Listing shows every field; filters select by id (repeatable), channel,
// subprotocol, user and upstream.
func TestAdminListAndFilters(t *testing.T) {
	up1 := newUpstream(t, "tcp", "127.0.0.1:0")
	up2 := newUpstream(t, "tcp", "127.0.0.1:0")
	hash := bcryptHash(t, "pw")
	s := startCaddy(t, `{HTTP} {
	basic_auth {
		alice `+hash+`
		bob `+hash+`
	}
	handle /a {
		ws_to_tcp `+up1.addr+` {
			channel {http.request.uri.query.room}
		}
	}
	handle /b {
		ws_to_tcp `+up2.addr+` {
			channel {http.request.uri.query.room}
		}
	}
}`)
	dial := func(path, user, proto string) (*websocket.Conn, net.Conn) {
		hdr := http.Header{"Authorization": {opsBasicAuth(user, "pw")}}
		if proto != "" {
			hdr.Set("Sec-Websocket-Protocol", proto)
		}
		c := s.dial(path, hdr)
		t.Cleanup(func() { c.Close() })
		up := up1
		if strings.HasPrefix(path, "/b") {
			up = up2
		}
		return c, up.accept(t)
	}
	before := time.Now().Add(-time.Second)
	c1, u1 := dial("/a?room=red", "alice", "chat")
	dial("/a?room=blue", "bob", "")
	dial("/b?room=red", "alice", "mqtt")

	all := s.waitConns(3)
	for _, c := range all {
		if c.Remote != "127.0.0.1" || c.ID == "" || c.Started.Before(before) || c.Started.After(time.Now()) {
			t.Errorf("listed %+v", c)
		}
	}
	find := func(user, channel, proto string) connInfo {
		for _, c := range all {
			if c.User == user && c.Channel == channel && c.Subprotocol == proto {
				return c
			}
		}
		t.Fatalf("no connection of %s in channel %s with subprotocol %q: %+v", user, channel, proto, all)
		return connInfo{}
	}
	a1, b1, a2 := find("alice", "red", "chat"), find("bob", "blue", ""), find("alice", "red", "mqtt")
	if a1.Upstream != up1.addr || b1.Upstream != up1.addr || a2.Upstream != up2.addr {
		t.Fatalf("upstreams: %+v", all)
	}
	ids := func(cs ...connInfo) []string { return connIDs(cs) }
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", ids(a1, b1, a2)},
		{"?channel=red", ids(a1, a2)},
		{"?channel=red&channel=blue", ids(a1, b1, a2)},
		{"?channel=green", nil},
		{"?user=bob", ids(b1)},
		{"?user=alice&subprotocol=mqtt", ids(a2)},
		{"?subprotocol=", ids(b1)},
		{"?upstream=" + up1.addr, ids(a1, b1)},
		{"?upstream=" + up2.addr + "&channel=blue", nil},
		{"?id=" + a1.ID + "&id=" + a2.ID, ids(a1, a2)},
		{"?id=" + a1.ID + "&channel=blue", nil},
		{"?id=NOSUCHID", nil},
	} {
		if got := connIDs(s.listConns(tc.query)); !slices.Equal(got, tc.want) {
			t.Errorf("GET connections%s: %v, want %v", tc.query, got, tc.want)
		}
	}

	// One connection, with its counters.
	c1.WriteMessage(websocket.BinaryMessage, []byte("hello"))
	readFull(t, u1, 5)
	u1.Write([]byte("world!"))
	c1.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, b, err := c1.ReadMessage(); err != nil || string(b) != "world!" {
		t.Fatalf("client read %q %v", b, err)
	}
	eventually(t, "the counters of one connection", func() bool {
		var one connInfo
		s.adminOK("GET", "/ws_to_tcp/connections/"+a1.ID, "", nil, &one)
		if one.ID != a1.ID || one.User != "alice" || one.Channel != "red" {
			t.Fatalf("GET one: %+v", one)
		}
		return one.BytesIn == 5 && one.BytesOut == 6 && one.MessagesIn == 1 && one.MessagesOut == 1
	})

	// The raw JSON has the documented keys, started in RFC 3339.
	_, _, raw := s.admin("GET", "/ws_to_tcp/connections/"+a1.ID, "", nil)
	var m map[string]any
	json.Unmarshal(raw, &m)
	for _, k := range []string{"id", "remote", "user", "upstream", "subprotocol", "channel", "started",
		"bytes_in", "bytes_out", "messages_in", "messages_out"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q in %s", k, raw)
		}
	}
	if _, err := time.Parse(time.RFC3339, m["started"].(string)); err != nil {
		t.Errorf("started: %v", err)
	}
}

// Errors are JSON: unknown id 404, unknown endpoint 404, wrong method 405
// with Allow, bad input 400, a body too large 413.
func TestAdminErrors(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	defer c.Close()
	up.accept(t)
	id := s.onlyConnID()
	big := bytes.Repeat([]byte("x"), maxAdminBody+1)
	for _, tc := range []struct {
		method, path, ctype string
		body                []byte
		status              int
		allow, msg          string
	}{
		{"GET", "/ws_to_tcp/connections/NOSUCHID", "", nil, 404, "", "no open connection"},
		{"DELETE", "/ws_to_tcp/connections/NOSUCHID", "", nil, 404, "", "no open connection"},
		{"POST", "/ws_to_tcp/connections/NOSUCHID/send", "text/plain", []byte("hi"), 404, "", "no open connection"},
		{"GET", "/ws_to_tcp/nothing", "", nil, 404, "", "no such endpoint"},
		{"GET", "/ws_to_tcp/connections/" + id + "/other", "", nil, 404, "", "no such endpoint"},
		{"POST", "/ws_to_tcp/connections", "", nil, 405, "GET, DELETE", "not allowed"},
		{"PUT", "/ws_to_tcp/connections/" + id, "", nil, 405, "GET, DELETE", "not allowed"},
		{"GET", "/ws_to_tcp/connections/" + id + "/send", "", nil, 405, "POST", "not allowed"},
		{"GET", "/ws_to_tcp/broadcast", "", nil, 405, "POST", "not allowed"},
		{"DELETE", "/ws_to_tcp/ping", "", nil, 405, "POST", "not allowed"},
		{"POST", "/ws_to_tcp/upstreams", "", nil, 405, "GET", "not allowed"},
		{"GET", "/ws_to_tcp/connections?chanel=x", "", nil, 400, "", "unknown filter"},
		{"DELETE", "/ws_to_tcp/connections?room=x", "", nil, 400, "", "unknown filter"},
		{"GET", "/ws_to_tcp/connections?channel=%zz", "", nil, 400, "", "invalid query"},
		{"GET", "/ws_to_tcp/connections/" + id + "?user=x", "", nil, 400, "", "no query parameters"},
		{"POST", "/ws_to_tcp/connections/" + id + "/send", "text/plain", []byte{'a', 0xff}, 400, "", "UTF-8"},
		{"POST", "/ws_to_tcp/broadcast", "text/plain; charset=utf-8", []byte{0xc3}, 400, "", "UTF-8"},
		{"POST", "/ws_to_tcp/connections/" + id + "/send", "text/plain; charset=latin1", []byte("a"), 400, "", "charset"},
		{"POST", "/ws_to_tcp/connections/" + id + "/send", "text/", []byte("a"), 400, "", "Content-Type"},
		{"POST", "/ws_to_tcp/connections/" + id + "/send", "", big, 413, "", "larger than"},
		{"POST", "/ws_to_tcp/broadcast", "application/octet-stream", big, 413, "", "larger than"},
		{"POST", "/ws_to_tcp/ping", "", bytes.Repeat([]byte("p"), 126), 413, "", "larger than 125"},
	} {
		status, hdr, body := s.admin(tc.method, tc.path, tc.ctype, tc.body)
		var e struct {
			Error string `json:"error"`
		}
		err := json.Unmarshal(body, &e)
		if status != tc.status || err != nil || !strings.Contains(e.Error, tc.msg) ||
			hdr.Get("Content-Type") != "application/json" || hdr.Get("Allow") != tc.allow {
			t.Errorf("%s %s: status %d (want %d), Allow %q (want %q), Content-Type %q, body %s",
				tc.method, tc.path, status, tc.status, hdr.Get("Allow"), tc.allow, hdr.Get("Content-Type"), body)
		}
	}
	// None of it reached the client: the next message is this one.
	s.adminOK("POST", "/ws_to_tcp/connections/"+id+"/send", "text/plain", []byte("only this"), nil)
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if mt, b, err := c.ReadMessage(); err != nil || mt != websocket.TextMessage || string(b) != "only this" {
		t.Fatalf("client got %d %q %v", mt, b, err)
	}
}

// Issue 13 §0, on a real Caddy: DELETE /ws_to_tcp/connections/, the path
// a script makes of an empty id, is a JSON 404 and leaves the open tunnels
// open; so are the other paths that are not documented, and /ws_to_tcp.
func TestAdminEmptyIDLeavesTunnelsOpen(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c1, c2 := s.dial("/", nil), s.dial("/", nil)
	defer c1.Close()
	defer c2.Close()
	open := connIDs(s.waitConns(2))
	for _, tc := range []struct{ method, path string }{
		{"DELETE", "/ws_to_tcp/connections/"},
		{"DELETE", "/ws_to_tcp/connections/?id=" + open[0]},
		{"DELETE", "/ws_to_tcp/connections/" + open[0] + "/"},
		{"DELETE", "/ws_to_tcp/connections//"}, // Caddy's mux: 301 to .../connections/, followed as a GET
		{"POST", "/ws_to_tcp/connections/" + open[0] + "/send/"},
		{"POST", "/ws_to_tcp/broadcast/"},
		{"DELETE", "/ws_to_tcp"},
	} {
		status, hdr, body := s.admin(tc.method, tc.path, "", []byte("x"))
		var e struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal(body, &e); status != 404 || err != nil || e.Error == "" || hdr.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: status %d, Content-Type %q, body %s; want a JSON 404",
				tc.method, tc.path, status, hdr.Get("Content-Type"), body)
		}
	}
	if got := connIDs(s.listConns("")); !slices.Equal(got, open) {
		t.Fatalf("open after the requests: %v, want %v", got, open)
	}
	for i, c := range []*websocket.Conn{c1, c2} {
		msg := fmt.Sprintf("still relaying %d", i)
		if err := c.WriteMessage(websocket.BinaryMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		var got []byte
		for len(got) < len(msg) {
			_, b, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("client %d: %v after %q", i, err, got)
			}
			got = append(got, b...)
		}
		if string(got) != msg {
			t.Fatalf("client %d: echo %q, want %q", i, got, msg)
		}
	}
}

// send: text for text/*, binary otherwise; the relay goes on around it.
func TestAdminSendTextAndBinary(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	id := s.onlyConnID()
	var res sentResult
	s.adminOK("POST", "/ws_to_tcp/connections/"+id+"/send", "text/plain; charset=UTF-8", []byte("grüß dich"), &res)
	if res != (sentResult{Sent: 1}) {
		t.Fatalf("send answered %+v", res)
	}
	s.adminOK("POST", "/ws_to_tcp/connections/"+id+"/send", "application/octet-stream", []byte{0, 1, 0xff}, nil)
	s.adminOK("POST", "/ws_to_tcp/connections/"+id+"/send", "", []byte("no type"), nil)
	s.adminOK("POST", "/ws_to_tcp/connections/"+id+"/send", "text/html", nil, nil) // empty
	large := bytes.Repeat([]byte("0123456789abcdef"), maxAdminBody/16)             // exactly the limit
	s.adminOK("POST", "/ws_to_tcp/connections/"+id+"/send", "", large, nil)
	uc.Write([]byte("relayed"))
	for _, want := range []struct {
		mt   int
		data []byte
	}{
		{websocket.TextMessage, []byte("grüß dich")},
		{websocket.BinaryMessage, []byte{0, 1, 0xff}},
		{websocket.BinaryMessage, []byte("no type")},
		{websocket.TextMessage, []byte{}},
		{websocket.BinaryMessage, large},
		{websocket.BinaryMessage, []byte("relayed")},
	} {
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		mt, b, err := c.ReadMessage()
		if err != nil || mt != want.mt || !bytes.Equal(b, want.data) {
			t.Fatalf("client got type %d, %d bytes (%.20q), %v; want type %d, %d bytes", mt, len(b), b, err, want.mt, len(want.data))
		}
	}
	// The client's own data still reaches the upstream.
	c.WriteMessage(websocket.BinaryMessage, []byte("up"))
	if b := readFull(t, uc, 2); string(b) != "up" {
		t.Fatalf("upstream got %q", b)
	}
}

// ping: every matching client's ping handler sees the ping and its payload.
func TestAdminPing(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		channel {http.request.uri.query.room}
	}
}`)
	type client struct {
		c     *websocket.Conn
		pings chan string
	}
	open := func(room string) client {
		cl := client{c: s.dial("/?room="+room, nil), pings: make(chan string, 10)}
		t.Cleanup(func() { cl.c.Close() })
		cl.c.SetPingHandler(func(p string) error {
			cl.pings <- p
			return cl.c.WriteControl(websocket.PongMessage, []byte(p), time.Now().Add(time.Second))
		})
		go func() {
			for {
				if _, _, err := cl.c.ReadMessage(); err != nil {
					return
				}
			}
		}()
		up.accept(t)
		return cl
	}
	red, blue := open("red"), open("blue")
	s.waitConns(2)
	wantPing := func(cl client, payload string) {
		t.Helper()
		select {
		case p := <-cl.pings:
			if p != payload {
				t.Fatalf("ping payload %q, want %q", p, payload)
			}
		case <-time.After(ioTimeout):
			t.Fatalf("no ping %q", payload)
		}
	}
	var res sentResult
	s.adminOK("POST", "/ws_to_tcp/ping?channel=red", "", []byte("only red"), &res)
	if res != (sentResult{Sent: 1}) {
		t.Fatalf("ping answered %+v", res)
	}
	wantPing(red, "only red")
	s.adminOK("POST", "/ws_to_tcp/ping", "", nil, &res)
	if res != (sentResult{Sent: 2}) {
		t.Fatalf("ping answered %+v", res)
	}
	wantPing(red, "")
	wantPing(blue, "") // blue's first ping: it did not get red's
}

// Disconnecting: the client gets Close 1001, the upstream EOF; by id, by
// filter, and all.
func TestAdminDisconnect(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		channel {http.request.uri.query.room}
	}
}`)
	type pair struct {
		c  *websocket.Conn
		uc net.Conn
	}
	open := func(room string) pair {
		c := s.dial("/?room="+room, nil)
		t.Cleanup(func() { c.Close() })
		return pair{c, up.accept(t)}
	}
	gone := func(p pair) {
		t.Helper()
		if code := expectClose(t, p.c, ioTimeout); code != websocket.CloseGoingAway {
			t.Fatalf("close code %d, want 1001", code)
		}
		readEOF(t, p.uc, ioTimeout)
	}
	a := open("x")
	aID := s.onlyConnID()
	b1, b2 := open("y"), open("y")
	c1 := open("z")
	c2 := open("")
	s.waitConns(5)

	var res closedResult
	s.adminOK("DELETE", "/ws_to_tcp/connections/"+aID, "", nil, &res)
	if res.Closed != 1 {
		t.Fatalf("DELETE one answered %+v", res)
	}
	gone(a)
	s.waitConns(4) // a closing tunnel stays listed until both its sides are closed
	if status, _, _ := s.admin("GET", "/ws_to_tcp/connections/"+aID, "", nil); status != 404 {
		t.Fatalf("GET a closed connection: %d", status)
	}

	s.adminOK("DELETE", "/ws_to_tcp/connections?channel=y", "", nil, &res)
	if res.Closed != 2 {
		t.Fatalf("DELETE ?channel=y answered %+v", res)
	}
	gone(b1)
	gone(b2)
	s.waitConns(2)

	s.adminOK("DELETE", "/ws_to_tcp/connections", "", nil, &res)
	if res.Closed != 2 {
		t.Fatalf("DELETE all answered %+v", res)
	}
	gone(c1)
	gone(c2)
	s.waitConns(0)
	s.adminOK("DELETE", "/ws_to_tcp/connections", "", nil, &res)
	if res.Closed != 0 {
		t.Fatalf("DELETE with none open answered %+v", res)
	}
}

// GET /ws_to_tcp/upstreams: the configured upstreams with their open
// tunnels.
func TestAdminUpstreams(t *testing.T) {
	up1 := newUpstream(t, "tcp", "127.0.0.1:0")
	up2 := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	handle /a {
		ws_to_tcp `+up1.addr+`
	}
	handle /b {
		ws_to_tcp `+up2.addr+`
	}
}`)
	for range 2 {
		c := s.dial("/a", nil)
		defer c.Close()
		up1.accept(t)
	}
	s.waitConns(2)
	var got []upstreamInfo
	s.adminOK("GET", "/ws_to_tcp/upstreams", "", nil, &got)
	want := []upstreamInfo{{Address: up1.addr, Healthy: true, Active: 2}, {Address: up2.addr, Healthy: true}}
	slices.SortFunc(want, func(a, b upstreamInfo) int { return strings.Compare(a.Address, b.Address) })
	if !slices.Equal(got, want) {
		t.Fatalf("upstreams %+v, want %+v", got, want)
	}
}

// dialMany opens n WebSockets, 32 at a time.
func dialMany(t *testing.T, s *testServer, path string, n int) []*websocket.Conn {
	t.Helper()
	conns := make([]*websocket.Conn, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, _, err := s.tryDial(path, nil)
				if err != nil {
					errs <- err
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	close(errs)
	for err := range errs {
		t.Fatalf("dialing: %v", err)
	}
	return conns
}

// A broadcast reaches each of 128 clients (4 times the writes it makes at
// once) exactly once: each client's next message after it is the following
// broadcast.
func TestAdminBroadcastReachesEachOnce(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		channel all
	}
}`)
	const n = 128
	conns := dialMany(t, s, "/", n)
	s.waitConns(n)
	got := make(chan error, n)
	for _, c := range conns {
		go func() {
			got <- func() error {
				c.SetReadDeadline(time.Now().Add(2 * time.Minute))
				for _, want := range []string{"first broadcast", "second broadcast"} {
					mt, b, err := c.ReadMessage()
					if err != nil {
						return err
					}
					if mt != websocket.TextMessage || string(b) != want {
						return fmt.Errorf("got %d %q, want %q", mt, b, want)
					}
				}
				return nil
			}()
		}()
	}
	var res sentResult
	start := time.Now()
	s.adminOK("POST", "/ws_to_tcp/broadcast?channel=all", "text/plain", []byte("first broadcast"), &res)
	t.Logf("broadcast to %d clients answered in %v", n, time.Since(start))
	if res != (sentResult{Sent: n}) {
		t.Fatalf("broadcast answered %+v", res)
	}
	s.adminOK("POST", "/ws_to_tcp/broadcast", "text/plain", []byte("second broadcast"), &res)
	if res != (sentResult{Sent: n}) {
		t.Fatalf("broadcast answered %+v", res)
	}
	for range n {
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	}
	// A filter that matches nothing sends nothing.
	s.adminOK("POST", "/ws_to_tcp/broadcast?channel=none", "", []byte("x"), &res)
	if res != (sentResult{}) {
		t.Fatalf("broadcast to no one answered %+v", res)
	}
}

// Injected messages never land inside relayed ones: while the upstream
// streams lowercase data, 100 uppercase messages are sent through the
// admin API; the client sees every injected message whole, once, and the
// relayed stream intact around them. (internal/relay sends 1000 at once
// to one tunnel: TestInjectedMessagesNeverInterleave.)
func TestAdminSendNeverInterleaves(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	id := s.onlyConnID()

	const sends = 100
	injected := func(i int) []byte {
		b := fmt.Appendf(nil, "INJ%05d:", i)
		size := 1 + (i*7919)%(48<<10) // up to 48 KiB, larger than a socket write at times
		for k := 0; len(b) < size; k++ {
			b = append(b, 'A'+byte((i+k)%26))
		}
		return b
	}
	// The relayed stream is the alphabet over and over: byte i is
	// alphabet[i%26], so its bytes from i on are pattern[i%26:].
	pattern := bytes.Repeat([]byte("abcdefghijklmnopqrstuvwxyz"), (1<<20)/26+2)

	// The upstream streams until told to stop, then closes.
	stop := make(chan struct{})
	var written atomic.Int64
	go func() {
		var pos int64
		for {
			select {
			case <-stop:
				uc.Close()
				return
			default:
			}
			n, err := uc.Write(pattern[pos%26 : pos%26+64<<10])
			pos += int64(n)
			written.Store(pos)
			if err != nil {
				return
			}
		}
	}()

	type result struct {
		relayed int64
		seen    []bool
		err     error
	}
	done := make(chan result, 1)
	go func() {
		r := result{seen: make([]bool, sends)}
		r.err = func() error {
			c.SetReadDeadline(time.Now().Add(3 * time.Minute))
			for {
				_, b, err := c.ReadMessage()
				if err != nil {
					var ce *websocket.CloseError
					if errors.As(err, &ce) && ce.Code == websocket.CloseNormalClosure {
						return nil
					}
					return err
				}
				if bytes.HasPrefix(b, []byte("INJ")) {
					var i int
					if _, err := fmt.Sscanf(string(b[:9]), "INJ%05d:", &i); err != nil || i < 0 || i >= sends {
						return fmt.Errorf("bad injected message %.40q", b)
					}
					if !bytes.Equal(b, injected(i)) {
						return fmt.Errorf("injected message %d cut or mixed: %d bytes, want %d", i, len(b), len(injected(i)))
					}
					if r.seen[i] {
						return fmt.Errorf("injected message %d twice", i)
					}
					r.seen[i] = true
					continue
				}
				off := int(r.relayed % 26)
				if len(b) > len(pattern)-off || !bytes.Equal(b, pattern[off:off+len(b)]) {
					return fmt.Errorf("relayed stream wrong in the %d bytes from byte %d: %.40q", len(b), r.relayed, b)
				}
				r.relayed += int64(len(b))
			}
		}()
		done <- r
	}()

	var next atomic.Int64
	var wg sync.WaitGroup
	var failures atomic.Int64
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= sends {
					return
				}
				req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d/ws_to_tcp/connections/%s/send", s.adminPort, id),
					bytes.NewReader(injected(i)))
				req.Header.Set("Content-Type", "application/octet-stream")
				resp, err := adminClient.Do(req)
				if err != nil {
					failures.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failures.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d sends failed", n)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(3 * time.Minute):
		t.Fatal("the client never got to the end")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	for i, ok := range r.seen {
		if !ok {
			t.Fatalf("injected message %d never arrived", i)
		}
	}
	if r.relayed != written.Load() {
		t.Fatalf("client got %d relayed bytes, the upstream wrote %d", r.relayed, written.Load())
	}
	t.Logf("%d injected messages among %d MiB relayed", sends, r.relayed>>20)
}

// fakeTunnels places n tunnels in the registry, listed and never started
// (n real ones would need 4n descriptors), oldest first, until the test
// ends.
func fakeTunnels(tb testing.TB, n int, upstream string) []*tunnel {
	fakes := make([]*tunnel, n)
	now := time.Now()
	cfg := &relay.Config{BufferSize: 512, WriteTimeout: time.Second}
	cfg.Prepare()
	idle := relay.New(cfg, nil, nil, false)
	tunnels.Lock()
	for i := range fakes {
		tn := &tunnel{id: newConnID(), remote: "192.0.2.1", user: fmt.Sprintf("user%d", i%100),
			upstream: upstream, channel: fmt.Sprintf("room-%d", i%50), started: now.Add(time.Duration(i) * time.Millisecond)}
		tn.Tunnel = idle
		fakes[i] = tn
		tunnels.m[tn.id] = tn
	}
	tunnels.Unlock()
	tb.Cleanup(func() {
		tunnels.Lock()
		for _, tn := range fakes {
			delete(tunnels.m, tn.id)
		}
		tunnels.Unlock()
	})
	return fakes
}

// Listing many connections gives each, oldest first, and filters them.
// (How fast: BenchmarkAdminList.)
func TestAdminListMany(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	const n = 2000
	fakes := fakeTunnels(t, n, up.addr)
	list := s.listConns("")
	if len(list) != n {
		t.Fatalf("%d connections listed, want %d", len(list), n)
	}
	for i, c := range list { // oldest first
		if c.ID != fakes[i].id || c.User != fakes[i].user {
			t.Fatalf("entry %d: %+v", i, c)
		}
	}
	if got := s.listConns("?channel=room-7&user=user7"); len(got) != n/100 {
		t.Fatalf("filtered: %d, want %d", len(got), n/100)
	}
}

// BenchmarkAdminList: GET /ws_to_tcp/connections with 9000 connections
// open (the README's claim: well under a second).
func BenchmarkAdminList(b *testing.B) {
	up := newUpstream(b, "tcp", "127.0.0.1:0")
	s := startCaddy(b, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	const n = 9000
	fakeTunnels(b, n, up.addr)
	s.listConns("") // warm up the connection and the code
	b.ResetTimer()
	for b.Loop() {
		status, _, body := s.admin("GET", "/ws_to_tcp/connections", "", nil)
		if status != 200 || len(body) == 0 {
			b.Fatalf("status %d", status)
		}
	}
}

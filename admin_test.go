package wstotcp

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/relay"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The hand-written JSON of the connection list decodes to what
// encoding/json gives, whatever the strings hold.
func TestConnInfoAppendJSONMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `quote " and \ backslash`, "tab\tnew\nline\rcr", "\x00\x01\x1f\x7f",
		"grüß 日本 🙂", "bad \xff utf-8 \xc3", "line\u2028sep\u2029", "<html>&amp;"} {
		c := connInfo{ID: "ID" + s, Remote: "192.0.2.1", User: s, Upstream: "[::1]:5900", Subprotocol: s, Channel: s,
			Started: time.Date(2025, 3, 4, 5, 6, 7, 8_000_000, time.UTC), BytesIn: 1, BytesOut: -2, MessagesIn: 1 << 40, MessagesOut: 0}
		var got, want connInfo
		raw := c.appendJSON(nil)
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatalf("%q: %v in %s", s, err, raw)
		}
		std, _ := json.Marshal(c)
		json.Unmarshal(std, &want)
		if got != want {
			t.Errorf("%q:\n got %+v\nwant %+v", s, got, want)
		}
		if !json.Valid(raw) {
			t.Errorf("%q: invalid JSON %s", s, raw)
		}
	}
}

func TestOutcome(t *testing.T) {
	for _, tc := range []struct {
		code int
		by   string
		want string
	}{
		{1000, relay.ByClient, "client"},
		{4001, relay.ByClient, "client"},
		{1000, relay.ByUpstream, "upstream"},
		{1001, relay.ByServer, "server"},
		{1008, relay.ByServer, "server"},
		{1014, relay.ByUpstream, "error"},
		{1006, relay.ByClient, "error"},
		{1007, relay.ByClient, "error"},
		{1009, relay.ByClient, "error"},
		{1011, relay.ByServer, "error"},
		{1002, relay.ByClient, "error"},
		{1000, "somebody", "other"},
	} {
		if got := outcome(tc.code, tc.by); got != tc.want {
			t.Errorf("outcome(%d, %q) = %q, want %q", tc.code, tc.by, got, tc.want)
		}
	}
}

func TestFilter(t *testing.T) {
	tn := &tunnel{id: "A", channel: "red", subprotocol: "mqtt", user: "alice", upstream: "127.0.0.1:1883"}
	for _, tc := range []struct {
		query string
		match bool
	}{
		{"", true},
		{"id=A", true},
		{"id=B&id=A", true},
		{"id=B", false},
		{"channel=red&user=alice", true},
		{"channel=red&user=bob", false},
		{"channel=", false},
		{"subprotocol=mqtt&upstream=127.0.0.1:1883", true},
		{"upstream=127.0.0.1%3A1883", true},
	} {
		f, err := parseFilter(tc.query)
		if err != nil {
			t.Fatalf("%q: %v", tc.query, err)
		}
		if got := f.match(tn); got != tc.match {
			t.Errorf("%q: match %v, want %v", tc.query, got, tc.match)
		}
	}
	for _, q := range []string{"room=red", "ID=A", "channel=%zz", "id=A&limit=1"} {
		_, err := parseFilter(q)
		var ae caddy.APIError
		if !errors.As(err, &ae) || ae.HTTPStatus != 400 {
			t.Errorf("%q: %v, want a 400 APIError", q, err)
		}
	}
}

func TestExpandChannel(t *testing.T) {
	repl := caddy.NewReplacer()
	repl.Set("http.request.uri.query.room", "lobby")
	long := strings.Repeat("a", maxChannelLen-1) + "é" // é straddles the limit
	repl.Set("long", long)
	for _, tc := range []struct{ tmpl, want string }{
		{"", ""},
		{"{http.request.uri.query.room}", "lobby"},
		{"room-{http.request.uri.query.room}-{http.request.uri.query.nope}", "room-lobby-"},
		{"{long}", strings.Repeat("a", maxChannelLen-1)},
	} {
		h := &Handler{Channel: tc.tmpl}
		if got := h.expandChannel(repl); got != tc.want {
			t.Errorf("%q: %q, want %q", tc.tmpl, got, tc.want)
		}
	}
	if got := (&Handler{Channel: "x"}).expandChannel(nil); got != "" {
		t.Errorf("nil replacer: %q", got)
	}
}

func TestChannelCaddyfile(t *testing.T) {
	h := new(Handler)
	d := caddyfile.NewTestDispenser("ws_to_tcp 127.0.0.1:1 {\n\tchannel {http.request.uri.query.room}\n}")
	if err := h.UnmarshalCaddyfile(d); err != nil || h.Channel != "{http.request.uri.query.room}" {
		t.Fatalf("channel %q, %v", h.Channel, err)
	}
	for _, body := range []string{"channel", "channel a b", `channel ""`, "channel a\n\tchannel b"} {
		d := caddyfile.NewTestDispenser("ws_to_tcp 127.0.0.1:1 {\n\t" + body + "\n}")
		if err := new(Handler).UnmarshalCaddyfile(d); err == nil || !strings.Contains(err.Error(), "channel") {
			t.Errorf("%q: error %v", body, err)
		}
	}
}

// forEachTunnel visits each tunnel once, counts failures, and survives a
// panic.
func TestForEachTunnel(t *testing.T) {
	list := make([]*tunnel, 100)
	for i := range list {
		list[i] = &tunnel{id: string(rune('a' + i%26))}
	}
	visits := make(map[*tunnel]*atomic.Int64, len(list))
	for _, tn := range list {
		visits[tn] = new(atomic.Int64)
	}
	var calls atomic.Int64
	failed := forEachTunnel(list, func(tn *tunnel) error {
		if calls.Add(1); visits[tn].Add(1) > 1 {
			t.Error("visited twice")
		}
		if tn.id == "b" {
			return errors.New("fails")
		}
		if tn.id == "c" {
			panic("boom")
		}
		return nil
	})
	if calls.Load() < 100-maxParallelWrites || failed < 4 {
		t.Fatalf("calls %d, failed %d", calls.Load(), failed)
	}
	if failed := forEachTunnel(list[:1], func(*tunnel) error { return nil }); failed != 0 {
		t.Fatalf("one tunnel: failed %d", failed)
	}
	if failed := forEachTunnel(nil, func(*tunnel) error { return errors.New("x") }); failed != 0 {
		t.Fatalf("no tunnels: failed %d", failed)
	}
}

// upstream_healthy reports each upstream of the loaded configurations,
// once however many handlers have it, until the last is unloaded.
func TestUpstreamHealthyFollowsConfigurations(t *testing.T) {
	const addr = "192.0.2.77:5900"
	provision := func() context.CancelFunc {
		h := new(Handler)
		json.Unmarshal([]byte(`{"upstreams": [{"dial": "`+addr+`"}]}`), h)
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		return cancel
	}
	series := func() map[string]float64 {
		ch := make(chan prometheus.Metric, 100)
		upstreamHealthy.Collect(ch)
		close(ch)
		m := make(map[string]float64)
		for metric := range ch {
			var pb = new(dtoMetric)
			metric.Write(&pb.Metric)
			m[pb.label("upstream")] = pb.GetGauge().GetValue()
		}
		return m
	}
	present := func(want bool) {
		t.Helper()
		eventually(t, fmt.Sprintf("upstream_healthy{upstream=%q} present: %v", addr, want),
			func() bool { _, ok := series()[addr]; return ok == want })
	}
	cancel1 := provision()
	cancel2 := provision() // a reload: the new configuration before the old one goes
	if v := series()[addr]; v != 1 {
		t.Fatalf("value %v", v)
	}
	cancel1()
	cancel2b := provision()
	cancel2()
	if _, ok := series()[addr]; !ok {
		t.Fatal("gone while a configuration still has it")
	}
	cancel2b()
	present(false)
}

// dtoMetric reads a collected metric.
type dtoMetric struct{ dto.Metric }

func (m *dtoMetric) label(name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// adminMux mounts the admin routes on a ServeMux as Caddy's admin endpoint
// mounts them (newAdminHandler in Caddy's admin.go): the router is
// provisioned first, and a handler's error is answered as JSON,
// {"error": message}, with its status. Caddy's own checks in front of the
// mux (host, origin) do not concern the routes.
func adminMux(t testing.TB) *http.ServeMux {
	t.Helper()
	a := new(adminAPI)
	if p, ok := any(a).(caddy.Provisioner); ok {
		if err := p.Provision(caddy.Context{Context: context.Background()}); err != nil {
			t.Fatal(err)
		}
	}
	mux := http.NewServeMux()
	for _, route := range a.Routes() {
		mux.Handle(route.Pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			err := route.Handler.ServeHTTP(w, r)
			if err == nil {
				return
			}
			ae, ok := err.(caddy.APIError)
			if !ok {
				ae = caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
			}
			if ae.HTTPStatus == 0 {
				ae.HTTPStatus = http.StatusInternalServerError
			}
			if ae.Message == "" && ae.Err != nil {
				ae.Message = ae.Err.Error()
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(ae.HTTPStatus)
			json.NewEncoder(w).Encode(ae)
		}))
	}
	return mux
}

// adminFixture is a few real tunnels and the admin routes mounted in
// process. The tunnels are opened through a provisioned Handler's
// ServeHTTP on an httptest.Server to an echo upstream; their clients
// record what they receive, so that a test can tell whether an admin
// request touched them.
type adminFixture struct {
	mux     *http.ServeMux
	url     string // ws:// of the handler's server
	clients []*fixtureClient
	barrier string // prefix of the barrier pings' payloads, unguessable
	seq     int    // names the next client and barrier
}

// fixtureClient is one tunnel's client.
type fixtureClient struct {
	id     string // the tunnel's, as the admin API lists it
	conn   *websocket.Conn
	events chan string // what it received: messages, pings, its end
}

func newAdminFixture(t testing.TB, n int) *adminFixture {
	t.Helper()
	up := echoUpstream(t)
	h := provisioned(t, `{"upstreams": [{"dial": "`+up.addr+`"}], "channel": "{http.request.uri.query.fx}"}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
		next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
			return caddyhttp.Error(http.StatusNotFound, nil)
		})
		if err := h.ServeHTTP(w, r, next); err != nil {
			http.Error(w, err.Error(), cmp.Or(handlerErrorStatus(err), http.StatusInternalServerError))
		}
	}))
	f := &adminFixture{mux: adminMux(t), url: "ws" + strings.TrimPrefix(srv.URL, "http"), barrier: rand.Text()}
	t.Cleanup(func() {
		for _, cl := range f.clients {
			cl.conn.Close()
		}
		waitNoTunnels(t)
		srv.Close()
	})
	for range n {
		f.clients = append(f.clients, f.open(t))
	}
	return f
}

// open opens a tunnel and learns its id from the admin API.
func (f *adminFixture) open(t testing.TB) *fixtureClient {
	t.Helper()
	f.seq++
	name := fmt.Sprintf("fixture-%d", f.seq)
	d := websocket.Dialer{HandshakeTimeout: ioTimeout}
	c, _, err := d.Dial(f.url+"/?fx="+name, nil)
	if err != nil {
		t.Fatalf("opening a fixture tunnel: %v", err)
	}
	cl := &fixtureClient{conn: c, events: make(chan string, 1024)}
	c.SetPingHandler(func(p string) error {
		cl.events <- "ping " + p
		return c.WriteControl(websocket.PongMessage, []byte(p), time.Now().Add(ioTimeout))
	})
	go func() {
		for {
			mt, b, err := c.ReadMessage()
			if err != nil {
				cl.events <- "end: " + err.Error()
				return
			}
			cl.events <- fmt.Sprintf("message of type %d, %d bytes", mt, len(b))
		}
	}()
	// A tunnel registers right after its 101: a moment after Dial returns.
	eventually(t, "the fixture tunnel listed", func() bool {
		rec := f.do(t, "GET", "/ws_to_tcp/connections?channel="+name, "", nil)
		var list []connInfo
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &list) != nil || len(list) != 1 {
			return false
		}
		cl.id = list[0].ID
		return true
	})
	return cl
}

// do sends a request to the admin routes.
func (f *adminFixture) do(t testing.TB, method, target, contentType string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, bytes.NewReader(body))
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	f.mux.ServeHTTP(rec, r)
	return rec
}

// effect is what an admin request may do to the fixture's tunnels.
type effect int

const (
	untouched    effect = iota // nothing reaches a client
	messaged                   // messages and pings may reach clients; every tunnel stays open
	disconnected               // tunnels may also be closed
)

// expect checks that the last admin request did no more to the tunnels
// than allowed: each is still registered and open, and received nothing
// before a ping sent now through the admin API. A tunnel found closed is
// replaced by a new one before the check fails, so that the requests
// after a failure find the fixture whole.
func (f *adminFixture) expect(t testing.TB, allowed effect, what string) {
	t.Helper()
	var problems []string
	for i, cl := range f.clients {
		if tunnelOpen(cl.id) {
			continue
		}
		if allowed < disconnected {
			problems = append(problems, fmt.Sprintf("tunnel %s closed", cl.id))
		}
		cl.conn.Close()
		f.clients[i] = f.open(t)
	}
	f.seq++
	payload := fmt.Sprintf("%s-%d", f.barrier, f.seq)
	q := url.Values{}
	for _, cl := range f.clients {
		q.Add("id", cl.id)
	}
	rec := f.do(t, "POST", "/ws_to_tcp/ping?"+q.Encode(), "", []byte(payload))
	var res sentResult
	if json.Unmarshal(rec.Body.Bytes(), &res); rec.Code != http.StatusOK || res != (sentResult{Sent: len(f.clients)}) {
		t.Fatalf("%s: the barrier ping answered %d %s", what, rec.Code, rec.Body)
	}
	for _, cl := range f.clients {
		var before []string
		for done := false; !done; {
			select {
			case ev := <-cl.events:
				if done = ev == "ping "+payload; !done {
					before = append(before, ev)
				}
			case <-time.After(ioTimeout):
				t.Fatalf("%s: tunnel %s: no barrier ping; received %q", what, cl.id, before)
			}
		}
		for _, ev := range before {
			if allowed == untouched || strings.HasPrefix(ev, "end") {
				problems = append(problems, fmt.Sprintf("tunnel %s received %q", cl.id, before))
				break
			}
		}
	}
	if len(problems) > 0 {
		t.Fatalf("%s: %s", what, strings.Join(problems, "; "))
	}
}

// checkJSONError checks an error answer: JSON with a message, the status
// wanted, and for a 405 the methods allowed.
func checkJSONError(t testing.TB, what string, rec *httptest.ResponseRecorder, status int, allow string) {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	err := json.Unmarshal(rec.Body.Bytes(), &e)
	if rec.Code != status || err != nil || e.Error == "" || rec.Header().Get("Content-Type") != "application/json" ||
		rec.Header().Get("Allow") != allow {
		t.Errorf("%s: status %d (want %d), Allow %q (want %q), Content-Type %q, body %s",
			what, rec.Code, status, rec.Header().Get("Allow"), allow, rec.Header().Get("Content-Type"), rec.Body)
	}
}

// Issue 13 §0: a path that names an id position acts on that id or is a
// 404; only the exact collection path acts on all. Every path that is not
// documented is a JSON 404, a documented one with another method a JSON
// 405 with Allow, and none of them touches a tunnel.
func TestAdminOddPathsTouchNothing(t *testing.T) {
	f := newAdminFixture(t, 2)
	id := f.clients[0].id
	for _, tc := range []struct {
		method, target string
		status         int
		allow          string
	}{
		{"DELETE", "/ws_to_tcp/connections/", 404, ""},
		{"GET", "/ws_to_tcp/connections/", 404, ""},
		{"DELETE", "/ws_to_tcp/connections/?id=" + id, 404, ""},
		{"DELETE", "/ws_to_tcp/connections/" + id + "/", 404, ""},
		{"GET", "/ws_to_tcp/connections/" + id + "/", 404, ""},
		{"POST", "/ws_to_tcp/connections/" + id + "/send/", 404, ""},
		{"POST", "/ws_to_tcp/connections/" + id + "/send/x", 404, ""},
		{"DELETE", "/ws_to_tcp/connections/" + id + "/x", 404, ""},
		{"DELETE", "/ws_to_tcp/connections/" + strings.ToLower(id), 404, ""},
		{"DELETE", "/ws_to_tcp/connections/%2F", 404, ""},
		{"DELETE", "/ws_to_tcp/connections/%20", 404, ""},
		{"POST", "/ws_to_tcp/broadcast/", 404, ""},
		{"POST", "/ws_to_tcp/ping/", 404, ""},
		{"GET", "/ws_to_tcp/upstreams/", 404, ""},
		{"DELETE", "/ws_to_tcp/", 404, ""},
		{"DELETE", "/ws_to_tcp", 404, ""},
		{"DELETE", "/ws_to_tcp/Connections", 404, ""},
		{"DELETE", "/ws_to_tcp/x/connections", 404, ""},
		{"DELETE", "/ws_to_tcp/connections/" + id + "/send", 405, "POST"},
		{"POST", "/ws_to_tcp/connections/" + id, 405, "GET, DELETE"},
		{"PUT", "/ws_to_tcp/connections", 405, "GET, DELETE"},
		{"POST", "/ws_to_tcp/connections?id=" + id, 405, "GET, DELETE"},
		{"DELETE", "/ws_to_tcp/broadcast", 405, "POST"},
		{"CONNECT", "/ws_to_tcp/connections//send", 405, "POST"}, // CONNECT paths are not cleaned: an empty {id}
	} {
		what := tc.method + " " + tc.target
		rec := f.do(t, tc.method, tc.target, "text/plain", []byte("x"))
		checkJSONError(t, what, rec, tc.status, tc.allow)
		f.expect(t, untouched, what)
	}
}

// Paths with empty or dot segments never reach a route: Caddy's ServeMux
// redirects them to the cleaned path (307 since Go 1.26, 301 before).
// Following the redirect with the same method, as a client does for a 307,
// gets the cleaned path's answer: a JSON 404 or 405, never the collection.
func TestAdminUncleanPathsTouchNothing(t *testing.T) {
	f := newAdminFixture(t, 2)
	id := f.clients[0].id
	for _, tc := range []struct {
		method, target, cleaned string
		status                  int
		allow                   string
	}{
		{"DELETE", "/ws_to_tcp/connections//", "/ws_to_tcp/connections/", 404, ""},
		{"DELETE", "/ws_to_tcp/connections/./", "/ws_to_tcp/connections/", 404, ""},
		{"DELETE", "/ws_to_tcp/connections/x/../", "/ws_to_tcp/connections/", 404, ""},
		{"POST", "/ws_to_tcp/connections//send", "/ws_to_tcp/connections/send", 405, "GET, DELETE"},
		{"DELETE", "/ws_to_tcp/connections//send", "/ws_to_tcp/connections/send", 404, ""},
		{"POST", "/ws_to_tcp/connections/" + id + "//send", "/ws_to_tcp/connections/" + id + "/send", 200, ""},
		{"DELETE", "/ws_to_tcp/connections/" + id + "//", "/ws_to_tcp/connections/" + id + "/", 404, ""},
		{"POST", "/ws_to_tcp//broadcast/", "/ws_to_tcp/broadcast/", 404, ""},
	} {
		what := tc.method + " " + tc.target
		rec := f.do(t, tc.method, tc.target, "", nil)
		if loc := rec.Header().Get("Location"); !isMuxRedirect(rec.Code) || loc != tc.cleaned {
			t.Errorf("%s: status %d, Location %q; want a redirect to %s", what, rec.Code, loc, tc.cleaned)
		}
		f.expect(t, untouched, what)
		rec = f.do(t, tc.method, tc.cleaned, "", nil)
		if tc.status == http.StatusOK {
			// the one documented path among them: a send to that id
			if rec.Code != http.StatusOK {
				t.Errorf("%s after the redirect: %d %s", what, rec.Code, rec.Body)
			}
			f.expect(t, messaged, what+" after the redirect")
			continue
		}
		checkJSONError(t, what+" after the redirect", rec, tc.status, tc.allow)
		f.expect(t, untouched, what+" after the redirect")
	}
}

// The documented paths still act: on one id, and on all at the exact
// collection path.
func TestAdminRoutesInProcess(t *testing.T) {
	f := newAdminFixture(t, 3)
	id := f.clients[1].id
	var one connInfo
	rec := f.do(t, "GET", "/ws_to_tcp/connections/"+id, "", nil)
	if json.Unmarshal(rec.Body.Bytes(), &one); rec.Code != 200 || one.ID != id {
		t.Fatalf("GET one: %d %s", rec.Code, rec.Body)
	}
	f.expect(t, untouched, "GET one")
	rec = f.do(t, "POST", "/ws_to_tcp/connections/"+id+"/send", "text/plain", []byte("hi"))
	if rec.Code != 200 {
		t.Fatalf("send: %d %s", rec.Code, rec.Body)
	}
	if ev := <-f.clients[1].events; ev != "message of type 1, 2 bytes" {
		t.Fatalf("the client got %q", ev)
	}
	f.expect(t, untouched, "send")
	rec = f.do(t, "DELETE", "/ws_to_tcp/connections/"+id, "", nil)
	var closed closedResult
	if json.Unmarshal(rec.Body.Bytes(), &closed); rec.Code != 200 || closed.Closed != 1 || tunnelOpen(id) {
		t.Fatalf("DELETE one: %d %s", rec.Code, rec.Body)
	}
	if !tunnelOpen(f.clients[0].id) || !tunnelOpen(f.clients[2].id) {
		t.Fatal("DELETE one closed another")
	}
	f.expect(t, disconnected, "DELETE one")
	rec = f.do(t, "DELETE", "/ws_to_tcp/connections", "", nil)
	if json.Unmarshal(rec.Body.Bytes(), &closed); rec.Code != 200 || closed.Closed != 3 {
		t.Fatalf("DELETE all: %d %s", rec.Code, rec.Body)
	}
	for _, cl := range f.clients {
		if tunnelOpen(cl.id) {
			t.Fatalf("DELETE all left %s open", cl.id)
		}
	}
	f.expect(t, disconnected, "DELETE all")
}

// isMuxRedirect reports whether status is that of Go's ServeMux redirect
// to a cleaned path: 307 since Go 1.26, 301 before.
func isMuxRedirect(status int) bool {
	return status == http.StatusTemporaryRedirect || status == http.StatusMovedPermanently
}

// With GODEBUG=httpmuxgo121=1 the ServeMux has no {id} wildcards: the admin
// router then fails to load, instead of answering 404 to every id. The
// setting is read once at start, hence the test binary run again with it.
func TestAdminNeedsServeMuxPatterns(t *testing.T) {
	t.Parallel()
	if os.Getenv("WSTOTCP_TEST_HTTPMUXGO121") == "1" {
		fmt.Printf("provision: %v\n", new(adminAPI).Provision(caddy.Context{}))
		return
	}
	if err := new(adminAPI).Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAdminNeedsServeMuxPatterns$", "-test.count=1")
	cmd.Env = append(os.Environ(), "GODEBUG=httpmuxgo121=1", "WSTOTCP_TEST_HTTPMUXGO121=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "provision: the /ws_to_tcp admin routes need the path patterns") {
		t.Fatalf("with httpmuxgo121=1: %v\n%s", err, out)
	}
}

// A panic in an admin handler is a JSON 500, logged, instead of the admin
// server's dropped connection.
func TestAdminPanicIsJSON500(t *testing.T) {
	h := recovered(func(http.ResponseWriter, *http.Request) error { panic("boom") })
	err := h(httptest.NewRecorder(), httptest.NewRequest("GET", "/ws_to_tcp/ping", nil))
	var ae caddy.APIError
	if !errors.As(err, &ae) || ae.HTTPStatus != http.StatusInternalServerError || ae.Err.Error() != "internal error" {
		t.Fatalf("error %#v, want a 500 APIError", err)
	}
}

// tunnelOpen reports whether the tunnel with this id is registered and
// not closing (a closing tunnel stays listed until both sides are closed).
func tunnelOpen(id string) bool {
	t := findTunnel(id)
	return t != nil && !t.Ending()
}

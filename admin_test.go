package wstotcp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/relay"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
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

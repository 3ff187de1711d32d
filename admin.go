package wstotcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/relay"
	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// adminAPI serves /ws_to_tcp/ on Caddy's admin endpoint (SPEC §7): list,
// disconnect, send to, broadcast to and ping the open tunnels of every
// loaded (and unloaded, still open) configuration. It is a fresh value on
// every config load and holds nothing: the data is the package's tunnel
// registry.
//
//	GET    /ws_to_tcp/connections            list (filters)
//	DELETE /ws_to_tcp/connections            disconnect with 1001 (filters; none: all)
//	GET    /ws_to_tcp/connections/{id}       one
//	DELETE /ws_to_tcp/connections/{id}       disconnect one
//	POST   /ws_to_tcp/connections/{id}/send  the body as one message
//	POST   /ws_to_tcp/broadcast              the body to every matching client (filters)
//	POST   /ws_to_tcp/ping                   ping every matching client (filters)
//	GET    /ws_to_tcp/upstreams              the upstreams: health, open tunnels, failures
//
// Filters are query parameters: id, channel, subprotocol, user, upstream.
// Each may be repeated (any of its values matches); different filters must
// all match.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.ws_to_tcp",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes of the module.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: adminPrefix, Handler: caddy.AdminHandlerFunc(a.serve)}}
}

const (
	adminPrefix = "/ws_to_tcp/"
	// maxAdminBody bounds the body of send and broadcast: one message.
	maxAdminBody = 1 << 20
	// adminCloseReason is the reason of the Close frame of a disconnect.
	adminCloseReason = "disconnected by the administrator"
)

// connInfo is one connection as the admin API shows it.
type connInfo struct {
	ID          string    `json:"id"`
	Remote      string    `json:"remote"`
	User        string    `json:"user"`
	Upstream    string    `json:"upstream"`
	Subprotocol string    `json:"subprotocol"`
	Channel     string    `json:"channel"`
	Transport   string    `json:"transport"`
	State       string    `json:"state"`
	Started     time.Time `json:"started"`
	BytesIn     int64     `json:"bytes_in"`
	BytesOut    int64     `json:"bytes_out"`
	MessagesIn  int64     `json:"messages_in"`
	MessagesOut int64     `json:"messages_out"`
}

func infoOf(t *tunnel) connInfo {
	s := t.Stats()
	return connInfo{
		ID:          t.id,
		Remote:      t.remote,
		User:        t.user,
		Upstream:    t.upstream,
		Subprotocol: t.subprotocol,
		Channel:     t.channel,
		Transport:   t.transport,
		State:       t.state(),
		Started:     t.started.UTC().Truncate(time.Millisecond),
		BytesIn:     s.BytesIn,
		BytesOut:    s.BytesOut,
		MessagesIn:  s.MessagesIn,
		MessagesOut: s.MessagesOut,
	}
}

// appendJSON appends c as encoding/json would encode it (without the
// escaping of <, > and & for HTML).
func (c *connInfo) appendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, c.ID)
	b = append(b, `,"remote":`...)
	b = appendJSONString(b, c.Remote)
	b = append(b, `,"user":`...)
	b = appendJSONString(b, c.User)
	b = append(b, `,"upstream":`...)
	b = appendJSONString(b, c.Upstream)
	b = append(b, `,"subprotocol":`...)
	b = appendJSONString(b, c.Subprotocol)
	b = append(b, `,"channel":`...)
	b = appendJSONString(b, c.Channel)
	b = append(b, `,"transport":`...)
	b = appendJSONString(b, c.Transport)
	b = append(b, `,"state":`...)
	b = appendJSONString(b, c.State)
	b = append(b, `,"started":"`...)
	b = c.Started.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","bytes_in":`...)
	b = strconv.AppendInt(b, c.BytesIn, 10)
	b = append(b, `,"bytes_out":`...)
	b = strconv.AppendInt(b, c.BytesOut, 10)
	b = append(b, `,"messages_in":`...)
	b = strconv.AppendInt(b, c.MessagesIn, 10)
	b = append(b, `,"messages_out":`...)
	b = strconv.AppendInt(b, c.MessagesOut, 10)
	return append(b, '}')
}

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD (as
// encoding/json does), U+2028 and U+2029 escaped for JavaScript.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			switch r {
			case utf8.RuneError:
				b = append(b, `\ufffd`...)
			default:
				b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
			}
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// upstreamInfo is one upstream as GET /ws_to_tcp/upstreams shows it.
type upstreamInfo struct {
	Address string `json:"address"`
	Healthy bool   `json:"healthy"`
	Active  int    `json:"active"` // open tunnels, with handshakes dialling it
	Fails   int    `json:"fails"`  // failed dials counting (passive) plus consecutive failed active checks
}

// sentResult answers send, broadcast and ping.
type sentResult struct {
	Sent   int `json:"sent"`
	Failed int `json:"failed"`
}

type closedResult struct {
	Closed int `json:"closed"`
}

func (a *adminAPI) serve(w http.ResponseWriter, r *http.Request) (err error) {
	defer func() {
		if v := recover(); v != nil {
			caddy.Log().Named("admin.api.ws_to_tcp").Error("panic serving admin request",
				zap.String("uri", r.RequestURI),
				zap.String("panic", fmt.Sprint(v)),
				zap.ByteString("stack", debug.Stack()))
			err = apiError(http.StatusInternalServerError, "internal error")
		}
	}()
	rest, _ := strings.CutPrefix(r.URL.Path, adminPrefix)
	rest = strings.TrimSuffix(rest, "/")
	parts := strings.Split(rest, "/")
	switch {
	case rest == "connections":
		return a.connections(w, r)
	case len(parts) == 2 && parts[0] == "connections" && parts[1] != "":
		return a.connection(w, r, parts[1])
	case len(parts) == 3 && parts[0] == "connections" && parts[1] != "" && parts[2] == "send":
		return a.send(w, r, parts[1])
	case rest == "broadcast":
		return a.broadcast(w, r)
	case rest == "ping":
		return a.ping(w, r)
	case rest == "upstreams":
		return a.upstreams(w, r)
	}
	return apiError(http.StatusNotFound, "no such endpoint: %s (see GET %sconnections)", r.URL.Path, adminPrefix)
}

// connections lists (GET) or disconnects (DELETE) the matching connections.
func (a *adminAPI) connections(w http.ResponseWriter, r *http.Request) error {
	if err := allow(w, r, http.MethodGet, http.MethodDelete); err != nil {
		return err
	}
	f, err := parseFilter(r.URL.RawQuery)
	if err != nil {
		return err
	}
	list := selectTunnels(f.match)
	if r.Method == http.MethodDelete {
		return writeJSON(w, closedResult{Closed: disconnect(list)})
	}
	// Thousands of connections: appended by hand, several times faster
	// than encoding/json's reflection.
	buf := make([]byte, 0, 256*len(list)+2)
	buf = append(buf, '[')
	for i, t := range list {
		if i > 0 {
			buf = append(buf, ',')
		}
		info := infoOf(t)
		buf = info.appendJSON(buf)
	}
	buf = append(buf, "]\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.Write(buf)
	return nil
}

// connection shows (GET) or disconnects (DELETE) one connection.
func (a *adminAPI) connection(w http.ResponseWriter, r *http.Request, id string) error {
	if err := allow(w, r, http.MethodGet, http.MethodDelete); err != nil {
		return err
	}
	if err := noQuery(r); err != nil {
		return err
	}
	t := findTunnel(id)
	if t == nil {
		return unknownConnection(id)
	}
	if r.Method == http.MethodDelete {
		return writeJSON(w, closedResult{Closed: disconnect([]*tunnel{t})})
	}
	return writeJSON(w, infoOf(t))
}

// send sends the request body to one client as one message.
func (a *adminAPI) send(w http.ResponseWriter, r *http.Request, id string) error {
	if err := allow(w, r, http.MethodPost); err != nil {
		return err
	}
	if err := noQuery(r); err != nil {
		return err
	}
	t := findTunnel(id)
	if t == nil {
		return unknownConnection(id)
	}
	op, body, err := readMessage(w, r)
	if err != nil {
		return err
	}
	if err := t.Send(op, body); err != nil {
		switch {
		case errors.Is(err, relay.ErrClosing), errors.Is(err, net.ErrClosed):
			return apiError(http.StatusNotFound, "connection %s closed before the message was sent", id)
		case errors.Is(err, relay.ErrWriteLockTimeout), isTimeout(err):
			return apiError(http.StatusGatewayTimeout, "connection %s: the client accepted nothing within write_timeout; it is closed", id)
		default:
			return apiError(http.StatusBadGateway, "connection %s: writing to the client failed; it is closed", id)
		}
	}
	return writeJSON(w, sentResult{Sent: 1})
}

// broadcast sends the request body as one message to every matching
// client: framed once, the same bytes written to each.
func (a *adminAPI) broadcast(w http.ResponseWriter, r *http.Request) error {
	if err := allow(w, r, http.MethodPost); err != nil {
		return err
	}
	f, err := parseFilter(r.URL.RawQuery)
	if err != nil {
		return err
	}
	op, body, err := readMessage(w, r)
	if err != nil {
		return err
	}
	frame := wsframe.Prepare(op, body)
	list := selectTunnels(f.match)
	failed := forEachTunnel(list, func(t *tunnel) error { return t.WritePrepared(frame) })
	return writeJSON(w, sentResult{Sent: len(list) - failed, Failed: failed})
}

// ping pings every matching client; the request body, if any, is the
// ping's payload (at most 125 bytes).
func (a *adminAPI) ping(w http.ResponseWriter, r *http.Request) error {
	if err := allow(w, r, http.MethodPost); err != nil {
		return err
	}
	f, err := parseFilter(r.URL.RawQuery)
	if err != nil {
		return err
	}
	payload, err := readBody(w, r, wsframe.MaxControlPayload)
	if err != nil {
		return err
	}
	list := selectTunnels(f.match)
	failed := forEachTunnel(list, func(t *tunnel) error { return t.Ping(payload) })
	return writeJSON(w, sentResult{Sent: len(list) - failed, Failed: failed})
}

// upstreams lists the upstreams of the loaded configurations from their
// shared state (health.go): health, open tunnels (with handshakes dialling
// them) and the failures counting now. Addresses that only open tunnels
// still use (of an unloaded configuration, or dynamic targets) are listed
// too, healthy, with their open tunnels.
func (a *adminAPI) upstreams(w http.ResponseWriter, r *http.Request) error {
	if err := allow(w, r, http.MethodGet); err != nil {
		return err
	}
	if err := noQuery(r); err != nil {
		return err
	}
	out := upstreamInfos()
	known := make(map[string]bool, len(out))
	for _, u := range out {
		known[u.Address] = true
	}
	others := make(map[string]int)
	for _, t := range selectTunnels(nil) {
		if !known[t.upstream] {
			others[t.upstream]++
		}
	}
	for addr, n := range others {
		out = append(out, upstreamInfo{Address: addr, Healthy: true, Active: n})
	}
	if out == nil {
		out = []upstreamInfo{}
	}
	slices.SortFunc(out, func(a, b upstreamInfo) int { return strings.Compare(a.Address, b.Address) })
	return writeJSON(w, out)
}

// disconnect closes the tunnels with 1001, their upstreams at once.
// disconnect closes the tunnels with 1001 and returns how many were open:
// those already closing are closed at once, and not counted.
func disconnect(list []*tunnel) int {
	return closeEach(list, wsframe.CloseGoingAway, adminCloseReason)
}

// filter selects connections by query parameters: for each key given,
// the connection's value must be one of the key's values.
type filter map[string]map[string]bool

var filterKeys = []string{"id", "channel", "subprotocol", "user", "upstream"}

func parseFilter(rawQuery string) (filter, error) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, apiError(http.StatusBadRequest, "invalid query string: %v", err)
	}
	f := make(filter, len(q))
	for k, vals := range q {
		if !slices.Contains(filterKeys, k) {
			return nil, apiError(http.StatusBadRequest, "unknown filter %q: the filters are %s", k, strings.Join(filterKeys, ", "))
		}
		set := make(map[string]bool, len(vals))
		for _, v := range vals {
			set[v] = true
		}
		f[k] = set
	}
	return f, nil
}

func (f filter) match(t *tunnel) bool {
	return f.has("id", t.id) && f.has("channel", t.channel) && f.has("subprotocol", t.subprotocol) &&
		f.has("user", t.user) && f.has("upstream", t.upstream)
}

func (f filter) has(key, value string) bool {
	set, ok := f[key]
	return !ok || set[value]
}

// allow answers 405, with the Allow header, to any other method.
func allow(w http.ResponseWriter, r *http.Request, methods ...string) error {
	if slices.Contains(methods, r.Method) {
		return nil
	}
	list := strings.Join(methods, ", ")
	w.Header().Set("Allow", list)
	return apiError(http.StatusMethodNotAllowed, "method %s not allowed on %s; allowed: %s", r.Method, r.URL.Path, list)
}

func noQuery(r *http.Request) error {
	if r.URL.RawQuery != "" {
		return apiError(http.StatusBadRequest, "%s takes no query parameters", r.URL.Path)
	}
	return nil
}

func unknownConnection(id string) error {
	return apiError(http.StatusNotFound, "no open connection with id %q", id)
}

// readBody reads the request body, at most limit bytes (413 beyond).
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, apiError(http.StatusRequestEntityTooLarge, "request body larger than %d bytes", limit)
		}
		return nil, apiError(http.StatusBadRequest, "reading the request body: %v", err)
	}
	return body, nil
}

// readMessage reads the body of send or broadcast: a text message for a
// text/* Content-Type (whose body must be UTF-8), else a binary one.
func readMessage(w http.ResponseWriter, r *http.Request) (byte, []byte, error) {
	op := byte(wsframe.OpBinary)
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, params, err := mime.ParseMediaType(ct)
		if err != nil {
			return 0, nil, apiError(http.StatusBadRequest, "invalid Content-Type %q: %v", ct, err)
		}
		if strings.HasPrefix(mt, "text/") {
			op = wsframe.OpText
			if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "us-ascii") {
				return 0, nil, apiError(http.StatusBadRequest, "charset %q: a text message must be UTF-8", cs)
			}
		}
	}
	body, err := readBody(w, r, maxAdminBody)
	if err != nil {
		return 0, nil, err
	}
	if op == wsframe.OpText && !utf8.Valid(body) {
		return 0, nil, apiError(http.StatusBadRequest, "the body is not valid UTF-8, which a text message must be; send it as binary (e.g. Content-Type: application/octet-stream)")
	}
	return op, body, nil
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v) // an error here is the client gone: no answer to give
	return nil
}

func apiError(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

// Interface guards
var (
	_ caddy.Module      = (*adminAPI)(nil)
	_ caddy.AdminRouter = (*adminAPI)(nil)
)

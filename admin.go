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

// adminAPI serves /ws_to_tcp on Caddy's admin endpoint (README, Admin
// API): list, disconnect, send to, broadcast to and ping the open tunnels
// of every loaded (and unloaded, still open) configuration. It is a fresh
// value on every config load and holds nothing: the data is the package's
// tunnel registry.
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

// adminEndpoint is one method on one path of the admin API.
type adminEndpoint struct {
	method, path string
	handle       caddy.AdminHandlerFunc
}

// adminEndpoints is the whole admin API (README, Admin API); any other
// path under /ws_to_tcp is a JSON 404, a path of the list with another
// method a JSON 405 naming the allowed ones. {id} is a wildcard of Go's
// ServeMux: one path segment, never empty and never a trailing slash, so
// that a path naming an id position can only reach a handler of that id.
var adminEndpoints = []adminEndpoint{
	{"GET", "/ws_to_tcp/connections", listConnections},
	{"DELETE", "/ws_to_tcp/connections", disconnectMatching},
	{"GET", "/ws_to_tcp/connections/{id}", showConnection},
	{"DELETE", "/ws_to_tcp/connections/{id}", disconnectConnection},
	{"POST", "/ws_to_tcp/connections/{id}/send", sendToConnection},
	{"POST", "/ws_to_tcp/broadcast", broadcast},
	{"POST", "/ws_to_tcp/ping", ping},
	{"GET", "/ws_to_tcp/upstreams", upstreams},
}

// Routes returns one route per path of adminEndpoints, which dispatches on
// the method, and the JSON 404 for every other path under /ws_to_tcp.
//
// The patterns carry no method. Caddy registers them on its http.ServeMux
// as they are; there a method pattern ("GET /ws_to_tcp/upstreams") would
// hand a DELETE to the catch-all /ws_to_tcp/ as a 404 instead of a 405, and
// without the catch-all the ServeMux would answer plain-text 404s and
// 405s. Caddy's own admin routes (reverse_proxy, metrics, pki) check the
// method in the handler too.
func (*adminAPI) Routes() []caddy.AdminRoute {
	var paths []string
	byPath := make(map[string][]adminEndpoint)
	for _, e := range adminEndpoints {
		if byPath[e.path] == nil {
			paths = append(paths, e.path)
		}
		byPath[e.path] = append(byPath[e.path], e)
	}
	routes := make([]caddy.AdminRoute, 0, len(paths)+2)
	for _, p := range paths {
		routes = append(routes, caddy.AdminRoute{Pattern: p, Handler: recovered(byMethod(byPath[p]))})
	}
	// /ws_to_tcp itself too: the ServeMux would redirect it to /ws_to_tcp/.
	for _, p := range []string{"/ws_to_tcp/", "/ws_to_tcp"} {
		routes = append(routes, caddy.AdminRoute{Pattern: p, Handler: recovered(noSuchEndpoint)})
	}
	return routes
}

// Provision makes sure the ServeMux understands the {id} wildcards:
// GODEBUG=httpmuxgo121=1 turns Go 1.22's patterns off, and the routes of
// one connection would then never match.
func (*adminAPI) Provision(caddy.Context) error {
	mux := http.NewServeMux()
	mux.Handle("/{id}", http.NotFoundHandler())
	if _, pattern := mux.Handler(&http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/x"}}); pattern != "/{id}" {
		return errors.New("the /ws_to_tcp admin routes need the path patterns of Go 1.22's ServeMux, which GODEBUG=httpmuxgo121=1 turns off")
	}
	return nil
}

// byMethod dispatches a request to the endpoint of its method.
func byMethod(endpoints []adminEndpoint) caddy.AdminHandlerFunc {
	allowed := make([]string, len(endpoints))
	for i, e := range endpoints {
		allowed[i] = e.method
	}
	allow := strings.Join(allowed, ", ")
	return func(w http.ResponseWriter, r *http.Request) error {
		for _, e := range endpoints {
			if e.method == r.Method {
				// ?scope=cluster: every instance (cluster_admin.go)
				cluster, timeout, err := takeScope(r)
				if err != nil {
					return err
				}
				if cluster {
					return clusterAdmin(w, r, e, timeout)
				}
				return e.handle(w, r)
			}
		}
		w.Header().Set("Allow", allow)
		return apiError(http.StatusMethodNotAllowed, "method %s not allowed on %s; allowed: %s", r.Method, r.URL.Path, allow)
	}
}

// recovered answers a panic of h with a JSON 500 and logs it, instead of
// the admin server's dropped connection.
func recovered(h caddy.AdminHandlerFunc) caddy.AdminHandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) (err error) {
		defer func() {
			if v := recover(); v != nil {
				caddy.Log().Named("admin.api.ws_to_tcp").Error("panic serving admin request",
					zap.String("uri", r.RequestURI),
					zap.String("panic", fmt.Sprint(v)),
					zap.ByteString("stack", debug.Stack()))
				err = apiError(http.StatusInternalServerError, "internal error")
			}
		}()
		return h(w, r)
	}
}

func noSuchEndpoint(_ http.ResponseWriter, r *http.Request) error {
	return apiError(http.StatusNotFound, "no such endpoint: %s (see GET /ws_to_tcp/connections)", r.URL.Path)
}

const (
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
	Instance    string    `json:"instance,omitempty"` // with a cluster: the instance's id
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
		Instance:    t.h.instanceName(),
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
	if c.Instance != "" {
		b = append(b, `,"instance":`...)
		b = appendJSONString(b, c.Instance)
	}
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

// listConnections lists the matching connections.
func listConnections(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilter(r.URL.RawQuery)
	if err != nil {
		return err
	}
	list := selectTunnels(f.match)
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

// disconnectMatching disconnects the matching connections; all of them
// without filters.
func disconnectMatching(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilter(r.URL.RawQuery)
	if err != nil {
		return err
	}
	list := selectTunnels(f.match)
	return writeJSON(w, closedResult{Closed: disconnect(list)})
}

// showConnection shows one connection.
func showConnection(w http.ResponseWriter, r *http.Request) error {
	t, err := pathConnection(r)
	if err != nil {
		return err
	}
	return writeJSON(w, infoOf(t))
}

// disconnectConnection disconnects one connection.
func disconnectConnection(w http.ResponseWriter, r *http.Request) error {
	t, err := pathConnection(r)
	if err != nil {
		return err
	}
	return writeJSON(w, closedResult{Closed: disconnect([]*tunnel{t})})
}

// pathConnection returns the open connection that the path names; the
// path of one connection takes no filters.
func pathConnection(r *http.Request) (*tunnel, error) {
	if err := noQuery(r); err != nil {
		return nil, err
	}
	id := r.PathValue("id")
	if id == "" {
		// Only a CONNECT request's path, which the ServeMux does not
		// clean, can give {id} an empty segment.
		return nil, noSuchEndpoint(nil, r)
	}
	t := findTunnel(id)
	if t == nil {
		return nil, unknownConnection(id)
	}
	return t, nil
}

// sendToConnection sends the request body to one client as one message.
func sendToConnection(w http.ResponseWriter, r *http.Request) error {
	t, err := pathConnection(r)
	if err != nil {
		return err
	}
	op, body, err := readMessage(w, r)
	if err != nil {
		return err
	}
	if err := t.Send(op, body); err != nil {
		switch {
		case errors.Is(err, relay.ErrClosing), errors.Is(err, net.ErrClosed):
			return apiError(http.StatusNotFound, "connection %s closed before the message was sent", t.id)
		case errors.Is(err, relay.ErrWriteLockTimeout), isTimeout(err):
			return apiError(http.StatusGatewayTimeout, "connection %s: the client accepted nothing within write_timeout; it is closed", t.id)
		default:
			return apiError(http.StatusBadGateway, "connection %s: writing to the client failed; it is closed", t.id)
		}
	}
	return writeJSON(w, sentResult{Sent: 1})
}

// broadcast sends the request body as one message to every matching
// client: framed once, the same bytes written to each.
func broadcast(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilter(r.URL.RawQuery)
	if err != nil {
		return err
	}
	op, body, err := readMessage(w, r)
	if err != nil {
		return err
	}
	frame := wsframe.Prepare(op, body)
	list := selectTunnels(f.matchOpen)
	failed := forEachTunnel(list, func(t *tunnel) error { return t.WritePrepared(frame) })
	return writeJSON(w, sentResult{Sent: len(list) - failed, Failed: failed})
}

// ping pings every matching client; the request body, if any, is the
// ping's payload (at most 125 bytes).
func ping(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilter(r.URL.RawQuery)
	if err != nil {
		return err
	}
	payload, err := readBody(w, r, wsframe.MaxControlPayload)
	if err != nil {
		return err
	}
	list := selectTunnels(f.matchOpen)
	failed := forEachTunnel(list, func(t *tunnel) error { return t.Ping(payload) })
	return writeJSON(w, sentResult{Sent: len(list) - failed, Failed: failed})
}

// upstreams lists the upstreams of the loaded configurations from their
// shared state (health.go): health, open tunnels (with handshakes dialling
// them) and the failures counting now. Addresses that only open tunnels
// still use (of an unloaded configuration, or dynamic targets) are listed
// too, healthy, with their open tunnels.
func upstreams(w http.ResponseWriter, r *http.Request) error {
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

var filterKeys = []string{"id", "channel", "subprotocol", "user", "upstream", "transport"}

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
		f.has("user", t.user) && f.has("upstream", t.upstream) && f.has("transport", t.transport)
}

// matchOpen is match for the tunnels that can still take a message: a
// closing tunnel is listed, but nothing more is sent to it.
func (f filter) matchOpen(t *tunnel) bool { return !t.Ending() && f.match(t) }

func (f filter) has(key, value string) bool {
	set, ok := f[key]
	return !ok || set[value]
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
	_ caddy.Provisioner = (*adminAPI)(nil)
)

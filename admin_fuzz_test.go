package wstotcp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"slices"
	"strings"
	"testing"
)

// FuzzAdminAPI sends arbitrary requests (method, path under /ws_to_tcp,
// query, Content-Type, body) to the admin routes, mounted in process as
// Caddy mounts them, while three real tunnels are open. No request panics;
// every answer is a documented success or a JSON error (or the ServeMux's
// redirect for a path it cleans); and only a documented, well-formed request
// touches a tunnel: a list touches none, a send, broadcast or ping only
// writes to clients, a disconnect may close them (they are then replaced).
// {id0}, {id1} and {id2} in the path or query stand for the open tunnels'
// ids, so that the fuzzer reaches the routes of one connection.
func FuzzAdminAPI(f *testing.F) {
	fx := newAdminFixture(f, 3)
	for _, s := range []struct {
		method, path, query, contentType, body string
	}{
		{"GET", "/connections", "", "", ""},
		{"GET", "/connections", "channel=fixture-1&user=&subprotocol=x", "", ""},
		{"GET", "/connections", "chanel=x", "", ""},
		{"DELETE", "/connections", "id={id0}", "", ""},
		{"DELETE", "/connections", "upstream=nowhere", "", ""},
		{"DELETE", "/connections/", "", "", ""},
		{"DELETE", "/connections//", "", "", ""},
		{"DELETE", "/connections/./", "", "", ""},
		{"GET", "/connections/{id0}", "", "", ""},
		{"GET", "/connections/{id0}", "user=x", "", ""},
		{"DELETE", "/connections/{id1}", "", "", ""},
		{"DELETE", "/connections/{id1}/", "", "", ""},
		{"DELETE", "/connections/%2F", "", "", ""},
		{"GET", "/connection%73/{id2}", "", "", ""},
		{"POST", "/connections/{id2}/send", "", "text/plain", "hello"},
		{"POST", "/connections/{id2}/send", "", "text/plain", "\xff"},
		{"POST", "/connections/{id2}/send/", "", "", "x"},
		{"POST", "/connections//send", "", "", "x"},
		{"CONNECT", "/connections//send", "", "", "x"},
		{"POST", "/connections/NOSUCHID/send", "", "application/octet-stream", "\x00\x01"},
		{"POST", "/broadcast", "channel=fixture-2", "application/octet-stream", "\x00\x01"},
		{"POST", "/broadcast", "", "text/plain; charset=latin1", "x"},
		{"POST", "/broadcast", "", "text/", "x"},
		{"POST", "/broadcast/", "", "", "x"},
		{"POST", "/ping", "", "", "p"},
		{"POST", "/ping", "id={id0}&id={id1}", "", strings.Repeat("p", 126)},
		{"GET", "/upstreams", "", "", ""},
		{"GET", "/upstreams", "x=1", "", ""},
		{"PUT", "/connections", "", "", ""},
		{"HEAD", "/connections", "", "", ""},
		{"OPTIONS", "/ping", "", "", ""},
		{"GET", "", "", "", ""},
		{"GET", "/", "", "", ""},
		{"DELETE", "//connections", "id=%zz", "", ""},
	} {
		f.Add(s.method, s.path, s.query, s.contentType, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, method, target, query, contentType string, body []byte) {
		var ids []string
		for i, cl := range fx.clients {
			ids = append(ids, fmt.Sprintf("{id%d}", i), cl.id)
		}
		subst := strings.NewReplacer(ids...)
		target, query = subst.Replace(target), subst.Replace(query)
		if target != "" && !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		target = "/ws_to_tcp" + target
		if query != "" {
			target += "?" + query
		}
		// The request as the admin server reads it off the wire: what it
		// cannot parse never reaches a route.
		var raw bytes.Buffer
		fmt.Fprintf(&raw, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n", method, target)
		if contentType != "" {
			fmt.Fprintf(&raw, "Content-Type: %s\r\n", contentType)
		}
		fmt.Fprintf(&raw, "Content-Length: %d\r\n\r\n", len(body))
		raw.Write(body)
		r, err := http.ReadRequest(bufio.NewReader(&raw))
		if err != nil {
			return
		}
		r.RemoteAddr = "127.0.0.1:1"
		rec := httptest.NewRecorder()
		fx.mux.ServeHTTP(rec, r)
		what := fmt.Sprintf("%s %s (Content-Type %q, %d bytes)", r.Method, r.RequestURI, contentType, len(body))
		// Until the answer is known good, anything goes: a failed check
		// still leaves the fixture whole for the next input.
		allowed := disconnected
		defer func() { fx.expect(t, allowed, what) }()
		allowed = checkAdminAnswer(t, what, r, rec)
	})
}

// documentedMethods maps each path of the admin API (README, Admin API) to
// its methods, in the order of the Allow header.
var documentedMethods = map[string][]string{
	"/ws_to_tcp/connections":           {"GET", "DELETE"},
	"/ws_to_tcp/connections/{id}":      {"GET", "DELETE"},
	"/ws_to_tcp/connections/{id}/send": {"POST"},
	"/ws_to_tcp/broadcast":             {"POST"},
	"/ws_to_tcp/ping":                  {"POST"},
	"/ws_to_tcp/upstreams":             {"GET"},
}

// documentedPath returns the documented path that the request's path is,
// and its {id}, matching segments as Go's ServeMux does: each unescaped,
// and {id} any one segment but a trailing slash ("" is one only where the
// path is not cleaned, as for CONNECT).
func documentedPath(r *http.Request) (pattern, id string, ok bool) {
	segs := strings.Split(r.URL.EscapedPath(), "/")
	for i, s := range segs {
		if u, err := url.PathUnescape(s); err == nil {
			segs[i] = u
		}
	}
	for p := range documentedMethods {
		want := strings.Split(p, "/")
		if len(want) != len(segs) {
			continue
		}
		match, pid := true, ""
		for i, w := range want {
			if w == "{id}" {
				pid = segs[i]
				match = match && segs[i] != "/" && (segs[i] != "" || i < len(segs)-1)
				continue
			}
			match = match && segs[i] == w
		}
		if match {
			return p, pid, true
		}
	}
	return "", "", false
}

// checkAdminAnswer checks the answer to one request and returns what the
// request may have done to the tunnels.
func checkAdminAnswer(t *testing.T, what string, r *http.Request, rec *httptest.ResponseRecorder) effect {
	t.Helper()
	pattern, id, documented := documentedPath(r)
	methods := documentedMethods[pattern]
	switch {
	case isMuxRedirect(rec.Code):
		// Caddy's ServeMux redirects a path with empty or dot segments to
		// its cleaned form before any route sees it (not for CONNECT).
		if escaped := r.URL.EscapedPath(); muxCleanPath(escaped) == escaped || r.Method == http.MethodConnect {
			t.Fatalf("%s: %d to %q for a clean path", what, rec.Code, rec.Header().Get("Location"))
		}
		return untouched
	case rec.Code == http.StatusOK:
		if !documented || !slices.Contains(methods, r.Method) {
			t.Fatalf("%s: 200 for an undocumented request: %s", what, rec.Body)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%s: Content-Type %q", what, ct)
		}
		dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
		dec.DisallowUnknownFields()
		var v any
		switch r.Method + " " + pattern {
		case "GET /ws_to_tcp/connections":
			v = new([]connInfo)
		case "GET /ws_to_tcp/connections/{id}":
			v = new(connInfo)
		case "GET /ws_to_tcp/upstreams":
			v = new([]upstreamInfo)
		case "DELETE /ws_to_tcp/connections", "DELETE /ws_to_tcp/connections/{id}":
			v = new(closedResult)
		default:
			v = new(sentResult)
		}
		if err := dec.Decode(v); err != nil {
			t.Fatalf("%s: %v in %s", what, err, rec.Body)
		}
		if c, ok := v.(*connInfo); ok && c.ID != id {
			t.Fatalf("%s: connection %q shown for id %q", what, c.ID, id)
		}
		if s, ok := v.(*sentResult); ok && pattern == "/ws_to_tcp/connections/{id}/send" && *s != (sentResult{Sent: 1}) {
			t.Fatalf("%s: %s", what, rec.Body)
		}
		switch r.Method {
		case http.MethodGet:
			return untouched
		case http.MethodDelete:
			return disconnected
		default:
			return messaged
		}
	case rec.Code >= 400 && rec.Code < 600 && rec.Code != http.StatusInternalServerError:
		// 500 only ever comes from a handler's panic or a bug.
		status, allow := rec.Code, ""
		switch {
		case !documented:
			status = http.StatusNotFound
		case !slices.Contains(methods, r.Method):
			status, allow = http.StatusMethodNotAllowed, strings.Join(methods, ", ")
		case rec.Code == http.StatusMethodNotAllowed,
			rec.Code == http.StatusNotFound && (id == "" || !strings.Contains(rec.Body.String(), "no open connection")):
			// A documented path and method: 404 only for an id that is
			// not open.
			t.Fatalf("%s: %d for a documented path and method: %s", what, rec.Code, rec.Body)
		}
		checkJSONError(t, what, rec, status, allow)
		if t.Failed() {
			t.FailNow()
		}
		return untouched
	}
	t.Fatalf("%s: status %d: %s", what, rec.Code, rec.Body)
	return untouched
}

// muxCleanPath is the path Go's ServeMux redirects to (cleanPath in
// net/http): path.Clean, keeping a trailing slash.
func muxCleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}

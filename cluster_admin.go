package wstotcp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// The admin API's ?scope=cluster (README, Admin API and Cluster): the
// request is run here, and published once on the cluster's admin channel,
// where every other instance runs it on its own tunnels (a broadcast is
// thus framed once per instance) and publishes its answer on the
// requester's reply channel. The answer aggregates the instances' answers,
// and names those that are members (their heartbeat is live) but did not
// answer within the timeout (default 2 s, `?timeout=`). When Redis cannot
// be reached, the answer is this instance's, with "scope": "local" and the
// reason.

// maxClusterAdminTimeout bounds ?timeout=.
const maxClusterAdminTimeout = 30 * time.Second

// clusterRequest is an admin request, as published on <prefix>admin.
type clusterRequest struct {
	ID          string `json:"id"`
	From        string `json:"from"` // the requester's session, whose reply channel takes the answers
	Method      string `json:"method"`
	Path        string `json:"path"`
	Query       string `json:"query,omitempty"` // the filters, without scope and timeout
	ContentType string `json:"content_type,omitempty"`
	Body        []byte `json:"body,omitempty"`
}

// clusterReply is an instance's answer, as published on the requester's
// reply channel.
type clusterReply struct {
	ID       string          `json:"id"`
	Session  string          `json:"session"`
	Instance string          `json:"instance"`
	Status   int             `json:"status"`
	Body     json.RawMessage `json:"body"`
}

// takeScope removes scope and timeout from the request's query and says
// whether the request is for the cluster, and with what timeout.
func takeScope(r *http.Request) (cluster bool, timeout time.Duration, err error) {
	if !strings.Contains(r.URL.RawQuery, "scope") && !strings.Contains(r.URL.RawQuery, "timeout") {
		return false, 0, nil
	}
	var kept []string
	var scope, tmo string
	for _, part := range strings.Split(r.URL.RawQuery, "&") {
		k, v, _ := strings.Cut(part, "=")
		key, err1 := url.QueryUnescape(k)
		val, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil || key != "scope" && key != "timeout" {
			kept = append(kept, part)
			continue
		}
		if key == "scope" {
			scope = val
		} else {
			tmo = val
		}
	}
	u := *r.URL
	u.RawQuery = strings.Join(kept, "&")
	r.URL = &u
	switch scope {
	case "", "local":
		if tmo != "" {
			return false, 0, apiError(http.StatusBadRequest, "timeout is for scope=cluster only")
		}
		return false, 0, nil
	case "cluster":
	default:
		return false, 0, apiError(http.StatusBadRequest, "scope %q: expected local or cluster", scope)
	}
	timeout = defaultClusterAdminTimeout
	if tmo != "" {
		d, err := caddy.ParseDuration(tmo)
		if err != nil || d <= 0 || d > maxClusterAdminTimeout {
			return false, 0, apiError(http.StatusBadRequest, "timeout %q: expected a duration up to %v", tmo, maxClusterAdminTimeout)
		}
		timeout = d
	}
	return true, timeout, nil
}

// adminNode is the node that ?scope=cluster goes through: that of a
// running configuration (a process normally has one cluster).
func adminNode() *clusterNode {
	clusterNodes.Lock()
	nodes := make([]*clusterNode, 0, len(clusterNodes.m))
	for _, n := range clusterNodes.m {
		nodes = append(nodes, n)
	}
	clusterNodes.Unlock()
	slices.SortFunc(nodes, func(a, b *clusterNode) int { return strings.Compare(a.session, b.session) })
	for _, n := range nodes {
		if n.ownerRunning() {
			return n
		}
	}
	if len(nodes) > 0 {
		return nodes[0]
	}
	return nil
}

// instanceAnswer is one instance's answer to a cluster request.
type instanceAnswer struct {
	instance string
	status   int
	body     []byte
}

// clusterAdmin runs an admin request on every instance and aggregates the
// answers.
func clusterAdmin(w http.ResponseWriter, r *http.Request, e adminEndpoint, timeout time.Duration) error {
	n := adminNode()
	if n == nil {
		return apiError(http.StatusBadRequest, "scope=cluster: no ws_to_tcp handler of this instance has a cluster")
	}
	var body []byte
	if r.Method == http.MethodPost {
		var err error
		if body, err = readBody(w, r, maxAdminBody); err != nil {
			return err
		}
	}
	req := clusterRequest{
		ID: newConnID(), From: n.session, Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
		ContentType: r.Header.Get("Content-Type"), Body: body,
	}
	// Here first: a request this instance refuses as malformed is not
	// sent to the others.
	status, out := runLocal(req)
	switch status {
	case http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusRequestEntityTooLarge:
		return writeRaw(w, status, out)
	}
	answers := map[string]instanceAnswer{n.session: {instance: n.name, status: status, body: out}}
	scope, why, missing := "cluster", "", []string{}
	if !n.started.Load() || !n.up.Load() {
		scope, why = "local", "the cluster's Redis cannot be reached"
	} else {
		replies, miss, err := n.fanOut(r.Context(), req, timeout)
		if err != nil {
			scope, why = "local", "publishing to the cluster failed: "+err.Error()
		} else {
			for s, a := range replies {
				answers[s] = a
			}
			missing = miss
		}
	}
	return aggregate(w, e, scope, why, answers, missing)
}

// fanOut publishes req and collects the answers of the other live members
// until all have answered or the timeout; it names the members that did
// not answer.
func (n *clusterNode) fanOut(ctx context.Context, req clusterRequest, timeout time.Duration) (map[string]instanceAnswer, []string, error) {
	// The members now, not as of the last heartbeat: one that joined since
	// is waited for too.
	members, err := n.fetchMembers(ctx)
	if err != nil {
		n.setUp(false, err)
		return nil, nil, err
	}
	expected := slices.DeleteFunc(members, func(s string) bool { return s == n.session })
	ch := make(chan clusterReply, len(expected)+16)
	n.pendingMu.Lock()
	n.pending[req.ID] = ch
	n.pendingMu.Unlock()
	defer func() {
		n.pendingMu.Lock()
		delete(n.pending, req.ID)
		n.pendingMu.Unlock()
	}()
	if err := n.publish(ctx, n.adminChannel(), req); err != nil {
		n.setUp(false, err)
		return nil, nil, err
	}
	replies := make(map[string]instanceAnswer)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for !answeredAll(replies, expected) {
		select {
		case rep := <-ch:
			replies[rep.Session] = instanceAnswer{instance: rep.Instance, status: rep.Status, body: rep.Body}
		case <-timer.C:
			var missing []string
			for _, s := range expected {
				if _, ok := replies[s]; !ok {
					missing = append(missing, instanceOf(s))
				}
			}
			slices.Sort(missing)
			return replies, missing, nil
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	return replies, []string{}, nil
}

func answeredAll(replies map[string]instanceAnswer, expected []string) bool {
	for _, s := range expected {
		if _, ok := replies[s]; !ok {
			return false
		}
	}
	return true
}

// serveRemote runs another instance's request here and publishes the
// answer to it.
func (n *clusterNode) serveRemote(payload string) {
	var req clusterRequest
	if err := json.Unmarshal([]byte(payload), &req); err != nil || req.From == "" {
		n.logger.Debug("cluster: invalid admin request", zap.Error(err))
		return
	}
	if req.From == n.session {
		return // the requester ran it itself
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer n.recoverPanic("cluster admin request")
		status, out := runLocal(req)
		rep := clusterReply{ID: req.ID, Session: n.session, Instance: n.name, Status: status, Body: out}
		if err := n.publish(n.ctx, n.replyChannel(req.From), rep); err != nil && n.ctx.Err() == nil {
			n.setUp(false, err)
		}
	}()
}

// receiveReply hands an answer to the request waiting for it.
func (n *clusterNode) receiveReply(payload string) {
	var rep clusterReply
	if err := json.Unmarshal([]byte(payload), &rep); err != nil {
		n.logger.Debug("cluster: invalid admin reply", zap.Error(err))
		return
	}
	n.pendingMu.Lock()
	ch := n.pending[rep.ID]
	n.pendingMu.Unlock()
	if ch != nil {
		select {
		case ch <- rep:
		default:
		}
	}
}

var (
	localMuxOnce sync.Once
	localMux     *http.ServeMux
)

// runLocal runs a request on this instance's tunnels through the local
// endpoints, and returns the status and JSON body they answered.
func runLocal(req clusterRequest) (int, []byte) {
	localMuxOnce.Do(func() {
		localMux = http.NewServeMux()
		for _, e := range adminEndpoints {
			localMux.Handle(e.method+" "+e.path, localEndpoint(recovered(e.handle)))
		}
	})
	target := req.Path
	if req.Query != "" {
		target += "?" + req.Query
	}
	hr, err := http.NewRequest(req.Method, "http://localhost"+target, bytes.NewReader(req.Body))
	if err != nil {
		return errorBody(apiError(http.StatusBadRequest, "invalid request: %v", err))
	}
	if req.ContentType != "" {
		hr.Header.Set("Content-Type", req.ContentType)
	}
	rec := &recorder{header: make(http.Header), status: http.StatusOK}
	h, pattern := localMux.Handler(hr)
	if pattern == "" {
		return errorBody(apiError(http.StatusNotFound, "no such endpoint: %s", req.Path))
	}
	h.ServeHTTP(rec, hr)
	return rec.status, rec.buf.Bytes()
}

// recorder is the ResponseWriter of runLocal.
type recorder struct {
	header http.Header
	status int
	buf    bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.buf.Write(b) }
func (r *recorder) WriteHeader(status int)      { r.status = status }

// localEndpoint makes an endpoint (which returns its errors) a handler
// for runLocal, rendering errors as Caddy's admin server does.
type localEndpoint caddy.AdminHandlerFunc

func (f localEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := f(w, r); err != nil {
		status, b := errorBody(err)
		writeRaw(w, status, b)
	}
}

func errorBody(err error) (int, []byte) {
	status := http.StatusInternalServerError
	var ae caddy.APIError
	if errors.As(err, &ae) {
		status = ae.HTTPStatus
		if ae.Err != nil {
			err = ae.Err
		}
	}
	b, _ := json.Marshal(map[string]string{"error": err.Error()})
	return status, b
}

func writeRaw(w http.ResponseWriter, status int, body []byte) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
	return nil
}

// errorOf is the message of an error answer.
func errorOf(body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || e.Error == "" {
		return strings.TrimSpace(string(body))
	}
	return e.Error
}

// aggregate writes the cluster answer of endpoint e.
func aggregate(w http.ResponseWriter, e adminEndpoint, scope, why string, answers map[string]instanceAnswer, missing []string) error {
	sessions := make([]string, 0, len(answers))
	for s := range answers {
		sessions = append(sessions, s)
	}
	slices.SortFunc(sessions, func(a, b string) int { return strings.Compare(answers[a].instance, answers[b].instance) })
	out := map[string]any{"scope": scope, "missing": missing}
	if why != "" {
		out["error"] = why
	}
	instances := make([]map[string]any, 0, len(answers))
	var failures []string
	notFound := 0
	add := func(a instanceAnswer, fields map[string]any) {
		fields["instance"] = a.instance
		instances = append(instances, fields)
	}
	for _, s := range sessions {
		a := answers[s]
		if a.status == http.StatusNotFound {
			notFound++
			add(a, map[string]any{"status": a.status, "error": errorOf(a.body)})
			continue
		}
		if a.status != http.StatusOK {
			failures = append(failures, a.instance+": "+errorOf(a.body))
			add(a, map[string]any{"status": a.status, "error": errorOf(a.body)})
			continue
		}
		switch {
		case e.method == "GET" && e.path == "/ws_to_tcp/connections":
			var list []connInfo
			json.Unmarshal(a.body, &list)
			for i := range list {
				if list[i].Instance == "" {
					list[i].Instance = a.instance
				}
			}
			conns, _ := out["connections"].([]connInfo)
			out["connections"] = append(conns, list...)
			add(a, map[string]any{"count": len(list)})
		case e.method == "GET" && e.path == "/ws_to_tcp/connections/{id}":
			var c connInfo
			json.Unmarshal(a.body, &c)
			if c.Instance == "" {
				c.Instance = a.instance
			}
			out["connection"] = c
			add(a, map[string]any{"count": 1})
		case e.method == "GET" && e.path == "/ws_to_tcp/upstreams":
			add(a, map[string]any{"upstreams": json.RawMessage(a.body)})
		case e.method == "DELETE":
			var c closedResult
			json.Unmarshal(a.body, &c)
			out["closed"] = intOf(out["closed"]) + c.Closed
			add(a, map[string]any{"closed": c.Closed})
		default: // send, broadcast, ping
			var sr sentResult
			json.Unmarshal(a.body, &sr)
			out["sent"] = intOf(out["sent"]) + sr.Sent
			out["failed"] = intOf(out["failed"]) + sr.Failed
			add(a, map[string]any{"sent": sr.Sent, "failed": sr.Failed})
		}
	}
	out["instances"] = instances
	if conns, ok := out["connections"].([]connInfo); ok {
		slices.SortFunc(conns, func(a, b connInfo) int {
			if c := a.Started.Compare(b.Started); c != 0 {
				return c
			}
			return strings.Compare(a.ID, b.ID)
		})
	} else if e.method == "GET" && e.path == "/ws_to_tcp/connections" {
		out["connections"] = []connInfo{}
	}
	byID := strings.Contains(e.path, "{id}")
	if len(failures) > 0 && byID {
		return apiError(http.StatusBadGateway, "%s", strings.Join(failures, "; "))
	}
	if byID && notFound == len(answers) {
		msg := "no open connection with this id on any instance"
		if len(missing) > 0 {
			msg += " that answered (no answer from " + strings.Join(missing, ", ") + ")"
		}
		return apiError(http.StatusNotFound, "%s", msg)
	}
	return writeJSON(w, out)
}

func intOf(v any) int {
	i, _ := v.(int)
	return i
}

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// caddyProc is the built Caddy, run as a subprocess: its configuration
// comes through the admin API's /load, its log (JSON, stderr) is read line
// by line for the tunnels' closing lines, ERRORs and panics.
type caddyProc struct {
	cmd    *exec.Cmd
	pid    int
	exited chan struct{}
	err    error // the exit status, once exited
	logs   *logReader
}

func startCaddy(bin, dir, config string, logs *logReader) (*caddyProc, error) {
	file := dir + "/Caddyfile"
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", file, "--adapter", "caddyfile")
	// GODEBUG=http2xconnect=1: Go's HTTP/2 server then offers extended
	// CONNECT (docs/http2-http3.md). XDG dirs: keep Caddy's storage in
	// the work directory.
	cmd.Env = append(os.Environ(), "GODEBUG=http2xconnect=1",
		"XDG_DATA_HOME="+dir+"/xdg", "XDG_CONFIG_HOME="+dir+"/xdg")
	// Caddy goes with the soak, whatever ends it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &caddyProc{cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{}), logs: logs}
	go func() {
		logs.read(stderr)
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// tunnelLog is Caddy's `tunnel closed` line (README, Logs).
type tunnelLog struct {
	ts        time.Time
	code      int
	by        string
	bytesIn   int64
	bytesOut  int64
	transport string
}

// logLine is what the verdict needs of any other line at ERROR.
type logLine struct {
	ts     time.Time
	logger string
	msg    string
	status int
	uri    string
	raw    string
}

type logReader struct {
	reg *registry
	v   *violations
	out io.Writer // the whole log, for a look after a failed run

	mu     sync.Mutex
	errors []logLine
	lines  int
	warns  int

	// adminStopped gets a value for each "stopped previous server" of
	// Caddy's admin logger: a /load has replaced the admin server and the
	// old one no longer accepts connections.
	adminStopped chan struct{}
}

func (l *logReader) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		l.out.Write(line)
		l.out.Write([]byte{'\n'})
		l.line(line)
	}
}

func (l *logReader) line(b []byte) {
	l.mu.Lock()
	l.lines++
	l.mu.Unlock()
	var e struct {
		Level     string          `json:"level"`
		TS        float64         `json:"ts"`
		Logger    string          `json:"logger"`
		Msg       string          `json:"msg"`
		Channel   string          `json:"channel"`
		CloseCode int             `json:"close_code"`
		ClosedBy  string          `json:"closed_by"`
		BytesIn   int64           `json:"bytes_in"`
		BytesOut  int64           `json:"bytes_out"`
		Transport string          `json:"transport"`
		Status    int             `json:"status"`
		Request   json.RawMessage `json:"request"`
	}
	if err := json.Unmarshal(b, &e); err != nil {
		// Not Caddy's JSON: a panic's trace or the race detector.
		s := string(b)
		if strings.Contains(s, "panic") || strings.Contains(s, "DATA RACE") || strings.HasPrefix(s, "fatal error") {
			l.v.add("caddy log", "%s", s)
		}
		return
	}
	ts := time.Unix(0, int64(e.TS*1e9))
	if e.Logger == "admin" && e.Msg == "stopped previous server" {
		select {
		case l.adminStopped <- struct{}{}:
		default:
		}
	}
	if strings.Contains(strings.ToLower(e.Msg), "panic") {
		l.v.add("caddy log", "panic: %s", b)
	}
	switch e.Level {
	case "warn":
		l.mu.Lock()
		l.warns++
		l.mu.Unlock()
	case "error", "fatal", "panic", "dpanic":
		var req struct {
			URI string `json:"uri"`
		}
		json.Unmarshal(e.Request, &req)
		l.mu.Lock()
		l.errors = append(l.errors, logLine{ts: ts, logger: e.Logger, msg: e.Msg, status: e.Status, uri: req.URI, raw: string(b)})
		l.mu.Unlock()
	}
	if e.Msg != "tunnel closed" || e.Logger != "http.handlers.ws_to_tcp" {
		return
	}
	t := l.reg.find(e.Channel)
	if t == nil {
		l.v.add("caddy log", "a tunnel the soak did not open: %s", b)
		return
	}
	if t.log != nil {
		l.v.add("caddy log", "%s: a second `tunnel closed` line", t.name)
		return
	}
	t.log = &tunnelLog{ts: ts, code: e.CloseCode, by: e.ClosedBy, bytesIn: e.BytesIn, bytesOut: e.BytesOut, transport: e.Transport}
}

// admin is Caddy's admin endpoint, on a loopback port.
type admin struct {
	base string
	c    *http.Client

	// A /load replaces Caddy's admin server, which shuts the old one
	// down meanwhile: the soak's other admin calls and its loads take
	// turns, and a load's turn lasts until the old server has stopped.
	// The new listener shares the port with the old (SO_REUSEPORT) until
	// then, and a connection the kernel queued on the old one is reset
	// when it closes: a call made right after /load answered was lost so.
	loading sync.RWMutex
	stopped <-chan struct{} // logReader.adminStopped
}

func newAdmin(addr string, stopped <-chan struct{}) *admin {
	// No keep-alive: the admin server a /load replaces closes its idle
	// connections while it shuts down, and a request sent on one of them
	// just then is lost (EOF) — a race of HTTP keep-alive, not the
	// module's. A fresh connection per call reaches the current server.
	return &admin{base: "http://" + addr, stopped: stopped, c: &http.Client{
		Timeout:   20 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true},
	}}
}

func (a *admin) do(method, path, ctype string, body []byte) (_ []byte, err error) {
	if path == "/load" {
		a.loading.Lock()
		defer a.loading.Unlock()
		for len(a.stopped) > 0 {
			<-a.stopped // of an earlier load
		}
		defer func() {
			if err != nil {
				return // nothing replaced
			}
			// Caddy gives the old admin server 10 s to stop.
			select {
			case <-a.stopped:
			case <-time.After(11 * time.Second):
			}
		}()
	} else {
		a.loading.RLock()
		defer a.loading.RUnlock()
	}
	req, err := http.NewRequest(method, a.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := a.c.Do(req)
	if err != nil && method == http.MethodGet {
		// A reload may close the keep-alive connection under a request:
		// a read is asked again, once.
		resp, err = a.c.Do(req)
	}
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return b, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	return b, nil
}

// load replaces the configuration (caddy reload does the same).
func (a *admin) load(caddyfile string) error {
	_, err := a.do(http.MethodPost, "/load", "text/caddyfile", []byte(caddyfile))
	return err
}

func (a *admin) stop() error {
	_, err := a.do(http.MethodPost, "/stop", "", nil)
	return err
}

// disconnect closes the tunnel with this channel (docs/operations.md,
// Admin API): 1001 to the client.
func (a *admin) disconnect(channel string) error {
	b, err := a.do(http.MethodDelete, "/ws_to_tcp/connections?channel="+url.QueryEscape(channel), "", nil)
	if err != nil {
		return err
	}
	var r struct{ Closed int }
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	if r.Closed == 1 {
		return nil
	}
	// A tunnel that a reload (HTTP/2-3, reload_close_after) or its own end
	// began to close meanwhile is listed as closing, or gone, and not
	// counted: the disconnect raced that end, which the tunnel's own check
	// judges (its close code and bound).
	b, err = a.do(http.MethodGet, "/ws_to_tcp/connections?channel="+url.QueryEscape(channel), "", nil)
	if err != nil {
		return err
	}
	var list []struct{ State string }
	if err := json.Unmarshal(b, &list); err != nil {
		return err
	}
	if r.Closed == 0 && (len(list) == 0 || list[0].State == "closing") {
		return nil
	}
	return fmt.Errorf("closed %d tunnels, want 1 (listed now: %+v)", r.Closed, list)
}

type sentFailed struct{ Sent, Failed int }

func (a *admin) broadcast(msg string) (sentFailed, error) {
	var r sentFailed
	b, err := a.do(http.MethodPost, "/ws_to_tcp/broadcast", "text/plain; charset=utf-8", []byte(msg))
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	return r, err
}

func (a *admin) ping(payload string) (sentFailed, error) {
	var r sentFailed
	b, err := a.do(http.MethodPost, "/ws_to_tcp/ping", "", []byte(payload))
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	return r, err
}

// connections lists the open tunnels' channels.
func (a *admin) connections() ([]string, error) {
	b, err := a.do(http.MethodGet, "/ws_to_tcp/connections", "", nil)
	if err != nil {
		return nil, err
	}
	var list []struct{ Channel, State string }
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(list))
	for _, c := range list {
		out = append(out, c.Channel+" ("+c.State+")")
	}
	return out, nil
}

// metrics returns the sum of each named series of /metrics.
func (a *admin) metrics(names ...string) (map[string]float64, error) {
	b, err := a.do(http.MethodGet, "/metrics", "", nil)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		for _, n := range names {
			rest, ok := strings.CutPrefix(line, n)
			if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
				continue
			}
			f := strings.Fields(line)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				out[n] += v
			}
		}
	}
	return out, nil
}

// goroutines reads the count from the admin endpoint's pprof.
func (a *admin) goroutines() (int, error) {
	b, err := a.do(http.MethodGet, "/debug/pprof/goroutine?debug=1", "", nil)
	if err != nil {
		return 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	n, ok := bytes.CutPrefix(line, []byte("goroutine profile: total "))
	if !ok {
		return 0, fmt.Errorf("goroutine profile starts %q", line)
	}
	return strconv.Atoi(string(n))
}

// heap is the Go heap in use (HeapAlloc) after a forced collection
// (pprof's gc=1), so that only live objects count.
func (a *admin) heap() (int64, error) {
	b, err := a.do(http.MethodGet, "/debug/pprof/heap?debug=1&gc=1", "", nil)
	if err != nil {
		return 0, err
	}
	i := bytes.Index(b, []byte("# HeapAlloc = "))
	if i < 0 {
		return 0, errors.New("no HeapAlloc in the heap profile")
	}
	line, _, _ := bytes.Cut(b[i+len("# HeapAlloc = "):], []byte("\n"))
	return strconv.ParseInt(string(line), 10, 64)
}

// procStats reads a process's resident memory (KiB) and open descriptors.
func procStats(pid int) (rssKiB int64, fds int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rssKiB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return rssKiB, len(ents), err
}

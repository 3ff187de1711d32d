package main

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// violations collects what breaks the soak's rules, by category; the first
// few of each are kept word for word.
type violations struct {
	mu    sync.Mutex
	count map[string]int
	kept  []string
}

const keepPerCategory = 20

func newViolations() *violations { return &violations{count: map[string]int{}} }

func (v *violations) add(cat, format string, a ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.count[cat]++
	if v.count[cat] <= keepPerCategory {
		v.kept = append(v.kept, cat+": "+fmt.Sprintf(format, a...))
	}
}

func (v *violations) total() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, k := range v.count {
		n += k
	}
	return n
}

// outcome counts, for the report: per kind, how many struck and how many
// ended as they must; how many ended by a reload or an upstream restart.
type tally struct {
	opened, refusedOK int
	byKind            [numKinds]struct {
		planned, struck, ok int
		slowest             time.Duration // the longest from the fault to the end in Caddy's log
		slowestStream       time.Duration // the same over HTTP/2 and HTTP/3
	}
	reloadEnded         int // h2/h3 tunnels ended (1001) by a reload
	rcaEnded            int // /rca tunnels of configuration A ended by reload_close_after
	restartEnded        int // ended by the upstream's restart
	bytesVerified       int64
	worstLateness       time.Duration // the latest end past its bound's start, over broken tunnels
	hsSteady, hsReload  time.Duration // handshake p99
	nSteady, nReload    int
	hsSteadyAll         []handshake // for the per-transport table
	hsReloadAll         []handshake
	refusals503, ret503 int
	cutByReload         map[string]int // handshakes that failed, without a status, during a reload
}

// judge checks every tunnel's record against the rules (docs/soak.md,
// "What it checks") once every client, upstream connection and Caddy
// itself have ended.
func (s *soak) judge() *tally {
	ty := &tally{worstLateness: -time.Hour, cutByReload: map[string]int{}}
	for _, t := range s.reg.list() {
		s.judgeTunnel(t, ty)
	}
	s.judgeHandshakes(ty)
	s.judgeErrors()
	if s.duration >= 20*time.Second && ty.refusals503 == 0 {
		s.v.add("limits", "no handshake on /limited (max_connections %d) was ever refused, with %d tried at once", s.cfg.limit, s.cfg.limit+2)
	}
	return ty
}

func (s *soak) judgeTunnel(t *tunnel, ty *tally) {
	c := &s.cfg
	name := fmt.Sprintf("%s (%s %s, %s)", t.name, t.transport, t.route, t.kind)
	ty.byKind[t.kind].planned++
	if t.status != 0 || t.openErr != "" {
		s.judgeRefusal(t, name, ty)
		return
	}
	ty.opened++
	ty.bytesVerified += t.echo.off + t.up.off
	if t.echo.bad != "" {
		s.v.add("data", "%s: echo to the client: %s", name, t.echo.bad)
	}
	if t.up.bad != "" {
		s.v.add("data", "%s: stream at the upstream: %s", name, t.up.bad)
	}
	if !t.upSeen && !s.resetInBacklog(t) {
		s.v.add("tunnel", "%s: opened, but no upstream connection came", name)
	}
	if t.log == nil {
		s.v.add("tunnel", "%s: no `tunnel closed` line: Caddy never ended it", name)
		return
	}
	lg := t.log
	if s.externalEnd(t, ty) {
		return
	}
	info := t.info()
	if !t.struck.Load() {
		s.judgeNormal(t, name, ty)
		return
	}
	ty.byKind[t.kind].struck++
	ok := true
	fail := func(format string, a ...any) {
		ok = false
		s.v.add("fault", name+": "+format, a...)
	}
	if lg.code != info.code || lg.by != info.by {
		fail("ended with %d by %s, want %d by %s %s (configuration %s; client: close %d, %s%s)", lg.code, lg.by, info.code, info.by, s.nearestReload(lg.ts), t.upTag, t.closeCode, t.clientErr, t.writeErr)
	}
	at := t.clientFault
	if at.IsZero() {
		at = t.upFault
	}
	bound := info.bound(c)
	took := lg.ts.Sub(at)
	bk := &ty.byKind[t.kind]
	bk.slowest = max(bk.slowest, took)
	if t.transport == trH2 || t.transport == trH3 {
		bk.slowestStream = max(bk.slowestStream, took)
	}
	if late := lg.ts.Sub(at) - (bound + c.closeGrace); late > c.slack {
		fail("ended %v after the fault, bound %v (+%v slack)", lg.ts.Sub(at).Round(time.Millisecond), bound+c.closeGrace, c.slack)
	} else {
		ty.worstLateness = max(ty.worstLateness, late)
	}
	if info.clientUp && t.upEnd.Sub(at) > bound+c.slack {
		fail("the upstream connection closed %v after the fault, bound %v (+%v slack)", t.upEnd.Sub(at).Round(time.Millisecond), bound, c.slack)
	}
	switch t.kind {
	case kindUpReset, kindUpStall, kindAdminKill, kindUpHalfClose, kindUpHalfCloseStall:
		if t.closeCode != info.code {
			fail("the client got Close %d, want %d (%s%s)", t.closeCode, info.code, t.clientErr, t.writeErr)
		}
	case kindFreeze:
		// Over HTTP/1.1 the frozen client finds the Close in its socket
		// buffer; a reset HTTP/2 or HTTP/3 stream may discard it.
		if (t.transport == trH1 || t.transport == trH1TLS) && t.closeCode != info.code {
			fail("the client got Close %d, want %d (%s)", t.closeCode, info.code, t.clientErr)
		}
	}
	if t.kind == kindUpHalfClose && t.echo.off != t.upEcho {
		fail("the upstream wrote %d bytes before its FIN, the client got %d", t.upEcho, t.echo.off)
	}
	if ok {
		ty.byKind[t.kind].ok++
	}
}

// externalEnd recognises a tunnel ended by something the soak did to all
// tunnels alike: a reload (HTTP/2 and HTTP/3 tunnels end with 1001; HTTP/1.1
// tunnels of a configuration with reload_close_after end 1001 that long
// after), or its upstream's restart (1014). Only the data's integrity is
// then checked, as a prefix.
func (s *soak) externalEnd(t *tunnel, ty *tally) bool {
	c := &s.cfg
	lg := t.log
	h1 := t.transport == trH1 || t.transport == trH1TLS
	if !h1 {
		// A reload ends every HTTP/2-3 tunnel at once (1001), and closes one
		// already closing without waiting for the rest of its closing
		// handshake (docs/http2-http3.md, Reloads and stop).
		for _, r := range s.ev.reloads {
			// A client that does not read holds the Close up to write_timeout.
			if !lg.ts.Before(r.start) && lg.ts.Before(r.end.Add(c.writeTimeout+c.closeGrace+c.slack)) && t.start.Before(r.end) &&
				(lg.code == 1001 || t.closeCode == 0) {
				ty.reloadEnded++
				return true
			}
		}
	}
	if lg.code == 1001 && lg.by == "server" && h1 {
		for _, r := range s.ev.reloads {
			if t.route == "/rca" && t.upTag == "A" && t.start.Before(r.end) &&
				!lg.ts.Before(r.start.Add(c.reloadClose-100*time.Millisecond)) &&
				lg.ts.Before(r.end.Add(c.reloadClose+c.writeTimeout+c.closeGrace+c.slack)) {
				ty.rcaEnded++
				return true
			}
		}
	}
	if !t.upRestart.IsZero() && lg.by == "upstream" && (lg.code == 1014 || lg.code == 1000) &&
		!lg.ts.Before(t.upRestart) && lg.ts.Before(t.upRestart.Add(c.closeGrace+c.slack)) {
		ty.restartEnded++
		return true
	}
	if s.resetInBacklog(t) {
		ty.restartEnded++
		return true
	}
	return false
}

// resetInBacklog: a tunnel of /restart whose upstream connection was still
// in the listener's backlog when the upstream restarted. Caddy's dial had
// succeeded, the soak never accepted the connection (so it never saw the
// tunnel), and closing the listener reset it: the tunnel ends 1014 by the
// upstream during the restart.
func (s *soak) resetInBacklog(t *tunnel) bool {
	lg := t.log
	return lg != nil && !t.upSeen && t.route == "/restart" && lg.code == 1014 && lg.by == "upstream" && s.duringRestart(lg.ts)
}

// endedInRestart: a tunnel of /restart told 1014, by Caddy's log or by the
// Close its client got, that ended while its upstream restarted. Which of
// the tunnel's own close and the reset came first is a matter of
// microseconds, so the whole restart (to its end and the closing grace)
// counts, not only the moment the soak marked the connection.
func (s *soak) endedInRestart(t *tunnel) bool {
	lg := t.log
	return t.route == "/restart" && (lg.code == 1014 || t.closeCode == 1014) && s.duringRestart(lg.ts)
}

// duringRestart: ts is within an upstream restart, from its start to the
// closing grace (and slack) after its end.
func (s *soak) duringRestart(ts time.Time) bool {
	for _, r := range s.ev.restarts {
		if !ts.Before(r.start) && ts.Before(r.end.Add(s.cfg.closeGrace+s.cfg.slack)) {
			return true
		}
	}
	return false
}

// nearestReload says when the reload closest to ts was, for a message.
func (s *soak) nearestReload(ts time.Time) string {
	best := time.Duration(1 << 62)
	for _, r := range s.ev.reloads {
		if d := ts.Sub(r.start); d.Abs() < best.Abs() {
			best = d
		}
	}
	if best == 1<<62 {
		return "(no reload)"
	}
	return fmt.Sprintf("(%v after the start of the nearest reload)", best.Round(time.Millisecond))
}

// judgeNormal: every byte sent came back, and the tunnel ended with the
// client's Close 1000 within the closing grace.
func (s *soak) judgeNormal(t *tunnel, name string, ty *tally) {
	c := &s.cfg
	lg := t.log
	sent := t.sent.Load()
	bad := func(format string, a ...any) { s.v.add("normal tunnel", name+": "+format, a...) }
	if s.endedInRestart(t) {
		// A restart reset the upstream around the client's Close: before
		// Caddy read it (the log says 1014 by the upstream) or while the
		// upstream answered it (the client was told 1014, docs/operations.md).
		// Either way the rest of the echo is the restart's; what arrived was
		// checked as a prefix.
		ty.restartEnded++
		return
	}
	if t.closeSentAt.IsZero() || lg.code != 1000 || lg.by != "client" {
		bad("ended with %d by %s in Caddy's log %s (configuration %s; client: Close %d, %s%s)", lg.code, lg.by, s.nearestReload(lg.ts), t.upTag, t.closeCode, t.clientErr, t.writeErr)
		return
	}
	if t.closeCode != 1000 {
		bad("the client got Close %d after its Close 1000 (%s%s)", t.closeCode, t.clientErr, t.writeErr)
	}
	if t.echo.off != sent || t.up.off != sent {
		bad("sent %d bytes, the upstream got %d, the client got back %d", sent, t.up.off, t.echo.off)
	}
	if lg.bytesIn != sent || lg.bytesOut != sent {
		bad("sent %d bytes, Caddy's log says %d in and %d out", sent, lg.bytesIn, lg.bytesOut)
	}
	if t.upEndErr != "" && t.upRestart.IsZero() {
		bad("the upstream connection ended with %s, not EOF", t.upEndErr)
	}
	d := lg.ts.Sub(t.closeSentAt)
	bk := &ty.byKind[kindNormal]
	bk.slowest = max(bk.slowest, d)
	if t.transport == trH2 || t.transport == trH3 {
		bk.slowestStream = max(bk.slowestStream, d)
	}
	if d > c.closeGrace+c.slack {
		bad("ended %v after the client's Close, bound %v (+%v slack)", d.Round(time.Millisecond), c.closeGrace, c.slack)
	}
	ty.byKind[kindNormal].ok++
}

// judgeRefusal: a handshake may be refused only where the soak made it so:
// 503 with Retry-After on /limited, 502 while /restart's upstream is down,
// and an HTTP/2 or HTTP/3 stream cut by a reload's shutdown of its server.
func (s *soak) judgeRefusal(t *tunnel, name string, ty *tally) {
	c := &s.cfg
	end := t.start.Add(t.connect)
	within := func(list []span, before, after time.Duration) bool {
		for _, r := range list {
			if end.After(r.start.Add(-before)) && t.start.Before(r.end.Add(after)) {
				return true
			}
		}
		return false
	}
	switch {
	case t.status == 503 && t.route == "/limited":
		ty.refusals503++
		if t.retryAfter == "" {
			s.v.add("limits", "%s: 503 without Retry-After", name)
		}
		ty.refusedOK++
	case t.status == 502 && t.route == "/restart" && within(s.ev.restarts, 0, c.slack):
		ty.refusedOK++
	case t.status == 0 && within(s.ev.reloads, c.slack, c.slack):
		// The server shutting down under a handshake: an HTTP/2-3 stream
		// refused, or an HTTP/1.1 connection closed before its request
		// was read (Caddy's shutdown of the old server).
		ty.refusedOK++
		ty.cutByReload[t.transport]++
	default:
		s.v.add("handshake", "%s: refused (HTTP %d%s) after %v %s", name, t.status, t.openErr, t.connect.Round(time.Millisecond), s.nearestReload(t.start))
	}
}

// judgeHandshakes compares the p99 of the handshakes started during a
// reload (from its start to a second after its end) with the p99 of those
// started well away from any reload: at most 3 times as long.
func (s *soak) judgeHandshakes(ty *tally) {
	all := s.stats.handshakesIn(s.runStart, s.runEnd)
	var during, steady []handshake
	for _, h := range all {
		near, in := false, false
		for _, r := range s.ev.reloads {
			if !h.at.Before(r.start) && h.at.Before(r.end.Add(time.Second)) {
				in = true
			}
			if !h.at.Before(r.start.Add(-time.Second)) && h.at.Before(r.end.Add(2*time.Second)) {
				near = true
			}
		}
		switch {
		case in:
			during = append(during, h)
		case !near:
			steady = append(steady, h)
		}
	}
	ty.hsSteady, ty.hsReload = percentile(steady, 0.99), percentile(during, 0.99)
	ty.nSteady, ty.nReload = len(steady), len(during)
	ty.hsSteadyAll, ty.hsReloadAll = steady, during
	if len(steady) >= 100 && len(during) >= 100 && ty.hsReload > 3*ty.hsSteady {
		s.v.add("handshake", "p99 during reloads %v is more than 3× the steady %v", ty.hsReload.Round(time.Microsecond), ty.hsSteady.Round(time.Microsecond))
	}
}

// judgeErrors: Caddy's ERROR lines must all be refusals the soak caused
// (a 502 while the restarting upstream is down, a 503 of the limit).
func (s *soak) judgeErrors() {
	c := &s.cfg
	s.logs.mu.Lock()
	defer s.logs.mu.Unlock()
	for _, e := range s.logs.errors {
		path, _, _ := strings.Cut(e.uri, "?")
		expected := false
		switch {
		case e.logger == "http.log.error" && e.status == 503 && path == "/limited":
			expected = true
		case e.logger == "http.log.error" && e.status == 502 && path == "/restart":
			for _, r := range s.ev.restarts {
				if !e.ts.Before(r.start) && e.ts.Before(r.end.Add(c.slack)) {
					expected = true
				}
			}
		}
		if !expected {
			s.v.add("caddy log", "unexpected ERROR: %s", e.raw)
		}
	}
}

// sortedCategories lists the violation counts, largest first.
func (v *violations) sortedCategories() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []string
	for k := range v.count {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return v.count[out[i]] > v.count[out[j]] })
	return out
}

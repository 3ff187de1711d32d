package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// writeReport writes soak.md (the figures and the verdict) and soak.svg
// (tunnels, RSS, goroutines and descriptors over time) to dir.
func (s *soak) writeReport(dir, note string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	s.smu.Lock()
	samples := append([]sample(nil), s.samples...)
	s.smu.Unlock()
	if err := os.WriteFile(filepath.Join(dir, "soak.svg"), []byte(s.svg(samples)), 0o644); err != nil {
		return err
	}
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# ws_to_tcp soak report")
	w("")
	w("Command: `go run ./bench/soak %s`  ", strings.Join(os.Args[1:], " "))
	osr, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	w("Run: %s, %d CPUs, Linux %s, %s.  ", s.began.UTC().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), strings.TrimSpace(string(osr)), runtime.Version())
	if note != "" {
		w("Machine: %s  ", note)
	}
	w("")
	n := s.v.total()
	if n == 0 {
		w("**Verdict: PASS** — no violation.")
	} else {
		w("**Verdict: FAIL** — %d violations.", n)
	}
	w("")
	w("![tunnels, RSS, goroutines and file descriptors over time](soak.svg)")
	w("")
	if ty := s.tally; ty != nil {
		s.figures(w, samples, ty)
	}
	if n > 0 {
		w("## Violations")
		w("")
		for _, c := range s.v.sortedCategories() {
			w("- %s: %d", c, s.v.count[c])
		}
		w("")
		w("The first %d of each:", keepPerCategory)
		w("")
		for _, k := range s.v.kept {
			w("- %s", strings.ReplaceAll(k, "\n", " "))
		}
	}
	return os.WriteFile(filepath.Join(dir, "soak.md"), []byte(b.String()), 0o644)
}

func (s *soak) figures(w func(string, ...any), samples []sample, ty *tally) {
	var peak sample
	var runSecs, hsSum, bytesSum float64
	for _, sm := range samples {
		if sm.phase != "run" {
			continue
		}
		peak.tunnels = max(peak.tunnels, sm.tunnels)
		peak.rssKiB = max(peak.rssKiB, sm.rssKiB)
		peak.fds = max(peak.fds, sm.fds)
		peak.goroutines = max(peak.goroutines, sm.goroutines)
		peak.heapBytes = max(peak.heapBytes, sm.heapBytes)
		runSecs++
		hsSum += sm.hsPerSec
		bytesSum += sm.bytesPerS
	}
	runSecs = max(runSecs, 1)
	s.stats.mu.Lock()
	opens, refusals, failures := s.stats.opens, fmt.Sprint(s.stats.refusals), s.stats.failures
	s.stats.mu.Unlock()
	byTr := map[string]int{}
	for _, t := range s.reg.list() {
		if t.status == 0 && t.openErr == "" {
			byTr[t.transport]++
		}
	}
	var trs []string
	for _, tr := range allTransports {
		trs = append(trs, fmt.Sprintf("%s %d", tr, byTr[tr]))
	}
	var reloadTotal time.Duration
	for _, r := range s.ev.reloads {
		reloadTotal += r.end.Sub(r.start)
	}
	var bSent, bFailed, pSent, pFailed int
	for _, r := range s.ev.broadcasts {
		bSent, bFailed = bSent+r.Sent, bFailed+r.Failed
	}
	for _, r := range s.ev.pings {
		pSent, pFailed = pSent+r.Sent, pFailed+r.Failed
	}
	c := &s.cfg
	w("## Figures")
	w("")
	w("| figure | value |")
	w("|---|---|")
	w("| run (load and faults) | %v, then the churn stopped |", s.runEnd.Sub(s.runStart).Round(time.Second))
	w("| tunnels kept open (target) | %d; Caddy's peak %d |", s.tunnels, peak.tunnels)
	w("| tunnels opened | %d (%s) |", opens, strings.Join(trs, ", "))
	w("| handshakes per second, mean | %.1f |", hsSum/runSecs)
	w("| handshake p99, steady / during reloads | %v (%d) / %v (%d): %.2f× (limit 3×) |", ty.hsSteady.Round(time.Microsecond), ty.nSteady,
		ty.hsReload.Round(time.Microsecond), ty.nReload, ratio(ty.hsReload, ty.hsSteady))
	w("| handshakes refused as planned | %d (by status: %s; failed without one: %d) |", ty.refusedOK, refusals, failures)
	w("| handshakes cut by a reload (no answer) | %v |", ty.cutByReload)
	w("| bytes checked (at the upstreams and back at the clients) | %.1f MB; mean %.2f MB/s sent plus echoed |", float64(ty.bytesVerified)/1e6, bytesSum/runSecs/1e6)
	w("| reloads | %d (A/B alternating), %.0f ms each on average |", len(s.ev.reloads), float64(reloadTotal.Milliseconds())/float64(max(1, len(s.ev.reloads))))
	w("| tunnels ended by a reload | %d HTTP/2-3 (1001), %d by reload_close_after (1001) |", ty.reloadEnded, ty.rcaEnded)
	w("| upstream restarts | %d; %d tunnels ended by them (1014) |", len(s.ev.restarts), ty.restartEnded)
	w("| broadcasts / pings through the admin API | %d (%d sent, %d failed; %d received) / %d (%d sent, %d failed) |",
		len(s.ev.broadcasts), bSent, bFailed, s.stats.texts.Load(), len(s.ev.pings), pSent, pFailed)
	w("| Caddy's RSS: baseline / peak / after | %.1f / %.1f / %.1f MiB |", float64(s.base.rssKiB)/1024, float64(peak.rssKiB)/1024, float64(s.final.rssKiB)/1024)
	w("| Caddy's file descriptors: baseline / peak / after | %d / %d / %d (margin %d) |", s.base.fds, peak.fds, s.final.fds, fdMargin)
	w("| Caddy's goroutines: baseline / peak / after | %d / %d / %d (margin %d) |", s.base.goroutines, peak.goroutines, s.final.goroutines, goroutineMargin)
	w("| Caddy's heap after GC: baseline / after (peak before GC) | %.1f / %.1f MiB (%.1f MiB; margin max(%d%%, %d MiB)) |", mib(s.base.heap), mib(s.final.heap), peak.heapBytes/(1<<20), heapMarginPct, heapMarginMin>>20)
	w("| back to the baseline in | %v after the last tunnel closed |", s.settleTook.Round(100*time.Millisecond))
	if ty.worstLateness > -time.Hour {
		w("| a broken tunnel's latest end, against its bound | %v (negative: within the bound; slack allowed %v) |", ty.worstLateness.Round(time.Millisecond), c.slack)
	}
	w("")
	w("Handshake p99 by transport, steady / during reloads: the WebSocket handshake (request to 101 or 200), and with the connection's setup (TCP, TLS or QUIC) when the tunnel needed a new one:")
	w("")
	w("| transport | handshake steady | during reloads | with connection setup, steady | during reloads | handshakes steady / during |")
	w("|---|---|---|---|---|---|")
	conn := func(h handshake) time.Duration { return h.connect }
	for _, tr := range allTransports {
		var st, du []handshake
		for _, h := range ty.hsSteadyAll {
			if h.tr == tr {
				st = append(st, h)
			}
		}
		for _, h := range ty.hsReloadAll {
			if h.tr == tr {
				du = append(du, h)
			}
		}
		w("| %s | %v | %v | %v | %v | %d / %d |", tr, percentile(st, 0.99).Round(time.Microsecond), percentile(du, 0.99).Round(time.Microsecond),
			percentileOf(st, 0.99, conn).Round(time.Microsecond), percentileOf(du, 0.99, conn).Round(time.Microsecond), len(st), len(du))
	}
	w("")
	w("## Faults")
	w("")
	w("Bounds: write_timeout %v, closing grace %v, heartbeat %v/%v, reload_close_after %v (configuration A, /rca); every bound plus %v of slack.", c.writeTimeout, c.closeGrace, c.hbInterval, c.hbTimeout, c.reloadClose, c.slack)
	w("")
	w("The slowest end is the longest time from the fault (for normal tunnels: the client's Close) to the tunnel's `tunnel closed` line, over all transports and over HTTP/2-3 alone.")
	w("")
	w("| kind | expected end (Caddy's log) | bound after the fault | planned | struck | as expected | slowest end (all / h2-h3) |")
	w("|---|---|---|---|---|---|---|")
	for k := kind(0); k < numKinds; k++ {
		info := kinds[k]
		bound := info.bound(c) + c.closeGrace
		if k == kindNormal {
			bound = c.closeGrace
		}
		st := ty.byKind[k]
		struck := fmt.Sprint(st.struck)
		if k == kindNormal {
			struck = "—"
		}
		w("| %s | %d by %s | %v | %d | %s | %d | %v / %v |", info.name, info.code, info.by, bound, st.planned, struck, st.ok,
			st.slowest.Round(time.Millisecond), st.slowestStream.Round(time.Millisecond))
	}
	w("")
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

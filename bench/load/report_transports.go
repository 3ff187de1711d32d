package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// The report of run_transports.sh: one row per figure, the median
// (min–max) over repetitions for each transport, and each of HTTP/2's and
// HTTP/3's ratio to HTTP/1.1+TLS. The targets (issue 12) apply to HTTP/2;
// HTTP/3 is measured and reported.

func transportRowSpecs(labels map[string]bool) []rowSpec {
	rows := []rowSpec{
		{"upload_64k", "mbps", "upload, one tunnel, 64 KiB msgs (MB/s)", false, 0.7},
		{"upload_64k", "cpu_ms_per_mb", "upload: Caddy CPU (ms/MB)", true, 0},
		{"upload_64k", "load_cpu_ms_per_mb", "upload: client CPU (ms/MB)", true, 0},
		{"download", "mbps", "download, one tunnel (MB/s)", false, 0.7},
		{"download", "cpu_ms_per_mb", "download: Caddy CPU (ms/MB)", true, 0},
		{"download", "load_cpu_ms_per_mb", "download: client CPU (ms/MB)", true, 0},
		{"echo_64", "mbps", "echo, 64 tunnels, 32 KiB msgs (MB/s)", false, 0.7},
		{"echo_64", "cpu_ms_per_mb", "echo 64: Caddy CPU (ms/MB)", true, 0},
		{"echo_64", "load_cpu_ms_per_mb", "echo 64: client CPU (ms/MB)", true, 0},
		{"rtt_1", "p50_us", "rtt 64 B, one tunnel: p50 (µs)", true, 0},
		{"rtt_1", "p99_us", "rtt 64 B, one tunnel: p99 (µs)", true, 0},
	}
	idle := idleCounts(labels)
	for _, n := range idle {
		rows = append(rows, rowSpec{fmt.Sprintf("idle_%d", n), "kb_per_conn",
			fmt.Sprintf("idle memory, %d tunnels (PSS KiB/tunnel)", n), true, 1.5})
	}
	if len(idle) > 0 {
		rows = append(rows, rowSpec{fmt.Sprintf("idle_%d", idle[0]), "pss_before_kb",
			"PSS of a freshly started Caddy (KiB)", true, 0})
	}
	for _, n := range idle {
		rows = append(rows, rowSpec{fmt.Sprintf("rss_idle_%d", n), "peak_rss_mb",
			fmt.Sprintf("Caddy's peak RSS, idle %d tunnels (MiB)", n), true, 0})
	}
	return rows
}

func reportTransports(recs []map[string]any, labels map[string]bool) {
	specs := transportRowSpecs(labels)
	tab := tabulate(recs, specs)
	perConn := map[string]int{}
	for _, r := range recs {
		proxy, _ := r["proxy"].(string)
		if v, ok := r["per_conn"].(float64); ok {
			perConn[proxy] = int(v)
		}
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	fmt.Fprintln(w, "| scenario | HTTP/1.1+TLS median (min–max) | HTTP/2 median (min–max) | HTTP/2 ÷ HTTP/1.1 | target (HTTP/2) | HTTP/3 median (min–max) | HTTP/3 ÷ HTTP/1.1 |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, spec := range specs {
		h1, h2, h3 := tab.get(key{spec.label, spec.metric, "h1"}), tab.get(key{spec.label, spec.metric, "h2"}),
			tab.get(key{spec.label, spec.metric, "h3"})
		if len(h1.vals)+len(h2.vals)+len(h3.vals)+h1.errs+h2.errs+h3.errs == 0 {
			continue
		}
		r2, r2s := ratioOf(h2, h1)
		_, r3s := ratioOf(h3, h1)
		v := verdict(spec, r2, h2)
		if h1.errs > 0 && spec.target > 0 {
			v += " (HTTP/1.1 runs failed)"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", spec.title(), h1, h2, r2s, v, h3, r3s)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "↑ higher is better (a ratio ≥ the target passes); ↓ lower is better (≤ the target passes). "+
		"MB = 10^6 bytes of client payload; CPU = utime+stime over the timed part, of Caddy and of the "+
		"load generator (the client), which share the machine's cores.")
	var notes []string
	for _, p := range []string{"h2", "h3"} {
		if n, ok := perConn[p]; ok {
			notes = append(notes, fmt.Sprintf("%s: up to %d tunnels per connection", p, n))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "HTTP/1.1: one TLS connection per tunnel; %s, so N idle tunnels take N/%d connections.\n",
			strings.Join(notes, ", "), max(perConn["h2"], perConn["h3"]))
	}
	if len(tab.failures) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Failures:")
		fmt.Fprintln(w)
		for _, s := range tab.failures {
			fmt.Fprintln(w, s)
		}
	}
}

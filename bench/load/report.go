package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The report: one row per figure, the median (min–max) over repetitions for
// each proxy, and ws_to_tcp's median over each reference's: the plain TCP
// relay (relay) and the bare WebSocket relay (wsrelay), checked against the
// issues' targets.

type rowSpec struct {
	label, metric, name string
	lower               bool    // lower is better (latency, CPU, memory)
	target              float64 // of the ratio to relay; 0: no target
}

// moreTargets are the targets a row has besides its ratio to relay (issue
// 16): a ratio to the bare WebSocket relay, and a bound on ws_to_tcp's own
// figure.
type moreTargets struct {
	ws  float64 // of the ratio to wsrelay; 0: none
	abs float64 // of ws_to_tcp's median; 0: none
}

var extraTargets = map[[2]string]moreTargets{
	{"connrate", "cps"}:          {ws: 0.95},
	{"idle_9000", "kb_per_conn"}: {abs: 8},
}

func rowSpecs(labels map[string]bool) []rowSpec {
	rows := []rowSpec{
		{"upload_64k", "mbps", "upload, 64 KiB msgs (MB/s)", false, 1.0},
		{"upload_64k", "cpu_ms_per_mb", "upload, 64 KiB msgs: proxy CPU (ms/MB)", true, 1.0},
		{"upload_1k", "mbps", "upload, 1 KiB msgs (MB/s)", false, 0.8},
		{"upload_1k", "cpu_ms_per_mb", "upload, 1 KiB msgs: proxy CPU (ms/MB)", true, 0},
		{"download", "mbps", "download (MB/s)", false, 0.95},
		{"download", "cpu_ms_per_mb", "download: proxy CPU (ms/MB)", true, 0},
		{"echo_8", "mbps", "echo, 8 conns (MB/s)", false, 0.95},
		{"echo_8", "cpu_ms_per_mb", "echo, 8 conns: proxy CPU (ms/MB)", true, 0},
		{"echo_64", "mbps", "echo, 64 conns (MB/s)", false, 0.95},
		{"echo_64", "cpu_ms_per_mb", "echo, 64 conns: proxy CPU (ms/MB)", true, 0},
		{"rtt_1", "p50_us", "rtt 64 B, 1 conn: p50 (µs)", true, 1.02},
		{"rtt_1", "p99_us", "rtt 64 B, 1 conn: p99 (µs)", true, 1.1},
		{"rtt_16", "rtps", "rtt 1 KiB, 16 conns (round trips/s)", false, 0},
		{"connrate", "cps", "connect+echo+close, 16 workers (conn/s)", false, 0.85},
		{"connrate", "cpu_ms_per_kconn", "connrate: proxy CPU (ms per 1000 conns)", true, 0},
	}
	idle := idleCounts(labels)
	for _, n := range idle {
		rows = append(rows, rowSpec{fmt.Sprintf("idle_%d", n), "kb_per_conn",
			fmt.Sprintf("idle memory, %d conns (PSS KiB/conn)", n), true, 0.75})
	}
	if len(idle) > 0 {
		rows = append(rows, rowSpec{fmt.Sprintf("idle_%d", idle[0]), "pss_before_kb",
			"PSS of a freshly started proxy (KiB)", true, 0})
	}
	rows = append(rows, rowSpec{"rss_throughput", "peak_rss_mb", "peak RSS, throughput to connrate (MiB)", true, 0})
	for _, n := range idle {
		rows = append(rows, rowSpec{fmt.Sprintf("rss_idle_%d", n), "peak_rss_mb",
			fmt.Sprintf("peak RSS, idle %d conns (MiB)", n), true, 0})
	}
	return rows
}

// idleCounts returns the connection counts of the idle scenarios run
// (labels idle_<n>), in increasing order.
func idleCounts(labels map[string]bool) []int {
	var idle []int
	for l := range labels {
		if n, ok := strings.CutPrefix(l, "idle_"); ok {
			if v, err := strconv.Atoi(n); err == nil {
				idle = append(idle, v)
			}
		}
	}
	slices.Sort(idle)
	return idle
}

type cell struct {
	vals     []float64
	errs     int
	skipped  int
	connFail int // connrate: failed connections (the figure counts only the good ones)
}

func (c *cell) median() float64 {
	if len(c.vals) == 0 {
		return math.NaN()
	}
	v := slices.Clone(c.vals)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func num(v float64) string {
	a := math.Abs(v)
	switch {
	case math.IsNaN(v):
		return "n/a"
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

func (c *cell) String() string {
	if len(c.vals) == 0 {
		switch {
		case c.errs > 0:
			return fmt.Sprintf("FAILED (%d)", c.errs)
		default:
			return "n/a"
		}
	}
	s := num(c.median())
	if len(c.vals) > 1 {
		s += fmt.Sprintf(" (%s–%s)", num(slices.Min(c.vals)), num(slices.Max(c.vals)))
	}
	if c.errs > 0 {
		s += fmt.Sprintf(" ⚠ %d runs failed", c.errs)
	}
	if c.connFail > 0 {
		s += fmt.Sprintf(" ⚠ %d conns failed", c.connFail)
	}
	return s
}

type key struct{ label, metric, proxy string }

// table holds the results: one cell per row, metric and proxy.
type table struct {
	cells    map[key]*cell
	failures []string
}

func (t *table) get(k key) *cell {
	if t.cells[k] == nil {
		t.cells[k] = &cell{}
	}
	return t.cells[k]
}

// readResults reads the JSON lines, and the labels they have (rss_ cut).
func readResults(path string) ([]map[string]any, map[string]bool) {
	f, err := os.Open(path)
	if err != nil {
		fatalf("report: %v", err)
	}
	defer f.Close()
	labels := map[string]bool{}
	var recs []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r map[string]any
		if json.Unmarshal(sc.Bytes(), &r) == nil {
			recs = append(recs, r)
			label, _ := r["label"].(string)
			labels[strings.TrimPrefix(label, "rss_")] = true
		}
	}
	return recs, labels
}

// tabulate files each record's figures under the rows that want them.
func tabulate(recs []map[string]any, specs []rowSpec) *table {
	t := &table{cells: map[key]*cell{}}
	for _, r := range recs {
		label, _ := r["label"].(string)
		proxy, _ := r["proxy"].(string)
		errS, hasErr := r["error"].(string)
		skipped, _ := r["skipped"].(bool)
		if hasErr {
			t.failures = append(t.failures, fmt.Sprintf("- %s, %s, rep %v: %s", label, proxy, r["rep"], errS))
		}
		if ff, ok := r["first_failure"].(string); ok {
			t.failures = append(t.failures, fmt.Sprintf("- %s, %s, rep %v: %v failed connections, first: %s",
				label, proxy, r["rep"], r["failures"], ff))
		}
		for _, spec := range specs {
			if spec.label != label {
				continue
			}
			c := t.get(key{label, spec.metric, proxy})
			switch v, ok := r[spec.metric].(float64); {
			case skipped:
				c.skipped++
			case hasErr:
				c.errs++
			case ok:
				c.vals = append(c.vals, v)
			}
			if nf, ok := r["failures"].(float64); ok {
				c.connFail += int(nf)
			}
		}
	}
	return t
}

// ratioOf is a's median over b's, and its text.
func ratioOf(a, b *cell) (float64, string) {
	ratio := a.median() / b.median()
	if math.IsNaN(ratio) || math.IsInf(ratio, 0) {
		return ratio, "n/a"
	}
	return ratio, strconv.FormatFloat(ratio, 'f', 2, 64)
}

// verdict is the target column: "≥ 0.70 PASS" and the like.
func verdict(spec rowSpec, ratio float64, c *cell) string {
	if spec.target <= 0 {
		return "—"
	}
	return check(spec.lower, spec.target, ratio, c)
}

// check is one target's verdict: v (a ratio, or ws_to_tcp's own median)
// against target; c is ws_to_tcp's cell.
func check(lower bool, target, v float64, c *cell) string {
	op, pass := "≥", v >= target
	if lower {
		op, pass = "≤", v <= target
	}
	res := "MISS"
	switch {
	case c.errs > 0:
		res = "FAIL (errors)"
	case math.IsNaN(v) || math.IsInf(v, 0):
		res = "n/a"
	case pass:
		res = "PASS"
	}
	return fmt.Sprintf("%s %.2f %s", op, target, res)
}

func (spec rowSpec) title() string {
	if spec.lower {
		return spec.name + " ↓"
	}
	return spec.name + " ↑"
}

func cmdReport(args []string) {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	in := fs.String("in", "", "results (JSON lines)")
	transports := fs.Bool("transports", false, "results of run_transports.sh: h2 and h3 against h1 (HTTP/1.1+TLS)")
	fs.Parse(args)
	recs, labels := readResults(*in)
	if *transports {
		reportTransports(recs, labels)
		return
	}
	specs := rowSpecs(labels)
	tab := tabulate(recs, specs)
	get, failures := tab.get, tab.failures
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	fmt.Fprintln(w, "| scenario | ws_to_tcp median (min–max) | relay median (min–max) | wsrelay median (min–max) | "+
		"websockify median (min–max) | ws_to_tcp/relay | ws_to_tcp/wsrelay | targets |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, spec := range specs {
		ws, rl, bw, wf := get(key{spec.label, spec.metric, "ws_to_tcp"}), get(key{spec.label, spec.metric, "relay"}),
			get(key{spec.label, spec.metric, "wsrelay"}), get(key{spec.label, spec.metric, "websockify"})
		if len(ws.vals)+len(rl.vals)+len(bw.vals)+ws.errs+rl.errs+bw.errs == 0 {
			continue
		}
		ratio, ratioS := ratioOf(ws, rl)
		wsRatio, wsRatioS := ratioOf(ws, bw)
		var targets []string
		if spec.target > 0 {
			targets = append(targets, "relay "+verdict(spec, ratio, ws))
		}
		more := extraTargets[[2]string{spec.label, spec.metric}]
		if more.ws > 0 {
			targets = append(targets, "wsrelay "+check(spec.lower, more.ws, wsRatio, ws))
		}
		if more.abs > 0 {
			targets = append(targets, "value "+check(spec.lower, more.abs, ws.median(), ws))
		}
		t := "—"
		if len(targets) > 0 {
			t = strings.Join(targets, "; ")
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", spec.title(), ws, rl, bw, wf, ratioS, wsRatioS, t)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "↑ higher is better (throughput, conn/s: ratio ≥ target passes); ↓ lower is better "+
		"(latency, CPU, memory: the ratios are still ws_to_tcp over the reference, ≤ target passes). "+
		"relay: the plain Go TCP relay (bench/relay); wsrelay: the bare WebSocket relay (bench/wsrelay: "+
		"net/http, gorilla's Upgrade, internal/relay). Targets: \"relay\" and \"wsrelay\" bound the ratio to "+
		"that reference, \"value\" ws_to_tcp's own median. "+
		"MB = 10^6 bytes of client payload; CPU = the proxy's utime+stime over the timed part.")
	if len(failures) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Failures:")
		fmt.Fprintln(w)
		for _, s := range failures {
			fmt.Fprintln(w, s)
		}
	}
}

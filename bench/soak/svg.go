package main

import (
	"fmt"
	"strings"
)

// svg draws four panels over time: tunnels (Caddy's and the clients'),
// RSS, goroutines and file descriptors, the run shaded and the baseline of
// each figure dashed, so that a leak (a rising floor) or a sawtooth shows
// at a glance. Plain SVG text, no dependency.
func (s *soak) svg(samples []sample) string {
	const (
		width  = 960
		left   = 70
		right  = 20
		panelH = 140
		gap    = 44
		top    = 40
	)
	type series struct {
		label string
		color string
		v     func(sample) float64
	}
	panels := []struct {
		title string
		base  float64
		lines []series
	}{
		{"tunnels open", 0, []series{
			{"Caddy", "#1f77b4", func(x sample) float64 { return float64(x.tunnels) }},
			{"clients", "#ff7f0e", func(x sample) float64 { return float64(x.clients) }},
		}},
		{"Caddy RSS (MiB)", float64(s.base.rssKiB) / 1024, []series{
			{"RSS", "#2ca02c", func(x sample) float64 { return float64(x.rssKiB) / 1024 }},
		}},
		{"Caddy goroutines", float64(s.base.goroutines), []series{
			{"goroutines", "#d62728", func(x sample) float64 { return float64(x.goroutines) }},
		}},
		{"Caddy open file descriptors", float64(s.base.fds), []series{
			{"fds", "#9467bd", func(x sample) float64 { return float64(x.fds) }},
		}},
	}
	height := top + len(panels)*(panelH+gap) + 10
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15">ws_to_tcp soak: %d tunnels, %v (shaded: load and faults; dashed: baseline)</text>`+"\n", left, s.tunnels, s.duration)
	if len(samples) == 0 {
		b.WriteString("</svg>\n")
		return b.String()
	}
	t0, t1 := samples[0].t, samples[len(samples)-1].t
	if t1 <= t0 {
		t1 = t0 + 1
	}
	plotW := float64(width - left - right)
	x := func(t float64) float64 { return left + (t-t0)/(t1-t0)*plotW }
	runFrom, runTo := s.runStart.Sub(s.began).Seconds(), s.runEnd.Sub(s.began).Seconds()
	for i, p := range panels {
		y0 := float64(top + i*(panelH+gap))
		maxV := p.base
		for _, l := range p.lines {
			for _, sm := range samples {
				maxV = max(maxV, l.v(sm))
			}
		}
		maxV = niceCeil(maxV)
		y := func(v float64) float64 { return y0 + panelH - v/maxV*panelH }
		fmt.Fprintf(&b, `<text x="%d" y="%.0f" font-weight="bold">%s</text>`+"\n", left, y0-6, p.title)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="#f2f2f2"/>`+"\n", x(runFrom), y0, x(runTo)-x(runFrom), panelH)
		fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%.1f" height="%d" fill="none" stroke="#999"/>`+"\n", left, y0, plotW, panelH)
		for _, f := range []float64{0, 0.5, 1} {
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(f*maxV)+4, short(f*maxV))
		}
		if p.base > 0 {
			fmt.Fprintf(&b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#555" stroke-dasharray="4 3"/>`+"\n", left, left+plotW, y(p.base), y(p.base))
		}
		for j, l := range p.lines {
			var pts []string
			for _, sm := range samples {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(sm.t), y(l.v(sm))))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.3" points="%s"/>`+"\n", l.color, strings.Join(pts, " "))
			if len(p.lines) > 1 {
				fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" fill="%s" text-anchor="end">%s</text>`+"\n", left+plotW-6, y0+16+float64(j)*15, l.color, l.label)
			}
		}
		for k := 0; k <= 6; k++ {
			t := t0 + (t1-t0)*float64(k)/6
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#555">%.0fs</text>`+"\n", x(t), y0+panelH+14, t)
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := 1.0
	for p*10 <= v {
		p *= 10
	}
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func short(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

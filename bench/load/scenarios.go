package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

type runOpts struct {
	t           target
	size, total sizeValue
	msg         sizeValue
	conns       int
	workers     int
	count       int
	duration    time.Duration
	hold        time.Duration
	settle      time.Duration
	concurrency int
	halfClose   bool
	pids        []int
	clkTck      int64
}

func cmdRun(args []string) {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var o runOpts
	targetS := fs.String("target", "", "ws://host:port/path, wss://host:port/path or tcp://host:port")
	proto := fs.String("proto", "h1", "wss:// targets: h1 (HTTP/1.1 upgrade on its own TLS connection), h2 (RFC 8441) or h3 (RFC 9220)")
	serverName := fs.String("servername", "", "wss:// targets: the name sent in SNI and the Host header (default: the target's host)")
	perConn := fs.Int("per-conn", 100, "h2, h3: tunnels per connection (Go's HTTP/2 server allows 250 streams at once, quic-go 100)")
	scenario := fs.String("scenario", "", "upload, download, echo, rtt, connrate or idle")
	label := fs.String("label", "", "row label, copied to the output")
	proxy := fs.String("proxy", "", "proxy name, copied to the output")
	rep := fs.Int("rep", 0, "repetition, copied to the output")
	pids := fs.String("pids", "", "the proxy's PIDs (comma separated) for CPU and memory figures")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	o.size = 256 << 20
	fs.Var(&o.size, "size", "upload/download: bytes; echo: bytes per connection")
	fs.Var(&o.total, "total", "echo: bytes over all connections (overrides -size)")
	fs.Var(&o.msg, "msg", "message size (default: upload 64KiB, echo 32KiB, rtt 64, connrate/idle 64)")
	fs.IntVar(&o.conns, "conns", 0, "connections (default: echo 8, rtt 1, idle 1000)")
	fs.IntVar(&o.workers, "workers", 16, "connrate: concurrent workers")
	fs.IntVar(&o.count, "count", 20000, "rtt: round trips per connection (when -duration is 0)")
	fs.DurationVar(&o.duration, "duration", 0, "rtt, connrate: run for this long (connrate default 10s)")
	fs.DurationVar(&o.hold, "hold", 15*time.Second, "idle: hold the connections this long after READY (0: until stdin closes)")
	fs.DurationVar(&o.settle, "settle", 2*time.Second, "idle: wait this long after opening before reading the proxy's memory")
	fs.IntVar(&o.concurrency, "concurrency", 64, "idle: connections opened at a time")
	fs.BoolVar(&o.halfClose, "halfclose", false, "upload: end with a half-close and get the report after it (TCP targets only)")
	fs.Int64Var(&o.clkTck, "clk-tck", 100, "clock ticks per second (getconf CLK_TCK)")
	cpuProfile := fs.String("cpuprofile", "", "write the load's own CPU profile to this file")
	fs.Parse(args)
	if *cpuProfile != "" {
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			fatalf("%v", err)
		}
		defer stop()
	}

	res := map[string]any{"scenario": *scenario, "label": *label, "proxy": *proxy, "rep": *rep, "target": *targetS}
	var err error
	o.t, err = parseTarget(*targetS, *proto, *serverName, *perConn)
	if o.t.tls {
		res["proto"] = o.t.proto
	}
	if err == nil {
		o.pids = parsePIDs(*pids)
		time.AfterFunc(*timeout, func() {
			res["error"] = fmt.Sprintf("timed out after %v", *timeout)
			emit(res)
			os.Exit(1)
		})
		ctx := context.Background()
		var m map[string]any
		switch *scenario {
		case "upload":
			m, err = runUpload(ctx, &o)
		case "download":
			m, err = runDownload(ctx, &o)
		case "echo":
			m, err = runEcho(ctx, &o)
		case "rtt":
			m, err = runRTT(ctx, &o)
		case "connrate":
			m, err = runConnRate(ctx, &o)
		case "idle":
			m, err = runIdle(ctx, &o)
		default:
			err = fmt.Errorf("unknown scenario %q", *scenario)
		}
		for k, v := range m {
			res[k] = v
		}
		if o.t.mux != nil {
			res["mux_conns"] = o.t.mux.connections()
			res["per_conn"] = o.t.mux.perConn
			o.t.mux.closeAll()
		}
	}
	if err != nil {
		res["error"] = err.Error()
	}
	emit(res)
	if err != nil {
		exit(1)
	}
}

// cpuMeter measures the proxy's CPU time over the timed part of a scenario,
// and the load's own (it runs on the same cores: a client that costs more
// leaves less to the proxy).
type cpuMeter struct {
	o         *runOpts
	start     int64
	selfStart time.Duration
}

func (m *cpuMeter) begin() { m.start, m.selfStart = cpuTicks(m.o.pids), selfCPU() }

// end adds cpu_ms and, per MB (10^6 bytes) of client payload, cpu_ms_per_mb.
func (m *cpuMeter) end(res map[string]any, bytes int64) {
	self := float64(selfCPU()-m.selfStart) / float64(time.Millisecond)
	res["load_cpu_ms"] = self
	if bytes > 0 {
		res["load_cpu_ms_per_mb"] = self / (float64(bytes) / 1e6)
	}
	if len(m.o.pids) == 0 {
		return
	}
	ms := float64(cpuTicks(m.o.pids)-m.start) * 1000 / float64(m.o.clkTck)
	res["cpu_ms"] = ms
	if bytes > 0 {
		res["cpu_ms_per_mb"] = ms / (float64(bytes) / 1e6)
	}
}

func orDefault(v sizeValue, d int) int {
	if v == 0 {
		return d
	}
	return int(v)
}

func throughput(bytes int64, d time.Duration) float64 { return float64(bytes) / 1e6 / d.Seconds() }

// upload: an 8-byte length message, then the data in messages of -msg
// bytes; the sink answers with the count and SHA-256 of what it got, which
// must match. Timed from the first byte sent to the report received.
func runUpload(ctx context.Context, o *runOpts) (map[string]any, error) {
	msg := orDefault(o.msg, 64<<10)
	msgs := (int64(o.size) + int64(msg) - 1) / int64(msg)
	n := msgs * int64(msg)
	tab := newMsgTable(o.t.ws, msg)
	h := sha256.New()
	for j := range msgs {
		h.Write(tab.payload[j%int64(tab.k())])
	}
	want := h.Sum(binary.BigEndian.AppendUint64(nil, uint64(n)))

	if o.halfClose && o.t.ws {
		return nil, errors.New("-halfclose: a WebSocket Close ends the tunnel, so the report could not come back")
	}
	c, err := dial(ctx, o.t, 64<<10)
	if err != nil {
		return nil, err
	}
	defer c.close()
	hdr := uint64(n)
	if o.halfClose {
		hdr = untilEOF
	}
	hdrWire := wire(o.t.ws, binary.BigEndian.AppendUint64(nil, hdr))
	res := map[string]any{"bytes": n, "msg": msg}
	cpu := cpuMeter{o: o}
	cpu.begin()
	t0 := time.Now()
	if err := c.write(hdrWire); err != nil {
		return res, err
	}
	for j := range msgs {
		if err := c.write(tab.wires[j%int64(tab.k())]); err != nil {
			return res, fmt.Errorf("writing message %d: %w", j, err)
		}
	}
	if o.halfClose {
		if err := c.closeSend(); err != nil {
			return res, err
		}
	}
	got := make([]byte, 40)
	if _, err := io.ReadFull(c, got); err != nil {
		return res, fmt.Errorf("reading the sink's report: %w", err)
	}
	el := time.Since(t0)
	cpu.end(res, n)
	res["seconds"] = el.Seconds()
	res["mbps"] = throughput(n, el)
	if !bytes.Equal(got, want) {
		return res, fmt.Errorf("integrity: sink got %d bytes with sha256 %x, want %d bytes with %x",
			binary.BigEndian.Uint64(got), got[8:], n, want[8:])
	}
	if o.halfClose {
		c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, _ := c.Read(got); n > 0 {
			return res, errors.New("data after the report")
		}
		return res, nil
	}
	return res, c.finish(10*time.Second, true)
}

// download: an 8-byte message asks the source for N bytes of its pattern,
// checked byte for byte as they arrive. Timed from the request sent to the
// last byte received.
func runDownload(ctx context.Context, o *runOpts) (map[string]any, error) {
	n := int64(o.size)
	pat := patternOnce()
	c, err := dial(ctx, o.t, 256<<10) // the size of the TCP client's reads below
	if err != nil {
		return nil, err
	}
	defer c.close()
	req := wire(o.t.ws, binary.BigEndian.AppendUint64(nil, uint64(n)))
	buf := make([]byte, 256<<10)
	res := map[string]any{"bytes": n}
	cpu := cpuMeter{o: o}
	cpu.begin()
	t0 := time.Now()
	if err := c.write(req); err != nil {
		return res, err
	}
	var pos int64
	for pos < n {
		k, err := c.Read(buf[:min(int64(len(buf)), n-pos)])
		if !matchPattern(buf[:k], pos, pat) {
			return res, fmt.Errorf("integrity: wrong data in bytes %d..%d", pos, pos+int64(k))
		}
		pos += int64(k)
		if err != nil {
			return res, fmt.Errorf("after %d of %d bytes: %w", pos, n, err)
		}
	}
	el := time.Since(t0)
	cpu.end(res, n)
	res["seconds"] = el.Seconds()
	res["mbps"] = throughput(n, el)
	return res, c.finish(10*time.Second, true)
}

func matchPattern(b []byte, pos int64, pat []byte) bool {
	for len(b) > 0 {
		off := int(pos % int64(len(pat)))
		k := min(len(b), len(pat)-off)
		if !bytes.Equal(b[:k], pat[off:off+k]) {
			return false
		}
		b, pos = b[k:], pos+int64(k)
	}
	return true
}

// dialAll opens n connections, at most par at a time. setup, if set, runs on
// each new connection (the idle scenario's first round trip).
func dialAll(ctx context.Context, o *runOpts, n, par, readBuf int, setup func(*client) error) ([]*client, int, error) {
	conns := make([]*client, n)
	var failed atomic.Int64
	var firstErr error
	var mu sync.Mutex
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := dial(ctx, o.t, readBuf)
			if err == nil && setup != nil {
				if err = setup(c); err != nil {
					c.close()
				}
			}
			if err != nil {
				failed.Add(1)
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("connection %d: %w", i, err)
				}
				mu.Unlock()
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	return conns, int(failed.Load()), firstErr
}

// echo: each connection sends its bytes in messages of -msg (32 KiB) while
// reading the echo back concurrently and checking it. Aggregate MB/s of
// client payload (each byte crosses the proxy twice).
func runEcho(ctx context.Context, o *runOpts) (map[string]any, error) {
	nconn := max(o.conns, 0)
	if nconn == 0 {
		nconn = 8
	}
	msg := orDefault(o.msg, 32<<10)
	per := int64(o.size)
	if o.total > 0 {
		per = int64(o.total) / int64(nconn)
	}
	msgs := max((per+int64(msg)-1)/int64(msg), 1)
	per = msgs * int64(msg)
	tab := newMsgTable(o.t.ws, msg)
	k := int64(tab.k())
	conns, _, err := dialAll(ctx, o, nconn, 64, 64<<10, nil)
	if err != nil {
		for _, c := range conns {
			if c != nil {
				c.close()
			}
		}
		return nil, err
	}
	total := per * int64(nconn)
	res := map[string]any{"conns": nconn, "bytes_per_conn": per, "bytes": total, "msg": msg}
	var errOnce sync.Once
	var firstErr error
	fail := func(err error) {
		errOnce.Do(func() {
			firstErr = err
			for _, c := range conns {
				c.close()
			}
		})
	}
	cpu := cpuMeter{o: o}
	cpu.begin()
	t0 := time.Now()
	var wg sync.WaitGroup
	for ci, c := range conns {
		shift := int64(ci * 37)
		wg.Add(1)
		go func() {
			defer wg.Done()
			wdone := make(chan error, 1)
			go func() {
				for j := range msgs {
					if err := c.write(tab.wires[(shift+j)%k]); err != nil {
						wdone <- fmt.Errorf("conn %d: write: %w", ci, err)
						return
					}
				}
				wdone <- nil
			}()
			buf := make([]byte, 64<<10)
			var pos int64
			for pos < per {
				n, rerr := c.Read(buf[:min(int64(len(buf)), per-pos)])
				b := buf[:n]
				for len(b) > 0 {
					j, off := pos/int64(msg), int(pos%int64(msg))
					exp := tab.payload[(shift+j)%k][off:]
					m := min(len(b), len(exp))
					if !bytes.Equal(b[:m], exp[:m]) {
						fail(fmt.Errorf("integrity: conn %d: wrong echo at byte %d", ci, pos))
						return
					}
					b, pos = b[m:], pos+int64(m)
				}
				if rerr != nil {
					fail(fmt.Errorf("conn %d: after %d of %d bytes: %w", ci, pos, per, rerr))
					return
				}
			}
			if err := <-wdone; err != nil {
				fail(err)
				return
			}
			if err := c.finish(10*time.Second, true); err != nil {
				fail(fmt.Errorf("conn %d: close: %w", ci, err))
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	cpu.end(res, total)
	res["seconds"] = el.Seconds()
	res["mbps"] = throughput(total, el)
	return res, firstErr
}

// rtt: ping-pong of -msg byte messages, each checked. With -duration,
// every connection loops that long and round trips/s are summed; otherwise
// each does -count round trips (after 100 not counted) and the latency
// percentiles are the figures.
func runRTT(ctx context.Context, o *runOpts) (map[string]any, error) {
	nconn := max(o.conns, 1)
	msg := orDefault(o.msg, 64)
	conns, _, err := dialAll(ctx, o, nconn, 64, 64<<10, nil)
	if err != nil {
		return nil, err
	}
	const warmup = 100
	samples := make([][]time.Duration, nconn)
	errs := make([]error, nconn)
	var deadline time.Time
	t0 := time.Now()
	if o.duration > 0 {
		deadline = t0.Add(o.duration)
	}
	var wg sync.WaitGroup
	for ci, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.close()
			payload := make([]byte, msg)
			copy(payload, block()[ci*4099:])
			w := wire(o.t.ws, payload)
			p := w[payloadOffset(o.t.ws, msg):]
			got := make([]byte, msg)
			var s []time.Duration
			for i := 0; ; i++ {
				if deadline.IsZero() {
					if i >= o.count+warmup {
						break
					}
				} else if time.Now().After(deadline) {
					break
				}
				if msg >= 8 {
					binary.LittleEndian.PutUint64(p, uint64(i))
				}
				ts := time.Now()
				if err := c.write(w); err != nil {
					errs[ci] = err
					return
				}
				if _, err := io.ReadFull(c, got); err != nil {
					errs[ci] = fmt.Errorf("round trip %d: %w", i, err)
					return
				}
				d := time.Since(ts)
				if !bytes.Equal(got, p) {
					errs[ci] = fmt.Errorf("integrity: round trip %d: wrong echo", i)
					return
				}
				if !deadline.IsZero() || i >= warmup {
					s = append(s, d)
				}
			}
			samples[ci] = s
			errs[ci] = c.finish(10*time.Second, true)
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	var all []time.Duration
	for _, s := range samples {
		all = append(all, s...)
	}
	slices.Sort(all)
	res := map[string]any{"conns": nconn, "msg": msg, "round_trips": len(all)}
	if len(all) > 0 {
		pct := func(p float64) float64 {
			return float64(all[min(len(all)-1, int(p*float64(len(all))))].Nanoseconds()) / 1e3
		}
		res["p50_us"], res["p99_us"], res["max_us"] = pct(0.50), pct(0.99), pct(1)
		if !deadline.IsZero() {
			res["rtps"] = float64(len(all)) / el.Seconds()
		}
	}
	return res, errors.Join(errs...)
}

// connrate: each worker loops connect (and upgrade), one 64-byte echo,
// close (a WebSocket sends Close and waits for the server's Close or EOF).
func runConnRate(ctx context.Context, o *runOpts) (map[string]any, error) {
	dur := o.duration
	if dur == 0 {
		dur = 10 * time.Second
	}
	msg := orDefault(o.msg, 64)
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var firstErr error
	cpu := cpuMeter{o: o}
	cpu.begin()
	t0 := time.Now()
	deadline := t0.Add(dur)
	var wg sync.WaitGroup
	for wi := range o.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, msg)
			copy(payload, block()[wi*4099:])
			w := wire(o.t.ws, payload)
			got := make([]byte, msg)
			for time.Now().Before(deadline) {
				err := func() error {
					c, err := dial(ctx, o.t, 4096)
					if err != nil {
						return err
					}
					defer c.close()
					c.nc.SetDeadline(time.Now().Add(10 * time.Second))
					if err := c.write(w); err != nil {
						return err
					}
					if _, err := io.ReadFull(c, got); err != nil {
						return err
					}
					if !bytes.Equal(got, payload) {
						return errors.New("integrity: wrong echo")
					}
					if c.ws {
						return c.finish(5*time.Second, true)
					}
					return nil
				}()
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					time.Sleep(time.Millisecond)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	res := map[string]any{"workers": o.workers, "conns_ok": ok.Load(), "failures": failed.Load(),
		"seconds": el.Seconds(), "cps": float64(ok.Load()) / el.Seconds()}
	cpu.end(res, 0)
	if ms, has := res["cpu_ms"].(float64); has && ok.Load() > 0 {
		res["cpu_ms_per_kconn"] = ms / (float64(ok.Load()) / 1000)
	}
	if firstErr != nil {
		res["first_failure"] = firstErr.Error()
	}
	return res, nil
}

// idle: open -conns connections (-concurrency at a time), each checked by
// one 64-byte round trip, read the proxy's PSS before and after, print
// READY, hold, then check each connection again and close.
func runIdle(ctx context.Context, o *runOpts) (map[string]any, error) {
	n := o.conns
	if n == 0 {
		n = 1000
	}
	payload := bytes.Repeat([]byte("idle-ping-"), 7)[:64]
	roundTrip := func(c *client) error {
		c.nc.SetDeadline(time.Now().Add(30 * time.Second))
		defer c.nc.SetDeadline(time.Time{})
		if err := c.send(payload); err != nil {
			return err
		}
		got := make([]byte, len(payload))
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if !bytes.Equal(got, payload) {
			return errors.New("integrity: wrong echo")
		}
		return nil
	}
	res := map[string]any{"conns": n}
	before := pssKB(o.pids)
	t0 := time.Now()
	conns, failed, err := dialAll(ctx, o, n, o.concurrency, 4096, roundTrip)
	res["open_seconds"] = time.Since(t0).Seconds()
	res["open_failures"] = failed
	opened := n - failed
	time.Sleep(o.settle)
	holding := pssKB(o.pids)
	if len(o.pids) > 0 {
		res["pss_before_kb"], res["pss_holding_kb"] = before, holding
		if opened > 0 {
			res["kb_per_conn"] = float64(holding-before) / float64(opened)
		}
	}
	fmt.Println("READY")
	if o.hold > 0 {
		time.Sleep(o.hold)
	} else {
		io.Copy(io.Discard, os.Stdin)
	}
	// Still alive after the hold?
	var lost atomic.Int64
	sem := make(chan struct{}, o.concurrency)
	var wg sync.WaitGroup
	for _, c := range conns {
		if c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if roundTrip(c) != nil {
				lost.Add(1)
			}
			c.closeSend()
			c.close()
		}()
	}
	wg.Wait()
	res["lost_after_hold"] = lost.Load()
	if err != nil {
		return res, fmt.Errorf("%d of %d connections failed to open; first: %w", failed, n, err)
	}
	if lost.Load() > 0 {
		return res, fmt.Errorf("%d of %d connections died while idle", lost.Load(), n)
	}
	return res, nil
}

// Command soak runs the built Caddy with ws_to_tcp under sustained load
// and injected faults, checks that no byte is lost and nothing leaks, and
// writes a report (docs/soak.md):
//
//	go run ./bench/soak -duration 30m -tunnels 2000
//
// It exits with status 1, listing the violations, when any rule broke.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// soak is one run: its settings, Caddy, the upstreams, the clients'
// records and what was sampled.
type soak struct {
	cfg          settings
	duration     time.Duration
	tunnels      int
	openRate     int
	reloadEvery  time.Duration
	restartEvery time.Duration
	faultShare   float64
	bulkShare    int
	lifeMin      time.Duration
	lifeMax      time.Duration

	work      string
	certFile  string
	keyFile   string
	roots     *x509.CertPool
	adminAddr string
	httpAddr  string
	httpsAddr string
	authority string // localhost:<https port>

	caddy      *caddyProc
	admin      *admin
	logs       *logReader
	echo       *upstream
	restartUp  *upstream
	pools      map[string]*muxPool
	quietPools map[string]*muxPool // for the tunnels that stop reading or writing
	stallPools map[string]*muxPool // for the tunnels whose upstream stalls

	reg     *registry
	v       *violations
	stats   *stats
	ev      events
	curTag  atomic.Value
	phase   atomic.Value
	stop    chan struct{} // closed at the end of the run: every tunnel ends normally
	clients sync.WaitGroup
	bg      sync.WaitGroup
	bufs    sync.Pool

	began            time.Time
	runStart, runEnd time.Time
	smu              sync.Mutex
	samples          []sample
	base, final      resources
	settleTook       time.Duration
	drainLeft        int
	tally            *tally
}

// resources are the figures that must come back to their baseline.
type resources struct {
	fds, goroutines int
	heap, rssKiB    int64
}

func main() {
	ensureGODEBUG()
	s := &soak{reg: newRegistry(), v: newViolations(), stats: newStats(), stop: make(chan struct{})}
	s.cfg = settings{writeTimeout: 4 * time.Second, closeGrace: 2 * time.Second, hbInterval: 2 * time.Second,
		hbTimeout: 3 * time.Second, reloadClose: time.Second, limit: 4}
	caddyBin := flag.String("caddy", "", "the Caddy binary to run (default: go build ./cmd/caddy into the work directory)")
	race := flag.Bool("race", false, "build Caddy with -race (when -caddy is not given)")
	out := flag.String("out", "bench/results", "where to write soak.md and soak.svg")
	note := flag.String("note", "", "a line for the report about the machine (e.g. what else ran on it)")
	flag.DurationVar(&s.duration, "duration", 60*time.Second, "how long the load and the faults run")
	flag.IntVar(&s.tunnels, "tunnels", 200, "tunnels kept open")
	flag.IntVar(&s.openRate, "open-rate", 0, "tunnels opened per second at most (default: tunnels/10, at least 20)")
	flag.DurationVar(&s.reloadEvery, "reload-every", 5*time.Second, "time between configuration reloads")
	flag.DurationVar(&s.restartEvery, "restart-every", 15*time.Second, "time between restarts of the /restart upstream")
	flag.Float64Var(&s.faultShare, "faults", 0.06, "share of new tunnels given a fault")
	flag.IntVar(&s.bulkShare, "bulk", 2, "percent of tunnels that are bulk transfers")
	flag.IntVar(&s.cfg.bulkRate, "bulk-rate", 256<<10, "bytes per second of a bulk tunnel, each way")
	flag.DurationVar(&s.lifeMin, "life-min", 5*time.Second, "shortest life of a normal tunnel")
	flag.DurationVar(&s.lifeMax, "life-max", 45*time.Second, "longest life of a normal tunnel")
	flag.DurationVar(&s.cfg.slack, "slack", 2*time.Second, "added to every time bound: scheduling delays on a loaded machine")
	keep := flag.Bool("keep", false, "keep the work directory (Caddy's log, config, certificate)")
	flag.Parse()
	if s.openRate <= 0 {
		s.openRate = max(20, s.tunnels/10)
	}
	s.began = time.Now()
	s.phase.Store("start")
	s.curTag.Store("A")
	s.bufs.New = func() any { b := make([]byte, 128<<10); return &b }

	code := s.run(*caddyBin, *race)
	if err := s.writeReport(*out, *note); err != nil {
		fmt.Fprintf(os.Stderr, "soak: report: %v\n", err)
		code = 1
	}
	if code != 0 || s.v.total() > 0 {
		*keep = true
		code = 1
	}
	if *keep {
		fmt.Fprintf(os.Stderr, "soak: work directory (Caddy's log: caddy.log) kept: %s\n", s.work)
	} else {
		os.RemoveAll(s.work)
	}
	os.Exit(code)
}

// ensureGODEBUG starts the soak again with GODEBUG=http2xconnect=1 when it
// is missing, as Caddy has it: x/net/http2 reads it once, at start.
func ensureGODEBUG() {
	g := os.Getenv("GODEBUG")
	if strings.Contains(g, "http2xconnect=1") {
		return
	}
	if g != "" {
		g += ","
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	env := append(os.Environ(), "GODEBUG="+g+"http2xconnect=1")
	syscall.Exec(exe, os.Args, env)
}

func fatalf(format string, a ...any) int {
	fmt.Fprintf(os.Stderr, "soak: "+format+"\n", a...)
	return 2
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "soak: %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

// run does the whole soak and returns 0, or 2 when it could not run.
func (s *soak) run(caddyBin string, race bool) int {
	var err error
	if s.work, err = os.MkdirTemp("", "soak-"); err != nil {
		return fatalf("%v", err)
	}
	if s.certFile, s.keyFile, s.roots, err = writeCert(s.work); err != nil {
		return fatalf("certificate: %v", err)
	}
	if caddyBin == "" {
		caddyBin = filepath.Join(s.work, "caddy")
		args := []string{"build", "-o", caddyBin}
		if race {
			args = append(args, "-race")
		}
		logf("building ./cmd/caddy (%s)", strings.Join(args, " "))
		cmd := exec.Command("go", append(args, "./cmd/caddy")...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fatalf("go build: %v", err)
		}
	}
	if s.echo, err = startUpstream(s.reg, s.v); err != nil {
		return fatalf("upstream: %v", err)
	}
	if s.restartUp, err = startUpstream(s.reg, s.v); err != nil {
		return fatalf("upstream: %v", err)
	}
	if err := s.pickPorts(); err != nil {
		return fatalf("ports: %v", err)
	}
	newPools := func() map[string]*muxPool {
		return map[string]*muxPool{
			trH2: newMuxPool(trH2, s.httpsAddr, s.authority, s.tlsConf("")),
			trH3: newMuxPool(trH3, s.httpsAddr, s.authority, s.tlsConf("")),
		}
	}
	s.pools, s.quietPools, s.stallPools = newPools(), newPools(), newPools()
	logFile, err := os.Create(filepath.Join(s.work, "caddy.log"))
	if err != nil {
		return fatalf("%v", err)
	}
	defer logFile.Close()
	s.logs = &logReader{reg: s.reg, v: s.v, out: logFile, adminStopped: make(chan struct{}, 16)}
	s.admin = newAdmin(s.adminAddr, s.logs.adminStopped)
	if s.caddy, err = startCaddy(caddyBin, s.work, s.caddyfile("A"), s.logs); err != nil {
		return fatalf("starting Caddy: %v", err)
	}
	if err := s.waitAdmin(); err != nil {
		s.caddy.cmd.Process.Kill()
		return fatalf("%v", err)
	}
	logf("Caddy (pid %d) up: admin %s, ws://%s, wss://%s (h1, h2, h3)", s.caddy.pid, s.adminAddr, s.httpAddr, s.authority)

	sctx, stopSampler := context.WithCancel(context.Background())
	s.bg.Add(1)
	go s.sampler(sctx)

	s.warmUp()
	s.base = s.settle(nil)
	logf("baseline: %d fds, %d goroutines, heap %.1f MiB, RSS %.1f MiB", s.base.fds, s.base.goroutines, mib(s.base.heap), float64(s.base.rssKiB)/1024)

	s.phase.Store("run")
	s.runStart = time.Now()
	logf("running %v: %d tunnels, %d opened a second at most, a reload every %v", s.duration, s.tunnels, s.openRate, s.reloadEvery)
	lctx, stopLoad := context.WithCancel(context.Background())
	s.startLoad(lctx)
	s.progress(s.duration)
	stopLoad()
	s.runEnd = time.Now()

	s.phase.Store("drain")
	logf("churn stopped: closing every tunnel")
	close(s.stop)
	s.drain()
	if s.curTag.Load() != "A" {
		s.reload("A") // the baseline's configuration
	}
	start := time.Now()
	s.final = s.settle(&s.base)
	s.settleTook = time.Since(start)
	logf("after the churn: %d fds, %d goroutines, heap %.1f MiB, RSS %.1f MiB (settled in %v)",
		s.final.fds, s.final.goroutines, mib(s.final.heap), float64(s.final.rssKiB)/1024, s.settleTook.Round(time.Millisecond))
	s.checkReturn()
	stopSampler()
	s.bg.Wait()

	s.stopCaddy()
	s.echo.close()
	s.restartUp.close()
	ty := s.judge()
	s.tally = ty
	return 0
}

// progress paces the run, printing a line every 10 seconds.
func (s *soak) progress(d time.Duration) {
	end := time.NewTimer(d)
	defer end.Stop()
	tk := time.NewTicker(10 * time.Second)
	defer tk.Stop()
	for {
		select {
		case <-end.C:
			return
		case <-tk.C:
			s.smu.Lock()
			var last sample
			if len(s.samples) > 0 {
				last = s.samples[len(s.samples)-1]
			}
			s.smu.Unlock()
			logf("%3.0fs: %d tunnels in Caddy, %d clients, RSS %.0f MiB, %d fds, %d goroutines, %.0f handshakes/s, %.1f MB/s; %d violations",
				time.Since(s.runStart).Seconds(), last.tunnels, last.clients, float64(last.rssKiB)/1024, last.fds, last.goroutines,
				last.hsPerSec, last.bytesPerS/1e6, s.v.total())
		}
	}
}

// warmUp opens and closes a few tunnels of each transport and reloads
// twice, so that the baseline has what any run allocates once (TLS
// session state, the HTTP/2 and HTTP/3 servers' first connections, both
// configurations).
func (s *soak) warmUp() {
	s.phase.Store("baseline")
	for _, tag := range []string{"B", "A"} {
		for _, tr := range allTransports {
			for range 4 {
				s.launch(&tunnel{transport: tr, route: "/soak", kind: kindNormal, class: classInteractive, life: 500 * time.Millisecond})
			}
		}
		s.clients.Wait()
		s.reload(tag)
	}
	for _, p := range s.pools {
		p.closeAll()
	}
	for _, p := range s.quietPools {
		p.closeAll()
	}
	for _, p := range s.stallPools {
		p.closeAll()
	}
}

// drain waits for every client to end: normal tunnels close at once, a
// fault under way within its bound.
func (s *soak) drain() {
	done := make(chan struct{})
	go func() { s.clients.Wait(); close(done) }()
	c := &s.cfg
	limit := c.writeTimeout + c.hbInterval + c.hbTimeout + 3*c.closeGrace + 4*c.slack
	select {
	case <-done:
	case <-time.After(limit):
		left := s.stats.live() + s.stats.liveOn("/limited")
		s.drainLeft = left
		s.v.add("drain", "%d tunnels had not ended %v after the churn stopped", left, limit)
		<-done // their own bounds end them; the verdict says which
	}
	for _, p := range s.pools {
		p.closeAll()
	}
	for _, p := range s.quietPools {
		p.closeAll()
	}
	for _, p := range s.stallPools {
		p.closeAll()
	}
}

// settle waits until Caddy holds no tunnel and, when base is given, its
// descriptors and goroutines are back within the margins of base (or
// settleLimit passed), then reads the figures.
func (s *soak) settle(base *resources) resources {
	deadline := time.Now().Add(settleLimit)
	tk := time.NewTicker(500 * time.Millisecond)
	defer tk.Stop()
	var r resources
	prevG := -1
	for {
		<-tk.C
		r = s.resources(false)
		m, _ := s.admin.metrics("caddy_ws_to_tcp_connections_active")
		quiet := m["caddy_ws_to_tcp_connections_active"] == 0
		if base == nil {
			// The baseline: no tunnel, and the goroutines steady.
			quiet = quiet && r.goroutines == prevG
		} else {
			quiet = quiet && r.fds <= base.fds+fdMargin && r.goroutines <= base.goroutines+goroutineMargin
		}
		prevG = r.goroutines
		if quiet || time.Now().After(deadline) {
			break
		}
	}
	return s.resources(true)
}

// The margins within which the figures must come back after the churn,
// and how long they have (docs/soak.md).
const (
	settleLimit     = 30 * time.Second
	fdMargin        = 10
	goroutineMargin = 20
	heapMarginPct   = 25
	heapMarginMin   = 8 << 20
)

func (s *soak) resources(gc bool) resources {
	var r resources
	var err error
	r.rssKiB, r.fds, _ = procStats(s.caddy.pid)
	if r.goroutines, err = s.admin.goroutines(); err != nil {
		s.v.add("sample", "goroutines: %v", err)
	}
	if gc {
		// Twice: a sync.Pool's victim cache (the relay's buffers) outlives
		// one collection.
		s.admin.heap()
		if r.heap, err = s.admin.heap(); err != nil {
			s.v.add("sample", "heap: %v", err)
		}
	}
	return r
}

// checkReturn: after the churn, nothing is left open in Caddy and its
// descriptors, goroutines and heap are back near the baseline.
func (s *soak) checkReturn() {
	b, f := s.base, s.final
	if list, err := s.admin.connections(); err != nil {
		s.v.add("leak", "listing connections: %v", err)
	} else if len(list) > 0 {
		s.v.add("leak", "%d tunnels still listed by the admin API after the churn: %s", len(list), strings.Join(list[:min(10, len(list))], ", "))
	}
	if m, err := s.admin.metrics("caddy_ws_to_tcp_connections_active"); err == nil && m["caddy_ws_to_tcp_connections_active"] != 0 {
		s.v.add("leak", "caddy_ws_to_tcp_connections_active is %v after the churn", m["caddy_ws_to_tcp_connections_active"])
	}
	if f.fds > b.fds+fdMargin {
		s.v.add("leak", "%d file descriptors after the churn, %d before (margin %d)", f.fds, b.fds, fdMargin)
	}
	if f.goroutines > b.goroutines+goroutineMargin {
		s.v.add("leak", "%d goroutines after the churn, %d before (margin %d)", f.goroutines, b.goroutines, goroutineMargin)
	}
	if lim := b.heap + max(b.heap*heapMarginPct/100, heapMarginMin); f.heap > lim {
		s.v.add("leak", "heap %.1f MiB after the churn, %.1f MiB before (margin to %.1f MiB)", mib(f.heap), mib(b.heap), mib(lim))
	}
}

// stopCaddy stops Caddy through the admin API and waits for it to exit
// (and for its log to be read to the end).
func (s *soak) stopCaddy() {
	if err := s.admin.stop(); err != nil {
		s.v.add("caddy", "stop: %v", err)
	}
	select {
	case <-s.caddy.exited:
		if s.caddy.err != nil {
			s.v.add("caddy", "exited with %v", s.caddy.err)
		}
	case <-time.After(30 * time.Second):
		s.v.add("caddy", "still running 30s after /stop; killed")
		s.caddy.cmd.Process.Kill()
		<-s.caddy.exited
	}
}

// waitAdmin polls the admin endpoint until Caddy answers.
func (s *soak) waitAdmin() error {
	deadline := time.Now().Add(30 * time.Second)
	tk := time.NewTicker(100 * time.Millisecond)
	defer tk.Stop()
	for {
		_, err := s.admin.do("GET", "/config/", "", nil)
		if err == nil {
			return nil
		}
		select {
		case <-s.caddy.exited:
			return fmt.Errorf("caddy exited: %v (log: %s)", s.caddy.err, filepath.Join(s.work, "caddy.log"))
		case <-tk.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("caddy's admin endpoint did not answer: %v", err)
		}
	}
}

// pickPorts chooses free loopback ports: admin, HTTP, and HTTPS (free on
// both TCP and UDP, for HTTP/3).
func (s *soak) pickPorts() error {
	free := func() (string, error) {
		for range 50 {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return "", err
			}
			addr := ln.Addr().String()
			pc, err := net.ListenPacket("udp", addr)
			ln.Close()
			if err == nil {
				pc.Close()
				return addr, nil
			}
		}
		return "", fmt.Errorf("no port free on both TCP and UDP")
	}
	var err error
	if s.adminAddr, err = free(); err != nil {
		return err
	}
	if s.httpAddr, err = free(); err != nil {
		return err
	}
	if s.httpsAddr, err = free(); err != nil {
		return err
	}
	s.authority = "localhost:" + port(s.httpsAddr)
	return nil
}

func (s *soak) tlsConf(proto string) *tls.Config {
	c := &tls.Config{RootCAs: s.roots, ServerName: "localhost"}
	if proto != "" {
		c.NextProtos = []string{proto}
	}
	return c
}

func (s *soak) payload(n int) []byte { return (*s.bufs.Get().(*[]byte))[:n] }
func (s *soak) putPayload(p []byte)  { p = p[:cap(p)]; s.bufs.Put(&p) }

func mib(b int64) float64 { return float64(b) / (1 << 20) }

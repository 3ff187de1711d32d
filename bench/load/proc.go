package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The proxy's resource use, read from /proc. A proxy is given as root PIDs;
// their descendants count too (websockify forks a process per connection).

// procTree returns roots and all their descendants.
func procTree(roots []int) []int {
	parent := map[int]int{}
	ents, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, e := range ents {
		pid, ppid, ok := statPPID(e)
		if ok {
			parent[pid] = ppid
		}
	}
	in := map[int]bool{}
	for _, r := range roots {
		in[r] = true
	}
	// Iterate to a fixed point (the tree is shallow).
	for changed := true; changed; {
		changed = false
		for pid, pp := range parent {
			if !in[pid] && in[pp] {
				in[pid], changed = true, true
			}
		}
	}
	out := make([]int, 0, len(in))
	for pid := range in {
		out = append(out, pid)
	}
	return out
}

// statFields returns the fields of /proc/PID/stat after the command name
// (field 3, the state, is index 0).
func statFields(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

func statPPID(path string) (pid, ppid int, ok bool) {
	f := statFields(path)
	if len(f) < 2 {
		return 0, 0, false
	}
	pid, err1 := strconv.Atoi(filepath.Base(filepath.Dir(path)))
	ppid, err2 := strconv.Atoi(f[1])
	return pid, ppid, err1 == nil && err2 == nil
}

// cpuTicks sums utime+stime+cutime+cstime (clock ticks) over the proxy's
// processes. cutime/cstime hold the children that have exited and were
// reaped (websockify's per-connection processes); they are 0 for Go.
func cpuTicks(roots []int) int64 {
	var sum int64
	for _, pid := range procTree(roots) {
		f := statFields("/proc/" + strconv.Itoa(pid) + "/stat")
		if len(f) < 15 {
			continue
		}
		for _, i := range []int{11, 12, 13, 14} { // fields 14-17
			v, _ := strconv.ParseInt(f[i], 10, 64)
			sum += v
		}
	}
	return sum
}

// pssKB sums the proportional set size (smaps_rollup's Pss, KiB) over the
// proxy's processes: shared pages of forked children count once in total.
func pssKB(roots []int) int64 {
	var sum int64
	for _, pid := range procTree(roots) {
		f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				sum += n
				break
			}
		}
		f.Close()
	}
	return sum
}

func parsePIDs(s string) []int {
	var out []int
	for _, p := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(p)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// selfCPU is the user+system CPU time of this process so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var atExit []func()
var exitOnce sync.Once

// startCPUProfile profiles the load until stop, or until exit.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	var once sync.Once
	stop = func() { once.Do(func() { pprof.StopCPUProfile(); f.Close() }) }
	atExit = append(atExit, stop)
	return stop, nil
}

// exit runs what must be done before the process ends (the profile).
func exit(code int) {
	exitOnce.Do(func() {
		for _, f := range atExit {
			f()
		}
	})
	os.Exit(code)
}

package wstotcp

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The package's tests run in shards: a few processes of this test binary,
// each with its share of the tests. Caddy runs one configuration per
// process, so the real-Caddy tests of one process run one after another
// (caddyMu); they wait on sockets, child processes and Caddy's reloads
// more than on a CPU, and two such chains side by side leave the CPU less
// idle. Everything else about a test is the same in a shard: the
// harness, the leak check at its end (per process), the flags.

// shardEnv is set in the environment of a shard (and of the listing
// process): a process that has it runs its tests itself.
const shardEnv = "WS_TO_TCP_TEST_SHARD"

// shardsEnv sets the number of shards; 1 runs every test in this process.
const shardsEnv = "WS_TO_TCP_TEST_SHARDS"

// defaultShards: on the 2-core machine the suite is measured on (README,
// Run the tests), go test -race ./... took 66 s with one process, 60 s
// with two and 63 s with three, one after the other: the suite is bound by
// its CPU (about 95 s of it under -race), and each shard adds its own
// start-up and contention.
const defaultShards = 2

// runShards runs the selected tests in shards and returns the exit code,
// or ok false when the tests are to run in this process instead: in a
// shard, with one shard, with fewer than two tests selected, and for what
// per-process output would mix up (listing, benchmarks, fuzzing, coverage,
// profiles, a -run pattern with subtests).
func runShards() (code int, ok bool) {
	if os.Getenv(shardEnv) != "" {
		return 0, false
	}
	n := defaultShards
	if v := os.Getenv(shardsEnv); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "%s=%q: want a number of processes, at least 1\n", shardsEnv, v)
			return 2, true
		}
	}
	run := flagValue("test.run")
	if n == 1 || testing.CoverMode() != "" || strings.Contains(run, "/") {
		return 0, false
	}
	for _, f := range []string{"test.list", "test.bench", "test.fuzz", "test.cpuprofile", "test.memprofile",
		"test.blockprofile", "test.mutexprofile", "test.trace"} {
		if flagValue(f) != "" {
			return 0, false
		}
	}
	tests, err := listTests(run)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listing the tests for the shards:", err)
		return 2, true
	}
	if len(tests) < 2 {
		return 0, false
	}
	shards := assignShards(tests, min(n, len(tests)))

	var (
		out  sync.Mutex // one shard's output at a time, whole: go test -json reads it as one test run after another
		wg   sync.WaitGroup
		fail bool
	)
	for i, names := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf bytes.Buffer
			cmd := exec.Command(os.Args[0], shardArgs(names)...)
			cmd.Env = append(childEnv(), fmt.Sprintf("%s=%d/%d", shardEnv, i+1, len(shards)))
			cmd.Stdout, cmd.Stderr = &buf, &buf
			// A shard outlives no parent killed by go test's timeout, and
			// a daemon a test left holding the shard's output (its pipe)
			// does not hold the run once the shard has exited.
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			cmd.WaitDelay = time.Minute
			start := time.Now()
			err := cmd.Run()
			out.Lock()
			defer out.Unlock()
			os.Stdout.Write(buf.Bytes())
			switch {
			case err != nil:
				fail = true
				fmt.Printf("shard %d/%d (%d tests): %v\n", i+1, len(shards), len(names), err)
			case testing.Verbose():
				fmt.Printf("shard %d/%d: %d tests in %.1fs\n", i+1, len(shards), len(names), time.Since(start).Seconds())
			}
		}()
	}
	wg.Wait()
	if fail {
		fmt.Println("FAIL")
		return 1, true
	}
	return 0, true
}

// childEnv is the environment of the listing process and of the shards.
// Under -race a process sleeps a second as it exits, so that a race in a
// goroutine still running is reported (GORACE atexit_sleep_ms): the
// parent, which go test runs, still does, and every test of a shard has
// ended its goroutines by then (the leak check), so the children don't.
func childEnv() []string {
	env := os.Environ()
	if race := os.Getenv("GORACE"); !strings.Contains(race, "atexit_sleep_ms") {
		env = append(env, "GORACE="+strings.TrimSpace(race+" atexit_sleep_ms=0"))
	}
	return env
}

// flagValue is the value of one of the testing package's flags.
func flagValue(name string) string {
	if f := flag.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

// listTests lists what run selects and a run without -bench runs: the
// top-level tests, fuzz targets (their seeds run as tests) and examples
// with output, in the order of the source.
func listTests(run string) ([]string, error) {
	if run == "" {
		run = "."
	}
	cmd := exec.Command(os.Args[0], "-test.list="+run)
	cmd.Env = append(childEnv(), shardEnv+"=list")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, stderr.Bytes())
	}
	var tests []string
	for _, name := range strings.Fields(string(b)) {
		if strings.HasPrefix(name, "Test") || strings.HasPrefix(name, "Fuzz") || strings.HasPrefix(name, "Example") {
			tests = append(tests, name)
		}
	}
	return tests, nil
}

// browserWeight is what a browser test weighs against another test when
// the shards are dealt: Chromium's page loads and its own CPU make one
// take about three times a typical test's share (measured: with equal
// counts, the browser's shard ended 8 s after the other, 40 s against 32).
const browserWeight = 3

// assignShards puts the tests that use the browser all in the first shard
// (one Chromium, started once), then deals each other test, in order, to
// the shard that weighs least so far.
func assignShards(tests []string, n int) [][]string {
	shards := make([][]string, n)
	weight := make([]int, n)
	for _, name := range tests {
		if slices.Contains(browserTests, name) {
			shards[0] = append(shards[0], name)
			weight[0] += browserWeight
		}
	}
	for _, name := range tests {
		if slices.Contains(browserTests, name) {
			continue
		}
		i := slices.Index(weight, slices.Min(weight))
		shards[i] = append(shards[i], name)
		weight[i]++
	}
	return shards
}

// shardArgs are this process's arguments with -test.run set to the
// shard's tests. The test log (go test's record of the files and
// variables a run read, for its cache) is the parent's alone: the shards
// would overwrite each other's, and without it go test does not cache the
// result, which is right for a run it cannot account for.
func shardArgs(names []string) []string {
	var args []string
	skip := false
	for _, a := range os.Args[1:] {
		if skip {
			skip = false
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "test.run" || name == "test.testlogfile" {
			skip = !hasValue
			continue
		}
		args = append(args, a)
	}
	return append(args, "-test.run=^("+strings.Join(names, "|")+")$")
}

// A shard gets this process's flags but its own -test.run, and never the
// parent's test log, in either form of a flag.
func TestShardArgs(t *testing.T) {
	saved := os.Args
	t.Cleanup(func() { os.Args = saved })
	os.Args = []string{"x.test", "-test.paniconexit0", "-test.run=Old", "-test.timeout=10m0s",
		"-test.testlogfile", "/tmp/log", "--test.run", "Older", "-test.v=test2json"}
	got := strings.Join(shardArgs([]string{"TestA", "FuzzB"}), " ")
	want := "-test.paniconexit0 -test.timeout=10m0s -test.v=test2json -test.run=^(TestA|FuzzB)$"
	if got != want {
		t.Fatalf("shardArgs:\n got %s\nwant %s", got, want)
	}
}

// Every test goes to exactly one shard; the browser's all go to the first,
// which takes that many fewer of the others.
func TestAssignShards(t *testing.T) {
	tests := []string{"TestA", browserTests[0], "TestB", "TestC", "TestD", "TestE", "TestF", "TestG", "TestH", "TestI"}
	got := assignShards(tests, 2)
	// browser: 3, then A to the second (0 < 3), B, C to it (1, 2 < 3),
	// D to the first (tie at 3: the first), and on in turn.
	want := [][]string{{browserTests[0], "TestD", "TestF", "TestH"}, {"TestA", "TestB", "TestC", "TestE", "TestG", "TestI"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("assignShards: %v, want %v", got, want)
	}
}

// The children skip the race runtime's exit sleep, keeping the rest of
// GORACE, unless GORACE sets the sleep itself.
func TestChildEnvGORACE(t *testing.T) {
	for _, c := range []struct{ set, want string }{
		{"", "GORACE=atexit_sleep_ms=0"},
		{"halt_on_error=1", "GORACE=halt_on_error=1 atexit_sleep_ms=0"},
		{"atexit_sleep_ms=500", "GORACE=atexit_sleep_ms=500"},
	} {
		t.Setenv("GORACE", c.set)
		env := childEnv()
		// exec.Cmd uses the last of duplicate keys.
		last := ""
		for _, kv := range env {
			if strings.HasPrefix(kv, "GORACE=") {
				last = kv
			}
		}
		if last != c.want {
			t.Errorf("GORACE=%q: the children get %q, want %q", c.set, last, c.want)
		}
	}
}

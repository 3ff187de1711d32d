// Command load is the load generator and the upstream servers of the
// ws_to_tcp benchmark (see bench/README.md):
//
//	load upstream -mode echo|sink|source -listen 127.0.0.1:0
//	load run -target ws://127.0.0.1:P/path|tcp://127.0.0.1:P -scenario NAME [flags]
//	load run -target wss://127.0.0.1:P/path -proto h1|h2|h3 -scenario NAME [flags]
//	load report -in results.jsonl [-transports]
//	load cert -dir DIR
//	load freeport
//	load waitport -addr 127.0.0.1:P
//
// `run` prints one JSON line with the scenario's figures as the last line of
// stdout (the idle scenario prints READY before it).
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "upstream":
		cmdUpstream(args)
	case "run":
		cmdRun(args)
	case "report":
		cmdReport(args)
	case "cert":
		cmdCert(args)
	case "freeport":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fatalf("freeport: %v", err)
		}
		fmt.Println(ln.Addr().(*net.TCPAddr).Port)
		ln.Close()
	case "waitport":
		cmdWaitPort(args)
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  load upstream -mode echo|sink|source -listen 127.0.0.1:0
  load run -target ws://HOST:PORT/PATH|tcp://HOST:PORT -scenario upload|download|echo|rtt|connrate|idle [flags]
  load run -target wss://HOST:PORT/PATH -proto h1|h2|h3 -scenario ... [flags]
  load report -in results.jsonl [-transports]
  load cert -dir DIR
  load freeport
  load waitport -addr HOST:PORT [-timeout 15s]`)
	os.Exit(2)
}

func fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "load: "+format+"\n", a...)
	os.Exit(1)
}

func cmdWaitPort(args []string) {
	addr, timeout := "", 15*time.Second
	for i := 0; i+1 < len(args); i += 2 {
		switch args[i] {
		case "-addr":
			addr = args[i+1]
		case "-timeout":
			d, err := time.ParseDuration(args[i+1])
			if err != nil {
				fatalf("waitport: %v", err)
			}
			timeout = d
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			fatalf("waitport %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sizeValue is a flag holding a byte count: 256MiB, 64KiB, 1MB, 4096.
type sizeValue int64

func (s *sizeValue) String() string { return strconv.FormatInt(int64(*s), 10) }

func (s *sizeValue) Set(v string) error {
	n, err := parseSize(v)
	*s = sizeValue(n)
	return err
}

func parseSize(v string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(v, u.suffix) {
			v, mult = strings.TrimSuffix(v, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q", v)
	}
	return n * mult, nil
}

// emit prints one JSON object on one line.
func emit(m map[string]any) {
	b, err := json.Marshal(m)
	if err != nil {
		fatalf("json: %v", err)
	}
	fmt.Println(string(b))
}

// Command relay is the reference for the ws_to_tcp benchmark: a plain Go TCP
// relay, the "physical limit" of a byte relay on the same machine.
//
//	relay -listen 127.0.0.1:0 -to 127.0.0.1:PORT [-to 127.0.0.1:PORT2 ...]
//
// For each -to it listens on its own port (with port 0 in -listen) and
// prints the listen addresses, space separated and in -to order, as the
// first line of stdout. Each accepted connection is relayed to its upstream
// by two goroutines, one per direction, each an io.CopyBuffer with its own
// 32 KiB buffer. The connections are wrapped so that io.CopyBuffer really
// copies through that buffer (read, then write) as a WebSocket relay must,
// instead of splicing socket to socket in the kernel; -splice allows the
// zero-copy path. EOF in one direction half-closes (CloseWrite) the other
// side; both connections are closed once both directions have ended.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen address (port 0: a free port per -to)")
	splice := flag.Bool("splice", false, "let io.CopyBuffer use splice(2) (zero copy) instead of the 32 KiB buffers")
	var targets multiFlag
	flag.Var(&targets, "to", "upstream address (repeatable: one listener each)")
	flag.Parse()
	if len(targets) == 0 {
		log.Fatal("relay: -to is required")
	}
	_, port, err := net.SplitHostPort(*listen)
	if err != nil {
		log.Fatalf("relay: -listen: %v", err)
	}
	if len(targets) > 1 && port != "0" {
		log.Fatal("relay: several -to need -listen with port 0")
	}
	var addrs []string
	var lns []net.Listener
	for range targets {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			log.Fatalf("relay: %v", err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	fmt.Println(strings.Join(addrs, " "))
	for i, ln := range lns {
		go serve(ln, targets[i], *splice)
	}
	select {}
}

func serve(ln net.Listener, to string, splice bool) {
	for {
		c, err := ln.Accept()
		if err != nil {
			// EMFILE and friends: back off and keep serving.
			log.Printf("relay: accept: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go handle(c.(*net.TCPConn), to, splice)
	}
}

func handle(client *net.TCPConn, to string, splice bool) {
	u, err := net.DialTimeout("tcp", to, 5*time.Second)
	if err != nil {
		log.Printf("relay: dial %s: %v", to, err)
		client.Close()
		return
	}
	up := u.(*net.TCPConn)
	var wg sync.WaitGroup
	wg.Add(2)
	go pipe(up, client, splice, &wg)
	go pipe(client, up, splice, &wg)
	wg.Wait()
	client.Close()
	up.Close()
}

// pipe copies src to dst; on EOF it half-closes dst, on an error it closes
// both so that the other direction ends too.
func pipe(dst, src *net.TCPConn, splice bool, wg *sync.WaitGroup) {
	defer wg.Done()
	buf := make([]byte, 32<<10)
	var err error
	if splice {
		_, err = io.CopyBuffer(dst, src, buf)
	} else {
		_, err = io.CopyBuffer(writerOnly{dst}, readerOnly{src}, buf)
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		dst.Close()
		src.Close()
		return
	}
	dst.CloseWrite()
}

// readerOnly and writerOnly hide ReadFrom/WriteTo, so that io.CopyBuffer
// uses the buffer.
type readerOnly struct{ r io.Reader }

func (r readerOnly) Read(p []byte) (int, error) { return r.r.Read(p) }

type writerOnly struct{ w io.Writer }

func (w writerOnly) Write(p []byte) (int, error) { return w.w.Write(p) }

func init() {
	log.SetOutput(os.Stderr)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
}

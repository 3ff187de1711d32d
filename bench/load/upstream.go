package main

import (
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"time"
)

// The upstreams' protocols:
//
//   - echo: every byte read is written back; EOF is answered by a half-close.
//   - sink: the client first sends an 8-byte big-endian length L, then L
//     bytes; the sink answers with an 8-byte big-endian count and the 32-byte
//     SHA-256 of those bytes, then waits for EOF and closes. L = 2^64-1 means
//     "until EOF": the report is sent after the client's half-close (TCP only:
//     a WebSocket client's Close ends the tunnel, so the report could not come
//     back through a WebSocket proxy).
//   - source: the client sends an 8-byte big-endian N; the source writes N
//     bytes of the pattern byte(i ^ i>>9 ^ i>>17), i the position, then closes.
const untilEOF = ^uint64(0)

func cmdUpstream(args []string) {
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	mode := fs.String("mode", "echo", "echo, sink or source")
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	fs.Parse(args)
	var handle func(*net.TCPConn)
	switch *mode {
	case "echo":
		handle = echoConn
	case "sink":
		handle = sinkConn
	case "source":
		patternOnce()
		handle = sourceConn
	default:
		fatalf("upstream: unknown mode %q", *mode)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fatalf("upstream: %v", err)
	}
	fmt.Println(ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Printf("upstream %s: accept: %v", *mode, err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go handle(c.(*net.TCPConn))
	}
}

func echoConn(c *net.TCPConn) {
	defer c.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err == io.EOF {
			c.CloseWrite()
			return
		}
		if err != nil {
			return
		}
	}
}

func sinkConn(c *net.TCPConn) {
	defer c.Close()
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	want := binary.BigEndian.Uint64(hdr[:])
	h := sha256.New()
	var r io.Reader = c
	if want != untilEOF {
		r = io.LimitReader(c, int64(want))
	}
	// A plain loop rather than io.Copy: hash.Hash has no ReadFrom and
	// TCPConn's WriteTo would splice nowhere useful.
	buf := make([]byte, 64<<10)
	var count uint64
	for {
		n, err := r.Read(buf)
		h.Write(buf[:n])
		count += uint64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return
		}
	}
	report := binary.BigEndian.AppendUint64(make([]byte, 0, 40), count)
	report = h.Sum(report)
	if _, err := c.Write(report); err != nil {
		return
	}
	if want == untilEOF {
		c.CloseWrite()
		return
	}
	// Wait for the client to end (closing with unread input would reset).
	c.SetReadDeadline(time.Now().Add(time.Minute))
	io.Copy(io.Discard, readerOnly{c})
}

func sourceConn(c *net.TCPConn) {
	defer c.Close()
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	n := int64(binary.BigEndian.Uint64(hdr[:]))
	pat := patternOnce()
	for pos := int64(0); pos < n; {
		off := pos % int64(len(pat))
		end := min(int64(len(pat)), off+(n-pos), off+256<<10)
		w, err := c.Write(pat[off:end])
		pos += int64(w)
		if err != nil {
			return
		}
	}
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, readerOnly{c})
}

type readerOnly struct{ r io.Reader }

func (r readerOnly) Read(p []byte) (int, error) { return r.r.Read(p) }

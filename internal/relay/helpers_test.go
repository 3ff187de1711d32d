package relay

import (
	"net"
	"testing"
	"time"
)

// ioTimeout bounds a test's wait for the peer: generous, for -race on a
// loaded 2-core machine; a test that reaches it has failed anyway.
const ioTimeout = 30 * time.Second

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	s := <-accepted
	tb.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// testConfig is a prepared Config with the handler's defaults, changed by
// edit.
func testConfig(edit func(*Config)) *Config {
	c := &Config{BufferSize: 32 << 10, WriteTimeout: 30 * time.Second}
	if edit != nil {
		edit(c)
	}
	c.Prepare()
	return c
}

// started starts a tunnel between clientSide and upSide and returns a
// channel that receives how it ended.
func started(cfg *Config, clientSide Conn, upSide net.Conn, base64 bool) (*Tunnel, <-chan End) {
	ended := make(chan End, 1)
	t := New(cfg, clientSide, upSide, base64)
	t.Start(func(e End) { ended <- e })
	return t, ended
}

// maskedFrame is a client frame with the zero mask key (payload unchanged).
func maskedFrame(b0 byte, payload []byte) []byte {
	f := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	case n < 1<<16:
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	default:
		f = append(f, 0x80|127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	f = append(f, 0, 0, 0, 0)
	return append(f, payload...)
}

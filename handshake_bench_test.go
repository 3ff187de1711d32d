package wstotcp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// BenchmarkHandshake is the cost of one tunnel's life as bench/load's
// connrate scenario sees it: a TCP connect, the WebSocket handshake written
// by hand (as bench/load writes it, so that the client costs little), one
// 64-byte message echoed by the upstream, the client's Close, and the
// server's Close or EOF. allocs/op and B/op count the whole process: the
// client and the echo upstream too, which the tcp case measures alone.
//
//   - caddy: a real Caddy configured as bench/run.sh configures it
//     (logs discarded, so the INFO line per tunnel is built, not written);
//   - handler: ServeHTTP behind net/http's server, without Caddy;
//   - tcp: the client and the echo upstream alone (the floor).
func BenchmarkHandshake(b *testing.B) {
	echo := echoUpstream(b)
	b.Run("caddy", func(b *testing.B) {
		port := freePort(b)
		caddyMu.Lock()
		b.Cleanup(func() {
			waitNoTunnels(b)
			caddy.Stop()
			caddyMu.Unlock()
		})
		cfg := fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	log {
		output discard
	}
}
http://127.0.0.1:%d {
	bind 127.0.0.1
	ws_to_tcp /echo %s
}
`, port, echo.addr)
		js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
		if err != nil {
			b.Fatal(err)
		}
		if err := caddy.Load(js, true); err != nil {
			b.Fatal(err)
		}
		benchConnections(b, fmt.Sprintf("127.0.0.1:%d", port), "/echo", true)
	})
	b.Run("handler", func(b *testing.B) {
		h := provisioned(b, `{"upstreams": [{"dial": "`+echo.addr+`"}]}`)
		h.logger = zap.NewNop() // as Caddy makes a log whose output is discard
		srv := serveHandler(b, h)
		benchConnections(b, srv.host, "/", true)
	})
	b.Run("tcp", func(b *testing.B) {
		benchConnections(b, echo.addr, "", false)
	})
}

// benchConnections runs b.N connections to addr, each a WebSocket
// handshake for path (when ws), one 64-byte echo and a close.
func benchConnections(b *testing.B, addr, path string, ws bool) {
	req := []byte("GET " + path + " HTTP/1.1\r\nHost: " + addr +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n")
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4)
	msg := payload
	closeFrame := []byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8} // 1000, mask key 0
	if ws {
		msg = append([]byte{0x82, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
	}
	buf := make([]byte, 4096)
	one := func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(ioTimeout))
		r := 0 // buf[:r]: read, not used yet
		if ws {
			if _, err := c.Write(req); err != nil {
				return err
			}
			for {
				n, err := c.Read(buf[r:])
				r += n
				if i := bytes.Index(buf[:r], []byte("\r\n\r\n")); i >= 0 {
					if !bytes.HasPrefix(buf, []byte("HTTP/1.1 101")) {
						return fmt.Errorf("handshake: %q", buf[:i])
					}
					r = copy(buf, buf[i+4:r])
					break
				}
				if err != nil {
					return err
				}
			}
		}
		if _, err := c.Write(msg); err != nil {
			return err
		}
		want := len(payload)
		if ws {
			want += 2
		}
		if r < want {
			n, err := io.ReadAtLeast(c, buf[r:], want-r)
			if err != nil {
				return err
			}
			r += n
		}
		if !bytes.Equal(buf[want-len(payload):want], payload) {
			return fmt.Errorf("echo: %q", buf[:r])
		}
		if !ws {
			return nil
		}
		if _, err := c.Write(closeFrame); err != nil {
			return err
		}
		// The server's Close (1000), then EOF.
		r = copy(buf, buf[want:r])
		for {
			n, err := c.Read(buf[r:])
			r += n
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
		}
		if r < 4 || buf[0] != 0x88 || binary.BigEndian.Uint16(buf[2:4]) != 1000 {
			return fmt.Errorf("close: %q", buf[:r])
		}
		return nil
	}
	if err := one(); err != nil { // warm up, and fail early
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := one(); err != nil {
			b.Fatal(strings.TrimSpace(err.Error()))
		}
	}
}

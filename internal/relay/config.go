// Package relay is the tunnel between one WebSocket client and one TCP
// upstream: two pumps, one each way, with backpressure, buffers lent only
// while data flows, write timeouts, heartbeat and idle timers, throttling,
// injected messages and every close rule of the README ("Request flow and
// close codes"). It knows nothing of Caddy or HTTP: the client is any
// stream that carries RFC 6455 frames (a hijacked HTTP/1.1 connection, an
// HTTP/2 or HTTP/3 stream), the upstream a net.Conn.
package relay

import (
	"encoding/base64"
	"sync"
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Config is how every tunnel of one handler behaves. It is built once,
// when the handler is provisioned, and read, never written, by its tunnels.
type Config struct {
	// BufferSize is each pump's buffer: the largest upstream read sent as
	// one message, and the most client data gathered into one upstream
	// write. Required, at least 512.
	BufferSize int

	// WriteTimeout is how long a write to either side may block before the
	// tunnel is dropped. Required.
	WriteTimeout time.Duration

	// MaxMessageSize is the largest client message in bytes (close 1009);
	// 0 for no limit.
	MaxMessageSize int64

	// ValidateUTF8 closes with 1007 on a client text message that is not
	// UTF-8.
	ValidateUTF8 bool

	// Text sends upstream data to the client as text messages (valid
	// UTF-8, sequences split by a read carried to the next message), not
	// binary ones.
	Text bool

	// HeartbeatInterval: ping the client this often, and end a tunnel
	// whose client then says nothing for HeartbeatTimeout (close 1008).
	// 0: no heartbeat.
	HeartbeatInterval, HeartbeatTimeout time.Duration

	// HeartbeatText, when set, is sent as a text message instead of a ping.
	HeartbeatText string

	// IdleTimeout ends a tunnel that relayed no data either way for this
	// long (close 1008). 0: never.
	IdleTimeout time.Duration

	// ReadRate and WriteRate cap each tunnel's client-to-upstream and
	// upstream-to-client bandwidth, in bytes per second; Burst is the most
	// sent at once after a pause (0: a quarter second's worth, at least
	// 512 bytes and at most BufferSize). 0: no cap.
	ReadRate, WriteRate, Burst int64

	// Client makes the tunnel the client end of a WebSocket (caddy
	// tcp-to-ws): the "client" Conn is then the connection to a WebSocket
	// server, whose frames are unmasked, and every frame written to it is
	// masked with a fresh key (RFC 6455 §5.3); the "upstream" is the local
	// TCP connection or standard input and output. Closes keep their
	// server-side meaning: the local side's EOF sends Close 1000, the
	// server's Close half-closes the local side. Text, base64, heartbeat
	// text and injected messages are for servers only. Default: false.
	Client bool

	// HalfClose makes the peer's Close 1000 a half-close: the upstream
	// gets FIN after the last byte, and what it still sends is relayed
	// until its EOF (within CloseGrace) before the Close is echoed, so that
	// a program that answers its input's end (a digest, the rest of a
	// reply) is heard. The answer may pause up to CloseGrace between
	// reads and take WriteTimeout + CloseGrace in all. RFC 6455 §5.5.1
	// lets an endpoint delay its Close for that. Off: the Close is echoed
	// at once and the upstream's answer is read and dropped. Default:
	// false.
	HalfClose bool

	// CloseGrace bounds the closing handshake: how long a closing side
	// waits for the peer's Close frame or FIN. Default: 2s.
	CloseGrace time.Duration

	bufLen    int
	bufs      *sync.Pool // *[]byte of bufLen, lent to the pumps
	b64       *sync.Pool // *[]byte for base64-encoded messages
	heartbeat []byte     // HeartbeatText, framed once
}

// headroom is kept in front of the data in every relay buffer: room for a
// frame header and for a UTF-8 sequence carried over from the last read.
// It is a cache line, so that upstream data lands at an aligned address:
// the kernel's copy into a misaligned buffer ran at half speed here (AMD
// EPYC), which cost a third of the download throughput.
const headroom = 64

// tailroom is left free at the end of the client pump's reads: decoding a
// base64 chunk with a carried group can write up to 3 bytes more than the
// chunk's length, in place.
const tailroom = 4

const defaultCloseGrace = 2 * time.Second

// Prepare fills in defaults and builds what tunnels share (buffer pools,
// the framed heartbeat). Call it once, before the first tunnel.
func (c *Config) Prepare() {
	if c.CloseGrace <= 0 {
		c.CloseGrace = defaultCloseGrace
	}
	if c.HeartbeatInterval > 0 && c.HeartbeatTimeout <= 0 {
		c.HeartbeatTimeout = c.HeartbeatInterval
	}
	c.bufLen = headroom + c.BufferSize
	size := c.bufLen
	c.bufs = &sync.Pool{New: func() any { b := make([]byte, size); return &b }}
	b64Size := headroom + base64.StdEncoding.EncodedLen(c.BufferSize)
	c.b64 = &sync.Pool{New: func() any { b := make([]byte, b64Size); return &b }}
	if c.HeartbeatText != "" {
		c.heartbeat = wsframe.Prepare(wsframe.OpText, []byte(c.HeartbeatText))
	}
}

package wstotcp

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

const ioTimeout = 30 * time.Second // generous: -race on a loaded 2-core machine

// expectClose reads until the client gets a Close frame and returns its code.
func expectClose(t testing.TB, c *websocket.Conn, timeout time.Duration) int {
	t.Helper()
	// gorilla's default handler answers a Close with one of its own, and
	// fails the read when this side has sent its Close already.
	c.SetCloseHandler(func(int, string) error { return nil })
	c.SetReadDeadline(time.Now().Add(timeout))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		t.Fatalf("expected a Close frame, got %v (%T)", err, err)
		return 0
	}
}

// readEOF reads conn until EOF and returns what it read; it fails on any
// other end or after the timeout.
func readEOF(t testing.TB, c net.Conn, timeout time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("upstream: expected EOF, got %v after %d bytes", err, len(b))
	}
	return b
}

func TestPlainSiteWithoutLogEchoes(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	defer c.Close()
	if err := c.WriteMessage(websocket.BinaryMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	mt, b, err := c.ReadMessage()
	if err != nil || mt != websocket.BinaryMessage || string(b) != "hello" {
		t.Fatalf("got type %d %q %v", mt, b, err)
	}
	// A text message arrives upstream as its UTF-8 bytes.
	c.WriteMessage(websocket.TextMessage, []byte("grüß"))
	_, b, err = c.ReadMessage()
	if err != nil || string(b) != "grüß" {
		t.Fatalf("got %q %v", b, err)
	}
}

func TestNonUpgradeRequestFallsThrough(t *testing.T) {
	up := echoUpstream(t)
	// respond is ordered before ws_to_tcp; a route keeps the order written
	s := startCaddy(t, `{HTTP} {
	route {
		ws_to_tcp `+up.addr+`
		respond "next handler"
	}
}`)
	resp, err := http.Get(s.httpURL("/"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "next handler" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

func TestUpgradeBehindHeaderEncodeAndBasicAuth(t *testing.T) {
	up := echoUpstream(t)
	hash := bcryptHash(t, "s3cret")
	s := startCaddy(t, `{HTTP} {
	header -Server
	header X-Test yes
	encode gzip zstd
	basic_auth {
		alice `+hash+`
	}
	ws_to_tcp `+up.addr+`
}`)
	if _, resp, err := s.tryDial("/", nil); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("without credentials: want 401, got %v %v", resp, err)
	}
	hdr := http.Header{}
	hdr.Set("Accept-Encoding", "gzip")
	req, _ := http.NewRequest("GET", "/", nil)
	req.SetBasicAuth("alice", "s3cret")
	hdr.Set("Authorization", req.Header.Get("Authorization"))
	c := s.dial("/", hdr)
	defer c.Close()
	c.WriteMessage(websocket.BinaryMessage, []byte("through the middleware"))
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, b, err := c.ReadMessage(); err != nil || string(b) != "through the middleware" {
		t.Fatalf("got %q %v", b, err)
	}
}

// Upload: 64 MiB from the client in messages of varied sizes; the upstream
// gets every byte, in order, then EOF when the client closes.
func TestUpload64MiBThenClientClose(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)

	const total = 64 << 20
	got := make(chan [32]byte, 1)
	var n int64
	go func() {
		h := sha256.New()
		uc.SetReadDeadline(time.Now().Add(2 * time.Minute))
		n, _ = io.Copy(h, uc) // ends at EOF: the FIN sent after the client's Close
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
	}()
	src := &patternReader{}
	sizes := []int{1, 100, 4096, 65536, 1 << 20, 7}
	buf := make([]byte, 1<<20)
	for sent, i := 0, 0; sent < total; i++ {
		k := min(sizes[i%len(sizes)], total-sent)
		src.Read(buf[:k])
		if err := c.WriteMessage(websocket.BinaryMessage, buf[:k]); err != nil {
			t.Fatal(err)
		}
		sent += k
	}
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
	select {
	case sum := <-got:
		if n != total || sum != patternHash(total) {
			t.Fatalf("upstream got %d bytes, hash match %v", n, sum == patternHash(total))
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("upstream did not see EOF")
	}
	if code := expectClose(t, c, ioTimeout); code != websocket.CloseNormalClosure {
		t.Fatalf("close echo: got %d", code)
	}
}

// Download: the upstream writes 64 MiB and closes; the client gets every
// byte, then Close 1000.
func TestDownload64MiBThenUpstreamClose(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	const total = 64 << 20
	go func() {
		io.CopyN(uc, &patternReader{}, total)
		uc.Close()
	}()
	h := sha256.New()
	var n int64
	c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	for {
		mt, b, err := c.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
				t.Fatalf("after %d bytes: want Close 1000, got %v", n, err)
			}
			break
		}
		if mt != websocket.BinaryMessage || len(b) > defaultBufferSize {
			t.Fatalf("message type %d of %d bytes", mt, len(b))
		}
		h.Write(b)
		n += int64(len(b))
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	if n != total || sum != patternHash(total) {
		t.Fatalf("client got %d of %d bytes; hash match %v", n, total, sum == patternHash(total))
	}
}

func TestUpstreamResetCloses1014(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	// gorilla's client refuses code 1014 (it predates it), so the test
	// reads the frames itself.
	rec := &recordingConn{}
	d := websocket.Dialer{NetDial: func(network, addr string) (net.Conn, error) {
		c, err := net.Dial(network, addr)
		rec.Conn = c
		return rec, err
	}}
	c, _, err := d.Dial(s.wsURL("/"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	uc := up.accept(t).(*net.TCPConn)
	uc.Write([]byte("last words"))
	uc.SetLinger(0) // close with RST
	uc.Close()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, b, err := c.ReadMessage(); err != nil || string(b) != "last words" {
		t.Fatalf("got %q %v", b, err)
	}
	c.ReadMessage() // the Close, which gorilla rejects
	want := append([]byte{0x88, 13, 0x03, 0xF6}, "bad gateway"...)
	if !bytes.Contains(rec.read.Bytes(), want) {
		t.Fatalf("no Close 1014 \"bad gateway\" in what the client read: %q", rec.read.Bytes())
	}
}

// recordingConn keeps a copy of everything read.
type recordingConn struct {
	net.Conn
	mu   sync.Mutex
	read bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.read.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func TestClientVanishingClosesUpstream(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	uc := up.accept(t)
	c.WriteMessage(websocket.BinaryMessage, []byte("abc"))
	c.UnderlyingConn().Close() // no Close frame
	if b := readEOF(t, uc, ioTimeout); string(b) != "abc" {
		t.Fatalf("upstream got %q", b)
	}
}

// 500 clients at once, each echoing 64 KiB through the relay intact.
func TestConcurrentClientsEcho(t *testing.T) {
	up := echoUpstream(t)
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	const clients, size = 500, 64 << 10
	var wg sync.WaitGroup
	var failures atomic.Int32
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := func() error {
				c, _, err := s.tryDial("/", nil)
				if err != nil {
					return err
				}
				defer c.Close()
				msg := make([]byte, size)
				for k := range msg {
					msg[k] = byte(i + k*31)
				}
				go func() {
					for off := 0; off < size; off += 8 << 10 {
						c.WriteMessage(websocket.BinaryMessage, msg[off:off+8<<10])
					}
				}()
				got := make([]byte, 0, size)
				c.SetReadDeadline(time.Now().Add(2 * time.Minute))
				for len(got) < size {
					_, b, err := c.ReadMessage()
					if err != nil {
						return fmt.Errorf("after %d bytes: %w", len(got), err)
					}
					got = append(got, b...)
				}
				if !bytes.Equal(got, msg) {
					return fmt.Errorf("client %d: echo differs", i)
				}
				c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(5*time.Second))
				return nil
			}()
			if err != nil {
				failures.Add(1)
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if failures.Load() > 0 {
		t.Fatalf("%d of %d clients failed", failures.Load(), clients)
	}
}

// A client that stops reading: the upstream is slowed by TCP flow control
// and the proxy's heap does not grow with what the upstream tries to send.
func TestSlowClientBackpressureBoundsMemory(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+`
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)

	heapBefore := heapInUse()
	const total = 256 << 20
	chunk := make([]byte, 64<<10)
	src := &patternReader{}
	var written int64
	// Write until the pipe is full: a write that cannot finish in a second
	// means every buffer on the way is full.
	for written < total {
		src.Read(chunk)
		uc.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := uc.Write(chunk)
		written += int64(n)
		if err != nil {
			break
		}
	}
	growth := heapInUse() - heapBefore
	t.Logf("upstream wrote %d MiB before stalling; proxy heap grew by %d KiB", written>>20, growth>>10)
	if written >= total {
		t.Fatalf("the upstream wrote all %d MiB to a client that reads nothing: no backpressure", total>>20)
	}
	if growth > 4<<20 {
		t.Fatalf("heap grew by %d KiB while the client did not read; want < 4 MiB", growth>>10)
	}

	// The client reads again: everything arrives, nothing lost.
	uc.SetWriteDeadline(time.Time{})
	go func() {
		// finish the chunk cut by the deadline, then close
		rest := written % int64(len(chunk))
		if rest > 0 {
			uc.Write(chunk[rest:])
			written += int64(len(chunk)) - rest
		}
		uc.Close()
	}()
	h := sha256.New()
	var n int64
	c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	for {
		_, b, err := c.ReadMessage()
		if err != nil {
			break
		}
		h.Write(b)
		n += int64(len(b))
	}
	want := sha256.New()
	io.CopyN(want, &patternReader{}, n)
	if !bytes.Equal(h.Sum(nil), want.Sum(nil)) || n%int64(len(chunk)) != 0 {
		t.Fatalf("after backpressure the client got %d bytes, not the upstream's stream", n)
	}
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// A client that reads nothing for write_timeout is dropped, and its
// upstream closed.
func TestWriteTimeoutDropsStuckClient(t *testing.T) {
	up := newUpstream(t, "tcp", "127.0.0.1:0")
	s := startCaddy(t, `{HTTP} {
	ws_to_tcp `+up.addr+` {
		write_timeout 1s
	}
}`)
	c := s.dial("/", nil)
	defer c.Close()
	uc := up.accept(t)
	start := time.Now()
	chunk := make([]byte, 64<<10)
	uc.SetDeadline(time.Now().Add(ioTimeout))
	for {
		if _, err := uc.Write(chunk); err != nil {
			break // the proxy closed the upstream
		}
	}
	if el := time.Since(start); el < time.Second {
		t.Fatalf("dropped after %v, before write_timeout", el)
	}
	if time.Since(start) >= ioTimeout {
		t.Fatal("the stuck client was never dropped")
	}
}

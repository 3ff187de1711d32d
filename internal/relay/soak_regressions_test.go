package relay

import (
	"bytes"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Bugs the soak (bench/soak, docs/soak.md) found, each pinned here.

// The pause allowed to the upstream's answer after a half-close (README:
// "pausing at most 2 s between reads") is the upstream's pause: time the
// relay spends writing the answer to a slow client does not count. Before,
// the read deadline was set when a read returned, so a client that took
// longer than the grace to accept one message cut the answer short, and
// the rest was dropped behind a Close 1000 that said all had come (seen on
// HTTP/3, whose connection-wide flow control can hold one tunnel's writes
// while others do not read).
func TestHalfCloseAnswerSurvivesASlowClient(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		client, clientSide := net.Pipe()
		upSide, upstream := net.Pipe()
		cfg := testConfig(func(c *Config) { c.HalfClose = true }) // grace 2s, write_timeout 30s
		_, ended := started(cfg, clientSide, upSide, false)

		// The client's Close 1000 (a half-close); once the relay has taken
		// it, the upstream answers in two pieces and closes.
		client.Write(maskedFrame(0x88, []byte{0x03, 0xe8}))
		synctest.Wait()
		var got bytes.Buffer
		go func() {
			upstream.Write([]byte("first"))
			upstream.Write([]byte("second")) // read by the relay once "first" is written
			upstream.Close()
		}()

		// The client takes 3 s (more than the grace) to accept the first
		// piece; nothing else is slow.
		time.Sleep(3 * time.Second) // virtual time: the test runs in a synctest bubble
		fr := &frameReader{c: client}
		for {
			op, p := fr.next(t)
			if op == wsframe.OpClose {
				if closeCode(p) != wsframe.CloseNormal {
					t.Fatalf("Close %d", closeCode(p))
				}
				break
			}
			got.Write(p)
		}
		if got.String() != "firstsecond" {
			t.Fatalf("the client got %q before the Close, want the whole answer %q", got.String(), "firstsecond")
		}
		client.Close()
		<-ended
	})
}

package relay

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Injected messages never land inside relayed ones: while the upstream
// streams lowercase data, 1000 uppercase messages are sent from 8
// goroutines at once (as the admin API's send and broadcast do); the
// client sees every injected message whole, once, and the relayed stream
// intact around them.
func TestInjectedMessagesNeverInterleave(t *testing.T) {
	t.Parallel()
	for name, pair := range transports {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			client, clientSide := pair(t)
			upSide, upstream := tcpPair(t)
			tn, ended := started(testConfig(nil), clientSide, upSide, false)

			const sends = 1000
			injected := func(i int) []byte {
				b := fmt.Appendf(nil, "INJ%05d:", i)
				size := 1 + (i*7919)%(48<<10) // up to 48 KiB, larger than a socket write at times
				for k := 0; len(b) < size; k++ {
					b = append(b, 'A'+byte((i+k)%26))
				}
				return b
			}
			// The relayed stream is the alphabet over and over: byte i is
			// alphabet[i%26], so its bytes from i on are pattern[i%26:].
			pattern := bytes.Repeat([]byte("abcdefghijklmnopqrstuvwxyz"), (64<<10)/26+2)
			stop := make(chan struct{})
			var written atomic.Int64
			go func() {
				var pos int64
				for {
					select {
					case <-stop:
						upstream.Close()
						return
					default:
					}
					n, err := upstream.Write(pattern[pos%26 : pos%26+16<<10])
					pos += int64(n)
					written.Store(pos)
					if err != nil {
						return
					}
				}
			}()

			type result struct {
				relayed int64
				seen    []bool
				err     error
			}
			done := make(chan result, 1)
			go func() {
				r := result{seen: make([]bool, sends)}
				r.err = func() error {
					client.SetReadDeadline(time.Now().Add(2 * ioTimeout))
					for {
						op, p, err := readFrame(client)
						if err != nil {
							return err
						}
						switch {
						case op == wsframe.OpClose:
							return nil
						case bytes.HasPrefix(p, []byte("INJ")):
							var i int
							if _, err := fmt.Sscanf(string(p[:9]), "INJ%05d:", &i); err != nil || i < 0 || i >= sends {
								return fmt.Errorf("bad injected message %.40q", p)
							}
							if !bytes.Equal(p, injected(i)) {
								return fmt.Errorf("injected message %d cut or mixed: %d bytes, want %d", i, len(p), len(injected(i)))
							}
							if r.seen[i] {
								return fmt.Errorf("injected message %d twice", i)
							}
							r.seen[i] = true
						default:
							off := int(r.relayed % 26)
							if len(p) > len(pattern)-off || !bytes.Equal(p, pattern[off:off+len(p)]) {
								return fmt.Errorf("relayed stream wrong in the %d bytes from byte %d: %.40q", len(p), r.relayed, p)
							}
							r.relayed += int64(len(p))
						}
					}
				}()
				done <- r
			}()

			var next atomic.Int64
			var wg sync.WaitGroup
			var failures atomic.Int64
			for range 8 {
				wg.Go(func() {
					for {
						i := int(next.Add(1) - 1)
						if i >= sends {
							return
						}
						if err := tn.Send(wsframe.OpBinary, injected(i)); err != nil {
							failures.Add(1)
						}
					}
				})
			}
			wg.Wait()
			close(stop)
			r := <-done // at the Close that follows the upstream's end, or at what went wrong
			if r.err != nil {
				t.Fatalf("%v (%d sends failed)", r.err, failures.Load())
			}
			if n := failures.Load(); n > 0 {
				t.Fatalf("%d sends failed", n)
			}
			for i, ok := range r.seen {
				if !ok {
					t.Fatalf("injected message %d never arrived", i)
				}
			}
			if r.relayed != written.Load() {
				t.Fatalf("client got %d relayed bytes, the upstream wrote %d", r.relayed, written.Load())
			}
			client.Close()
			<-ended
		})
	}
}

package wstotcp

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/relay"
)

// tunnels holds every open tunnel of the process, whichever configuration
// started it: tunnels outlive reloads, so the admin API, the metrics,
// shutdown and reload_close_after need one place to find them.
var tunnels = struct {
	sync.Mutex
	m map[string]*tunnel // by id

	// The traffic of the tunnels that have ended. A tunnel's counters move
	// here in the same critical section that removes it from m, so that
	// ended plus the live tunnels' counters, the metrics' totals, never go
	// backwards.
	ended traffic
}{m: make(map[string]*tunnel)}

// traffic is what tunnels relayed: bytes and messages each way.
type traffic struct {
	bytesIn, bytesOut, msgsIn, msgsOut int64
}

func (a *traffic) add(t *tunnel) {
	s := t.Stats()
	a.bytesIn += s.BytesIn
	a.bytesOut += s.BytesOut
	a.msgsIn += s.MessagesIn
	a.msgsOut += s.MessagesOut
}

// register adds a started tunnel, before its pumps run, and announces it:
// the connect event thus always comes before the disconnect event.
func register(t *tunnel) {
	tunnels.Lock()
	tunnels.m[t.id] = t
	tunnels.Unlock()
	t.h.emitConnect(t) // outside the lock: event handlers run synchronously
}

// unregister removes an ended tunnel and adds its traffic to the totals.
func unregister(t *tunnel) {
	tunnels.Lock()
	if tunnels.m[t.id] == t {
		delete(tunnels.m, t.id)
		tunnels.ended.add(t)
	}
	tunnels.Unlock()
	endedCounter(outcome(t.end.Code, t.end.By), t.transport).Inc()
}

// findTunnel returns the tunnel with this id, open or closing, or nil.
func findTunnel(id string) *tunnel {
	tunnels.Lock()
	t := tunnels.m[id]
	tunnels.Unlock()
	return t
}

// selectTunnels returns the tunnels, open or closing, for which match is
// true (all for a nil match), oldest first. A closing tunnel stays listed
// until both its sides are closed, so that nothing holds sockets or slots
// out of the admin API's sight.
func selectTunnels(match func(*tunnel) bool) []*tunnel {
	tunnels.Lock()
	list := make([]*tunnel, 0, len(tunnels.m))
	for _, t := range tunnels.m {
		if match == nil || match(t) {
			list = append(list, t)
		}
	}
	tunnels.Unlock()
	slices.SortFunc(list, func(a, b *tunnel) int {
		if c := a.started.Compare(b.started); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})
	return list
}

// closeTunnels terminates the tunnels started by h, or all tunnels when h is
// nil, and returns how many were open.
func closeTunnels(h *Handler, code int, reason string) int {
	return closeTunnelsOn(h, nil, code, reason)
}

// closeTunnelsOn terminates the tunnels started by h (all when h is nil)
// for which match is true (all for a nil match), and returns how many were
// open.
func closeTunnelsOn(h *Handler, match func(*tunnel) bool, code int, reason string) int {
	return closeEach(selectTunnels(func(t *tunnel) bool {
		return (h == nil || t.h == h) && (match == nil || match(t))
	}), code, reason)
}

// closeEach terminates the tunnels and returns how many were open; those
// already closing are closed at once, and not counted.
func closeEach(list []*tunnel, code int, reason string) int {
	closing := forEachTunnel(list, func(t *tunnel) error {
		if !t.Terminate(code, reason) {
			return relay.ErrClosing
		}
		return nil
	})
	return len(list) - closing
}

// maxParallelWrites bounds the goroutines that write to many clients at
// once (broadcast, ping, disconnect). Writing to a client that does not
// read blocks for up to its write_timeout; in parallel, one such client
// does not hold up the others.
const maxParallelWrites = 32

// forEachTunnel calls f for each tunnel, on up to maxParallelWrites
// goroutines, and returns how many calls failed.
func forEachTunnel(list []*tunnel, f func(*tunnel) error) (failed int) {
	var next, failures atomic.Int64
	work := func() {
		defer func() {
			if v := recover(); v != nil {
				caddy.Log().Named("http.handlers.ws_to_tcp").Error("panic writing to tunnels",
					zap.String("panic", fmt.Sprint(v)), zap.ByteString("stack", debug.Stack()))
				failures.Add(1)
			}
		}()
		for {
			i := int(next.Add(1) - 1)
			if i >= len(list) {
				return
			}
			if err := f(list[i]); err != nil {
				failures.Add(1)
			}
		}
	}
	workers := min(len(list), maxParallelWrites)
	if workers <= 1 {
		work()
		return int(failures.Load())
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(work)
	}
	wg.Wait()
	return int(failures.Load())
}

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// newConnID returns a random id, unguessable so that an id seen in a log
// gives no way to guess another.
func newConnID() string {
	var b [10]byte
	rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}

// logClosed writes the one INFO line of a closed tunnel and emits its
// disconnect event.
func (h *Handler) logClosed(t *tunnel) {
	d := time.Since(t.started)
	s := t.Stats()
	if perr, ok := t.end.Err.(*relay.PanicError); ok {
		h.logger.Error("panic in relay; tunnel closed with 1011",
			zap.String("conn_id", t.id),
			zap.String("panic", fmt.Sprint(perr.Value)),
			zap.ByteString("stack", perr.Stack))
	}
	// Fields are built only for a log that takes the line (one whose
	// output is discard takes none).
	if ce := h.logger.Check(zap.InfoLevel, "tunnel closed"); ce != nil {
		ce.Write(
			zap.String("conn_id", t.id),
			zap.String("remote_ip", t.remote),
			zap.String("user", t.user),
			zap.String("upstream", t.upstream),
			zap.String("subprotocol", t.subprotocol),
			zap.String("channel", t.channel),
			zap.Duration("duration", d),
			zap.String("transport", t.transport),
			zap.Int64("bytes_in", s.BytesIn),
			zap.Int64("bytes_out", s.BytesOut),
			zap.Int64("messages_in", s.MessagesIn),
			zap.Int64("messages_out", s.MessagesOut),
			zap.Int("close_code", t.end.Code),
			zap.String("closed_by", t.end.By),
			zap.NamedError("reason", t.end.Err),
		)
	}
	h.emitDisconnect(t, d)
}

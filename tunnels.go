package wstotcp

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"go.uber.org/zap"
)

// tunnels holds every open tunnel of the process, whichever configuration
// started it: tunnels outlive reloads, so the admin API, shutdown and
// reload_close_after need one place to find them.
var tunnels = struct {
	sync.Mutex
	m map[*tunnel]struct{}
}{m: make(map[*tunnel]struct{})}

func register(t *tunnel) {
	tunnels.Lock()
	tunnels.m[t] = struct{}{}
	tunnels.Unlock()
}

func unregister(t *tunnel) {
	tunnels.Lock()
	delete(tunnels.m, t)
	tunnels.Unlock()
}

// closeTunnels terminates the tunnels started by h, or all tunnels when h is
// nil, and returns how many it closed.
func closeTunnels(h *Handler, code int, reason string) int {
	tunnels.Lock()
	var list []*tunnel
	for t := range tunnels.m {
		if h == nil || t.h == h {
			list = append(list, t)
		}
	}
	tunnels.Unlock()
	for _, t := range list {
		t.terminate(code, reason)
	}
	return len(list)
}

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// newConnID returns a random id, unguessable so that an id seen in a log
// gives no way to guess another.
func newConnID() string {
	var b [10]byte
	rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}

// logClosed writes the one INFO line of a closed tunnel.
func (h *Handler) logClosed(t *tunnel) {
	h.logger.Info("tunnel closed",
		zap.String("conn_id", t.id),
		zap.String("remote_ip", t.remote),
		zap.String("user", t.user),
		zap.String("upstream", t.upstream),
		zap.String("subprotocol", t.subprotocol),
		zap.Duration("duration", time.Since(t.started)),
		zap.Int64("bytes_in", t.bytesIn.Load()),
		zap.Int64("bytes_out", t.bytesOut.Load()),
		zap.Int64("messages_in", t.msgsIn.Load()),
		zap.Int64("messages_out", t.msgsOut.Load()),
		zap.Int("close_code", t.closeCode),
		zap.String("closed_by", t.closedBy),
		zap.NamedError("reason", t.closeErr),
	)
}

func (h *Handler) logPanic(t *tunnel, v any) {
	h.logger.Error("panic in relay; tunnel closed",
		zap.String("conn_id", t.id),
		zap.String("panic", fmt.Sprint(v)),
		zap.ByteString("stack", debug.Stack()))
}

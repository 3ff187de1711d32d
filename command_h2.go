//go:build unix

package wstotcp

import (
	"os"
	"strings"
	"syscall"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// serveHTTP2WebSockets makes `caddy ws-to-tcp` over HTTPS advertise
// WebSockets over HTTP/2, which Go's HTTP/2 server does only with
// GODEBUG=http2xconnect=1 in the environment when the process starts: it
// starts the command again, in the same process (same PID, arguments and
// signals), with the setting added. A GODEBUG that already says anything
// about http2xconnect is left as it is, so http2xconnect=0 turns it off.
// See the README, HTTP/2 and HTTP/3.
func serveHTTP2WebSockets() {
	godebug := os.Getenv("GODEBUG")
	if strings.Contains(godebug, "http2xconnect=") {
		return
	}
	exe, err := os.Executable()
	if err == nil {
		env := make([]string, 0, len(os.Environ())+1)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "GODEBUG=") {
				env = append(env, kv)
			}
		}
		env = append(env, "GODEBUG="+strings.Trim(godebug+",http2xconnect=1", ","))
		err = syscall.Exec(exe, os.Args, env) // returns only on failure
	}
	caddy.Log().Warn("could not start again with GODEBUG=http2xconnect=1: browsers on HTTP/2 will open their WebSockets over HTTP/1.1",
		zap.Error(err))
}

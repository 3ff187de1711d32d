//go:build !unix

package wstotcp

import "github.com/caddyserver/caddy/v2"

// serveHTTP2WebSockets cannot start the process again in place here: set
// GODEBUG=http2xconnect=1 in the environment to serve WebSockets over
// HTTP/2 (README, HTTP/2 and HTTP/3).
func serveHTTP2WebSockets() {
	if !http2ExtendedConnect() {
		caddy.Log().Info("set GODEBUG=http2xconnect=1 in the environment for WebSockets over HTTP/2; browsers use HTTP/1.1 for them meanwhile")
	}
}

// Command caddy is a Caddy build that includes the ws_to_tcp module, so that
// `go run ./cmd/caddy run --config Caddyfile.example` works without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/wstotcp/caddy-ws-to-tcp"
)

func main() {
	caddycmd.Main()
}

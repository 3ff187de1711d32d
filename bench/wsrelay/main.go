// Command wsrelay is the second reference of the ws_to_tcp benchmark: a
// bare WebSocket-to-TCP relay, the limit for a WebSocket relay on the same
// machine, as bench/relay is the limit for a byte relay.
//
//	wsrelay -listen 127.0.0.1:0 -to 127.0.0.1:PORT [-to 127.0.0.1:PORT2 ...]
//
// For each -to it listens on its own port (with port 0 in -listen) and
// prints the listen addresses, space separated and in -to order, as the
// first line of stdout. Every request on a listener, whatever its path, is
// a WebSocket client for that listener's upstream: a net/http server,
// gorilla/websocket's Upgrader.Upgrade, then the module's own tunnel
// (internal/relay) over the hijacked connection, with the module's default
// settings (32 KiB buffers, 30 s write timeout, half-close on the
// client's Close 1000). Nothing else: no routing, admission,
// authentication, origin check, logging, metrics or events. As in the
// module, the upstream is dialled before the upgrade, so that a dial
// failure is an HTTP error (502).
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/relay"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen address (port 0: a free port per -to)")
	var targets multiFlag
	flag.Var(&targets, "to", "upstream address (repeatable: one listener each)")
	flag.Parse()
	if len(targets) == 0 {
		log.Fatal("wsrelay: -to is required")
	}
	_, port, err := net.SplitHostPort(*listen)
	if err != nil {
		log.Fatalf("wsrelay: -listen: %v", err)
	}
	if len(targets) > 1 && port != "0" {
		log.Fatal("wsrelay: several -to need -listen with port 0")
	}

	// The module's tunnel settings at their defaults (README, buffer_size,
	// write_timeout); one Config for all tunnels, as one handler has.
	cfg := &relay.Config{
		BufferSize:   32 << 10,
		WriteTimeout: 30 * time.Second,
		HalfClose:    true,
	}
	cfg.Prepare()
	// The module's upgrader: gorilla only does the handshake, the relay
	// reads and writes the frames, so gorilla's buffers stay minimal.
	up := &websocket.Upgrader{
		CheckOrigin:     func(*http.Request) bool { return true },
		ReadBufferSize:  1,
		WriteBufferPool: unusedPool{},
	}

	var addrs []string
	var lns []net.Listener
	for range targets {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			log.Fatalf("wsrelay: %v", err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	fmt.Println(strings.Join(addrs, " "))
	for i, ln := range lns {
		srv := &http.Server{
			Handler:           &handler{to: targets[i], cfg: cfg, up: up},
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          log.Default(),
		}
		go func() { log.Fatal(srv.Serve(ln)) }()
	}
	select {}
}

type handler struct {
	to  string
	cfg *relay.Config
	up  *websocket.Upgrader
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		http.Error(w, "a WebSocket upgrade is expected", http.StatusBadRequest)
		return
	}
	upstream, err := net.DialTimeout("tcp", h.to, 5*time.Second)
	if err != nil {
		log.Printf("wsrelay: dial %s: %v", h.to, err)
		http.Error(w, "upstream unreachable", http.StatusBadGateway)
		return
	}
	ws, err := h.up.Upgrade(w, r, nil)
	if err != nil {
		upstream.Close() // gorilla has answered the client
		return
	}
	relay.New(h.cfg, ws.UnderlyingConn(), upstream, false).Start(func(relay.End) {})
}

// unusedPool stands for gorilla's write buffer pool, which it only uses to
// write messages: the relay writes its own.
type unusedPool struct{}

func (unusedPool) Get() any { return nil }
func (unusedPool) Put(any)  {}

func init() {
	log.SetOutput(os.Stderr)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
}

package main

import (
	"fmt"
	"strings"
	"time"
)

// settings are the relay settings both configurations give the tunnels,
// which the verdict's bounds are made of (docs/caddyfile.md, Subdirectives;
// the closing grace of README "Request flow and close codes" is 2 s).
type settings struct {
	writeTimeout time.Duration
	closeGrace   time.Duration
	hbInterval   time.Duration
	hbTimeout    time.Duration
	reloadClose  time.Duration // reload_close_after on /rca, configuration A only
	limit        int           // max_connections on /limited
	slack        time.Duration // added to every bound: scheduling on a loaded machine
	bulkRate     int           // bytes per second of a bulk tunnel
}

// The two configurations a reload alternates between. They differ (buffer
// size, reload_close_after on /rca), so every reload provisions new
// handlers, and the preamble tells the upstream which one opened a tunnel.
//
// grace_period is above write_timeout plus the closing grace: an HTTP/2-3
// tunnel whose client does not read takes that long to end once its
// server shuts down, and a shorter grace ends the shutdown with an ERROR
// and cut connections.
//
// Routes: /soak (most tunnels), /rca (reload_close_after in A, none in B),
// /hb (heartbeat), /restart (the upstream that restarts), /limited
// (max_connections). Every route's channel is the tunnel's name, so that
// the log line and the admin API name the soak's tunnel.
const caddyfileTemplate = `{
	admin @ADMIN@
	persist_config off
	skip_install_trust
	auto_https disable_redirects
	http_port @HTTPPORT@
	https_port @HTTPSPORT@
	grace_period 10s
	log {
		output stderr
		format json
		level INFO
	}
}

(relay) {
	channel {http.request.uri.query.t}
	preamble "SOAK {http.request.uri.query.t} @TAG@\n"
	write_timeout @WRITETIMEOUT@
	buffer_size @BUFFER@
}

(routes) {
	handle /soak {
		ws_to_tcp @ECHO@ {
			import relay
		}
	}
	handle /rca {
		ws_to_tcp @ECHO@ {
			import relay
			@RCA@
		}
	}
	handle /hb {
		ws_to_tcp @ECHO@ {
			import relay
			heartbeat @HBINTERVAL@ @HBTIMEOUT@
		}
	}
	handle /restart {
		ws_to_tcp @RESTART@ {
			import relay
		}
	}
	handle /limited {
		ws_to_tcp @ECHO@ {
			import relay
			max_connections @LIMIT@
		}
	}
}

http://127.0.0.1:@HTTPPORT@ {
	bind 127.0.0.1
	import routes
}

https://localhost:@HTTPSPORT@ {
	bind 127.0.0.1
	tls @CERT@ @KEY@
	import routes
}
`

// caddyfile returns configuration tag ("A" or "B").
func (s *soak) caddyfile(tag string) string {
	c := s.cfg
	rca, buffer := "", "16KiB"
	if tag == "A" {
		rca, buffer = "reload_close_after "+c.reloadClose.String(), "32KiB"
	}
	return strings.NewReplacer(
		"@ADMIN@", s.adminAddr,
		"@HTTPPORT@", port(s.httpAddr),
		"@HTTPSPORT@", port(s.httpsAddr),
		"@TAG@", tag,
		"@WRITETIMEOUT@", c.writeTimeout.String(),
		"@BUFFER@", buffer,
		"@ECHO@", s.echo.addr,
		"@RESTART@", s.restartUp.addr,
		"@RCA@", rca,
		"@HBINTERVAL@", c.hbInterval.String(),
		"@HBTIMEOUT@", c.hbTimeout.String(),
		"@LIMIT@", fmt.Sprint(c.limit),
		"@CERT@", s.certFile,
		"@KEY@", s.keyFile,
	).Replace(caddyfileTemplate)
}

func port(addr string) string {
	_, p, _ := strings.Cut(addr, ":")
	return p
}

package wstotcp

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// dialUpstream connects to target, or to one of the configured upstreams
// when target is nil, before the upgrade: a refused or unreachable
// upstream gives 502, a dial timeout 504.
func (h *Handler) dialUpstream(r *http.Request, adm admission, target *Upstream) (net.Conn, *Upstream, error) {
	u := target
	if u == nil {
		u = h.Upstreams[0]
	}
	dialStart := time.Now()
	up, err := u.dial(r.Context(), time.Duration(h.DialTimeout), h.upstreamTLS)
	if err != nil {
		status := http.StatusBadGateway
		if isTimeout(err) {
			status = http.StatusGatewayTimeout
		}
		return nil, nil, caddyhttp.Error(status, fmt.Errorf("dialing upstream %s: %w", u.Dial, err))
	}
	observeDial(time.Since(dialStart))
	return up, u, nil
}

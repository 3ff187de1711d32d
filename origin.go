package wstotcp

import (
	"net/http"
	"net/url"
	"strings"
)

// originAllowed applies the default origin rule: no Origin header (a client
// that is not a browser) or the same origin as the request's host. Browsers
// send cookies and basic-auth credentials with a cross-site WebSocket, so
// without this check any web page could drive the tunnel as the user.
func originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

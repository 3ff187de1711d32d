package wstotcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// httpSource looks tokens up with a GET to a URL: websockify's
// BaseTokenAPI and JSONTokenApi.
type httpSource struct {
	tmpl      string // the URL, with {token} or %s where the token goes, or neither
	shown     string // the URL for logs: template form, password redacted
	client    *http.Client
	transport *http.Transport
}

// maxLookupAnswer bounds what is read of an HTTP lookup's answer.
const maxLookupAnswer = 64 << 10

func newHTTPSource(rawURL string, timeout time.Duration) (*httpSource, error) {
	rawURL = strings.TrimSpace(rawURL)
	probe, err := url.Parse(strings.NewReplacer("{token}", "x", "%s", "x").Replace(rawURL))
	if err != nil {
		return nil, fmt.Errorf("invalid URL: %v", err)
	}
	if probe.Scheme != "http" && probe.Scheme != "https" || probe.Host == "" {
		return nil, fmt.Errorf("%q: an http:// or https:// URL with a host is required", probe.Redacted())
	}
	if strings.Contains(rawURL, "#") {
		return nil, fmt.Errorf("%q: no fragment (#) in the URL", probe.Redacted())
	}
	// for logs: the password redacted, the token's place marked
	const mark = "TOKENzzMARK"
	shown := probe.Redacted()
	if u, err := url.Parse(strings.NewReplacer("{token}", mark, "%s", mark).Replace(rawURL)); err == nil {
		shown = strings.ReplaceAll(u.Redacted(), mark, "{token}")
	}
	tr := &http.Transport{
		// the lookup service is named in the config: no proxy from the
		// environment
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		// each lookup's context bounds the rest
	}
	return &httpSource{
		tmpl:      rawURL,
		shown:     shown,
		transport: tr,
		client: &http.Client{
			Transport: tr,
			// a redirect could carry the token elsewhere
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

func (s *httpSource) name() string { return "http" }

func (s *httpSource) close() { s.transport.CloseIdleConnections() }

// pathSafeToken reports whether a token may go into a lookup URL. Put in
// a path, the token is escaped (url.PathEscape: a `/` is %2F), so it stays
// one segment; but `.` and `..` would still be dot segments, which a
// service that normalises paths takes as this resource or its parent, and
// an empty token would make the segment disappear: such tokens are
// unknown without a lookup, wherever the template puts the token.
func pathSafeToken(tok string) bool {
	return tok != "" && tok != "." && tok != ".."
}

// url puts the token into the URL: in place of {token} (or %s), escaped
// for where it stands; else as the query parameter `token`.
func (s *httpSource) url(tok string) string {
	for _, mark := range []string{"{token}", "%s"} {
		if i := strings.Index(s.tmpl, mark); i >= 0 {
			q := strings.IndexByte(s.tmpl, '?')
			esc := url.PathEscape(tok)
			if q >= 0 && q < i {
				esc = url.QueryEscape(tok)
			}
			return strings.ReplaceAll(s.tmpl, mark, esc)
		}
	}
	sep := "?"
	if strings.Contains(s.tmpl, "?") {
		sep = "&"
	}
	return s.tmpl + sep + "token=" + url.QueryEscape(tok)
}

// get asks the service. Errors name the URL in its template form, never
// with the token in it.
func (s *httpSource) get(ctx context.Context, tok string) (target, error) {
	if !pathSafeToken(tok) {
		return target{}, errUnknownToken
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url(tok), nil)
	if err != nil {
		return target{}, fmt.Errorf("GET %s: %v", s.shown, err)
	}
	req.Header.Set("Accept", "application/json, text/plain")
	req.Header.Set("User-Agent", "caddy-ws-to-tcp")
	resp, err := s.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error quotes the URL, token included
		}
		return target{}, fmt.Errorf("GET %s: %w", s.shown, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxLookupAnswer+1))
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		return target{}, errUnknownToken
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return target{}, fmt.Errorf("GET %s: status %d", s.shown, resp.StatusCode)
	case err != nil:
		return target{}, fmt.Errorf("GET %s: reading the answer: %w", s.shown, err)
	case len(body) > maxLookupAnswer:
		return target{}, fmt.Errorf("GET %s: answer larger than %d KiB", s.shown, maxLookupAnswer>>10)
	}
	t, err := parseTargetValue(string(body))
	if err != nil {
		return target{}, fmt.Errorf("GET %s: the answer is not a target: %v", s.shown, err)
	}
	return t, nil
}

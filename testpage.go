package wstotcp

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"regexp"
	"strconv"
	"strings"
)

// testPageHTML is the test page (`test_page`): one file with inline CSS
// and JavaScript, no external assets, so that it works wherever the
// handler runs, offline included.
//
//go:embed testpage.html
var testPageHTML []byte

// testPageCSP is the page's Content-Security-Policy. The inline script and
// style are allowed by their SHA-256 hashes, not by 'unsafe-inline', so
// nothing else can run on the page; it may open WebSockets anywhere (the
// URL field is editable) and load nothing else.
var testPageCSP = buildTestPageCSP(testPageHTML)

func buildTestPageCSP(page []byte) string {
	var b strings.Builder
	b.WriteString("default-src 'none'; connect-src 'self' ws: wss:")
	for _, el := range []string{"script", "style"} {
		b.WriteString("; " + el + "-src")
		for _, m := range inlineElement(el).FindAllSubmatch(page, -1) {
			sum := sha256.Sum256(m[1])
			b.WriteString(" 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'")
		}
	}
	b.WriteString("; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	return b.String()
}

// inlineElement matches an inline <script> or <style> element without
// attributes and captures its text, which is what a CSP hash covers.
func inlineElement(name string) *regexp.Regexp {
	return regexp.MustCompile(`(?s)<` + name + `>(.*?)</` + name + `>`)
}

// serveTestPage answers a GET with the test page. The page fills its URL
// field with its own address as ws:// or wss://, query string included,
// so it connects to the handler that served it.
func serveTestPage(w http.ResponseWriter, _ *http.Request) error {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(testPageHTML)))
	h.Set("Content-Security-Policy", testPageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	// A write error means the client went away: nothing left to answer.
	_, _ = w.Write(testPageHTML)
	return nil
}

package wstotcp

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/fetch"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Tests in this file drive a real headless Chromium (Debian's package
// chromium, which .ci/run installs) with chromedp.

const chromiumPath = "/usr/bin/chromium"

// requireTools fails the test in CI, and skips it elsewhere, when one of
// the files a browser test needs is missing.
func requireTools(t *testing.T, install string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			unavailable(t, "%s is missing (%v): install it with `%s` (.ci/run does)", p, err, install)
		}
	}
}

// browser is a tab of the shared headless Chromium, driven by chromedp.
type browser struct {
	t   *testing.T
	ctx context.Context // the tab; no timeout: steps get theirs from step
	out *lockedBuffer   // the page's console and errors
}

// One headless Chromium serves every browser test. It starts in the
// background when the test binary starts (TestMain), so that its start-up
// overlaps the tests that run before; each test gets a tab in a browser
// context of its own (no cookies, cache or credentials shared).
var chromium = struct {
	once  sync.Once
	ready chan struct{}   // closed once started or failed
	ctx   context.Context // the browser's first tab: tabs are made from it
	stop  func()          // kills the process chromedp started, only it
	out   *lockedBuffer   // Chromium's own output
	err   error
}{ready: make(chan struct{})}

// browserTests are the tests that use Chromium, for TestMain to tell
// whether the run needs it.
var browserTests = []string{"TestTestPageInBrowser", "TestTestPageBehindBasicAuth", "TestNoVNCEndToEnd",
	"TestTestPageOverHTTP2InChromium", "TestNoVNCOverHTTP2InChromium"}

// startChromium starts the shared Chromium once, if it is installed.
func startChromium() {
	chromium.once.Do(func() {
		defer close(chromium.ready)
		if _, err := os.Stat(chromiumPath); err != nil {
			chromium.err = err
			return
		}
		profile, err := os.MkdirTemp("", "ws-to-tcp-chromium-")
		if err != nil {
			chromium.err = err
			return
		}
		chromium.out = new(lockedBuffer)
		allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
			chromedp.ExecPath(chromiumPath),
			chromedp.Flag("headless", true),
			chromedp.Flag("no-sandbox", true),
			chromedp.Flag("disable-gpu", true),
			chromedp.Flag("disable-quic", true),
			chromedp.Flag("no-first-run", true),
			chromedp.Flag("disable-background-networking", true),
			chromedp.Flag("disable-component-update", true),
			chromedp.Flag("disable-sync", true),
			// the HTTP/2 tests' self-signed certificate
			chromedp.Flag("ignore-certificate-errors", true),
			chromedp.UserDataDir(profile),
			chromedp.CombinedOutput(chromium.out),
		)
		ctx, cancelCtx := chromedp.NewContext(allocCtx)
		chromium.ctx = ctx
		chromium.stop = func() {
			cancelCtx()
			cancelAlloc() // waits for the browser process to end
			os.RemoveAll(profile)
		}
		// Start the browser with a context without a deadline (a deadline
		// on the first action would be the browser's lifetime), bounded by
		// the wait in newBrowser.
		chromium.err = chromedp.Do(ctx)
	})
}

// stopChromium ends the shared Chromium, if it was started (and keeps it
// from starting after).
func stopChromium() {
	chromium.once.Do(func() { close(chromium.ready) })
	<-chromium.ready
	if chromium.stop != nil {
		chromium.stop()
	}
}

// newBrowser opens a tab in a fresh browser context of the shared
// Chromium. The tab is closed when the test ends; register it after the
// Caddy it talks to, so that it goes first.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	requireTools(t, "apt-get install -y chromium", chromiumPath)
	go startChromium()
	select {
	case <-chromium.ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("Chromium did not start within 60s")
	}
	if chromium.err != nil {
		t.Fatalf("starting Chromium (%s): %v\n%s", chromiumPath, chromium.err, chromium.out)
	}
	b := &browser{t: t, out: new(lockedBuffer)}
	ctx, cancel := chromedp.NewContext(chromium.ctx, chromedp.WithNewBrowserContext())
	t.Cleanup(func() {
		cancel() // closes the tab and its browser context
		if t.Failed() {
			t.Logf("the page's console and errors:\n%s", b.out.String())
			out := chromium.out.String()
			t.Logf("Chromium's output (tail):\n%s", out[max(0, len(out)-8<<10):])
		}
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("opening a tab: %v", err)
	}
	b.ctx = ctx
	if err := chromedp.Listen(ctx, b.record); err != nil {
		t.Fatalf("listening to the page's events: %v", err)
	}
	if _, err := chromedp.Call(b.step(10*time.Second), cdplog.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("Log.enable: %v", err)
	}
	if err := chromedp.Do(b.step(10*time.Second), chromedp.EmulateViewport(1100, 1000)); err != nil {
		t.Fatalf("setting the viewport: %v", err)
	}
	return b
}

// record keeps the page's console messages, uncaught exceptions and log
// entries (CSP violations, failed loads), shown if the test fails.
func (b *browser) record(ev any) {
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		var args []string
		for _, a := range ev.Args {
			if len(a.Value) > 0 {
				args = append(args, string(a.Value))
			} else {
				args = append(args, a.Description)
			}
		}
		fmt.Fprintf(b.out, "console.%s: %s\n", ev.Type, strings.Join(args, " "))
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		desc := d.Text
		if d.Exception != nil && d.Exception.Description != "" {
			desc += " " + d.Exception.Description
		}
		fmt.Fprintf(b.out, "exception: %s (%s:%d)\n", desc, d.URL, d.LineNumber+1)
	case *cdplog.EventEntryAdded:
		fmt.Fprintf(b.out, "log %s %s: %s %s\n", ev.Entry.Level, ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
	}
}

// basicAuth makes the browser answer HTTP authentication challenges with
// these credentials, as a user typing them into the browser's dialog
// would; the browser then keeps them for the site. Requests are paused by
// the Fetch domain until let through.
func (b *browser) basicAuth(user, password string) {
	b.t.Helper()
	err := chromedp.Listen(b.ctx, func(ev any) {
		// Listen's callback must not send commands itself.
		switch ev := ev.(type) {
		case *fetch.EventRequestPaused:
			go chromedp.Call(b.ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: ev.RequestID})
		case *fetch.EventAuthRequired:
			fmt.Fprintf(b.out, "auth challenge for %s: answered as %s\n", ev.Request.URL, user)
			go chromedp.Call(b.ctx, fetch.ContinueWithAuth, fetch.ContinueWithAuthParams{
				RequestID: ev.RequestID,
				AuthChallengeResponse: &fetch.AuthChallengeResponse{
					Response: fetch.AuthChallengeResponseResponseProvideCredentials,
					Username: user, Password: password,
				},
			})
		}
	})
	if err != nil {
		b.t.Fatal(err)
	}
	yes := true
	if _, err := chromedp.Call(b.step(10*time.Second), fetch.Enable, fetch.EnableParams{HandleAuthRequests: &yes}); err != nil {
		b.t.Fatalf("Fetch.enable: %v", err)
	}
}

// step is a context for one bounded step; it ends with the test.
func (b *browser) step(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(b.ctx, d)
	b.t.Cleanup(cancel)
	return ctx
}

// do runs actions within d, failing the test with what the step was.
func (b *browser) do(what string, d time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.step(d), actions...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// text returns the text of the element with that id.
func (b *browser) text(id string) string {
	b.t.Helper()
	s, err := chromedp.Run(b.step(10*time.Second), chromedp.TextContent(chromedp.ID(id)))
	if err != nil {
		b.t.Fatalf("reading #%s: %v", id, err)
	}
	return s
}

// screenshot saves a PNG of the whole page to testdata/artifacts/ and
// returns its path.
func (b *browser) screenshot(name string) string {
	b.t.Helper()
	png, err := chromedp.Run(b.step(30*time.Second), chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return ""
	}
	dir := filepath.Join("testdata", "artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	path, err := filepath.Abs(filepath.Join(dir, name+".png"))
	if err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
	return path
}

// screenshotOnFailure saves a screenshot when the test has failed by the
// time it ends (registered after newBrowser, so it runs before the browser
// closes).
func (b *browser) screenshotOnFailure(name string) {
	b.t.Cleanup(func() {
		if b.t.Failed() {
			b.screenshot(name + "-failed")
		}
	})
}

// TestTestPageServed checks how the test page is served, and that only a
// GET that is not an upgrade gets it.
func TestTestPageServed(t *testing.T) {
	echo := echoUpstream(t)
	s := startCaddy(t, fmt.Sprintf(`{HTTP} {
	route /page/* {
		ws_to_tcp %[1]s {
			test_page
		}
		respond "next handler" 200
	}
	route {
		ws_to_tcp %[1]s
		respond "next handler" 200
	}
}
`, echo.addr))
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(method, path string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, s.httpURL(path), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: reading the body: %v", method, path, err)
		}
		return resp, string(body)
	}

	resp, body := get(http.MethodGet, "/page/x?token=abc")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /page/x: status %d, want 200", resp.StatusCode)
	}
	if body != string(testPageHTML) {
		t.Errorf("GET /page/x: the body is not the test page (%d bytes): %.200q", len(body), body)
	}
	for k, want := range map[string]string{
		"Content-Type":            "text/html; charset=utf-8",
		"X-Content-Type-Options":  "nosniff",
		"Content-Security-Policy": testPageCSP,
		"Referrer-Policy":         "no-referrer",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("GET /page/x: %s = %q, want %q", k, got, want)
		}
	}
	for _, c := range []struct{ method, path string }{
		{http.MethodPost, "/page/x"}, // only GET gets the page
		{http.MethodHead, "/page/x"},
		{http.MethodGet, "/other"}, // test_page off
	} {
		resp, body := get(c.method, c.path)
		if c.method == http.MethodHead {
			body = "next handler" // no body to a HEAD; the length tells
			if resp.ContentLength != int64(len("next handler")) {
				t.Errorf("HEAD %s: Content-Length %d, want the next handler's %d", c.path, resp.ContentLength, len(body))
			}
		}
		if resp.StatusCode != http.StatusOK || body != "next handler" {
			t.Errorf("%s %s: got %d %q, want the next handler's answer", c.method, c.path, resp.StatusCode, body)
		}
	}

	// The WebSocket still works on the page's path.
	ws := s.dial("/page/x", nil)
	defer ws.Close()
	wsRoundTrip(t, ws, []byte("through the page's path"))
}

// TestTestPageCSP checks that the policy allows exactly the page's inline
// script and style, by their hashes, and nothing inline besides.
func TestTestPageCSP(t *testing.T) {
	t.Parallel()
	if strings.Contains(testPageCSP, "unsafe-inline") || strings.Contains(testPageCSP, "unsafe-eval") {
		t.Errorf("CSP allows unsafe sources: %s", testPageCSP)
	}
	for _, el := range []string{"script", "style"} {
		ms := inlineElement(el).FindAllSubmatch(testPageHTML, -1)
		if len(ms) != 1 {
			t.Fatalf("testpage.html: %d inline <%s> elements, want 1", len(ms), el)
		}
		if !strings.Contains(testPageCSP, el+"-src 'sha256-") {
			t.Errorf("CSP has no hash for the <%s>: %s", el, testPageCSP)
		}
	}
	// Every asset is inline: no src= or href= to load.
	for _, attr := range []string{" src=", " href=", "@import", "url("} {
		if strings.Contains(string(testPageHTML), attr) {
			t.Errorf("testpage.html contains %q: the page must load nothing", attr)
		}
	}
}

// TestTestPageInBrowser loads the test page in headless Chromium through
// Caddy, connects through ws_to_tcp to a TCP echo server, sends text and
// hex, and checks what the page shows came back, then the close code.
func TestTestPageInBrowser(t *testing.T) {
	requireTools(t, "apt-get install -y chromium", chromiumPath)
	echo := echoUpstream(t)
	s := startCaddy(t, fmt.Sprintf(`{HTTP} {
	ws_to_tcp %s {
		test_page
	}
}
`, echo.addr))
	b := newBrowser(t)
	b.screenshotOnFailure(t.Name())

	pageURL := s.httpURL("/relay?room=1")
	b.do("loading the test page", 30*time.Second,
		chromedp.Navigate(pageURL),
		chromedp.WaitVisible(chromedp.ID("connect")),
	)
	wantURL := s.wsURL("/relay?room=1")
	if got, err := chromedp.Run(b.step(10*time.Second), chromedp.Value(chromedp.ID("url"))); err != nil || got != wantURL {
		t.Fatalf("#url = %q (%v), want the page's own WebSocket URL %q", got, err, wantURL)
	}
	if got := b.text("state"); got != "closed" {
		t.Errorf("#state before connecting = %q, want closed (did the script run? CSP?)", got)
	}

	b.do("connecting", 30*time.Second,
		chromedp.SetValue(chromedp.ID("subprotocol"), "binary"),
		chromedp.Click(chromedp.ID("connect")),
		chromedp.WaitVisible(chromedp.CSS(`#state[data-state="open"]`)),
	)
	if got := b.text("protocol"); got != "binary" {
		t.Errorf("#protocol = %q, want binary (the offered subprotocol, echoed)", got)
	}

	text := "hello, ws_to_tcp ✓"
	bin := []byte{0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, 0x0a}
	b.do("sending text", 10*time.Second,
		chromedp.SetValue(chromedp.ID("input"), text),
		chromedp.Click(chromedp.ID("send-text")),
	)
	// The echo server may return the two messages' bytes in one read or
	// several: wait for the text before sending the binary, so that the
	// order on the page is known, then for all of it.
	waitBytes := func(n int) {
		t.Helper()
		if _, err := chromedp.Run(b.step(20*time.Second), chromedp.Poll[bool](
			fmt.Sprintf(`document.getElementById("rx-bytes").textContent === "%d"`, n),
			chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second))); err != nil {
			t.Fatalf("waiting for #rx-bytes = %d: %v (it shows %q; error %q)", n, err, b.text("rx-bytes"), b.text("error"))
		}
	}
	waitBytes(len(text))
	b.do("sending hex", 10*time.Second,
		chromedp.SetValue(chromedp.ID("input"), "00 01 7f 80 0xfe,ff 0a"),
		chromedp.Click(chromedp.ID("send-hex")),
	)
	want := append([]byte(text), bin...)
	waitBytes(len(want))

	if got := b.text("rx-hex"); got != spacedHex(want) {
		t.Errorf("#rx-hex = %q, want %q", got, spacedHex(want))
	}
	if got := b.text("rx-text"); !strings.HasPrefix(got, text) {
		t.Errorf("#rx-text = %q, want it to start with %q", got, text)
	}
	if got := b.text("tx-bytes"); got != fmt.Sprint(len(want)) {
		t.Errorf("#tx-bytes = %q, want %d", got, len(want))
	}
	// The log shows each received message as text and hex; together they
	// are the bytes sent.
	recvHex, err := chromedp.Run(b.step(10*time.Second), chromedp.Evaluate[string](
		`Array.from(document.querySelectorAll("#log .msg.recv .hex")).map(e => e.textContent).join(" ")`))
	if err != nil || recvHex != spacedHex(want) {
		t.Errorf("the log's received messages in hex = %q (%v), want %q", recvHex, err, spacedHex(want))
	}
	if got := b.text("error"); got != "" {
		t.Errorf("#error = %q, want none", got)
	}

	b.do("disconnecting", 30*time.Second,
		chromedp.Click(chromedp.ID("disconnect")),
		chromedp.WaitVisible(chromedp.CSS(`#state[data-state="closed"]`)),
	)
	if got := b.text("close-code"); got != "1000" {
		t.Errorf("#close-code = %q, want 1000", got)
	}
	if got := b.text("close-clean"); got != "yes" {
		t.Errorf("#close-clean = %q, want yes", got)
	}
	b.screenshot(t.Name())
}

// spacedHex is how the page shows bytes: lower-case hex pairs separated by
// spaces.
func spacedHex(b []byte) string {
	parts := make([]string, len(b))
	for i := range b {
		parts[i] = hex.EncodeToString(b[i : i+1])
	}
	return strings.Join(parts, " ")
}

// TestTestPageBehindBasicAuth checks what the README's noVNC recipe relies
// on: behind Caddy's basic_auth, the browser sends the credentials the user
// gave for the page with the WebSocket handshake too, so the page's
// WebSocket passes.
func TestTestPageBehindBasicAuth(t *testing.T) {
	requireTools(t, "apt-get install -y chromium", chromiumPath)
	echo := echoUpstream(t)
	s := startCaddy(t, fmt.Sprintf(`{HTTP} {
	basic_auth {
		alice %s
	}
	ws_to_tcp %s {
		test_page
	}
}
`, bcryptHash(t, "open sesame"), echo.addr))
	// Without credentials: 401 for the page and for the WebSocket.
	if _, resp, err := s.tryDial("/", nil); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("WebSocket without credentials: %v %v, want 401", resp, err)
	}

	b := newBrowser(t)
	b.screenshotOnFailure(t.Name())
	b.basicAuth("alice", "open sesame")
	b.do("loading the test page", 30*time.Second,
		chromedp.Navigate(s.httpURL("/")),
		chromedp.WaitVisible(chromedp.ID("connect")),
	)
	if !strings.Contains(b.out.String(), "auth challenge for "+s.httpURL("/")) {
		t.Fatalf("the page loaded without an authentication challenge: is basic_auth on?")
	}
	b.do("connecting", 30*time.Second, chromedp.Click(chromedp.ID("connect")))
	// Open, or closed again (a refused handshake shows close code 1006).
	if _, err := chromedp.Run(b.step(20*time.Second), chromedp.Poll[bool](
		`(() => { const s = document.getElementById("state").textContent;
			return s === "open" || (s === "closed" && document.getElementById("close-code").textContent !== "-"); })()`,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second))); err != nil {
		t.Fatalf("the WebSocket neither opened nor closed: %v (state %q)", err, b.text("state"))
	}
	if got := b.text("state"); got != "open" {
		t.Fatalf("the WebSocket behind basic_auth did not open: state %q, close code %q", got, b.text("close-code"))
	}
	b.do("sending", 10*time.Second,
		chromedp.SetValue(chromedp.ID("input"), "authenticated"),
		chromedp.Click(chromedp.ID("send-text")),
	)
	if _, err := chromedp.Run(b.step(20*time.Second), chromedp.Poll[bool](
		`document.getElementById("rx-text").textContent === "authenticated"`,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second))); err != nil {
		t.Fatalf("no echo: %v (#rx-text %q)", err, b.text("rx-text"))
	}
	b.do("disconnecting", 30*time.Second,
		chromedp.Click(chromedp.ID("disconnect")),
		chromedp.WaitVisible(chromedp.CSS(`#state[data-state="closed"]`)),
	)
}

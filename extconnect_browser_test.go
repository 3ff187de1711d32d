package wstotcp

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Chromium opens a wss:// WebSocket over HTTP/2 (RFC 8441) when the page
// came over an HTTP/2 connection whose server advertises extended CONNECT,
// as Caddy does with GODEBUG=http2xconnect=1 (TestMain sets it). The admin
// API's transport shows that it did.

func TestTestPageOverHTTP2InChromium(t *testing.T) {
	requireTools(t, "apt-get install -y chromium", chromiumPath)
	echo := echoUpstream(t)
	s := startTLSSite(t, fmt.Sprintf(`{HTTPS} {
	{TLS}
	ws_to_tcp %s {
		test_page
	}
}
`, echo.addr))
	b := newBrowser(t) // the shared Chromium ignores certificate errors
	b.screenshotOnFailure(t.Name())
	b.do("loading the test page", 30*time.Second,
		chromedp.Navigate(fmt.Sprintf("https://localhost:%d/relay", s.httpsPort)),
		chromedp.WaitVisible(chromedp.ID("connect")),
	)
	b.do("connecting", 30*time.Second,
		chromedp.SetValue(chromedp.ID("subprotocol"), "binary"),
		chromedp.Click(chromedp.ID("connect")),
		chromedp.WaitVisible(chromedp.CSS(`#state[data-state="open"]`)),
	)
	list := s.waitConns(1)
	if len(list) != 1 || list[0].Transport != transportH2 {
		t.Fatalf("admin lists %+v, want one h2 tunnel", list)
	}
	text := "over HTTP/2 ✓"
	b.do("sending text", 10*time.Second,
		chromedp.SetValue(chromedp.ID("input"), text),
		chromedp.Click(chromedp.ID("send-text")),
	)
	if _, err := chromedp.Run(b.step(20*time.Second), chromedp.Poll[bool](
		fmt.Sprintf(`document.getElementById("rx-bytes").textContent === "%d"`, len(text)),
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second))); err != nil {
		t.Fatalf("waiting for the echo: %v (error %q)", err, b.text("error"))
	}
	if got := b.text("rx-text"); got != text {
		t.Errorf("#rx-text = %q, want %q", got, text)
	}
	b.do("disconnecting", 30*time.Second,
		chromedp.Click(chromedp.ID("disconnect")),
		chromedp.WaitVisible(chromedp.CSS(`#state[data-state="closed"]`)),
	)
	if got := b.text("close-code"); got != "1000" {
		t.Errorf("#close-code = %q, want 1000", got)
	}
	s.waitConns(0)
}

func TestNoVNCOverHTTP2InChromium(t *testing.T) {
	requireTools(t, "apt-get install -y novnc tigervnc-standalone-server x11-xserver-utils chromium",
		noVNCDir+"/vnc.html", noVNCDir+"/app/ui.js", xtigervncBin, xsetrootBin, chromiumPath)
	vnc := startVNCServer(t)
	s := startTLSSite(t, fmt.Sprintf(`{HTTPS} {
	{TLS}
	root * %s
	ws_to_tcp 127.0.0.1:%d
	file_server
}
`, noVNCDir, vnc.rfbPort))
	b := newBrowser(t) // the shared Chromium ignores certificate errors
	b.screenshotOnFailure(t.Name())
	url := fmt.Sprintf("https://localhost:%d/vnc.html?autoconnect=true&encrypt=1&host=localhost&port=%d&path=websockify&resize=off",
		s.httpsPort, s.httpsPort)
	b.do("loading vnc.html", 30*time.Second, chromedp.Navigate(url))
	if _, err := chromedp.Run(b.step(45*time.Second), chromedp.Poll[bool](
		`document.documentElement.classList.contains("noVNC_connected")`,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(40*time.Second))); err != nil {
		status, _ := chromedp.Run(b.step(5*time.Second), chromedp.Evaluate[string](
			`(document.getElementById("noVNC_status") || {}).textContent || ""`))
		t.Fatalf("noVNC did not reach its connected state: %v (status text %q)", err, status)
	}
	list := s.waitConns(1)
	if len(list) != 1 || list[0].Transport != transportH2 {
		t.Fatalf("admin lists %+v, want one h2 tunnel", list)
	}
	// The desktop arrives: the canvas takes the remote screen's size.
	if _, err := chromedp.Run(b.step(35*time.Second), chromedp.Poll[bool](
		fmt.Sprintf(`(() => { const c = document.querySelector("#noVNC_container canvas"); return !!c && c.width === %d && c.height === %d; })()`,
			desktopW, desktopH),
		chromedp.WithPollingInterval(200*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		t.Fatalf("the remote desktop did not arrive: %v", err)
	}
	if st, _ := chromedp.Run(b.step(10*time.Second), chromedp.Evaluate[string](`document.getElementById("noVNC_status").textContent`)); !strings.Contains(st, "Connected") {
		t.Errorf("noVNC status %q", st)
	}
	b.screenshot(t.Name())
}

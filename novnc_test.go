package wstotcp

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// noVNC end to end: a real VNC server (TigerVNC's Xtigervnc) with a
// red-on-blue grid as its desktop, noVNC's own files (Debian's package novnc) served by
// file_server, its WebSocket by ws_to_tcp on the same site, and headless
// Chromium running noVNC. The test reads the pixels noVNC drew.

const (
	noVNCDir     = "/usr/share/novnc"
	xtigervncBin = "/usr/bin/Xtigervnc"
	xsetrootBin  = "/usr/bin/xsetroot"

	desktopW, desktopH = 800, 600
)

// vncServer is an Xtigervnc started by a test.
type vncServer struct {
	display string // ":N"
	rfbPort int
}

// startVNCServer starts Xtigervnc on a free display (it picks one and
// tells it through -displayfd) with its RFB port on 127.0.0.1 only, no
// authentication, and paints its root window with a red and blue grid. It is stopped
// (SIGTERM to its PID, then SIGKILL) when the test ends.
func startVNCServer(t *testing.T) *vncServer {
	t.Helper()
	v := &vncServer{}
	withFreePorts(t, 1, func(ports []int) error {
		v.rfbPort = ports[0]
		return v.start(t)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if b, err := exec.CommandContext(ctx, xsetrootBin, "-display", v.display, "-mod", "5", "7", "-fg", "#ff0000", "-bg", "#0000ff").CombinedOutput(); err != nil {
		t.Fatalf("xsetroot -display %s -mod 5 7 -fg red -bg blue: %v\n%s", v.display, err, b)
	}
	return v
}

// start runs Xtigervnc on v.rfbPort and waits until it reports its display
// and accepts RFB connections; an error if it exits first (its port taken
// meanwhile, say).
func (v *vncServer) start(t *testing.T) error {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out := new(lockedBuffer)
	cmd := exec.Command(xtigervncBin,
		"-displayfd", "3", // the display it chose, written when it is ready
		"-rfbport", strconv.Itoa(v.rfbPort),
		"-localhost", // RFB on the loopback interface only
		"-SecurityTypes", "None",
		"-geometry", fmt.Sprintf("%dx%d", desktopW, desktopH),
		"-depth", "24",
		"-noreset", // keep the root window's colour when xsetroot disconnects
		"-nolisten", "tcp",
	)
	cmd.ExtraFiles = []*os.File{w} // fd 3
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		w.Close()
		t.Fatalf("starting %s: %v", xtigervncBin, err)
	}
	w.Close()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	exited := func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM) // only the process this test started
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("Xtigervnc output:\n%s", out.String())
		}
	})

	display := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		display <- strings.TrimSpace(line)
	}()
	select {
	case d := <-display:
		if _, err := strconv.Atoi(d); err != nil {
			return fmt.Errorf("Xtigervnc did not report a display (got %q):\n%s", d, out.String())
		}
		v.display = ":" + d
	case <-done:
		return fmt.Errorf("Xtigervnc exited at start:\n%s", out.String())
	case <-time.After(ioTimeout):
		t.Fatalf("Xtigervnc reported no display within %v:\n%s", ioTimeout, out.String())
	}
	eventually(t, fmt.Sprintf("Xtigervnc's RFB port %d to accept connections", v.rfbPort), func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", v.rfbPort), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil || exited()
	})
	if exited() {
		return fmt.Errorf("Xtigervnc exited:\n%s", out.String())
	}
	return nil
}

// TestNoVNCEndToEnd serves noVNC and its WebSocket from one Caddy site,
// opens vnc.html with autoconnect in Chromium, waits for noVNC's connected
// state and checks that the remote desktop (the grid xsetroot painted) is
// drawn on noVNC's canvas, pixel by pixel.
func TestNoVNCEndToEnd(t *testing.T) {
	requireTools(t, "apt-get install -y novnc tigervnc-standalone-server x11-xserver-utils chromium",
		noVNCDir+"/vnc.html", noVNCDir+"/app/ui.js", xtigervncBin, xsetrootBin, chromiumPath)
	vnc := startVNCServer(t)

	// No matcher: ws_to_tcp takes the WebSocket whatever its path (noVNC
	// uses "websockify"), and every other request falls through to
	// file_server, which ws_to_tcp is ordered before.
	s := startCaddy(t, fmt.Sprintf(`{HTTP} {
	root * %s
	ws_to_tcp 127.0.0.1:%d
	file_server
}
`, noVNCDir, vnc.rfbPort))
	b := newBrowser(t)
	b.screenshotOnFailure(t.Name())

	// noVNC 1.3 (Debian 12) reads host, port, path and autoconnect from the
	// query string (WebUtil.getConfigVar in app/ui.js).
	url := s.httpURL(fmt.Sprintf("/vnc.html?autoconnect=true&host=127.0.0.1&port=%d&path=websockify&resize=off", s.httpPort))
	b.do("loading vnc.html", 30*time.Second, chromedp.Navigate(url))

	// ui.js sets the class noVNC_connected on <html> in its connect
	// handler (updateVisualState('connected')), i.e. once the RFB
	// handshake is through.
	if _, err := chromedp.Run(b.step(45*time.Second), chromedp.Poll[bool](
		`document.documentElement.classList.contains("noVNC_connected")`,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(40*time.Second))); err != nil {
		status, _ := chromedp.Run(b.step(5*time.Second), chromedp.Evaluate[string](
			`(document.getElementById("noVNC_status") || {}).textContent || ""`))
		t.Fatalf("noVNC did not reach its connected state: %v (status text %q)", err, status)
	}
	status, err := chromedp.Run(b.step(10*time.Second), chromedp.Evaluate[string](
		`document.getElementById("noVNC_status").textContent`))
	if err != nil || !strings.Contains(status, "Connected") {
		t.Errorf("noVNC status text = %q (%v), want it to say Connected", status, err)
	}

	// The desktop: noVNC draws the framebuffer on a canvas the size of the
	// remote screen. xsetroot -mod 5 7 tiled the root window with a 16x16
	// bitmap (MakeModulaBitmap in xsetroot.c): a pixel is red when
	// (x%16)%5 == 0 or (y%16)%7 == 0, blue otherwise. Wait until the canvas
	// shows exactly that (a stray pixel or two allowed).
	const comparePixels = `(() => {
	const c = document.querySelector("#noVNC_container canvas");
	if (!c || c.width === 0 || c.height === 0) return {w: 0, h: 0, match: 0, red: 0, blue: 0};
	const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
	let match = 0, red = 0, blue = 0;
	for (let y = 0; y < c.height; y++) {
		for (let x = 0; x < c.width; x++) {
			const i = 4 * (y * c.width + x);
			const isRed = d[i] >= 250 && d[i + 1] <= 5 && d[i + 2] <= 5 && d[i + 3] === 255;
			const isBlue = d[i] <= 5 && d[i + 1] <= 5 && d[i + 2] >= 250 && d[i + 3] === 255;
			if (isRed) red++;
			if (isBlue) blue++;
			if (((x % 16) % 5 === 0 || (y % 16) % 7 === 0) ? isRed : isBlue) match++;
		}
	}
	return {w: c.width, h: c.height, match, red, blue};
})()`
	type pixels struct {
		W     int `json:"w"`
		H     int `json:"h"`
		Match int `json:"match"`
		Red   int `json:"red"`
		Blue  int `json:"blue"`
	}
	if _, err := chromedp.Run(b.step(35*time.Second), chromedp.Poll[bool](
		fmt.Sprintf(`(() => { const p = %s; return p.w === %d && p.h === %d && p.match >= p.w * p.h - 2; })()`,
			comparePixels, desktopW, desktopH),
		chromedp.WithPollingInterval(200*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		p, perr := chromedp.Run(b.step(10*time.Second), chromedp.Evaluate[pixels](comparePixels))
		t.Fatalf("the remote desktop is not drawn as painted: %v; canvas %dx%d (want %dx%d), %d of %d pixels as expected, %d red, %d blue (%v)",
			err, p.W, p.H, desktopW, desktopH, p.Match, p.W*p.H, p.Red, p.Blue, perr)
	}
	p, err := chromedp.Run(b.step(10*time.Second), chromedp.Evaluate[pixels](comparePixels))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("noVNC canvas %dx%d: %d of %d pixels as painted (%d red, %d blue)", p.W, p.H, p.Match, p.W*p.H, p.Red, p.Blue)
	b.screenshot(t.Name())
}

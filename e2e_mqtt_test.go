package wstotcp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// MQTT end to end: Debian's Mosquitto with only a plain TCP listener,
// behind ws_to_tcp (subprotocol mqtt), reached by MQTT.js over WebSocket
// and by mosquitto_sub and mosquitto_pub through caddy tcp-to-ws --listen
// (the README's MQTT recipe). What is checked is what the MQTT clients
// receive.

// e2eNodeDir holds the npm packages of the end-to-end tests (.ci/run runs
// npm ci there).
const e2eNodeDir = "testdata/e2e"

// needNodeModules skips the test unless node and the npm packages are
// installed.
func needNodeModules(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		unavailable(t, "node not installed")
	}
	if _, err := os.Stat(filepath.Join(e2eNodeDir, "node_modules")); err != nil {
		unavailable(t, "run `npm ci --prefix %s` first (.ci/run does)", e2eNodeDir)
	}
}

// startMosquitto runs a Mosquitto broker on a free loopback port, with a
// plain TCP listener only, and returns its port and its log.
func startMosquitto(t *testing.T) (int, *lockedBuffer) {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/mosquitto"); err != nil {
			unavailable(t, "mosquitto not installed (Debian: mosquitto; .ci/run installs it)")
		}
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := new(lockedBuffer)
	for attempt := 0; ; attempt++ {
		port := freePort(t)
		cfg := filepath.Join(dir, "mosquitto.conf")
		// user: a broker started as root would switch to the mosquitto
		// user, which cannot read the test's directory.
		os.WriteFile(cfg, []byte(fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\nuser %s\nlog_dest stderr\nlog_type all\nmax_packet_size 1000000\n", port, u.Username)), 0o600)
		cmd := exec.Command(bin, "-c", cfg)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Kill() // only the broker this test started
			<-exited
			if t.Failed() {
				t.Logf("mosquitto log (tail):\n%s", tail(out.String(), 8<<10))
			}
		})
		up := false
		eventually(t, "mosquitto to listen or exit", func() bool {
			select {
			case <-exited:
				return true
			default:
			}
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
				c.Close()
				up = true
			}
			return up
		})
		if up {
			return port, out
		}
		if attempt == 3 {
			t.Fatalf("mosquitto did not start:\n%s", out.String())
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func TestE2EMQTTJSOverWebSocket(t *testing.T) {
	needNodeModules(t)
	t.Parallel()
	port, _ := startMosquitto(t)
	s := serveHandler(t, provisioned(t, fmt.Sprintf(`{"upstreams": [{"dial": "127.0.0.1:%d"}], "subprotocols": ["mqtt"]}`, port)))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const count = 300
	cmd := exec.CommandContext(ctx, "node", "mqtt.mjs", s.wsURL("/mqtt"), fmt.Sprint(count))
	cmd.Dir = e2eNodeDir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node mqtt.mjs: %v\n%s%s", err, out, stderr.String())
	}
	var res struct {
		OK                 bool
		Count              int
		BytesToA, BytesToB int64
	}
	if err := json.Unmarshal(out, &res); err != nil || !res.OK || res.Count != count {
		t.Fatalf("node mqtt.mjs said %q (%v)", out, err)
	}
	t.Logf("MQTT.js: %d QoS 1 messages each way, %d and %d bytes, in order and byte-exact", count, res.BytesToA, res.BytesToB)
}

func TestE2EMosquittoClientsThroughTCPToWS(t *testing.T) {
	for _, prog := range []string{"mosquitto_sub", "mosquitto_pub"} {
		if _, err := exec.LookPath(prog); err != nil {
			unavailable(t, "%s not installed (Debian: mosquitto-clients)", prog)
		}
	}
	t.Parallel()
	port, brokerLog := startMosquitto(t)
	s := serveHandler(t, provisioned(t, fmt.Sprintf(`{"upstreams": [{"dial": "127.0.0.1:%d"}], "subprotocols": ["mqtt"]}`, port)))
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := runCaddy(t, buildCaddy(t), t.TempDir(), "tcp-to-ws", "--subprotocol", "mqtt", "--listen", listen, s.wsURL("/mqtt"))
	if err := p.waitListening(t, listen); err != nil {
		t.Fatal(err)
	}
	_, lport, _ := net.SplitHostPort(listen)

	// Three binary messages of increasing size, QoS 1.
	dir := t.TempDir()
	var files []string
	var want []byte
	for i, size := range []int{1000, 65536, 300 << 10} {
		b := make([]byte, size)
		rand.Read(b)
		f := filepath.Join(dir, fmt.Sprint("msg", i))
		os.WriteFile(f, b, 0o600)
		files = append(files, f)
		want = append(want, b...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sub := exec.CommandContext(ctx, "mosquitto_sub", "-h", "127.0.0.1", "-p", lport, "-i", "e2e-sub",
		"-t", "e2e/cli", "-q", "1", "-C", fmt.Sprint(len(files)), "-N")
	var got, subErr bytes.Buffer
	sub.Stdout, sub.Stderr = &got, &subErr
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "mosquitto_sub's subscription at the broker", func() bool {
		return strings.Contains(brokerLog.String(), "Received SUBSCRIBE from e2e-sub")
	})
	for _, f := range files {
		pub := exec.CommandContext(ctx, "mosquitto_pub", "-h", "127.0.0.1", "-p", lport, "-i", "e2e-pub",
			"-t", "e2e/cli", "-q", "1", "-f", f)
		if out, err := pub.CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub -f %s: %v\n%s", f, err, out)
		}
	}
	if err := sub.Wait(); err != nil {
		t.Fatalf("mosquitto_sub: %v\n%s", err, subErr.String())
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("mosquitto_sub printed %d bytes, not the %d bytes published", got.Len(), len(want))
	}
	if !strings.Contains(brokerLog.String(), "New client connected from 127.0.0.1") {
		t.Fatal("the broker did not see the clients")
	}
}

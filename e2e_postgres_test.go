package wstotcp

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// PostgreSQL end to end: Debian's PostgreSQL with password (SCRAM)
// authentication on a loopback port, reached by Neon's serverless driver
// through ws_to_tcp as a drop-in for Neon's wsproxy (`?address=host:port`,
// allow_targets), and by psql through caddy tcp-to-ws --listen (the
// README's PostgreSQL recipe). What is checked is what SQL returns.

const pgPassword = "e2e-s3cret"

// startPostgres runs initdb and postgres in a new directory, as the
// postgres user when the test runs as root (PostgreSQL refuses root), and
// returns the server's port.
func startPostgres(t *testing.T) int {
	t.Helper()
	// Debian keeps the server's programs in a directory per major version,
	// which its pg_config (postgresql-common) names.
	pgConfig, _ := exec.Command("pg_config", "--bindir").Output()
	bindir := strings.TrimSpace(string(pgConfig))
	if _, err := os.Stat(filepath.Join(bindir, "initdb")); bindir == "" || err != nil {
		unavailable(t, "PostgreSQL not installed (Debian: postgresql; .ci/run installs it)")
	}
	// Not t.TempDir: its parent is private to the test's user.
	dir, err := os.MkdirTemp("", "e2e-postgres-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		pg, err := user.Lookup("postgres")
		if err != nil {
			unavailable(t, "running as root and there is no postgres user to run PostgreSQL as")
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		os.Chown(dir, uid, gid)
	}
	run := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(bindir, name), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = dir
		return cmd
	}
	pwfile := filepath.Join(dir, "pwfile")
	os.WriteFile(pwfile, []byte(pgPassword+"\n"), 0o644)
	data := filepath.Join(dir, "data")
	if out, err := run("initdb", "-D", data, "-U", "app", "--auth=scram-sha-256", "--pwfile="+pwfile, "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	out := new(lockedBuffer)
	for attempt := 0; ; attempt++ {
		port := freePort(t)
		cmd := run("postgres", "-D", data, "-k", dir, "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-c", "fsync=off")
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGINT) // fast shutdown of the server this test started
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
			if t.Failed() {
				t.Logf("postgres log (tail):\n%s", tail(out.String(), 8<<10))
			}
		})
		up := false
		eventually(t, "postgres to accept connections or exit", func() bool {
			select {
			case <-exited:
				return true
			default:
			}
			up = strings.Contains(out.String(), "ready to accept connections")
			return up
		})
		if up {
			return port
		}
		if attempt == 3 {
			t.Fatalf("postgres did not start:\n%s", out.String())
		}
	}
}

// psql runs psql against host:port with the test's password and returns
// its unaligned output.
func psql(t *testing.T, host, port, sql string) string {
	t.Helper()
	if _, err := exec.LookPath("psql"); err != nil {
		unavailable(t, "psql not installed (Debian: postgresql-client)")
	}
	cmd := exec.Command("psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", port, "-U", "app", "-d", "postgres", "-c", sql)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+pgPassword, "PGCONNECT_TIMEOUT=30")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql -c %q: %v\n%s", sql, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestE2EPostgres(t *testing.T) {
	t.Parallel()
	needNodeModules(t)
	pgPort := startPostgres(t)
	other := newUpstream(t, "tcp", "127.0.0.1:0") // outside allow_targets
	// The Caddyfile's `to {http.request.uri.query.address}` and
	// `allow_targets 127.0.0.1:<port>`.
	s := serveHandler(t, provisioned(t, fmt.Sprintf(`{"upstreams": [{"dial": "{http.request.uri.query.address}"}],
		"allow_targets": ["127.0.0.1:%d"]}`, pgPort)))
	pgAddr := fmt.Sprintf("127.0.0.1:%d", pgPort)

	// Neon's driver: DDL, thousands of rows, a bytea, concurrent clients.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "neon.mjs", s.host+"/v2")
	cmd.Dir = e2eNodeDir
	cmd.Env = append(os.Environ(), fmt.Sprintf("PGURL=postgres://app:%s@%s/postgres", pgPassword, pgAddr))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node neon.mjs: %v\n%s%s", err, out, stderr.String())
	}
	var res struct {
		OK         bool
		Rows       int
		Total      string
		Names      string
		BlobBytes  int
		BlobDigest string
		Sums       []int
	}
	if err := json.Unmarshal(out, &res); err != nil || !res.OK {
		t.Fatalf("node neon.mjs said %q (%v)", out, err)
	}
	var names []string
	wantSums := make([]int, 8)
	for i := range 5000 {
		names = append(names, fmt.Sprint("item-", i))
		wantSums[i%8] += i
	}
	sum := md5.Sum([]byte(strings.Join(names, ",")))
	if res.Rows != 5000 || res.Total != "15621875.00" || res.Names != hex.EncodeToString(sum[:]) || fmt.Sprint(res.Sums) != fmt.Sprint(wantSums) {
		t.Fatalf("the driver saw %+v", res)
	}
	// What the database itself holds, asked directly.
	if got := psql(t, "127.0.0.1", fmt.Sprint(pgPort), "SELECT encode(sha256(data), 'hex') FROM e2e_blobs WHERE id = 1"); got != res.BlobDigest {
		t.Fatalf("the stored bytea's digest is %q, the driver sent %q", got, res.BlobDigest)
	}
	t.Logf("Neon's driver: 5000 rows in one transaction, a %d-byte bytea back byte-exact, 8 concurrent clients", res.BlobBytes)

	// An address outside allow_targets: 403, and nothing is dialled.
	_, resp, err := websocket.DefaultDialer.Dial(s.wsURL("/v2?address="+other.addr), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("address outside allow_targets: %v, %v; want 403", resp, err)
	}
	select {
	case c := <-other.conns:
		c.Close()
		t.Fatal("the address outside allow_targets was dialled")
	default:
	}

	// psql through caddy tcp-to-ws --listen.
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := runCaddy(t, buildCaddy(t), t.TempDir(), "tcp-to-ws", "--listen", listen, s.wsURL("/v2?address="+pgAddr))
	if err := p.waitListening(t, listen); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(listen)
	if got := psql(t, host, port, "SELECT count(*), sum(price) FROM e2e_items"); got != "5000|15621875.00" {
		t.Fatalf("psql through tcp-to-ws: %q", got)
	}
	got := psql(t, host, port, "CREATE TABLE e2e_psql AS SELECT g AS id, repeat(md5(g::text), 40) AS pad FROM generate_series(1, 20000) g; SELECT count(*), md5(string_agg(pad, '' ORDER BY id)) FROM e2e_psql")
	direct := psql(t, "127.0.0.1", fmt.Sprint(pgPort), "SELECT count(*), md5(string_agg(pad, '' ORDER BY id)) FROM e2e_psql")
	if lines := strings.Split(got, "\n"); lines[len(lines)-1] != direct || !strings.HasPrefix(direct, "20000|") {
		t.Fatalf("psql through tcp-to-ws: %q, directly: %q", got, direct)
	}
}

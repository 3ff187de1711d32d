//go:build unix

// Package testbin builds the Caddy of this checkout (./cmd/caddy) for the
// tests that run it as a subprocess, the way users run it: the root
// package's command and end-to-end tests and the cluster tests. It is
// imported by tests only.
package testbin

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
)

var (
	mu    sync.Mutex
	built = map[bool]string{}
)

// Caddy returns the path of ./cmd/caddy built from the module at root,
// with the race detector when race is true.
//
// The binary lives in a directory of the system's temporary directory
// named after the checkout, so that a later run relinks nothing when
// nothing changed (go build leaves an up-to-date binary alone: a link of
// Caddy costs seconds of CPU), and test processes that run at once — the
// packages of `go test ./...`, the root package's shards — share one
// build: they take turns under a file lock.
func Caddy(root string, race bool) (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if bin := built[race]; bin != "" {
		return bin, nil
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), "caddy-ws-to-tcp-test-"+hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	name, args := "caddy", []string{"build"}
	if race {
		name, args = "caddy-race", append(args, "-race")
	}
	bin := filepath.Join(dir, name)
	lock, err := os.OpenFile(bin+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close() // and with it the lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("locking %s: %w", lock.Name(), err)
	}
	cmd := exec.Command("go", append(args, "-o", bin, "./cmd/caddy")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %v (in %s): %v\n%s", cmd.Args[1:], root, err, out)
	}
	built[race] = bin
	return bin, nil
}

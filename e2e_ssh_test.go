package wstotcp

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// OpenSSH end to end: Debian's sshd on a loopback port, behind ws_to_tcp
// (a provisioned handler: Caddy itself adds nothing the applications'
// tests check, and without it they run in parallel), and ssh and scp with
// `ProxyCommand caddy tcp-to-ws ...` (the README's SSH recipe). What is
// checked is what sshd's shell and ssh's user see: file digests.

// sshFixture is an sshd run by the test and an ssh configuration that
// reaches it through a WebSocket URL.
type sshFixture struct {
	dir    string
	port   int
	user   string
	sshCfg string // an ssh_config file: key, known host, ProxyCommand
	env    []string
}

// startSSHD starts sshd as the current user with its own host key and
// configuration in a temporary directory; it accepts one generated key.
func startSSHD(t *testing.T) *sshFixture {
	t.Helper()
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		if sshd, err = exec.LookPath("/usr/sbin/sshd"); err != nil {
			unavailable(t, "sshd not installed (Debian: openssh-server; .ci/run installs it)")
		}
	}
	for _, prog := range []string{"ssh", "scp", "ssh-keygen"} {
		if _, err := exec.LookPath(prog); err != nil {
			unavailable(t, "%s not installed (Debian: openssh-client)", prog)
		}
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	if u.Uid == "0" {
		// sshd running as root insists on its privilege separation
		// directory.
		os.MkdirAll("/run/sshd", 0o755)
	}
	f := &sshFixture{dir: t.TempDir(), user: u.Username}
	keygen := func(name string) {
		out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(f.dir, name)).CombinedOutput()
		if err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	keygen("host_key")
	keygen("user_key")
	pub, _ := os.ReadFile(filepath.Join(f.dir, "user_key.pub"))
	os.WriteFile(filepath.Join(f.dir, "authorized_keys"), pub, 0o600)
	hostPub, _ := os.ReadFile(filepath.Join(f.dir, "host_key.pub"))
	os.WriteFile(filepath.Join(f.dir, "known_hosts"), append([]byte("e2e-sshd "), hostPub...), 0o600)

	var proc *exec.Cmd
	var out lockedBuffer
	for attempt := 0; ; attempt++ {
		f.port = freePort(t)
		// SetEnv SHLVL=1: bash run by sshd reads the account's ~/.bashrc
		// when it is a top-level shell, and one that sets up tools (pyenv's
		// init on these machines: hundreds of processes) cost 0.7 s of CPU
		// per ssh command (8 s of the test's 20). With SHLVL set, the
		// remote shell counts itself a nested one and skips it.
		cfg := filepath.Join(f.dir, "sshd_config")
		os.WriteFile(cfg, []byte(fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PidFile none
Subsystem sftp internal-sftp
SetEnv SHLVL=1
`, f.port, filepath.Join(f.dir, "host_key"), filepath.Join(f.dir, "authorized_keys"))), 0o600)
		proc = exec.Command(sshd, "-D", "-e", "-f", cfg)
		proc.Stdout, proc.Stderr = &out, &out
		if err := proc.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { proc.Wait(); close(exited) }()
		t.Cleanup(func() {
			proc.Process.Kill() // only the sshd this test started
			<-exited
			if t.Failed() {
				t.Logf("sshd output:\n%s", out.String())
			}
		})
		listening := false
		eventually(t, "sshd to listen or exit", func() bool {
			select {
			case <-exited:
				return true
			default:
			}
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", f.port))
			if err == nil {
				c.Close()
				listening = true
			}
			return listening
		})
		if listening {
			break
		}
		if attempt == 3 {
			t.Fatalf("sshd did not start:\n%s", out.String())
		}
	}
	f.env = caddyEnv(t)
	return f
}

// through writes the ssh configuration that reaches sshd through the
// WebSocket at wsURL with the built caddy tcp-to-ws.
func (f *sshFixture) through(t *testing.T, wsURL string) {
	f.sshCfg = filepath.Join(f.dir, "ssh_config")
	os.WriteFile(f.sshCfg, []byte(fmt.Sprintf(`Host e2e-sshd
	User %s
	IdentityFile %s
	IdentitiesOnly yes
	UserKnownHostsFile %s
	StrictHostKeyChecking yes
	BatchMode yes
	ProxyCommand %s tcp-to-ws %s
`, f.user, filepath.Join(f.dir, "user_key"), filepath.Join(f.dir, "known_hosts"), buildCaddy(t), wsURL)), 0o600)
}

// ssh runs ssh with the fixture's configuration.
func (f *sshFixture) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, append([]string{"-F", f.sshCfg}, args...)...)
	cmd.Env = f.env
	return cmd
}

// roundTrip uploads data with ssh into a file that sshd's shell digests,
// then downloads the file, and checks both digests.
func (f *sshFixture) roundTrip(name string, data []byte) error {
	want := sha256.Sum256(data)
	remote := filepath.Join(f.dir, name)
	up := f.command("ssh", "e2e-sshd", "cat > "+remote+" && sha256sum "+remote)
	up.Stdin = bytes.NewReader(data)
	var stderr bytes.Buffer
	up.Stderr = &stderr
	out, err := up.Output()
	if err != nil {
		return fmt.Errorf("upload: %v\n%s", err, stderr.String())
	}
	if got := strings.Fields(string(out)); len(got) == 0 || got[0] != hex.EncodeToString(want[:]) {
		return fmt.Errorf("upload: sshd's shell saw digest %q, want %x", out, want)
	}
	down := f.command("ssh", "e2e-sshd", "cat "+remote)
	stderr.Reset()
	down.Stderr = &stderr
	got, err := down.Output()
	if err != nil {
		return fmt.Errorf("download: %v\n%s", err, stderr.String())
	}
	if sha256.Sum256(got) != want {
		return fmt.Errorf("download: %d bytes with another digest than the %d bytes uploaded", len(got), len(data))
	}
	return nil
}

func TestE2ESSH(t *testing.T) {
	t.Parallel()
	f := startSSHD(t)
	s := serveHandler(t, provisioned(t, fmt.Sprintf(`{"upstreams": [{"dial": "127.0.0.1:%d"}]}`, f.port)))
	f.through(t, s.wsURL("/ssh"))

	// MiBs each way in one session: twice ssh's channel window and well
	// past the relay's buffers, so that flow control and backpressure on
	// the way are exercised; more only costs CPU under -race (the relay's
	// own tests push far more through it).
	data := make([]byte, 4<<20)
	rand.Read(data)
	if err := f.roundTrip("big", data); err != nil {
		t.Fatal(err)
	}

	// Parallel sessions, each its own WebSocket.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := make([]byte, (1+i)<<19)
			rand.Read(d)
			errs <- f.roundTrip(fmt.Sprintf("parallel-%d", i), d)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}

	// scp both ways.
	local := filepath.Join(t.TempDir(), "local")
	os.WriteFile(local, data[:2<<20], 0o600)
	back := local + ".back"
	remote := "e2e-sshd:" + filepath.Join(f.dir, "scp-copy")
	for _, args := range [][]string{{local, remote}, {remote, back}} {
		if out, err := f.command("scp", append([]string{"-q"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("scp %v: %v\n%s", args, err, out)
		}
	}
	got, _ := os.ReadFile(back)
	if sha256.Sum256(got) != sha256.Sum256(data[:2<<20]) {
		t.Fatalf("scp: %d bytes came back with another digest", len(got))
	}
}

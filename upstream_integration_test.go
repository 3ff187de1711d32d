package wstotcp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestUpstreamForms(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "up.sock")
	unix := newUpstream(t, "unix", sock)
	v4 := newUpstream(t, "tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(v4.addr)
	forms := map[string]*upstream{
		"/v4":   v4,
		"/tcp":  v4,
		"/dns":  v4,
		"/unix": unix,
	}
	sites := `{HTTP} {
	route /v4 {
		ws_to_tcp ` + v4.addr + `
	}
	route /tcp {
		ws_to_tcp tcp/` + v4.addr + `
	}
	route /dns {
		ws_to_tcp localhost:` + port + `
	}
	route /unix {
		ws_to_tcp ` + unix.addr + `
	}
`
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close()
		v6 := newUpstream(t, "tcp", "[::1]:0")
		forms["/v6"] = v6
		sites += `	route /v6 {
		ws_to_tcp ` + v6.addr + `
	}
`
	} else {
		t.Logf("no IPv6 loopback here (%v): the [::1] form is covered by the adapt test only", err)
	}
	s := startCaddy(t, sites+"}")
	for path, up := range forms {
		t.Run(path[1:], func(t *testing.T) {
			c := s.dial(path, nil)
			defer c.Close()
			uc := up.accept(t)
			roundTrip(t, c, uc, "via "+path)
			// a client Close half-closes the upstream: it reads EOF
			c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
			readEOF(t, uc, ioTimeout)
		})
	}
}

func TestTLSUpstream(t *testing.T) {
	dir := t.TempDir()
	cert, caFile := selfSigned(t, dir, "upstream.test")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	up := &upstream{ln: ln, conns: make(chan net.Conn, 8), addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.SetDeadline(time.Now().Add(ioTimeout))
				if c.(*tls.Conn).Handshake() != nil {
					c.Close()
					return
				}
				c.SetDeadline(time.Time{})
				up.conns <- c
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })

	s := startCaddy(t, `{HTTP} {
	route /verified {
		ws_to_tcp tls/`+up.addr+` {
			upstream_tls {
				ca `+caFile+`
				server_name upstream.test
			}
		}
	}
	route /wrongname {
		ws_to_tcp tls/`+up.addr+` {
			upstream_tls {
				ca `+caFile+`
				server_name other.test
			}
		}
	}
	route /insecure {
		ws_to_tcp tls/`+up.addr+` {
			upstream_tls {
				insecure_skip_verify
			}
		}
	}
}`)
	for _, path := range []string{"/verified", "/insecure"} {
		c := s.dial(path, nil)
		uc := up.accept(t)
		roundTrip(t, c, uc, "over TLS "+path)
		c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
		readEOF(t, uc, ioTimeout) // close_notify after the last byte
		c.Close()
	}
	// A certificate that does not match: the dial fails, 502, no upgrade.
	_, resp, err := s.tryDial("/wrongname", nil)
	if err == nil || resp == nil || resp.StatusCode != 502 {
		t.Fatalf("wrong server name: want 502, got %v %v", resp, err)
	}
}

// selfSigned makes a CA-less self-signed certificate for name and writes
// it as a PEM file to use as `ca`.
func selfSigned(t testing.TB, dir, name string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, caFile
}

func TestRefusedUpstreamIs502WithoutUpgrade(t *testing.T) {
	t.Parallel()
	addr := refusedAddr(t)
	s := serveJSON(t, `{"upstreams": [{"dial": "`+addr+`"}]}`)
	c, resp, err := s.tryDial("/", nil)
	if err == nil {
		c.Close()
		t.Fatal("upgraded to a refused upstream")
	}
	if resp == nil || resp.StatusCode != 502 {
		t.Fatalf("want 502, got %v (%v)", resp, err)
	}
	if resp.Header.Get("Upgrade") != "" {
		t.Fatal("a 502 carries an Upgrade header")
	}
}

// An upstream whose accept queue is full drops our SYN: the handshake never
// completes, and dial_timeout gives 504.
func TestUnansweredHandshakeIs504AfterDialTimeout(t *testing.T) {
	t.Parallel()
	addr := blackholeListener(t)
	s := serveJSON(t, `{"upstreams": [{"dial": "`+addr+`"}], "dial_timeout": "200ms"}`)
	c, resp, err := s.tryDial("/", nil)
	if err == nil {
		c.Close()
		t.Fatal("upgraded although the upstream never answered")
	}
	if resp == nil || resp.StatusCode != 504 {
		t.Fatalf("want 504, got %v (%v)", resp, err)
	}
}

// blackholeListener returns the address of a listening socket with a
// backlog of 0 whose queue it has filled, so that new SYNs are dropped.
func blackholeListener(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := net.JoinHostPort("127.0.0.1", itoa(sa.(*syscall.SockaddrInet4).Port))
	for i := 0; i < 16; i++ {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			return addr // the queue is full: SYNs are dropped now
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("could not fill the accept queue")
	return ""
}

func itoa(n int) string { return big.NewInt(int64(n)).String() }

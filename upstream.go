package wstotcp

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// Upstream is one address to relay to.
type Upstream struct {
	// The address: `host:port`, `tcp/host:port`, `unix//path/to.sock` or
	// `tls/host:port`. IPv6 literals in brackets: `[::1]:5900`.
	Dial string `json:"dial,omitempty"`

	network string // "tcp" or "unix"
	address string
	useTLS  bool

	// template: Dial has placeholders; it is expanded and checked against
	// allow_targets per request (targets.go), never dialled as is.
	template bool
	// serverName is the TLS server name of a dynamic target dialled by the
	// IP address allow_targets checked; empty: the address's host.
	serverName string
}

// UpstreamTLS configures TLS to `tls/` upstreams.
type UpstreamTLS struct {
	// A PEM file of CA certificates that sign the upstream's certificate.
	// Default: the system's roots.
	CA string `json:"ca,omitempty"`

	// The server name sent (SNI) and checked in the upstream's certificate.
	// Default: the host of the upstream address.
	ServerName string `json:"server_name,omitempty"`

	// Accept any upstream certificate. Only for testing: it gives up the
	// protection TLS gives. Default: false.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
}

// parse splits the dial address into network and address.
func (u *Upstream) parse() error {
	addr := strings.TrimSpace(u.Dial)
	if addr == "" {
		return fmt.Errorf("empty upstream address")
	}
	if strings.Contains(addr, "{") {
		// Expanded per request; provisionTargets refuses it without
		// allow_targets, so that a client cannot pick any host.
		u.template = true
		return nil
	}
	network := "tcp"
	switch {
	case strings.HasPrefix(addr, "unix/"):
		u.network, u.address = "unix", strings.TrimPrefix(addr, "unix/")
		if u.address == "" {
			return fmt.Errorf("%q: missing socket path", addr)
		}
		return nil
	case strings.HasPrefix(addr, "tls/"):
		u.useTLS = true
		addr = strings.TrimPrefix(addr, "tls/")
	case strings.HasPrefix(addr, "tcp/"):
		addr = strings.TrimPrefix(addr, "tcp/")
	case strings.Contains(addr, "://"):
		return fmt.Errorf("%q: use host:port, tcp/host:port, tls/host:port or unix//path, not a URL", addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %v", u.Dial, err)
	}
	if host == "" {
		return fmt.Errorf("%q: missing host", u.Dial)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 1 to 65535", u.Dial, port)
	}
	u.network, u.address = network, addr
	return nil
}

func (t *UpstreamTLS) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t == nil {
		return cfg, nil
	}
	cfg.ServerName = t.ServerName
	cfg.InsecureSkipVerify = t.InsecureSkipVerify
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, settingError("upstream_tls.ca", "", "%v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, settingError("upstream_tls.ca", "", "no PEM certificate in %s", t.CA)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

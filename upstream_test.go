package wstotcp

import (
	"strings"
	"testing"
)

func TestUpstreamParse(t *testing.T) {
	tests := []struct {
		dial    string
		network string
		address string
		useTLS  bool
		err     string // a substring of the error; "" for none
		// template: placeholders, expanded per request; Provision refuses
		// them without allow_targets (TestTargetsProvisionErrors)
		template bool
	}{
		// good forms
		{dial: "127.0.0.1:5900", network: "tcp", address: "127.0.0.1:5900"},
		{dial: "tcp/127.0.0.1:1883", network: "tcp", address: "127.0.0.1:1883"},
		{dial: "[::1]:5900", network: "tcp", address: "[::1]:5900"},
		{dial: "tcp/[::1]:5900", network: "tcp", address: "[::1]:5900"},
		{dial: "[fe80::1%eth0]:22", network: "tcp", address: "[fe80::1%eth0]:22"},
		{dial: "vnc.internal.example:5901", network: "tcp", address: "vnc.internal.example:5901"},
		{dial: "localhost:1", network: "tcp", address: "localhost:1"},
		{dial: "localhost:65535", network: "tcp", address: "localhost:65535"},
		{dial: "  127.0.0.1:23\t", network: "tcp", address: "127.0.0.1:23"},
		{dial: "unix//run/vnc/display0.sock", network: "unix", address: "/run/vnc/display0.sock"},
		{dial: "unix/relative.sock", network: "unix", address: "relative.sock"},
		{dial: "tls/vnc.example:5901", network: "tcp", address: "vnc.example:5901", useTLS: true},
		{dial: "tls/[::1]:443", network: "tcp", address: "[::1]:443", useTLS: true},

		// bad forms
		{dial: "", err: "empty upstream address"},
		{dial: "   ", err: "empty upstream address"},
		{dial: "ws://x", err: "not a URL"},
		{dial: "http://127.0.0.1:8080", err: "not a URL"},
		{dial: "unix:///run/vnc.sock", err: "not a URL"},
		{dial: "127.0.0.1:{http.request.uri.query.port}", template: true},
		{dial: "{http.request.host}:5900", template: true},
		{dial: "tls/{http.vars.target}", template: true},
		{dial: "127.0.0.1", err: "missing port"},
		{dial: "tcp/", err: "missing port"},
		{dial: "::1:5900", err: "too many colons"},
		{dial: "127.0.0.1:0", err: `port "0" is not a number from 1 to 65535`},
		{dial: "127.0.0.1:65536", err: `port "65536"`},
		{dial: "127.0.0.1:70000", err: `port "70000"`},
		{dial: "127.0.0.1:-1", err: `port "-1"`},
		{dial: "127.0.0.1:vnc", err: `port "vnc"`},
		{dial: "127.0.0.1:", err: `port ""`},
		{dial: ":5900", err: "missing host"},
		{dial: "tls/:443", err: "missing host"},
		{dial: "tcp/[]:5900", err: "missing host"},
		{dial: "unix/", err: "missing socket path"},
	}
	for _, tt := range tests {
		t.Run(tt.dial, func(t *testing.T) {
			u := &Upstream{Dial: tt.dial}
			err := u.parse()
			if tt.err != "" {
				if err == nil {
					t.Fatalf("parse(%q) = network %q, address %q, want an error containing %q",
						tt.dial, u.network, u.address, tt.err)
				}
				if !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parse(%q) error %q does not contain %q", tt.dial, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parse(%q): %v", tt.dial, err)
			}
			if u.template != tt.template {
				t.Fatalf("parse(%q): template %v, want %v", tt.dial, u.template, tt.template)
			}
			if u.network != tt.network || u.address != tt.address || u.useTLS != tt.useTLS {
				t.Errorf("parse(%q) = network %q, address %q, useTLS %v; want %q, %q, %v",
					tt.dial, u.network, u.address, u.useTLS, tt.network, tt.address, tt.useTLS)
			}
		})
	}
}

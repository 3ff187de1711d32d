package wstotcp

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// fakeDNS answers from a table, so that tests never ask a real resolver
// about made-up names.
func fakeDNS(table map[string][]string) func(context.Context, string) ([]netip.Addr, error) {
	return func(_ context.Context, host string) ([]netip.Addr, error) {
		list, ok := table[host]
		if !ok {
			return nil, errors.New("no such host")
		}
		var out []netip.Addr
		for _, s := range list {
			out = append(out, netip.MustParseAddr(s))
		}
		return out, nil
	}
}

func TestAllowListPatterns(t *testing.T) {
	t.Parallel()
	good := []string{
		"10.0.0.0/8:5900-5999", "10.0.0.0/8", "127.0.0.1:5900", "127.0.0.1", "[::1]:5901", "::1",
		"fd00::/8", "[fd00::/8]:5900", "[::1]", "*.vnc.internal:5900", "localhost", "vnc-*.lan:*",
		"unix//run/vnc/*.sock", "unix//run/vnc/display[0-9].sock", "host_1.example:1-65535",
	}
	for _, p := range good {
		if _, err := compileAllowList([]string{p}); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
	bad := map[string]string{
		"":                     "empty",
		"unix/relative/*.sock": "absolute",
		"unix//run/[":          "bad path glob",
		"tcp/10.0.0.1:5900":    "write",
		"http://x":             "write",
		"10.0.0.0/8:":          "missing port",
		"10.0.0.0/8:0":         "not a port",
		"10.0.0.0/8:5999-5900": "not a port",
		"10.0.0.0/8:65536":     "not a port",
		"10.0.0.0/8:vnc":       "not a port",
		"fd00::/8:5900":        "brackets",
		"[::1":                 "missing ]",
		"[::1]x":               "unexpected",
		"[vnc.lan]:5900":       "not an IPv6",
		"vnc..lan":             "empty label",
		"vnc/lan":              "not an IP address",
		"10.0.0.0/33":          "not an IP address",
	}
	for p, want := range bad {
		_, err := compileAllowList([]string{p})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one containing %q", p, err, want)
		}
	}
}

func TestAllowListCheckHost(t *testing.T) {
	t.Parallel()
	dns := fakeDNS(map[string][]string{
		"localhost":          {"127.0.0.1"},
		"dual.test":          {"127.0.0.1", "::1"},
		"inside.test":        {"10.1.2.3"},
		"mixed.test":         {"10.1.2.3", "192.0.2.7"},
		"vm1.vnc.internal":   {"192.0.2.10"},
		"meta.vnc.internal":  {"169.254.169.254"},
		"any.vnc.internal":   {"0.0.0.0"},
		"mapped.test":        {"::ffff:10.9.9.9"},
		"a.b.vnc.internal":   {"192.0.2.11"},
		"vnc-7.lan":          {"192.0.2.12"},
		"link6.vnc.internal": {"fe80::1"},
	})
	tests := []struct {
		rules []string
		host  string
		port  uint16
		dial  string // the address to dial; "" when refused
		err   string // a substring of the refusal
	}{
		// IP literals against address rules
		{[]string{"10.0.0.0/8:5900-5999"}, "10.1.2.3", 5901, "10.1.2.3", ""},
		{[]string{"10.0.0.0/8:5900-5999"}, "10.1.2.3", 6000, "", "not allowed"},
		{[]string{"10.0.0.0/8:5900-5999"}, "11.1.2.3", 5901, "", "not allowed"},
		{[]string{"10.0.0.0/8"}, "10.1.2.3", 22, "10.1.2.3", ""},
		{[]string{"127.0.0.1:5900"}, "127.0.0.1", 5900, "127.0.0.1", ""},
		{[]string{"127.0.0.1:5900"}, "127.0.0.2", 5900, "", "not allowed"},
		{[]string{"[::1]:5901"}, "::1", 5901, "::1", ""},
		{[]string{"[::1]:5901"}, "::1", 5900, "", "not allowed"},
		{[]string{"127.0.0.0/8"}, "::ffff:127.0.0.1", 5900, "127.0.0.1", ""}, // mapped: checked as IPv4
		{[]string{"10.0.0.0/8"}, "::ffff:127.0.0.1", 5900, "", "not allowed"},
		{[]string{"fe80::/10"}, "fe80::1%eth0", 5900, "", "not allowed"}, // zones never match
		// names resolved and every address checked
		{[]string{"10.0.0.0/8"}, "localhost", 5900, "", "resolves to 127.0.0.1"},
		{[]string{"127.0.0.0/8:5900"}, "localhost", 5900, "127.0.0.1", ""},
		{[]string{"127.0.0.0/8:5900"}, "LOCALHOST.", 5900, "127.0.0.1", ""},
		{[]string{"127.0.0.0/8:5900"}, "localhost", 5901, "", "not allowed"},
		{[]string{"127.0.0.0/8"}, "dual.test", 5900, "", "resolves to ::1"},
		{[]string{"127.0.0.0/8", "::1"}, "dual.test", 5900, "127.0.0.1", ""},
		{[]string{"10.0.0.0/8"}, "mixed.test", 5900, "", "resolves to 192.0.2.7"},
		{[]string{"10.0.0.0/8"}, "inside.test", 5900, "10.1.2.3", ""},
		{[]string{"10.0.0.0/8"}, "mapped.test", 5900, "10.9.9.9", ""},
		{[]string{"10.0.0.0/8"}, "nxdomain.test", 5900, "", "no such host"},
		// name rules
		{[]string{"*.vnc.internal:5900"}, "vm1.vnc.internal", 5900, "192.0.2.10", ""},
		{[]string{"*.vnc.internal:5900"}, "VM1.vnc.internal", 5900, "192.0.2.10", ""},
		{[]string{"*.vnc.internal:5900"}, "vm1.vnc.internal", 5901, "", "not allowed"},
		{[]string{"*.vnc.internal:5900"}, "a.b.vnc.internal", 5900, "", "not allowed"}, // * is one label
		{[]string{"*.vnc.internal:5900"}, "vnc.internal", 5900, "", "not allowed"},
		{[]string{"*.vnc.internal:5900"}, "192.0.2.10", 5900, "", "not allowed"}, // names never match IPs
		{[]string{"*.vnc.internal:5900"}, "meta.vnc.internal", 5900, "", "resolves to 169.254.169.254"},
		{[]string{"*.vnc.internal:5900", "169.254.0.0/16:5900"}, "meta.vnc.internal", 5900, "169.254.169.254", ""},
		{[]string{"*.vnc.internal:5900"}, "any.vnc.internal", 5900, "", "resolves to 0.0.0.0"},
		{[]string{"*.vnc.internal:5900"}, "link6.vnc.internal", 5900, "", "resolves to fe80::1"},
		{[]string{"vnc-*.lan"}, "vnc-7.lan", 1, "192.0.2.12", ""},
		{[]string{"vnc-*.lan"}, "vnc-.lan", 1, "", "not allowed"}, // * is at least one character
		{[]string{"localhost:5900"}, "localhost", 5900, "127.0.0.1", ""},
		// a name no rule could admit is refused without asking the DNS
		{[]string{"*.vnc.internal:5900"}, "nxdomain.test", 5900, "", "not allowed"},
	}
	for _, tt := range tests {
		a, err := compileAllowList(tt.rules)
		if err != nil {
			t.Fatal(err)
		}
		a.lookup = dns
		addr, err := a.checkHost(context.Background(), tt.host, tt.port)
		name := strings.Join(tt.rules, " ") + " <- " + tt.host
		if tt.dial != "" {
			if err != nil || addr.String() != tt.dial {
				t.Errorf("%s:%d: got %v, %v; want %s", name, tt.port, addr, err, tt.dial)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s:%d: got %v, %v; want an error containing %q", name, tt.port, addr, err, tt.err)
		}
	}
}

func TestAllowListResolveErrorsAreNotRefusals(t *testing.T) {
	t.Parallel()
	a, _ := compileAllowList([]string{"10.0.0.0/8"})
	a.lookup = fakeDNS(nil)
	_, err := a.checkHost(context.Background(), "nxdomain.test", 5900)
	var re *errResolve
	if !errors.As(err, &re) || errors.Is(err, errNotAllowed) {
		t.Fatalf("got %v, want a resolution error, not a refusal", err)
	}
	a, _ = compileAllowList([]string{"10.0.0.0/8"})
	_, err = a.checkHost(context.Background(), "192.0.2.1", 5900)
	if !errors.Is(err, errNotAllowed) {
		t.Fatalf("got %v, want a refusal", err)
	}
}

func TestAllowListSockets(t *testing.T) {
	t.Parallel()
	a, err := compileAllowList([]string{"unix//run/vnc/*.sock"})
	if err != nil {
		t.Fatal(err)
	}
	for p, ok := range map[string]bool{
		"/run/vnc/display0.sock":   true,
		"/run/vnc/a/display0.sock": false, // * does not cross /
		"/run/vnc/../x.sock":       false, // not clean
		"/run/vnc//x.sock":         false,
		"/run/vnc/x.socket":        false,
		"run/vnc/x.sock":           false,
		"/etc/passwd":              false,
	} {
		err := a.checkSocket(p)
		if (err == nil) != ok {
			t.Errorf("%s: %v, want allowed=%v", p, err, ok)
		}
	}
	// no socket rule: no socket target
	a, _ = compileAllowList([]string{"127.0.0.1"})
	if err := a.checkSocket("/run/vnc/x.sock"); !errors.Is(err, errNotAllowed) {
		t.Errorf("got %v, want a refusal", err)
	}
}

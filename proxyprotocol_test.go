package wstotcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/pires/go-proxyproto"
)

// proxyInfo is a parsed PROXY protocol header.
type proxyInfo struct {
	version  int
	command  string // PROXY or LOCAL
	family   string // TCP4, TCP6, UNKNOWN (v1) or UNSPEC (v2)
	src, dst netip.AddrPort
	length   int // of the header, in bytes
}

// parseProxyHeader parses the PROXY header at the start of b, strictly, as
// HAProxy's proxy-protocol.txt specifies it; it is the tests' independent
// reading of what the encoders write.
func parseProxyHeader(b []byte) (proxyInfo, error) {
	if bytes.HasPrefix(b, proxyproto.SIGV2) {
		return parseProxyV2(b)
	}
	if !bytes.HasPrefix(b, []byte("PROXY ")) {
		return proxyInfo{}, errors.New("no PROXY header")
	}
	end := bytes.Index(b, []byte("\r\n"))
	if end < 0 {
		return proxyInfo{}, errors.New("v1: no CRLF")
	}
	if end+2 > 107 {
		return proxyInfo{}, fmt.Errorf("v1: %d bytes, more than 107", end+2)
	}
	line := string(b[:end])
	info := proxyInfo{version: 1, command: "PROXY", length: end + 2}
	f := strings.Split(line, " ")
	if len(f) >= 2 && f[1] == "UNKNOWN" {
		info.family = "UNKNOWN"
		return info, nil
	}
	if len(f) != 6 {
		return proxyInfo{}, fmt.Errorf("v1: %d fields in %q", len(f), line)
	}
	info.family = f[1]
	if info.family != "TCP4" && info.family != "TCP6" {
		return proxyInfo{}, fmt.Errorf("v1: family %q", info.family)
	}
	var addrs [2]netip.AddrPort
	for k := range 2 {
		ip, err := netip.ParseAddr(f[2+k])
		if err != nil {
			return proxyInfo{}, fmt.Errorf("v1: address %q: %v", f[2+k], err)
		}
		if (info.family == "TCP4") != ip.Is4() {
			return proxyInfo{}, fmt.Errorf("v1: address %q is not of family %s", f[2+k], info.family)
		}
		p := f[4+k]
		port, err := strconv.ParseUint(p, 10, 16)
		if err != nil || (len(p) > 1 && p[0] == '0') {
			return proxyInfo{}, fmt.Errorf("v1: port %q", p)
		}
		addrs[k] = netip.AddrPortFrom(ip, uint16(port))
	}
	info.src, info.dst = addrs[0], addrs[1]
	return info, nil
}

func parseProxyV2(b []byte) (proxyInfo, error) {
	if len(b) < 16 {
		return proxyInfo{}, errors.New("v2: short header")
	}
	verCmd, fam := b[12], b[13]
	n := int(binary.BigEndian.Uint16(b[14:16]))
	if verCmd>>4 != 2 {
		return proxyInfo{}, fmt.Errorf("v2: version %d", verCmd>>4)
	}
	info := proxyInfo{version: 2, length: 16 + n}
	switch verCmd & 0xF {
	case 0:
		info.command = "LOCAL"
	case 1:
		info.command = "PROXY"
	default:
		return proxyInfo{}, fmt.Errorf("v2: command %d", verCmd&0xF)
	}
	if len(b) < 16+n {
		return proxyInfo{}, errors.New("v2: short address block")
	}
	a := b[16 : 16+n]
	switch fam {
	case 0x00:
		info.family = "UNSPEC"
	case 0x11:
		info.family = "TCP4"
		if n < 12 {
			return proxyInfo{}, fmt.Errorf("v2: TCP4 with %d address bytes", n)
		}
		info.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:10]))
		info.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:8])), binary.BigEndian.Uint16(a[10:12]))
	case 0x21:
		info.family = "TCP6"
		if n < 36 {
			return proxyInfo{}, fmt.Errorf("v2: TCP6 with %d address bytes", n)
		}
		info.src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])), binary.BigEndian.Uint16(a[32:34]))
		info.dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:32])), binary.BigEndian.Uint16(a[34:36]))
	default:
		return proxyInfo{}, fmt.Errorf("v2: family 0x%02x", fam)
	}
	return info, nil
}

// readProxyHeader reads exactly one PROXY header from r, of either
// version, and parses it.
func readProxyHeader(r io.Reader) (proxyInfo, []byte, error) {
	var buf []byte
	one := make([]byte, 1)
	for len(buf) < 16 {
		if _, err := io.ReadFull(r, one); err != nil {
			return proxyInfo{}, buf, err
		}
		buf = append(buf, one[0])
		if bytes.HasSuffix(buf, []byte("\r\n")) && bytes.HasPrefix(buf, []byte("PROXY ")) {
			info, err := parseProxyHeader(buf)
			return info, buf, err
		}
	}
	if bytes.HasPrefix(buf, proxyproto.SIGV2) {
		rest := make([]byte, binary.BigEndian.Uint16(buf[14:16]))
		if _, err := io.ReadFull(r, rest); err != nil {
			return proxyInfo{}, buf, err
		}
		buf = append(buf, rest...)
		info, err := parseProxyHeader(buf)
		return info, buf, err
	}
	for !bytes.HasSuffix(buf, []byte("\r\n")) && len(buf) < 107 {
		if _, err := io.ReadFull(r, one); err != nil {
			return proxyInfo{}, buf, err
		}
		buf = append(buf, one[0])
	}
	info, err := parseProxyHeader(buf)
	return info, buf, err
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// The encoders' exact bytes, and the parser's reading of them.
func TestProxyHeaderBytes(t *testing.T) {
	sig := string(proxyproto.SIGV2)
	tests := []struct {
		name     string
		version  int
		src, dst netip.AddrPort
		want     string
		family   string
	}{
		{"v1 TCP4", 1, ap("203.0.113.7:51234"), ap("192.0.2.1:443"),
			"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n", "TCP4"},
		{"v1 TCP6", 1, ap("[2001:db8::7]:51234"), ap("[2001:db8::1]:443"),
			"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n", "TCP6"},
		{"v1 mapped IPv4 is TCP4", 1, ap("[::ffff:203.0.113.7]:1"), ap("192.0.2.1:2"),
			"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r\n", "TCP4"},
		{"v1 mixed families as TCP6", 1, ap("203.0.113.7:0"), ap("[2001:db8::1]:443"),
			"PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 0 443\r\n", "TCP6"},
		{"v1 zone dropped", 1, ap("[fe80::1%eth0]:5"), ap("[fe80::2%eth0]:6"),
			"PROXY TCP6 fe80::1 fe80::2 5 6\r\n", "TCP6"},
		{"v1 unknown destination", 1, ap("203.0.113.7:1"), netip.AddrPort{},
			"PROXY UNKNOWN\r\n", "UNKNOWN"},
		{"v2 TCP4", 2, ap("203.0.113.7:51234"), ap("192.0.2.1:443"),
			sig + "\x21\x11\x00\x0c" + "\xcb\x00\x71\x07" + "\xc0\x00\x02\x01" + "\xc8\x22" + "\x01\xbb", "TCP4"},
		{"v2 TCP6", 2, ap("[2001:db8::7]:1"), ap("[::1]:2"),
			sig + "\x21\x21\x00\x24" +
				"\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07" +
				"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01" +
				"\x00\x01\x00\x02", "TCP6"},
		{"v2 unknown source", 2, netip.AddrPort{}, ap("192.0.2.1:443"),
			sig + "\x21\x00\x00\x00", "UNSPEC"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := proxyHeader(tt.version, tt.src, tt.dst)
			if string(got) != tt.want {
				t.Fatalf("header\n%q, want\n%q", got, tt.want)
			}
			info, err := parseProxyHeader(append(got, "client data"...))
			if err != nil {
				t.Fatal(err)
			}
			if info.version != tt.version || info.command != "PROXY" || info.family != tt.family || info.length != len(got) {
				t.Fatalf("parsed %+v", info)
			}
			if tt.family == "TCP4" || tt.family == "TCP6" {
				if info.src.Addr().Unmap() != tt.src.Addr().Unmap().WithZone("") || info.src.Port() != tt.src.Port() ||
					info.dst.Addr().Unmap() != tt.dst.Addr().Unmap().WithZone("") || info.dst.Port() != tt.dst.Port() {
					t.Fatalf("parsed %v -> %v, want %v -> %v", info.src, info.dst, tt.src, tt.dst)
				}
			}
		})
	}

	// Health checks speak for no client.
	if got := proxyHealthHeader(1); string(got) != "PROXY UNKNOWN\r\n" {
		t.Fatalf("v1 health header %q", got)
	}
	got := proxyHealthHeader(2)
	if string(got) != sig+"\x20\x00\x00\x00" {
		t.Fatalf("v2 health header %q", got)
	}
	if info, err := parseProxyHeader(got); err != nil || info.command != "LOCAL" || info.length != 16 {
		t.Fatalf("v2 health header parsed %+v %v", info, err)
	}
	// The longest v1 header fits in the 107 bytes the specification allows.
	long := proxyHeader(1, ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535"), ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd]:65535"))
	if len(long) > 107 {
		t.Fatalf("v1 header of %d bytes", len(long))
	}
	if _, err := parseProxyHeader(long); err != nil {
		t.Fatal(err)
	}
}

// readProxyHeader reads one header and nothing after it.
func TestReadProxyHeader(t *testing.T) {
	for _, v := range []int{1, 2} {
		hdr := proxyHeader(v, ap("198.51.100.9:4000"), ap("127.0.0.1:80"))
		r := bytes.NewReader(append(hdr, "after"...))
		info, raw, err := readProxyHeader(r)
		if err != nil || !bytes.Equal(raw, hdr) || info.src != ap("198.51.100.9:4000") {
			t.Fatalf("v%d: %+v %q %v", v, info, raw, err)
		}
		rest, _ := io.ReadAll(r)
		if string(rest) != "after" {
			t.Fatalf("v%d: read past the header: %q left", v, rest)
		}
	}
}

// The addresses of a request: Caddy's client IP, with the peer's port only
// when the client IP is the peer; the server's local address.
func TestProxyAddrs(t *testing.T) {
	local := &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 8443}
	req := func(remote, clientIP string) *http.Request {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = remote
		ctx := context.WithValue(r.Context(), http.LocalAddrContextKey, net.Addr(local))
		vars := map[string]any{}
		if clientIP != "" {
			vars[caddyhttp.ClientIPVarKey] = clientIP
		}
		ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, vars)
		return r.WithContext(ctx)
	}
	tests := []struct {
		remote, clientIP string
		src              netip.AddrPort
	}{
		{"127.0.0.1:40000", "127.0.0.1", ap("127.0.0.1:40000")},
		{"127.0.0.1:40000", "203.0.113.7", ap("203.0.113.7:0")}, // from X-Forwarded-For
		{"127.0.0.1:40000", "", ap("127.0.0.1:40000")},          // no client IP var: the peer
		{"[::1]:40000", "::1", ap("[::1]:40000")},
	}
	for _, tt := range tests {
		src, dst := proxyAddrs(req(tt.remote, tt.clientIP))
		if src != tt.src || dst != ap("127.0.0.1:8443") {
			t.Errorf("%s / %q: %v -> %v, want %v -> 127.0.0.1:8443", tt.remote, tt.clientIP, src, dst, tt.src)
		}
	}
	// A Unix-socket listener has no IP address: v1 says UNKNOWN.
	r := httptest.NewRequest("GET", "/", nil)
	r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, net.Addr(&net.UnixAddr{Name: "/run/caddy.sock", Net: "unix"})))
	src, dst := proxyAddrs(r)
	if got := proxyHeader(1, src, dst); string(got) != "PROXY UNKNOWN\r\n" {
		t.Fatalf("unix listener: %q", got)
	}
}

// BenchmarkProxyHeader is the cost of a PROXY header written by
// go-proxyproto, per connection (compare BenchmarkHandshake).
func BenchmarkProxyHeader(b *testing.B) {
	src, dst := ap("203.0.113.7:51234"), ap("192.0.2.1:443")
	for _, v := range []int{1, 2} {
		b.Run(fmt.Sprintf("v%d", v), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				proxyHeader(v, src, dst)
			}
		})
	}
}

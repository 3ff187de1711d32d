package wstotcp

import (
	"encoding/binary"
	"net"
	"net/http"
	"net/netip"
	"strconv"
)

// The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): a
// header, sent by ws_to_tcp as the first bytes on the upstream connection,
// that tells the upstream the client's address, which it would otherwise
// see as Caddy's.

// proxyV2Sig starts every version 2 header.
var proxyV2Sig = [12]byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

const (
	proxyV2Local = 0x20 // version 2, LOCAL: the connection is the proxy's own (health checks)
	proxyV2Proxy = 0x21 // version 2, PROXY: relayed on behalf of the addresses that follow

	proxyV2Unspec = 0x00 // AF_UNSPEC
	proxyV2TCP4   = 0x11 // AF_INET, STREAM
	proxyV2TCP6   = 0x21 // AF_INET6, STREAM
)

// proxyHeader returns the header of the given version (1 or 2) for a
// connection from src to dst. Both are needed: when either is unknown
// (invalid), the header says so (v1 UNKNOWN, v2 AF_UNSPEC), and the
// upstream then uses the connection's own addresses. When the two are of
// different families, both are sent as IPv6 (the IPv4 one mapped).
func proxyHeader(version int, src, dst netip.AddrPort) []byte {
	if version == 1 {
		return appendProxyV1(nil, src, dst)
	}
	return appendProxyV2(nil, proxyV2Proxy, src, dst)
}

// proxyHealthHeader is the header of a health-check connection, which is
// relayed for no client: v1 UNKNOWN, v2 LOCAL.
func proxyHealthHeader(version int) []byte {
	if version == 1 {
		return appendProxyV1(nil, netip.AddrPort{}, netip.AddrPort{})
	}
	return appendProxyV2(nil, proxyV2Local, netip.AddrPort{}, netip.AddrPort{})
}

// proxyFamily unmaps src and dst and tells whether they are both IPv4;
// ok is false when either is missing.
func proxyFamily(src, dst netip.AddrPort) (s, d netip.Addr, v4, ok bool) {
	if !src.IsValid() || !dst.IsValid() {
		return netip.Addr{}, netip.Addr{}, false, false
	}
	s, d = src.Addr().Unmap().WithZone(""), dst.Addr().Unmap().WithZone("")
	if s.Is4() && d.Is4() {
		return s, d, true, true
	}
	return netip.AddrFrom16(s.As16()), netip.AddrFrom16(d.As16()), false, true
}

// appendProxyV1 appends a version 1 (text) header:
// "PROXY TCP4 <src> <dst> <sport> <dport>\r\n", TCP6 likewise, or
// "PROXY UNKNOWN\r\n".
func appendProxyV1(b []byte, src, dst netip.AddrPort) []byte {
	s, d, v4, ok := proxyFamily(src, dst)
	if !ok {
		return append(b, "PROXY UNKNOWN\r\n"...)
	}
	b = append(b, "PROXY TCP"...)
	if v4 {
		b = append(b, '4')
	} else {
		b = append(b, '6')
	}
	b = append(b, ' ')
	b = s.AppendTo(b)
	b = append(b, ' ')
	b = d.AppendTo(b)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(src.Port()), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(dst.Port()), 10)
	return append(b, '\r', '\n')
}

// appendProxyV2 appends a version 2 (binary) header with command cmd:
// the signature, version and command, family and protocol, the length of
// the addresses, then source and destination address and port in network
// byte order. A LOCAL header, or one without both addresses, carries none
// (AF_UNSPEC).
func appendProxyV2(b []byte, cmd byte, src, dst netip.AddrPort) []byte {
	b = append(b, proxyV2Sig[:]...)
	s, d, v4, ok := proxyFamily(src, dst)
	if cmd == proxyV2Local || !ok {
		return append(b, cmd, proxyV2Unspec, 0, 0)
	}
	if v4 {
		b = append(b, cmd, proxyV2TCP4, 0, 12)
		a4, b4 := s.As4(), d.As4()
		b = append(b, a4[:]...)
		b = append(b, b4[:]...)
	} else {
		b = append(b, cmd, proxyV2TCP6, 0, 36)
		a16, b16 := s.As16(), d.As16()
		b = append(b, a16[:]...)
		b = append(b, b16[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}

// proxyAddrs returns the addresses a PROXY header carries for r. The
// source is Caddy's client IP, which honours the server's trusted_proxies,
// with the port of the TCP connection when that IP is the connection's
// peer, and port 0 when it came from a header such as X-Forwarded-For (the
// client's own port is unknown then). The destination is the address of
// the server's socket that accepted the request.
func proxyAddrs(r *http.Request) (src, dst netip.AddrPort) {
	if ip, err := netip.ParseAddr(clientIP(r)); err == nil {
		var port uint16
		if host, p, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			if peer, err := netip.ParseAddr(host); err == nil && peer.Unmap() == ip.Unmap() {
				n, _ := strconv.ParseUint(p, 10, 16)
				port = uint16(n)
			}
		}
		src = netip.AddrPortFrom(ip.Unmap(), port)
	}
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if ta, ok := a.(*net.TCPAddr); ok {
			dst = ta.AddrPort()
		} else if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			dst = ap
		}
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	}
	return src, dst
}

package wstotcp

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"

	"github.com/pires/go-proxyproto"
)

// The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): a
// header, sent by ws_to_tcp as the first bytes on the upstream connection,
// that tells the upstream the client's address, which it would otherwise
// see as Caddy's. The headers are written by go-proxyproto (caddy-l4's
// library too).

// proxyVersion is the version of the proxy_protocol setting; 0 for none.
func proxyVersion(setting string) int {
	switch setting {
	case "v1":
		return 1
	case "v2":
		return 2
	}
	return 0
}

// proxyHeader returns the header of the given version (1 or 2) for a
// connection from src to dst. Both are needed: when either is unknown
// (invalid), the header says so (see addressless), and the upstream then
// uses the connection's own addresses. When the two are of different
// families, both are sent as IPv6 (the IPv4 one mapped).
func proxyHeader(version int, src, dst netip.AddrPort) []byte {
	h := addressless(version, proxyproto.PROXY)
	if s, d, v4, ok := proxyFamily(src, dst); ok {
		h.TransportProtocol = proxyproto.TCPv6
		if v4 {
			h.TransportProtocol = proxyproto.TCPv4
		}
		h.SourceAddr = &net.TCPAddr{IP: s.AsSlice(), Port: int(src.Port())}
		h.DestinationAddr = &net.TCPAddr{IP: d.AsSlice(), Port: int(dst.Port())}
	}
	b, err := h.Format()
	if err != nil {
		// Format refuses only addresses that are not of the header's
		// family, which proxyFamily rules out; were it to happen, the
		// upstream is told the addresses are unknown.
		b, _ = addressless(version, proxyproto.PROXY).Format()
	}
	return b
}

// proxyHealthHeader is the header of a health-check connection, which is
// relayed for no client: v1 UNKNOWN, v2 LOCAL.
func proxyHealthHeader(version int) []byte {
	b, _ := addressless(version, proxyproto.LOCAL).Format() // an address-less header always formats
	return b
}

// addressless is a header without addresses. Its transport protocol is
// the zero value, the unknown one: proxyproto writes it as v1 UNKNOWN and
// as v2's unknown address family with no address block.
func addressless(version int, cmd proxyproto.ProtocolVersionAndCommand) *proxyproto.Header {
	return &proxyproto.Header{Version: byte(version), Command: cmd}
}

// proxyFamily unmaps src and dst, drops their zones and tells whether
// they are both IPv4; else both are IPv6 (an IPv4 one mapped). ok is false
// when either is missing.
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

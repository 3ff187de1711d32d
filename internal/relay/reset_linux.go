package relay

import (
	"net"

	"golang.org/x/sys/unix"
)

// tcpClose is Linux's TCP_CLOSE state (include/net/tcp_states.h).
const tcpClose = 7

// wasReset reports whether the kernel ended up's TCP connection with a
// reset. Linux reports a reset once: when a write takes the error
// (ECONNRESET, or EPIPE after it), the next read returns EOF, as after a
// FIN. The connection's state tells them apart while the relay has not
// half-closed it: CLOSE after a reset, CLOSE_WAIT after a FIN.
func wasReset(up net.Conn) bool {
	for {
		inner, ok := up.(interface{ NetConn() net.Conn }) // a TLS upstream
		if !ok {
			break
		}
		up = inner.NetConn()
	}
	tc, ok := up.(*net.TCPConn)
	if !ok {
		return false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	var state uint8
	rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			state = info.State
		}
	})
	return state == tcpClose
}

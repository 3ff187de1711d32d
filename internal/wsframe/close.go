package wsframe

import (
	"encoding/binary"
	"unicode/utf8"
)

// Close codes (RFC 6455 §7.4.1).
const (
	CloseNormal          = 1000
	CloseGoingAway       = 1001
	CloseProtocolError   = 1002
	CloseNoStatus        = 1005
	CloseAbnormal        = 1006
	CloseInvalidPayload  = 1007
	ClosePolicyViolation = 1008
	CloseMessageTooBig   = 1009
	CloseInternalError   = 1011
	CloseBadGateway      = 1014
)

// CloseError is how a tunnel ends on the WebSocket side: the close code
// sent (or received) and its reason.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string { return e.Reason }

func protocolError(reason string) *CloseError {
	return &CloseError{Code: CloseProtocolError, Reason: reason}
}

// ParseClosePayload reads a Close frame's payload: a code and a UTF-8
// reason, or nothing (1005).
func ParseClosePayload(p []byte) (int, string, *CloseError) {
	if len(p) == 0 {
		return CloseNoStatus, "", nil
	}
	if len(p) == 1 {
		return 0, "", protocolError("Close frame with a 1-byte payload")
	}
	code := int(binary.BigEndian.Uint16(p))
	if !validReceivedCloseCode(code) {
		return 0, "", protocolError("invalid close code")
	}
	if !utf8.Valid(p[2:]) {
		return 0, "", &CloseError{Code: CloseInvalidPayload, Reason: "close reason is not UTF-8"}
	}
	return code, string(p[2:]), nil
}

func validReceivedCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// ClosePayload formats a Close frame's payload into buf. The reason is cut
// to fit a control frame, on a rune boundary.
func ClosePayload(buf []byte, code int, reason string) []byte {
	if code == CloseNoStatus {
		return buf[:0] // echo an empty Close as an empty Close
	}
	if len(reason) > MaxControlPayload-2 {
		reason = reason[:MaxControlPayload-2]
		reason = reason[:len(reason)-IncompleteTail([]byte(reason))]
	}
	buf = binary.BigEndian.AppendUint16(buf[:0], uint16(code))
	return append(buf, reason...)
}

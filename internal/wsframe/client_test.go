package wsframe

import (
	"bytes"
	"errors"
	"testing"
)

// The client end of a WebSocket (caddy tcp-to-ws) reads unmasked server
// frames and writes masked ones.

// serverFrame returns an unmasked frame, final or not.
func serverFrame(op byte, fin bool, payload []byte) []byte {
	buf := make([]byte, MaxHeader+len(payload))
	copy(buf[MaxHeader:], payload)
	start := PutHeader(buf, MaxHeader, op, len(payload))
	if !fin {
		buf[start] &^= 0x80
	}
	return buf[start:]
}

func TestParserFromServer(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("abcdefghij"), 7000) // 64-bit length
	var stream []byte
	stream = append(stream, serverFrame(OpBinary, true, []byte("hello"))...)
	stream = append(stream, serverFrame(OpBinary, false, []byte("frag"))...)
	stream = append(stream, serverFrame(OpPing, true, []byte("p"))...)
	stream = append(stream, serverFrame(OpContinuation, true, []byte("ment"))...)
	stream = append(stream, serverFrame(OpBinary, true, big)...)
	for _, cuts := range [][]int{nil, {1}, {3, 9, 12}, {5, 100, 1000, 30000}} {
		p := &Parser{FromServer: true}
		got, err := parseSplit(t, p, stream, cuts)
		if err != nil {
			t.Fatalf("cuts %v: %v", cuts, err)
		}
		want := []message{{OpBinary, []byte("hello")}, {OpPing, []byte("p")}, {OpBinary, []byte("fragment")}, {OpBinary, big}}
		if len(got) != len(want) {
			t.Fatalf("cuts %v: %d messages, want %d", cuts, len(got), len(want))
		}
		for i := range want {
			if got[i].op != want[i].op || !bytes.Equal(got[i].payload, want[i].payload) {
				t.Fatalf("cuts %v: message %d is op %d, %d bytes; want op %d, %d bytes", cuts, i, got[i].op, len(got[i].payload), want[i].op, len(want[i].payload))
			}
		}
	}
}

func TestParserMaskingRules(t *testing.T) {
	t.Parallel()
	key := [4]byte{1, 2, 3, 4}
	for _, c := range []struct {
		name       string
		fromServer bool
		frame      []byte
	}{
		{"masked frame from a server", true, maskedFrame(OpBinary, true, []byte("x"), key)},
		{"unmasked frame from a client", false, serverFrame(OpBinary, true, []byte("x"))},
	} {
		p := &Parser{FromServer: c.fromServer}
		_, _, err := p.Next(c.frame)
		var ce *CloseError
		if !errors.As(err, &ce) || ce.Code != CloseProtocolError {
			t.Errorf("%s: %v, want a 1002 protocol error", c.name, err)
		}
	}
}

// A masked frame written by PutMaskedHeader reads back, through the
// server's parser, as the payload it was given, whatever its length class.
func TestPutMaskedHeader(t *testing.T) {
	t.Parallel()
	key := [4]byte{0xde, 0xad, 0xbe, 0xef}
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 100000} {
		payload := make([]byte, n)
		for i := range payload {
			payload[i] = byte(i * 7)
		}
		buf := make([]byte, MaxMaskedHeader+n)
		copy(buf[MaxMaskedHeader:], payload)
		start := PutMaskedHeader(buf, MaxMaskedHeader, OpBinary, n, key)
		frame := buf[start:]
		if n >= 8 && bytes.Equal(frame[len(frame)-n:], payload) {
			t.Fatalf("%d bytes: payload not masked", n)
		}
		var p Parser
		got, err := parseSplit(t, &p, frame, nil)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if len(got) != 1 || got[0].op != OpBinary || !bytes.Equal(got[0].payload, payload) {
			t.Fatalf("%d bytes: parsed %+v", n, got)
		}
	}
}

package wsframe

// Kind is what Parser.Next found.
type Kind uint8

const (
	// More: the input does not hold the next event yet; nothing was
	// consumed. The caller keeps the unconsumed bytes and reads more.
	More Kind = iota
	// Data: payload bytes of a data message (possibly none, for a frame
	// header or an empty frame).
	Data
	// Control: a whole control frame (ping, pong or close).
	Control
)

// Event is one step of a client's frame stream. Payload lies in the input
// given to Next, unmasked in place, and is valid until the caller reuses
// that input.
type Event struct {
	Kind    Kind
	Op      byte   // Data: the message's opcode (OpText, OpBinary); Control: the frame's
	Payload []byte // unmasked, inside the input
	First   bool   // Data: the message starts here
	Last    bool   // Data: the message ends with this payload
}

// Parser turns the bytes of a client's frame stream into events, whatever
// way the stream is split into reads: message data as it arrives (a
// message is never held whole, so memory does not depend on its size) and
// whole control frames. It checks RFC 6455's framing rules (masking,
// opcodes, fragmentation, control frame sizes) and the message size limit,
// and does no I/O.
type Parser struct {
	// MaxMessage is the largest message, in bytes; a larger one is a 1009
	// error. 0: no limit.
	MaxMessage int64

	// FromServer parses the frames of a WebSocket server instead of a
	// client's (the client end, caddy tcp-to-ws): unmasked, and a masked
	// frame is a protocol error (RFC 6455 §5.1).
	FromServer bool

	remaining int64 // payload bytes of the current data frame still to come
	fin       bool  // the current data frame ends its message
	key       [4]byte
	keyPos    int
	msgOp     byte  // opcode of the message in progress; 0 between messages
	msgLen    int64 // its length so far
}

// Next parses the next event at the start of in, unmasking its payload in
// place, and returns it with the number of bytes of in it consumed. An
// error is a *CloseError: the stream is broken, and the tunnel closes with
// its code.
func (p *Parser) Next(in []byte) (Event, int, error) {
	if p.remaining > 0 {
		if len(in) == 0 {
			return Event{}, 0, nil
		}
		ev := p.payload(in, false)
		return ev, len(ev.Payload), nil
	}
	h, size, err := parseHeader(in, p.FromServer)
	if err != nil {
		return Event{}, 0, err
	}
	if size == 0 {
		return Event{}, 0, nil
	}
	if h.opcode >= OpClose {
		end := size + int(h.length)
		if len(in) < end {
			return Event{}, 0, nil // control frames are handled whole
		}
		payload := in[size:end]
		if !p.FromServer {
			Unmask(payload, payload, h.mask, 0)
		}
		return Event{Kind: Control, Op: h.opcode, Payload: payload}, end, nil
	}
	first := h.opcode != OpContinuation
	switch {
	case !first && p.msgOp == 0:
		return Event{}, 0, protocolError("continuation frame outside a message")
	case first && p.msgOp != 0:
		return Event{}, 0, protocolError("new message inside a fragmented one")
	case first:
		p.msgOp, p.msgLen = h.opcode, 0
	}
	// Compared before adding, so that a length near 2^63 cannot wrap the
	// sum and slip under the limit.
	if p.MaxMessage > 0 && h.length > p.MaxMessage-p.msgLen {
		return Event{}, 0, &CloseError{Code: CloseMessageTooBig, Reason: "message too big"}
	}
	p.msgLen += h.length
	p.remaining, p.fin, p.key, p.keyPos = h.length, h.fin, h.mask, 0
	ev := p.payload(in[size:], first)
	return ev, size + len(ev.Payload), nil
}

// payload unmasks as much of the current data frame as in holds.
func (p *Parser) payload(in []byte, first bool) Event {
	n := int(min(p.remaining, int64(len(in))))
	chunk := in[:n]
	if !p.FromServer {
		p.keyPos = Unmask(chunk, chunk, p.key, p.keyPos)
	}
	p.remaining -= int64(n)
	ev := Event{Kind: Data, Op: p.msgOp, Payload: chunk, First: first}
	if p.remaining == 0 && p.fin {
		ev.Last = true
		p.msgOp = 0
	}
	return ev
}

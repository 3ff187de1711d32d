package relay

import (
	"errors"
	"time"
)

// Parking: a pump whose socket has had nothing to read for parkAfter ends
// its goroutine, and the socket waits in a shared readiness poller
// (poller_linux.go) instead; a new goroutine runs the pump once the socket
// is readable (data, EOF or an error) or the tunnel begins to close. An
// idle tunnel thus holds no goroutine, and no stack: its sockets, its
// structures and nothing else. A busy pump never parks: the wait before
// parking is the socket's read deadline, moved only every parkAfter/64, so
// that a stream of messages costs no more than before, and a round trip
// shorter than parkAfter no extra wake-up.
//
// Only the sockets of a tunnel started with Start park (Run keeps its
// caller's goroutine anyway), and only where the poller exists (Linux);
// elsewhere, and for streams without a file descriptor, the pumps wait on
// their goroutines as before.

// parkAfter is how long a pump's socket stays quiet before the pump
// parks. Long beside a round trip, so that request and answer traffic
// never parks between messages; short beside the time a burst of new
// tunnels takes to open, so that few of them hold goroutines at once.
const parkAfter = 100 * time.Millisecond

// errPark is read's answer when the pump should park: its socket has been
// quiet for parkAfter, and the pump holds nothing.
var errPark = errors.New("park")

// Parking states of a socketReader.
const (
	pumpRunning = iota // a goroutine runs the pump
	pumpParked         // no goroutine: the poller or a kick resumes it
)

// armPark moves the park deadline to parkAfter from now, unless it was
// moved less than parkAfter/64 ago.
func (s *socketReader) armPark() {
	now := time.Now()
	if !s.parkSet.IsZero() && now.Sub(s.parkSet) <= parkAfter/64 {
		return
	}
	if s.conn.SetReadDeadline(now.Add(parkAfter)) != nil {
		s.noPark = true // a stream without deadlines
		return
	}
	s.parkSet = now
}

// restoreDeadline gives the socket back the read deadline the tunnel's
// closing set (none before the tunnel closes), in place of a park
// deadline.
func (s *socketReader) restoreDeadline() {
	s.dlMu.Lock()
	s.conn.SetReadDeadline(s.closeDL)
	s.dlMu.Unlock()
	s.parkSet = time.Time{}
}

// setReadDeadline sets the socket's read deadline for the tunnel's
// closing; a park deadline set after it is replaced by it again when it
// passes (read).
func (s *socketReader) setReadDeadline(d time.Time) {
	s.dlMu.Lock()
	s.closeDL = d
	s.conn.SetReadDeadline(d)
	s.dlMu.Unlock()
}

// park hands the pump's socket to the poller and reports whether the
// pump's goroutine must now end: false when the pump must go on reading
// itself (the tunnel began to close, or the socket cannot be polled). A
// true answer may come when another goroutine already resumed the pump:
// the caller must not touch the pump's state after it.
func (s *socketReader) park() bool {
	op, err := s.poll.prepare(s)
	if err != nil {
		s.noPark = true
		return false
	}
	s.state.Store(pumpParked)
	if s.t.parkEvent != nil {
		s.t.parkEvent(s.client, "parked") // reads nothing of the pump's state
	}
	s.poll.parked(1)
	if err := s.poll.arm(s, op); err != nil {
		if s.state.CompareAndSwap(pumpParked, pumpRunning) {
			s.poll.parked(-1)
			s.added = s.added && !op.add
			s.noPark = true // never again; the next read finds out what is wrong
			return false
		}
		return true // the tunnel began to close, and a kick resumed the pump
	}
	// A kick that came before the state was parked found nothing to
	// resume: look again.
	if s.t.ending.Load() && s.state.CompareAndSwap(pumpParked, pumpRunning) {
		s.poll.parked(-1)
		return false
	}
	return true
}

// resume runs the parked pump on a new goroutine, unless another
// resumed it first.
func (s *socketReader) resume() {
	if !s.state.CompareAndSwap(pumpParked, pumpRunning) {
		return
	}
	s.poll.parked(-1)
	if s.client {
		go s.t.runClientPump()
	} else {
		go s.t.runUpstreamPump()
	}
}

// kick resumes the pump if it is parked: the tunnel begins to close, and
// its closing reads with deadlines of its own.
func (s *socketReader) kick() {
	if s.poll != nil && s.state.Load() == pumpParked {
		s.resume()
	}
}

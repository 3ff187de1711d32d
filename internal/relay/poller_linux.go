//go:build linux

package relay

import (
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// poller is the epoll set where parked pumps' sockets wait (poller.go).
// Its own descriptor waits in the runtime's poller, so the goroutine that
// dispatches its events holds no thread while it waits; that goroutine
// runs only while some pump is parked.
type poller struct {
	epfd   int
	file   *os.File // epfd, in the runtime's poller
	rc     syscall.RawConn
	waitFn func(fd uintptr) bool

	mu      sync.Mutex
	slots   []*socketReader // by slot index; nil: free
	gens    []uint32        // each slot's generation: an event for a slot's earlier user is dropped
	free    []uint32
	nparked int  // pumps parked
	running bool // the dispatching goroutine runs

	// The dispatching goroutine's only.
	events [64]unix.EpollEvent
	n      int
	werr   error
}

// sharedPoller is the process's poller, nil where it cannot be made.
var sharedPoller = sync.OnceValue(func() *poller {
	p, err := newPoller()
	if err != nil {
		return nil
	}
	return p
})

func newPoller() (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "relay-poller")
	// A descriptor the runtime cannot poll has no deadlines: the
	// dispatching goroutine could not be told to end.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	p := &poller{epfd: fd, file: f, rc: rc}
	p.waitFn = func(fd uintptr) bool {
		p.n, p.werr = unix.EpollWait(int(fd), p.events[:], 0)
		if p.werr == unix.EINTR {
			p.n, p.werr = 0, nil
		}
		return p.n > 0 || p.werr != nil // else wait until an event is ready
	}
	return p, nil
}

// prepare readies s for arm, and returns what arm needs: everything
// written here is written before the pump is marked parked, so that the
// pump's next run, on another goroutine, sees it.
func (p *poller) prepare(s *socketReader) (armOp, error) {
	if s.slot == 0 {
		p.mu.Lock()
		var idx uint32
		if k := len(p.free); k > 0 {
			idx = p.free[k-1]
			p.free = p.free[:k-1]
		} else {
			idx = uint32(len(p.slots))
			p.slots = append(p.slots, nil)
			p.gens = append(p.gens, 1)
		}
		p.slots[idx] = s
		s.slot = uint64(p.gens[idx])<<32 | uint64(idx)
		p.mu.Unlock()
	}
	op := armOp{slot: s.slot, add: !s.added}
	s.added = true // undone by the caller if arm fails
	return op, nil
}

// armOp is one arming of a socket.
type armOp struct {
	slot uint64
	add  bool // the socket is not in the epoll set yet
}

// arm registers s's socket for one readiness event (readable, EOF or an
// error), which resumes its pump. Once it succeeds, the pump may run on
// another goroutine: arm touches nothing of s after its system call.
func (p *poller) arm(s *socketReader, op armOp) error {
	var err error
	// Control holds the descriptor: it cannot be closed, and its number
	// reused, meanwhile.
	cerr := s.rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
			Fd:     int32(uint32(op.slot)),
			Pad:    int32(uint32(op.slot >> 32)),
		}
		ctl := unix.EPOLL_CTL_MOD
		if op.add {
			ctl = unix.EPOLL_CTL_ADD
		}
		err = unix.EpollCtl(p.epfd, ctl, int(fd), &ev)
	})
	if cerr != nil {
		return cerr
	}
	return err
}

// release frees s's slot: its tunnel has ended.
func (p *poller) release(s *socketReader) {
	if s.slot == 0 {
		return
	}
	idx := uint32(s.slot)
	p.mu.Lock()
	p.slots[idx] = nil
	if p.gens[idx]++; p.gens[idx] == 0 {
		p.gens[idx] = 1
	}
	p.free = append(p.free, idx)
	p.mu.Unlock()
	s.slot = 0
}

// parked counts pumps parking (+1) and resumed (-1). The first parked
// pump starts the dispatching goroutine; when none is left, it ends.
func (p *poller) parked(delta int) {
	p.mu.Lock()
	p.nparked += delta
	if delta > 0 && !p.running {
		p.running = true
		go p.loop()
	}
	if p.nparked == 0 && p.running {
		// Wake the dispatching goroutine, which may wait for an event
		// that will never come, so that it ends.
		p.file.SetReadDeadline(time.Unix(1, 0))
	}
	p.mu.Unlock()
}

// loop dispatches readiness events to the parked pumps while any is
// parked.
func (p *poller) loop() {
	for {
		err := p.rc.Read(p.waitFn)
		if err == nil {
			err = p.werr
		}
		if err == nil {
			for i := range p.n {
				ev := &p.events[i]
				idx, gen := uint32(ev.Fd), uint32(ev.Pad)
				var s *socketReader
				p.mu.Lock()
				if int(idx) < len(p.slots) && p.gens[idx] == gen {
					s = p.slots[idx]
				}
				p.mu.Unlock()
				if s != nil {
					s.resume()
				}
			}
		}
		p.mu.Lock()
		if err != nil {
			p.file.SetReadDeadline(time.Time{}) // woken to look: see parked
		}
		if p.nparked == 0 {
			p.running = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
}

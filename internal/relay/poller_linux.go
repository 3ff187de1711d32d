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

// arm registers s's socket for one readiness event (readable, EOF or an
// error), which resumes its pump.
func (p *poller) arm(s *socketReader) error {
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
		s.ctlFn = func(fd uintptr) {
			ev := unix.EpollEvent{
				Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
				Fd:     int32(uint32(s.slot)),
				Pad:    int32(uint32(s.slot >> 32)),
			}
			op := unix.EPOLL_CTL_MOD
			if !s.added {
				op = unix.EPOLL_CTL_ADD
			}
			s.ctlErr = unix.EpollCtl(p.epfd, op, int(fd), &ev)
		}
	}
	s.ctlErr = nil
	// Control holds the descriptor: it cannot be closed, and its number
	// reused, meanwhile.
	if err := s.rc.Control(s.ctlFn); err != nil {
		return err
	}
	if s.ctlErr != nil {
		return s.ctlErr
	}
	s.added = true
	return nil
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

package relay

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// socketReader reads a connection into buffers lent from a pool at the
// moment data is there, so that a tunnel waiting for data holds no buffer:
// thousands of idle tunnels cost their goroutines and little else. It
// waits for readability through the runtime's poller, as net.Conn.Read
// does. A stream without a file descriptor (a TLS upstream, an HTTP/2 or
// HTTP/3 client stream) cannot be asked whether data is there: see
// readStream. A pump whose socket stays quiet parks (poller.go).
type socketReader struct {
	conn readDeadliner
	rc   syscall.RawConn // nil when conn has no file descriptor
	pool *sync.Pool      // of *[]byte

	// The state of one read, shared with readFn to keep the read free of
	// allocations.
	bp   *[]byte
	off  int
	end  int  // 0: to the end of the buffer
	lent bool // bp may go back to the pool if the read must wait

	n      int
	errno  error
	readFn func(fd uintptr) bool

	// Streams without a file descriptor only.
	probe []byte // where a read that may wait lands; allocated at first use
	busy  bool   // the last read filled a probe's worth: read straight into a buffer

	// Parking (poller.go); poll is nil for a socket that never parks.
	t       *Tunnel
	client  bool // the client pump reads this socket, else the upstream pump
	poll    *poller
	state   atomic.Int32 // pumpRunning or pumpParked
	noPark  bool         // the pump's only: parking failed, never again
	parkSet time.Time    // the pump's only: when the park deadline was set; zero when the socket's deadline is not one
	dlMu    sync.Mutex   // orders closeDL and the socket's deadline
	closeDL time.Time    // the read deadline the tunnel's closing set
	slot    uint64       // the poller's: this socket's slot, 0 for none yet
	added   bool         // the poller's: in its epoll set
}

// readDeadliner is what a socketReader reads: either side of a tunnel.
type readDeadliner interface {
	io.Reader
	SetReadDeadline(time.Time) error
}

// init makes s read conn into buffers from pool.
func (s *socketReader) init(conn readDeadliner, pool *sync.Pool) {
	s.conn, s.pool = conn, pool
	if sc, ok := conn.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			s.rc = rc
		}
	}
	s.readFn = func(fd uintptr) bool {
		if s.bp == nil {
			s.bp, s.lent = s.pool.Get().(*[]byte), true
		}
		p := (*s.bp)[s.off:]
		if s.end > 0 {
			p = (*s.bp)[s.off:s.end]
		}
		for {
			s.n, s.errno = syscall.Read(int(fd), p)
			if s.errno != syscall.EINTR {
				break
			}
		}
		if s.errno == syscall.EAGAIN {
			if s.lent {
				s.pool.Put(s.bp)
				s.bp = nil
			}
			return false // wait until readable, then try again
		}
		return true
	}
}

// read reads into (*bp)[off:end], or (*bp)[off:] when end is 0. With
// lend, bp holds nothing the caller needs: if the read must wait, bp goes
// back to the pool first (bp may also be nil), and a buffer is lent again
// once data is there. A busy connection thus keeps one buffer, warm in the
// cache, and an idle one holds none. read returns the buffer read into: on
// an error with nothing read, a lent buffer has gone back to the pool and
// the result is nil.
//
// A socket that may park (poller.go) and has had nothing to read for
// parkAfter while lend is set gives back errPark, its buffer in the pool.
func (s *socketReader) read(bp *[]byte, off, end int, lend bool) (*[]byte, int, error) {
	if s.rc == nil {
		return s.readStream(bp, off, end, lend)
	}
	parking := s.poll != nil && !s.noPark
	if parking {
		if lend && !s.t.ending.Load() {
			s.armPark()
		} else if !s.parkSet.IsZero() && s.t.ending.Load() {
			s.restoreDeadline()
		}
	}
again:
	s.bp, s.off, s.end, s.lent, s.n, s.errno = bp, off, end, lend, 0, nil
	err := s.rc.Read(s.readFn)
	if err != nil && !s.parkSet.IsZero() && errors.Is(err, os.ErrDeadlineExceeded) {
		// The park deadline passed.
		if s.t.parkEvent != nil {
			s.t.parkEvent(s.client, "quiet")
		}
		if lend && !s.noPark && !s.t.ending.Load() {
			if s.bp != nil && s.lent {
				s.pool.Put(s.bp)
				s.bp = nil
			}
			return nil, 0, errPark
		}
		// Data is pending, or the tunnel is closing: the closing's
		// deadline, if any, bounds the read again.
		bp = s.bp
		s.restoreDeadline()
		goto again
	}
	bp, n, lent := s.bp, s.n, s.lent
	s.bp = nil
	if err == nil && s.errno != nil {
		err = os.NewSyscallError("read", s.errno)
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	if err != nil {
		n = 0
		if lent && bp != nil {
			s.pool.Put(bp)
			bp = nil
		}
	}
	return bp, n, err
}

// probeSize is the most a stream without a file descriptor reads into its
// probe: enough for the small messages of an interactive client in one
// read, small beside a buffer (idle HTTP/2 tunnels cost this, not
// buffer_size).
const probeSize = 512

// readStream reads a stream that cannot be polled for readability. A read
// that may wait goes into the probe, and a buffer is lent only once it
// returns data, so an idle stream holds none; a stream whose reads come
// back full is busy and reads straight into its buffer (kept warm) until
// a read comes back small.
func (s *socketReader) readStream(bp *[]byte, off, end int, lend bool) (*[]byte, int, error) {
	if lend && !s.busy {
		if bp != nil {
			s.pool.Put(bp)
		}
		if s.probe == nil {
			s.probe = make([]byte, probeSize)
		}
		p := s.probe
		if end > 0 {
			p = p[:min(len(p), end-off)]
		}
		n, err := s.conn.Read(p)
		for n == 0 && err == nil { // io.Reader allows it; wait for data or an error
			n, err = s.conn.Read(p)
		}
		if n == 0 {
			return nil, 0, err
		}
		s.busy = n == len(p)
		bp = s.pool.Get().(*[]byte)
		copy((*bp)[off:], p[:n])
		return bp, n, err
	}
	if bp == nil {
		bp = s.pool.Get().(*[]byte)
	}
	p := (*bp)[off:]
	if end > 0 {
		p = (*bp)[off:end]
	}
	n, err := s.conn.Read(p)
	s.busy = n >= probeSize
	if n == 0 && err != nil && lend {
		s.pool.Put(bp)
		return nil, 0, err
	}
	return bp, n, err
}

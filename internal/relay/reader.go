package relay

import (
	"io"
	"os"
	"sync"
	"syscall"
)

// socketReader reads a connection into buffers lent from a pool at the
// moment data is there, so that a tunnel waiting for data holds no buffer:
// thousands of idle tunnels cost their goroutines and little else. It
// waits for readability through the runtime's poller, as net.Conn.Read
// does. A connection without a file descriptor (TLS) borrows the buffer
// before it blocks instead.
type socketReader struct {
	conn io.Reader
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
}

func newSocketReader(conn io.Reader, pool *sync.Pool) *socketReader {
	s := &socketReader{conn: conn, pool: pool}
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
	return s
}

// read reads into (*bp)[off:end], or (*bp)[off:] when end is 0. With
// lend, bp holds nothing the caller needs: if the read must wait, bp goes
// back to the pool first (bp may also be nil), and a buffer is lent again
// once data is there. A busy connection thus keeps one buffer, warm in the
// cache, and an idle one holds none. read returns the buffer read into: on
// an error with nothing read, a lent buffer has gone back to the pool and
// the result is nil.
func (s *socketReader) read(bp *[]byte, off, end int, lend bool) (*[]byte, int, error) {
	if s.rc == nil {
		if bp == nil {
			bp = s.pool.Get().(*[]byte)
		}
		p := (*bp)[off:]
		if end > 0 {
			p = (*bp)[off:end]
		}
		n, err := s.conn.Read(p)
		return bp, n, err
	}
	s.bp, s.off, s.end, s.lent, s.n, s.errno = bp, off, end, lend, 0, nil
	err := s.rc.Read(s.readFn)
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

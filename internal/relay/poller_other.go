//go:build !linux

package relay

import "errors"

// poller is Linux's epoll set (poller_linux.go); elsewhere pumps never
// park and wait on their goroutines.
type poller struct{}

func sharedPoller() *poller { return nil }

type armOp struct{ add bool }

func (p *poller) prepare(*socketReader) (armOp, error) { return armOp{}, errors.ErrUnsupported }
func (p *poller) arm(*socketReader, armOp) error       { return errors.ErrUnsupported }
func (p *poller) release(*socketReader)                {}
func (p *poller) parked(int)                           {}

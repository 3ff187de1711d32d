//go:build !linux

package relay

import "errors"

// poller is Linux's epoll set (poller_linux.go); elsewhere pumps never
// park and wait on their goroutines.
type poller struct{}

func sharedPoller() *poller { return nil }

func (p *poller) arm(*socketReader) error { return errors.ErrUnsupported }
func (p *poller) release(*socketReader)   {}
func (p *poller) parked(int)              {}

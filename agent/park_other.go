//go:build !linux

package agent

import (
	"errors"
	"syscall"
)

// parker is Linux only (epoll); elsewhere a quiet connection keeps its
// goroutine.
type parker struct{ spawn func(func()) }

func (k *parker) available() bool { return false }
func (k *parker) park(syscall.RawConn, *pipe, bool) (uint64, error) {
	return 0, errors.ErrUnsupported
}
func (k *parker) cancel(uint64) {}
func (k *parker) count() int    { return 0 }
func (k *parker) close()        {}

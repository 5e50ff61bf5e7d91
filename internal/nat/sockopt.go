package nat

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// ReusePort is a net.Dialer / net.ListenConfig Control that sets SO_REUSEADDR
// and SO_REUSEPORT, so one local TCP port can listen and dial several peers
// at once (the punch socket and its STUN probe share the port, and so the
// NAT mapping).
func ReusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return fmt.Errorf("reuse port: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("reuse port: %w", serr)
	}
	return nil
}

// Exec runs fn where sockets are to be created. Sockets belong for life to
// the network namespace of the thread that made them, so tests in the NAT lab
// pass a lab host's Node.Do; nil runs fn in place.
type Exec func(fn func() error) error

// Run calls fn through e.
func (e Exec) Run(fn func() error) error {
	if e == nil {
		return fn()
	}
	return e(fn)
}

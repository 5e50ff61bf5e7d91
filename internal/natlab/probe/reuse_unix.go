//go:build unix

package probe

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// reuse sets SO_REUSEADDR and SO_REUSEPORT, so one local port can listen and
// dial several peers at once.
func reuse(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	return errors.Join(err, serr)
}

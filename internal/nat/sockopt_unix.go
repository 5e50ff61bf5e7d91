//go:build unix

package nat

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// ReusePort is a net.Dialer / net.ListenConfig Control that sets SO_REUSEADDR
// and SO_REUSEPORT, so one local TCP port can listen and dial several peers
// at once (the punch socket and its STUN probe share the port, and so the
// NAT mapping). Linux and the BSDs (macOS included) need both: SO_REUSEPORT
// lets sockets share a bound port, SO_REUSEADDR lets a dial bind the port a
// listener holds.
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

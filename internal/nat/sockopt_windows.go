//go:build windows

package nat

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/windows"
)

// ReusePort is a net.Dialer / net.ListenConfig Control that lets one local
// TCP port listen and dial several peers at once (see sockopt_unix.go).
//
// Windows has no SO_REUSEPORT; its SO_REUSEADDR alone does what Linux needs
// both options for: it binds a socket to a port another socket holds,
// listening or not. Since Windows Server 2003 the first socket on the port
// must set it too, or the second bind fails, so every punch socket sets it.
// The price is Windows' weaker guard: another program that sets
// SO_REUSEADDR could bind our punch port while it is open (seconds, on an
// ephemeral port). Go's own listeners do not set it on
// Windows for that reason, so only punch sockets use this Control.
// See "Using SO_REUSEADDR and SO_EXCLUSIVEADDRUSE" in the Winsock docs.
func ReusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = windows.SetsockoptInt(windows.Handle(fd), windows.SOL_SOCKET, windows.SO_REUSEADDR, 1)
	})
	if err != nil {
		return fmt.Errorf("reuse port: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("reuse port: %w", serr)
	}
	return nil
}

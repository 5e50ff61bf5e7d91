//go:build unix

package agent

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// waitReadable waits on the runtime's poller until rc has data, EOF or an
// error queued. A one-byte MSG_PEEK stands in for the read a blocking Read
// would try first; after the poller wakes us the socket is taken as
// readable without another syscall (a rare spurious wakeup only means the
// next Read blocks with a buffer in hand).
func waitReadable(rc syscall.RawConn) func() error {
	return func() error {
		first := true
		return rc.Read(func(fd uintptr) bool {
			if !first {
				return true
			}
			first = false
			var b [1]byte
			_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			return err != unix.EAGAIN
		})
	}
}

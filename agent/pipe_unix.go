//go:build unix

package agent

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// waitReadable waits on the runtime's poller until rc has data, EOF or an
// error queued. A one-byte MSG_PEEK stands in for the read a blocking Read
// would try first; after the poller wakes us the socket is taken as
// readable without another syscall (a rare spurious wakeup only means the
// next Read blocks with a buffer in hand). An error the peek gets is
// returned: the kernel reports a reset only once, so the Read after it
// would see a plain EOF.
func waitReadable(rc syscall.RawConn) func() error {
	return func() error {
		first := true
		var perr error
		err := rc.Read(func(fd uintptr) bool {
			if !first {
				return true
			}
			first = false
			var b [1]byte
			_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if err == unix.EAGAIN {
				return false
			}
			perr = err
			return true
		})
		if err == nil && perr != nil {
			err = os.NewSyscallError("recvfrom", perr)
		}
		return err
	}
}

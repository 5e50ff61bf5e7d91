package agent

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// resetSeen tells whether a TCP connection whose read just returned EOF
// was in fact reset. The kernel reports a reset once, to whichever call
// on the socket comes first; when that was the other direction's write,
// the read sees a plain EOF. Told apart by the state: after the peer's FIN
// the socket waits in CLOSE_WAIT, after a reset it is CLOSE. (A socket
// that had sent its own FIN first also ends in CLOSE on the peer's FIN,
// which is why callers ask only while they have not.)
func resetSeen(rc syscall.RawConn) bool {
	if rc == nil {
		return false
	}
	var state uint8
	err := rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			state = info.State
		}
	})
	return err == nil && state == tcpClose
}

const tcpClose = 7 // TCP_CLOSE in the kernel's tcp_states.h

//go:build windows

package agent

import (
	"errors"
	"net"
	"os"

	"golang.org/x/sys/windows"
)

// listenPrivate listens on the unix socket path (AF_UNIX, Windows 10 1803
// and later). Windows has no mode bits to set: the socket is as private as
// the state dir's ACL, which under the user's profile (%AppData%) admits
// only that user, SYSTEM and administrators.
func listenPrivate(path string) (net.Listener, error) {
	return net.Listen("unix", path)
}

// adminGone tells whether a dial to an admin socket failed because its agent
// is gone (a stale socket file, or none). Winsock's refusal is its own errno,
// not syscall.ECONNREFUSED.
func adminGone(err error) bool {
	return errors.Is(err, windows.WSAECONNREFUSED) || errors.Is(err, os.ErrNotExist)
}

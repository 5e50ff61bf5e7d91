//go:build unix

package agent

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// listenPrivate listens on the unix socket path with mode 0600; the umask
// closes the gap between bind and chmod.
func listenPrivate(path string) (net.Listener, error) {
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// adminGone tells whether a dial to an admin socket failed because its agent
// is gone (a stale socket file, or none).
func adminGone(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist)
}

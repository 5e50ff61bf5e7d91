//go:build !unix && !windows

package agent

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// listenPrivate listens on the unix socket path; where there are neither
// Unix modes nor Windows ACLs, the state dir's own protection is all there is.
func listenPrivate(path string) (net.Listener, error) {
	return net.Listen("unix", path)
}

// adminGone tells whether a dial to an admin socket failed because its agent
// is gone.
func adminGone(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist)
}

//go:build !unix && !windows

package nat

import (
	"errors"
	"fmt"
	"runtime"
	"syscall"
)

// ReusePort fails where peerport knows no way to share a TCP port between a
// listener and dials: punching reports the error and the agent relays.
func ReusePort(_, _ string, _ syscall.RawConn) error {
	return fmt.Errorf("reuse port on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

//go:build !unix

package probe

import (
	"errors"
	"syscall"
)

// reuse is Unix only: the probe runs on the NAT lab's Linux hosts.
func reuse(_, _ string, _ syscall.RawConn) error { return errors.ErrUnsupported }

//go:build !linux

package agent

import "syscall"

// resetSeen is Linux only; elsewhere a reset that the other direction's
// write took is seen as an EOF.
func resetSeen(syscall.RawConn) bool { return false }

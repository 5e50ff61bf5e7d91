//go:build !unix

package agent

import "syscall"

// waitReadable is unavailable here: reads block with a buffer in hand.
func waitReadable(syscall.RawConn) func() error { return nil }

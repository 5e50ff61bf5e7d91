//go:build unix

package limit

import (
	"fmt"
	"syscall"
)

// RaiseNoFile raises the soft RLIMIT_NOFILE to the hard one and returns the
// soft limit in force afterwards. A broker serves many connections; the
// common soft default of 1024 would cap it far below what the system allows.
func RaiseNoFile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit nofile: %w", err)
	}
	if rl.Cur < rl.Max {
		want := rl
		want.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return uint64(rl.Cur), fmt.Errorf("setrlimit nofile %d: %w", want.Cur, err)
		}
		rl = want
	}
	return uint64(rl.Cur), nil
}

//go:build unix

package e2e

import (
	"os/exec"
	"syscall"
)

// asNobody makes cmd run as the user nobody (65534), for a test run as root
// that needs a user who cannot read everything; false where there are no
// Unix users.
func asNobody(cmd *exec.Cmd) bool {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	return true
}

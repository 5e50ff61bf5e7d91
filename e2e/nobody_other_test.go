//go:build !unix

package e2e

import "os/exec"

// asNobody cannot switch users here (see nobody_unix_test.go).
func asNobody(*exec.Cmd) bool { return false }

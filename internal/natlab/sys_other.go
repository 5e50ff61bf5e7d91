//go:build !linux

package natlab

import (
	"os"
	"syscall"
)

// The lab is made of Linux network namespaces; elsewhere these stand-ins let
// the packages that use it compile, and Available (so Require) says the lab
// cannot run.

func inNetns(string, func() error) error { return errNotLinux }

func openTAP(string, string) (*os.File, error) { return nil, errNotLinux }

func pidAlive(int) bool { return false }

func killPid(int) {}

func groupAttr() *syscall.SysProcAttr { return nil }

func signalGroup(p *os.Process, sig syscall.Signal) error { return p.Signal(sig) }

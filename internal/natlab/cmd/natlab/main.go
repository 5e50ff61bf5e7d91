//go:build linux

// Command natlab brings NAT lab topologies up by hand; see package labcli.
package main

import (
	"os"

	"github.com/peerport/peerport/internal/natlab/labcli"
)

func main() {
	if err := labcli.Command().Execute(); err != nil {
		os.Exit(1)
	}
}

// Command probe is the NAT lab's test program (see package probe).
package main

import (
	"os"

	"github.com/peerport/peerport/internal/natlab/probe"
)

func main() { os.Exit(probe.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

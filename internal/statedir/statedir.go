// Package statedir resolves where peerport keeps its state: the agent's
// identity and saved broker URL, and the broker's key and token.
package statedir

import (
	"os"
	"path/filepath"
)

// Default is $PEERPORT_HOME, else ~/.config/peerport.
func Default() string {
	if h := os.Getenv("PEERPORT_HOME"); h != "" {
		return h
	}
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "peerport")
	}
	return ".peerport"
}

// Resolve returns flag if set, else Default.
func Resolve(flag string) string {
	if flag != "" {
		return flag
	}
	return Default()
}

// Broker is where a broker keeps its key and token inside a state dir; the
// embedded broker of `agent share` uses the same place.
func Broker(dir string) string { return filepath.Join(dir, "broker") }

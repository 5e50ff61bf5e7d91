//go:build !linux

package agent

// tcpListening cannot tell here without dialing the target, which a
// server must not see: no warning.
func tcpListening(string) (listening, known bool) { return false, false }

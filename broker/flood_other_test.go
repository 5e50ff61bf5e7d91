//go:build !linux

package broker

// The fd flood test (flood_test.go) needs Linux: it lowers RLIMIT_NOFILE in
// a child and counts its descriptors in /proc. Here TestMain has no child
// to run.
func floodChild() bool { return false }

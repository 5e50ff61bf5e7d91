//go:build race

package mux

// The race detector allows at most 8128 live goroutines.
const raceEnabled = true

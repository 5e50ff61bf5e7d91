//go:build !unix && !windows

package testutil

import "time"

// CPUTime is unknown here; it stays 0, and CPU figures read 0.
func CPUTime() time.Duration { return 0 }

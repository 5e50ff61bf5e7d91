//go:build !unix

package config

import (
	"fmt"
	"os"
)

// exposed has nothing to check where files have no Unix mode bits (Windows
// guards them with ACLs, which Go's FileMode does not show).
func exposed(string, os.FileInfo, []string) string { return "" }

func describeOwner(fi os.FileInfo) string { return fmt.Sprintf("mode %04o", fi.Mode().Perm()) }

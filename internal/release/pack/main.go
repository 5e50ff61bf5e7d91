// Command pack is scripts/release's packer (see package release), so that
// the script needs neither zip nor a particular tar or sha256sum:
//
//	pack ARCHIVE FILE...        write ARCHIVE (.tar.gz or .zip) holding FILEs
//	pack -sums SUMS ARCHIVE...  write SUMS, sha256sum's format, over ARCHIVEs
//
// Entries carry the time $SOURCE_DATE_EPOCH (Unix seconds), else now.
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/peerport/peerport/internal/release"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "pack:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) >= 2 && args[0] == "-sums" {
		return release.Sums(args[1], args[2:])
	}
	if len(args) < 2 || strings.HasPrefix(args[0], "-") {
		return fmt.Errorf("usage: pack ARCHIVE FILE... | pack -sums SUMS ARCHIVE...")
	}
	mtime := time.Now()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH=%q: want Unix seconds", s)
		}
		mtime = time.Unix(sec, 0)
	}
	return release.Archive(args[0], args[1:], mtime)
}

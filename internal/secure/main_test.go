package secure

import (
	"fmt"
	"io"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// childStateDir, set in the environment, makes the test binary a process
// of TestConcurrentFirstStart: it waits for a byte on stdin (so that all
// children start at once), loads or creates the identity in that dir,
// prints its ID and exits.
const childStateDir = "PEERPORT_TEST_IDENTITY_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childStateDir); dir != "" {
		io.ReadFull(os.Stdin, make([]byte, 1))
		id, err := LoadOrCreateIdentity(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(id.ID())
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

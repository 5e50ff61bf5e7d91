package config

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// loadHelperEnv makes the test binary load the agent.yaml it names and print
// the error, so a test running as root can load a file as another user.
const loadHelperEnv = "PEERPORT_CONFIG_TEST_LOAD"

func TestMain(m *testing.M) {
	if path := os.Getenv(loadHelperEnv); path != "" {
		_, err := LoadAgent(path)
		fmt.Print(err)
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

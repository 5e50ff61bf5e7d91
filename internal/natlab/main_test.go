package natlab_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	probeprog "github.com/peerport/peerport/internal/natlab/probe"
)

// envProbe makes the test binary act as the probe program, so the lab tests
// need no separate build: lab hosts run os.Args[0] with this variable set.
const envProbe = "NATLAB_TEST_PROBE"

func TestMain(m *testing.M) {
	if os.Getenv(envProbe) == "1" {
		os.Exit(probeprog.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

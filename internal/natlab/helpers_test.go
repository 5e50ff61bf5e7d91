package natlab_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// probe returns a command that runs this test binary as the probe program.
func probe(t testing.TB, args ...string) natlab.Command {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Under -race a binary sleeps 1s at exit by default; probes need not.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	return natlab.Command{Path: exe, Args: args, Env: []string{envProbe + "=1", "GORACE=" + gorace}}
}

// startProbe starts the probe on n and waits for its first line containing want.
func startProbe(t testing.TB, ctx context.Context, n *natlab.Node, want string, args ...string) (*natlab.Proc, string) {
	t.Helper()
	p, err := n.StartCommand(ctx, probe(t, args...))
	if err != nil {
		t.Fatal(err)
	}
	line, err := p.Expect(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	return p, line
}

// field returns the value of key=value in a probe line.
func field(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

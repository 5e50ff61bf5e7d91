package testutil

import (
	"bytes"
	"os"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
)

// Buffer is a bytes.Buffer safe for concurrent writers: a process's output,
// or a logger's.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Log returns a debug logger whose output the test prints when it fails
// (or always with PEERPORT_TEST_LOG=1), under name. Take it before starting
// what logs to it: cleanups run last in, first out, so the log is printed
// after those have stopped.
func Log(t testing.TB, name string) *logrus.Logger {
	t.Helper()
	buf := &Buffer{}
	l := logrus.New()
	l.SetOutput(buf)
	l.SetLevel(logrus.DebugLevel)
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("PEERPORT_TEST_LOG") == "1" {
			t.Logf("%s log:\n%s", name, buf.String())
		}
	})
	return l
}

package portmap

import (
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testLog returns a logger that writes to t.Log and remembers every line, so
// tests can assert what was logged.
func testLog(t testing.TB) (*logrus.Logger, *logLines) {
	l := logrus.New()
	l.SetLevel(logrus.DebugLevel)
	lines := &logLines{t: t}
	l.SetOutput(lines)
	return l, lines
}

type logLines struct {
	t     testing.TB
	mu    sync.Mutex
	lines []string
	done  bool
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.TrimRight(string(p), "\n")
	l.lines = append(l.lines, s)
	if os.Getenv("PORTMAP_TEST_LOG") != "" {
		l.t.Log(s)
	}
	return len(p), nil
}

// has reports whether a line contains every one of subs.
func (l *logLines) has(subs ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
next:
	for _, line := range l.lines {
		for _, s := range subs {
			if !strings.Contains(line, s) {
				continue next
			}
		}
		return true
	}
	return false
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

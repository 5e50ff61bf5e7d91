package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/shortcode"
)

// TestShortCode: `agent share --code` prints a short code as its first
// line; a teammate logged in to the same broker runs `agent connect CODE`
// and reaches the share. A wrong code fails with a clear message and burns
// the code; a used or expired code is refused.
func TestShortCode(t *testing.T) {
	w := newWorld(t)
	if _, stderr, err := run(t, bins.agent, "--state-dir", w.connDir, "login", w.brokerURL); err != nil {
		t.Fatalf("login: %v\n%s", err, stderr)
	}
	target := echoServer(t)

	// connectCode runs agent connect CODE to its end or its first line.
	connectFails := func(code, want string) {
		t.Helper()
		_, stderr, err := run(t, bins.agent, "--state-dir", w.connDir, "connect", code, "--listen", "127.0.0.1:0")
		if err == nil || !strings.Contains(stderr, want) {
			t.Fatalf("connect %s: %v, stderr %q; want a failure saying %q", code, err, stderr, want)
		}
		if lines := strings.Split(strings.TrimSpace(stderr), "\n"); !strings.HasPrefix(lines[len(lines)-1], "agent: ") {
			t.Errorf("the last stderr line is not the one error line: %q", lines[len(lines)-1])
		}
	}

	sharer, code := w.share(target, "--code", "--name", "right")
	if _, err := shortcode.Parse(code); err != nil {
		t.Fatalf("first line %q is not a short code: %v", code, err)
	}
	conn, addr := w.connect(code)
	echoCheck(t, addr, 1<<16)
	if st := status(t, w.sharerDir); len(st.Agents) != 1 || len(st.Agents[0].Shares[0].Admitted) != 1 {
		t.Fatalf("sharer's status: %+v", st.Agents)
	}
	conn.stop()
	connectFails(code, "no such code")
	sharer.stop()

	_, code = w.share(target, "--code", "--name", "wrong", "--code-uses", "3")
	c, _ := shortcode.Parse(code)
	c.Words[0]++
	connectFails(c.String(), "wrong code")
	connectFails(code, "no such code")

	_, code = w.share(target, "--code", "--name", "expired", "--code-ttl", "1s")
	time.Sleep(1500 * time.Millisecond)
	connectFails(code, "no such code")

	// Without a login, a code cannot say which broker it belongs to.
	_, stderr, err := run(t, bins.agent, "--state-dir", t.TempDir(), "connect", code)
	if err == nil || !strings.Contains(stderr, "agent login") {
		t.Fatalf("a code without a login: %v, %q", err, stderr)
	}
}

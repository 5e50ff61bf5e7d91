package e2e

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestShareRestartKeepsTicket: `agent share` with its embedded broker,
// stopped and started again with the same state dir, prints the same
// ticket, and the connector that used it is back through it by itself;
// --new-ticket replaces the ticket.
func TestShareRestartKeepsTicket(t *testing.T) {
	t.Parallel()
	args := []string{"--state-dir", t.TempDir(), "share", echoServer(t), "--embedded-listen", "127.0.0.1:0", "--public-addr", "127.0.0.1"}
	sharer := start(t, "sharer", bins.agent, args...)
	ticket := sharer.firstLine()
	conn := start(t, "connector", bins.agent, "--state-dir", t.TempDir(), "connect", ticket, "--listen", "127.0.0.1:0")
	addr := conn.firstLine()
	echoCheck(t, addr, 1<<20)

	sharer.stop()
	again := start(t, "sharer, restarted", bins.agent, args...)
	if got := again.firstLine(); got != ticket {
		t.Fatalf("restarted share printed ticket\n%s\nwant the first one\n%s", got, ticket)
	}
	eventually(t, 60*time.Second, "the connector through the restarted share", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		return err == nil && tryEcho(c, 64<<10, 10*time.Second) == nil
	})

	again.stop()
	fresh := start(t, "sharer, new ticket", bins.agent, append(args, "--new-ticket")...)
	if got := fresh.firstLine(); got == ticket {
		t.Fatal("--new-ticket printed the old ticket")
	}
}

// TestConnectGivesUp: a connect that cannot reach its share for the first
// time exits non-zero within its --timeout, saying why.
func TestConnectGivesUp(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(w *world, ticket string) // makes the share unreachable
		want  string
	}{
		{"share gone", func(w *world, _ string) {}, "share not found"},
		{"broker down", func(w *world, _ string) { w.broker.stop() }, "broker unreachable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t)
			sharer, ticket := w.share(echoServer(t))
			sharer.stop()
			tc.setup(w, ticket)
			began := time.Now()
			conn := start(t, "connector", bins.agent, "--state-dir", w.connDir, "connect", ticket, "--timeout", "3s")
			err := conn.wait(30 * time.Second)
			took := time.Since(began)
			if err == nil {
				t.Fatalf("connect exited 0 after %v with its share unreachable", took)
			}
			out := conn.stderr.String()
			if !strings.Contains(out, "gave up after 3s") || !strings.Contains(out, tc.want) {
				t.Errorf("connect's last words do not say it gave up and why (%q):\n%s", tc.want, out)
			}
			if strings.Count(out, tc.want) < 2 { // "waiting for the sharer: …", or the broker client's "broker unreachable; retrying"
				t.Errorf("while trying, connect did not say what it waits for (%q):\n%s", tc.want, out)
			}
			t.Logf("exited after %v: %s", took.Round(100*time.Millisecond), lastLine(out))
		})
	}
}

// TestConnectorWaitsForReturningShare: a connect that has worked keeps
// trying past its --timeout while its share is away, says what it waits
// for, and works again when the share is back.
func TestConnectorWaitsForReturningShare(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	target := echoServer(t)
	sharer, ticket := w.share(target)
	conn := start(t, "connector", bins.agent, "--state-dir", w.connDir, "connect", ticket, "--listen", "127.0.0.1:0", "--timeout", "2s")
	addr := conn.firstLine()
	echoCheck(t, addr, 1<<20)
	sharer.stop()
	eventually(t, 30*time.Second, "the connector to say it waits for the sharer", func() bool {
		return strings.Contains(conn.stderr.String(), "waiting for the sharer: share not found")
	})
	time.Sleep(3 * time.Second) // past --timeout
	select {
	case <-conn.done:
		t.Fatalf("the connector exited while its share was away: %v", conn.err)
	default:
	}
	w.share(target)
	eventually(t, 60*time.Second, "the connector through the returned share", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		return err == nil && tryEcho(c, 64<<10, 10*time.Second) == nil
	})
}

// TestSameMachineTraps: a share of a port where nothing listens says so at
// start; a connect from the same state dir (the same machine) does not
// take the shared port, where the share's own connections would come back
// to it: by default it moves to a free port, and an explicit --listen on
// that port is refused.
func TestSameMachineTraps(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	port := freePort(t)
	target := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	sharer, ticket := w.share(target)
	eventually(t, 20*time.Second, "the sharer to warn that nothing listens on its target", func() bool {
		return strings.Contains(sharer.stderr.String(), "nothing listens on "+target)
	})

	conn := start(t, "connector", bins.agent, "--state-dir", w.sharerDir, "connect", ticket)
	addr := conn.firstLine()
	if addr == target {
		t.Fatalf("the connector took the share's own target %s", target)
	}
	eventually(t, 10*time.Second, "the connector to say why it moved to "+addr, func() bool {
		return strings.Contains(conn.stderr.String(), "the share is this agent's own")
	})
	conn.stop()

	looped := start(t, "connector on the target port", bins.agent, "--state-dir", w.sharerDir, "connect", ticket, "--listen", target)
	if err := looped.wait(30 * time.Second); err == nil || !strings.Contains(looped.stderr.String(), "would loop back") {
		t.Errorf("connect --listen %s on the share's own machine: %v\n%s", target, err, looped.stderr.String())
	}
}

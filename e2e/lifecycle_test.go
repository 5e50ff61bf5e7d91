package e2e

import (
	"net"
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

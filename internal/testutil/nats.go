package testutil

import (
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// NATS runs a real NATS server on loopback until the test ends and
// returns its client URL.
func NATS(t testing.TB) string {
	t.Helper()
	return NATSServer(t, &natsserver.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true}).ClientURL()
}

// NATSServer runs a real NATS server of opts until the test ends, for a
// test that stops and starts it itself (Shutdown is safe to repeat).
func NATSServer(t testing.TB, opts *natsserver.Options) *natsserver.Server {
	t.Helper()
	ns, err := natsserver.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

package agent

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peerport/peerport/broker"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/internal/testutil"
)

// startClusterNode is a broker node of a cluster on natsURL.
func startClusterNode(t *testing.T, natsURL, name, stateDir string) *testBroker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r, err := broker.Start(ctx, broker.Options{Listen: "127.0.0.1:0", PublicAddr: "127.0.0.1", StateDir: stateDir, Log: quietLog(), NoTURN: true, NoSTUN: true,
		Cluster: &broker.ClusterOptions{NATS: []string{natsURL}, Node: name}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	b := &testBroker{Running: r, stop: sync.OnceFunc(func() {
		cancel()
		<-r.Done
	})}
	t.Cleanup(b.stop)
	return b
}

func echoOnce(t *testing.T, addr, msg string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo: %q, %v", got, err)
	}
}

// TestClusterAcrossNodes: three broker nodes over a real NATS server; the
// sharer on node 1, a connector on node 3 reaches it with the ticket; node
// 1 dies: the sharer moves, the open peer session is untouched, and the
// same ticket works again through another node.
func TestClusterAcrossNodes(t *testing.T) {
	natsURL := testutil.NATS(t)
	leakCheck(t)

	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	var nodes []*testBroker
	for i, dir := range dirs {
		if i > 0 {
			if err := os.CopyFS(dir, os.DirFS(dirs[0])); err != nil {
				t.Fatal(err)
			}
		}
		nodes = append(nodes, startClusterNode(t, natsURL, []string{"n1", "n2", "n3"}[i], dir))
	}
	addr := func(is ...int) string {
		var a []string
		for _, i := range is {
			a = append(a, nodes[i].URL.Addr)
		}
		return strings.Join(a, ",")
	}
	u := nodes[0].URL
	u.Addr = addr(0, 1, 2)

	tickets := make(chan secure.Ticket, 4)
	sharer := startTestAgent(t, Options{Broker: &u, Shares: []ShareSpec{{Name: "echo", Target: echoTarget(t)}},
		OnTicket: func(_ string, tk secure.Ticket) { tickets <- tk }})
	tk := waitTicket(t, tickets, "the share never registered")
	eventually(t, "the sharer's status shows its session", func() bool { return brokerStatus(t, sharer).Connected })
	if st := brokerStatus(t, sharer); st.Addr != nodes[0].URL.Addr {
		t.Fatalf("sharer on %s, want node 1", st.Addr)
	}
	// The connector starts on node 3: the same ticket, its addresses in
	// another order.
	tk3 := tk
	tk3.Broker = addr(2, 0, 1)
	listening := make(chan net.Addr, 1)
	conn := startTestAgent(t, Options{Connects: []ConnectSpec{{Ticket: &tk3, Listen: "127.0.0.1:0"}},
		OnListen: func(_ ConnectSpec, a net.Addr) { listening <- a }})
	var laddr net.Addr
	select {
	case laddr = <-listening:
	case <-time.After(15 * time.Second):
		t.Fatal("connector not listening within 15 s")
	}
	echoOnce(t, laddr.String(), "across the cluster")
	eventually(t, "the connector's status shows its session", func() bool { return brokerStatus(t, conn).Connected })
	if st := brokerStatus(t, conn); st.Addr != nodes[2].URL.Addr {
		t.Errorf("connector on %s, want node 3", st.Addr)
	}

	// Node 1 dies. The direct peer session does not depend on it.
	nodes[0].stop()
	echoOnce(t, laddr.String(), "while the sharer's node is dead")
	eventually(t, "the sharer on another node", func() bool {
		st := brokerStatus(t, sharer)
		return st.Connected && st.Addr != nodes[0].URL.Addr
	})
	// A new connector with the same ticket, on node 3, reaches the sharer
	// on its new node.
	listening2 := make(chan net.Addr, 1)
	startTestAgent(t, Options{Connects: []ConnectSpec{{Ticket: &tk3, Listen: "127.0.0.1:0"}},
		OnListen: func(_ ConnectSpec, a net.Addr) { listening2 <- a }})
	select {
	case laddr = <-listening2:
	case <-time.After(15 * time.Second):
		t.Fatal("second connector not listening within 15 s")
	}
	echoOnce(t, laddr.String(), "after the node's death")
}

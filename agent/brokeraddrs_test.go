package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"go.uber.org/goleak"

	"github.com/peerport/peerport/broker"
	"github.com/peerport/peerport/internal/secure"
)

// Agents and a broker URL naming several addresses (the nodes of one
// broker): the agent tries them in turn, and moves to another node when its
// own dies. The brokers are real ones, in process, on loopback.

// testBroker is an in-process broker on a loopback port; stop ends it
// (again at cleanup).
type testBroker struct {
	*broker.Running
	stop func()
}

func startTestBroker(t *testing.T, stateDir string) *testBroker {
	t.Helper()
	return startTestBrokerAt(t, stateDir, "127.0.0.1:0")
}

// startTestBrokerAt starts a broker listening on listen: a node started
// again on its address.
func startTestBrokerAt(t *testing.T, stateDir, listen string) *testBroker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var r *broker.Running
	var err error
	// A port just freed can be held a moment as the source port of some
	// loopback dial (the agents redialing the nodes that are down): retry.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		r, err = broker.Start(ctx, broker.Options{Listen: listen, PublicAddr: "127.0.0.1", StateDir: stateDir, Log: quietLog(), NoTURN: true})
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	b := &testBroker{Running: r, stop: sync.OnceFunc(func() {
		cancel()
		select {
		case <-r.Done:
		case <-time.After(15 * time.Second):
			t.Error("broker did not stop within 15 s")
		}
	})}
	t.Cleanup(b.stop)
	return b
}

func (b *testBroker) addr() string { return b.URL.Addr }

func quietLog() *logrus.Logger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l
}

// startTestAgent runs an agent with o until the test ends; o's identity,
// state dir, candidates (loopback) and log are filled in where unset.
func startTestAgent(t *testing.T, o Options) *Agent {
	t.Helper()
	return startTestAgentWith(t, o, nil)
}

// startTestAgentWith is startTestAgent with setup run on the agent before
// it runs.
func startTestAgentWith(t *testing.T, o Options, setup func(*Agent)) *Agent {
	t.Helper()
	if o.Identity == nil {
		o.Identity = newIdentity(t)
	}
	if o.Log == nil {
		o.Log = quietLog()
	}
	o.StateDir = t.TempDir()
	o.Candidates = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	o.DrainTimeout = time.Second
	a, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("agent did not stop within 15 s of cancel")
		}
	})
	return a
}

// closedAddr is a loopback address where nothing listens: a node that is down.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// multiURL is the URL of b's token and pin naming addrs.
func multiURL(t *testing.T, b *testBroker, addrs ...string) secure.BrokerURL {
	t.Helper()
	u, err := secure.ParseBrokerURL(b.URL.At(strings.Join(addrs, ",")).String())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// echoTarget is a TCP echo server on loopback.
func echoTarget(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// brokerStatus is a's one broker's status.
func brokerStatus(t *testing.T, a *Agent) BrokerStatus {
	t.Helper()
	bs := a.Status().Brokers
	if len(bs) != 1 {
		t.Fatalf("agent status has %d brokers, want 1: %+v", len(bs), bs)
	}
	return bs[0]
}

func waitTicket(t *testing.T, ch <-chan secure.Ticket, what string) secure.Ticket {
	t.Helper()
	select {
	case tk := <-ch:
		return tk
	case <-time.After(10 * time.Second):
		t.Fatalf("no ticket within 10 s: %s", what)
		return secure.Ticket{}
	}
}

// leakCheck registers, first, the cleanup that runs last: no goroutine the
// test started outlives the agents and brokers.
func leakCheck(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// TestBrokerAddrsSkipDeadFirst: the URL's first address is a closed port,
// its second a live broker. The agent goes on to the second at once, as a
// failed dial to one address does (no backoff before the next address,
// only after a whole round failed), registers its share there, and its
// status names the node it is connected to.
func TestBrokerAddrsSkipDeadFirst(t *testing.T) {
	leakCheck(t)
	br := startTestBroker(t, t.TempDir())
	dead := closedAddr(t)
	u := multiURL(t, br, dead, br.addr())

	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	tickets := make(chan secure.Ticket, 1)
	start := time.Now()
	a := startTestAgent(t, Options{Broker: &u, Log: log, Shares: []ShareSpec{{Name: "echo", Target: echoTarget(t)}},
		OnTicket: func(_ string, tk secure.Ticket) { tickets <- tk }})
	tk := waitTicket(t, tickets, "the share never registered")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("share online after %v, want well within 5 s", d)
	}
	if tk.Broker != u.Addr {
		t.Errorf("ticket names broker %q, want the URL's addresses %q", tk.Broker, u.Addr)
	}
	if n := br.Server.Stats().Shares; n != 1 {
		t.Errorf("the live broker holds %d shares, want 1", n)
	}
	// The ticket comes as the share registers, the session's status just after.
	eventually(t, "the agent's status shows its session", func() bool { return brokerStatus(t, a).Connected })
	st := brokerStatus(t, a)
	if !st.Connected || st.Addr != br.addr() {
		t.Errorf("status: connected %v to %q, want connected to the live node %s", st.Connected, st.Addr, br.addr())
	}
	if len(st.Addrs) != 2 || st.Addrs[0] != dead || st.Addrs[1] != br.addr() {
		t.Errorf("status addrs %q, want both of the URL's", st.Addrs)
	}
	if st.Reconnects != 1 || !strings.Contains(st.LastError, dead) {
		t.Errorf("status: %d reconnects, last error %q; want the one failed dial to %s", st.Reconnects, st.LastError, dead)
	}
	// The logs tell what happened: a move to the next address, no sleep.
	var next, connected bool
	for _, e := range hook.AllEntries() {
		switch {
		case strings.Contains(e.Message, "trying the next address") && e.Data["next"] == br.addr():
			next = true
		case strings.Contains(e.Message, "retrying in"):
			t.Errorf("the agent backed off before trying the second address: %q", e.Message)
		case e.Message == "connected to broker":
			connected = true
			if e.Data["broker"] != br.addr() {
				t.Errorf("connected log names broker %v, want the node %s", e.Data["broker"], br.addr())
			}
		}
	}
	if !next || !connected {
		t.Errorf("logs: moved to the next address %v, connected %v; want both", next, connected)
	}
}

// TestBrokerAddrsFailover: two brokers started from copies of one state
// dir (one token, one key: the nodes of one broker). The sharer, given
// both addresses, is on the first; when the first stops, it moves to the
// second and its share is registered there within 10 s, and a connector
// with the ticket (which names both) reaches the share through the second.
func TestBrokerAddrsFailover(t *testing.T) {
	leakCheck(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	brA := startTestBroker(t, dirA)
	if err := os.CopyFS(dirB, os.DirFS(dirA)); err != nil {
		t.Fatal(err)
	}
	brB := startTestBroker(t, dirB)
	if brA.URL.Token != brB.URL.Token || brA.URL.Pin != brB.URL.Pin {
		t.Fatal("brokers from copies of one state dir have different tokens or pins")
	}
	u := multiURL(t, brA, brA.addr(), brB.addr())

	tickets := make(chan secure.Ticket, 1)
	sharer := startTestAgent(t, Options{Broker: &u, Shares: []ShareSpec{{Name: "echo", Target: echoTarget(t)}},
		OnTicket: func(_ string, tk secure.Ticket) { tickets <- tk }})
	tk := waitTicket(t, tickets, "the share never registered")
	if tk.Broker != u.Addr {
		t.Fatalf("ticket names broker %q, want %q", tk.Broker, u.Addr)
	}
	eventually(t, "the sharer's status shows its session", func() bool { return brokerStatus(t, sharer).Connected })
	if st := brokerStatus(t, sharer); !st.Connected || st.Addr != brA.addr() {
		t.Fatalf("sharer status: connected %v to %q, want the first node %s", st.Connected, st.Addr, brA.addr())
	}
	if n := brA.Server.Stats().Shares; n != 1 {
		t.Fatalf("first node holds %d shares, want 1", n)
	}

	brA.stop()
	stopped := time.Now()
	for deadline := stopped.Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st := brokerStatus(t, sharer)
		if st.Connected && st.Addr == brB.addr() && brB.Server.Stats().Shares == 1 {
			t.Logf("share re-registered on the second node %v after the first stopped", time.Since(stopped).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the first node stopped: sharer status %+v, second node holds %d shares", st, brB.Server.Stats().Shares)
		}
	}

	listening := make(chan net.Addr, 1)
	conn := startTestAgent(t, Options{Connects: []ConnectSpec{{Ticket: &tk, Listen: "127.0.0.1:0"}},
		OnListen: func(_ ConnectSpec, a net.Addr) { listening <- a }})
	var laddr net.Addr
	select {
	case laddr = <-listening:
	case <-time.After(10 * time.Second):
		t.Fatal("connector not listening within 10 s")
	}
	c, err := net.DialTimeout("tcp", laddr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	msg := []byte("through the second node")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo through the connector: %q, %v", got, err)
	}
	c.Close()
	if st := brokerStatus(t, conn); !st.Connected || st.Addr != brB.addr() {
		t.Errorf("connector status: connected %v to %q, want the second node %s", st.Connected, st.Addr, brB.addr())
	}
}

// TestBrokerRelayNode: the broker relay is dialed on a node by the URL's
// pin, whichever address a broker names for it (ConnectReply.RelayAddr):
// a node of the same broker (same key) gets as far as the bind, a host
// with another key is refused by TLS, with its address in the error, and
// a RelayAddr that is not one host:port is refused before any dial.
func TestBrokerRelayNode(t *testing.T) {
	leakCheck(t)
	dir := t.TempDir()
	br := startTestBroker(t, dir)
	otherDir := t.TempDir()
	if err := os.CopyFS(otherDir, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	sibling := startTestBroker(t, otherDir)
	stranger := startTestBroker(t, t.TempDir()) // another broker: its own key

	a, err := New(Options{Identity: newIdentity(t), Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.resumable.Close() })
	b := newBrokerClient(a, multiURL(t, br, br.addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A token no introduction issued (all zeros): the sibling node answers the bind
	// (with a refusal), which it could only do past the pin check.
	if _, err := b.bindRelay(ctx, sibling.addr(), make([]byte, 32)); err == nil || !strings.Contains(err.Error(), "unknown or expired relay token") {
		t.Errorf("bind on a node of the same broker: %v, want the node's refusal of the token", err)
	}
	_, err = b.bindRelay(ctx, stranger.addr(), make([]byte, 32))
	if !errors.Is(err, secure.ErrPinMismatch) || !strings.Contains(err.Error(), stranger.addr()) {
		t.Errorf("bind on a host with another key: %v, want ErrPinMismatch naming %s", err, stranger.addr())
	}

	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:7000", true},
		{"[::1]:443", true},
		{"node-2.broker.example:7000", true},
		{"", false},
		{"127.0.0.1", false},
		{":7000", false},
		{"h:0", false},
		{"h:65536", false},
		{"h:x", false},
		{"a:1,b:1", false},
		{"a b:1", false},
		{"::1", false},
	} {
		if err := checkRelayAddr(tt.addr); (err == nil) != tt.ok || (err != nil && !errors.Is(err, errBadRelayAddr)) {
			t.Errorf("checkRelayAddr(%q) = %v, want ok %v", tt.addr, err, tt.ok)
		}
	}
}

// TestBrokerAddrsPinMismatchFinal: a node whose key is not the URL's pin
// ends the agent, as with one address (a wrong URL, or someone in the
// middle), even with a good node after it; the error names that node.
func TestBrokerAddrsPinMismatchFinal(t *testing.T) {
	leakCheck(t)
	br := startTestBroker(t, t.TempDir())
	stranger := startTestBroker(t, t.TempDir())
	u := multiURL(t, br, stranger.addr(), br.addr())
	a, err := New(Options{Identity: newIdentity(t), Log: quietLog(), StateDir: t.TempDir(), Broker: &u,
		Shares: []ShareSpec{{Name: "echo", Target: echoTarget(t)}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if !errors.Is(err, secure.ErrPinMismatch) || !strings.Contains(err.Error(), stranger.addr()) {
		t.Fatalf("Run = %v, want ErrPinMismatch naming %s", err, stranger.addr())
	}
	if n := br.Server.Stats().Shares; n != 0 {
		t.Errorf("the good node holds %d shares, want 0: a final refusal ends the round", n)
	}
}

// TestBrokerAddrsStartWithLastWorked: after every address failed, the next
// round starts at the address that last worked, not at the first: the
// sharer moved from node A to node B; both go down, then come back (B
// first); the sharer is back on B.
func TestBrokerAddrsStartWithLastWorked(t *testing.T) {
	leakCheck(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	brA := startTestBroker(t, dirA)
	if err := os.CopyFS(dirB, os.DirFS(dirA)); err != nil {
		t.Fatal(err)
	}
	brB := startTestBroker(t, dirB)
	u := multiURL(t, brA, brA.addr(), brB.addr())
	tickets := make(chan secure.Ticket, 1)
	sharer := startTestAgent(t, Options{Broker: &u, Shares: []ShareSpec{{Name: "echo", Target: echoTarget(t)}},
		OnTicket: func(_ string, tk secure.Ticket) { tickets <- tk }})
	waitTicket(t, tickets, "the share never registered")
	onNode := func(addr string) func() bool {
		return func() bool { st := brokerStatus(t, sharer); return st.Connected && st.Addr == addr }
	}
	eventually(t, "the sharer on node A", onNode(brA.addr()))
	brA.stop()
	eventually(t, "the sharer on node B once A stopped", onNode(brB.addr()))
	brB.stop()
	eventually(t, "the sharer disconnected once both stopped", func() bool { return !brokerStatus(t, sharer).Connected })

	brB = startTestBrokerAt(t, dirB, brB.addr())
	brA = startTestBrokerAt(t, dirA, brA.addr())
	eventually(t, "the sharer back on node B, where it last was", func() bool {
		return onNode(brB.addr())() && brB.Server.Stats().Shares == 1
	})
	if n := brA.Server.Stats().Shares; n != 0 {
		t.Errorf("node A holds %d shares, want 0", n)
	}
}

// TestSameBroker: a ticket made at the broker the agent is logged in to is
// served by that session, whatever order or subset of the cluster's nodes
// either lists; another pin, or no node in common, is another broker.
func TestSameBroker(t *testing.T) {
	pin := [32]byte{1}
	tests := []struct {
		name   string
		url    string
		ticket string
		pin    [32]byte
		want   bool
	}{
		{"one node", "a:7000", "a:7000", pin, true},
		{"same nodes, other order", "c:7000,a:7000,b:7000", "a:7000,b:7000,c:7000", pin, true},
		{"a node added since the ticket", "a:7000,b:7000,d:7000", "a:7000,b:7000", pin, true},
		{"no node in common", "a:7000,b:7000", "c:7000", pin, false},
		{"same port, another host", "a:7000", "a:7001", pin, false},
		{"another pin", "a:7000", "a:7000", [32]byte{2}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u := secure.BrokerURL{Addr: tc.url, Pin: pin}
			tk := secure.Ticket{Broker: tc.ticket, Pin: tc.pin}
			if got := sameBroker(u, tk); got != tc.want {
				t.Errorf("sameBroker(%q, ticket at %q) = %v, want %v", tc.url, tc.ticket, got, tc.want)
			}
		})
	}
}

// TestFailoverOrder: from any address the order visits every address once,
// agents of one node spread over all the others when it dies, and an
// agent's order is the same every run.
func TestFailoverOrder(t *testing.T) {
	const n, agents = 4, 400
	firstAfter := map[int]int{} // where the agents of node 0 go first
	for k := range agents {
		var id secure.AgentID
		id[0], id[9] = byte(k), byte(k>>8)
		next := failoverOrder(n, id)
		for from := range n {
			seen := map[int]bool{}
			for i, steps := from, 0; steps < n; i, steps = next[i], steps+1 {
				if seen[i] {
					t.Fatalf("agent %d: from %d the order %v repeats %d before visiting all", k, from, next, i)
				}
				seen[i] = true
			}
		}
		firstAfter[next[0]]++
		if again := failoverOrder(n, id); !slices.Equal(again, next) {
			t.Fatalf("agent %d: order %v, then %v", k, next, again)
		}
	}
	for node := 1; node < n; node++ {
		if c := firstAfter[node]; c < agents/(n-1)/2 {
			t.Errorf("of %d agents leaving node 0, %d go to node %d: want them spread (%v)", agents, c, node, firstAfter)
		}
	}
	if firstAfter[0] != 0 {
		t.Errorf("%d agents retry the node they left first", firstAfter[0])
	}
}

// TestShareAddedWhileRegistering: the broker client's first session looks
// for shares before the agent has added its share (under load, writing the
// kept ticket took that long), and the share is added while the session
// registers the ones it found. The share must be registered on that
// session: it was left for a next session that never came, and `agent
// share` printed no ticket (TestLabProxyOnly in CI).
func TestShareAddedWhileRegistering(t *testing.T) {
	leakCheck(t)
	br := startTestBroker(t, t.TempDir())
	tickets := make(chan secure.Ticket, 1)
	o := Options{Broker: &br.URL, Shares: []ShareSpec{{Name: "echo", Target: echoTarget(t)}},
		OnTicket: func(_ string, tk secure.Ticket) { tickets <- tk }}
	looked := make(chan struct{})
	var once sync.Once
	startTestAgentWith(t, o, func(a *Agent) {
		a.testHookClientStarted = func() { <-looked }
		a.testHookRegistered = func() {
			once.Do(func() {
				close(looked)
				for a.shareNamed("echo") == nil {
					time.Sleep(time.Millisecond)
				}
				// apply goes on to register the share now: let it get
				// there before this session is current.
				time.Sleep(100 * time.Millisecond)
			})
		}
	})
	waitTicket(t, tickets, "the share added while the session registered was never registered")
	if n := br.Server.Stats().Shares; n != 1 {
		t.Errorf("the broker holds %d shares, want 1", n)
	}
}

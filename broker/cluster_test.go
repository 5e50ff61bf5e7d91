package broker

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/internal/testutil"
)

// copyState provisions a node's state dir as an operator would: a copy of
// one node's.
func copyState(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

type node struct {
	*harness
	run    *Running
	cancel context.CancelFunc
}

func startNode(t *testing.T, natsURL, name, stateDir string) (*node, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r, err := Start(ctx, Options{Listen: "127.0.0.1:0", PublicAddr: "127.0.0.1", StateDir: stateDir, NoSTUN: true, NoTURN: true,
		Log: testLogger(t), Version: "test", Cluster: &ClusterOptions{NATS: []string{natsURL}, Node: name}})
	if err != nil {
		cancel()
		return nil, err
	}
	t.Cleanup(func() {
		cancel()
		<-r.Done
	})
	st, err := LoadOrCreateState(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{srv: r.Server, state: st, dial: func(t *testing.T) net.Conn {
		c, err := net.DialTimeout("tcp", r.Addr.String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}}
	return &node{harness: h, run: r, cancel: cancel}, nil
}

// threeNodes starts a NATS server and three broker nodes of one identity.
func threeNodes(t *testing.T) (string, string, []*node) {
	t.Helper()
	url := testutil.NATS(t)
	first := t.TempDir()
	if _, err := LoadOrCreateState(first); err != nil {
		t.Fatal(err)
	}
	var nodes []*node
	for i, name := range []string{"n1", "n2", "n3"} {
		dir := first
		if i > 0 {
			dir = copyState(t, first)
		}
		n, err := startNode(t, url, name, dir)
		if err != nil {
			t.Fatalf("node %s: %v", name, err)
		}
		nodes = append(nodes, n)
	}
	return url, first, nodes
}

// waitSubject waits until the NATS routes know of a subject the test
// just made a node hold: a request sent earlier finds no responder.
func waitHeld(t *testing.T, n *node, subject string) {
	t.Helper()
	waitFor(t, "node holds "+subject, func() bool {
		for _, s := range n.srv.cluster.Load().subjects() {
			if s == subject {
				return true
			}
		}
		return false
	})
}

func TestClusterIntroduction(t *testing.T) {
	_, _, nodes := threeNodes(t)
	n1, n3 := nodes[0], nodes[2]
	sharer, tk := sharerWithTicket(t, n1.harness, "web.app")
	defer sharer.close()
	waitHeld(t, n1, shareSubject(tk.Sharer, "web.app"))
	connID := newIdentity(t)
	conn := n3.login(t, connID, "")
	defer conn.close()
	admit := tk.AdmitKey()

	for i, path := range []string{proto.PathDirect, proto.PathBroker} {
		id := uint64(10 + i)
		conn.send(&proto.Connect{ID: id, Sharer: tk.Sharer.String(), Share: "web.app", Admit: admit[:], Candidates: connectorCands, Path: path})
		in := expectType[*proto.Intro](t, sharer.read())
		if in.Connector != connID.ID().String() || in.Share != "web.app" {
			t.Fatalf("%s: intro %#v", path, in)
		}
		if path == proto.PathBroker && len(in.RelayToken) == 0 {
			t.Fatalf("broker relay intro without a token")
		}
		sharer.send(&proto.IntroReply{Intro: in.Intro, Candidates: sharerCands, Port: 8080})
		rep := expectType[*proto.ConnectReply](t, conn.read())
		if rep.ID != id || rep.Code != "" || rep.Port != 8080 {
			t.Fatalf("%s: connect reply %#v", path, rep)
		}
		// The pair meets on the sharer's node's relay, whose token it is.
		if path == proto.PathBroker && (rep.RelayAddr != n1.run.URL.Addr || string(rep.RelayToken) != string(in.RelayToken)) {
			t.Fatalf("relay addr %q token %x, want %q %x", rep.RelayAddr, rep.RelayToken, n1.run.URL.Addr, in.RelayToken)
		}
	}

	// A wrong ticket is refused by the sharer's node, as on one broker.
	bad := [32]byte{1}
	conn.send(&proto.Connect{ID: 20, Sharer: tk.Sharer.String(), Share: "web.app", Admit: bad[:]})
	if rep := expectType[*proto.ConnectReply](t, conn.read()); rep.Code != proto.CodeUnauthorized {
		t.Fatalf("wrong admit: %#v", rep)
	}
	// Presence across nodes: the sharer is online, for the agent it met.
	conn.send(&proto.Presence{ID: 21, Agent: tk.Sharer.String()})
	if r := expectType[*proto.Result](t, conn.read()); r.Code != "" {
		t.Fatalf("presence: %#v", r)
	}
	if got := n3.srv.Stats().Introductions; got != 2 {
		t.Errorf("connector's node counted %d introductions, want 2", got)
	}

	// The sharer's node dies: its subscriptions go with it, and the
	// sharer is not online anywhere (no responders: no waiting for a
	// timeout).
	n1.cancel()
	<-n1.run.Done
	cl3 := n3.srv.cluster.Load()
	waitFor(t, "NATS to forget the dead node's subjects", func() bool {
		_, err := cl3.request(context.Background(), shareSubject(tk.Sharer, "web.app"), &clusterMsg{}, 500*time.Millisecond)
		return errors.Is(err, errNobody)
	})
	conn.send(&proto.Connect{ID: 30, Sharer: tk.Sharer.String(), Share: "web.app", Admit: admit[:]})
	if rep := expectType[*proto.ConnectReply](t, conn.read()); rep.Code != proto.CodeNotFound {
		t.Fatalf("after the node's death: %#v", rep)
	}
	// The sharer comes back on node 2 with the same ticket: it works.
	sharer2 := nodes[1].login(t, sharer.id, nodes[1].state.Token)
	defer sharer2.close()
	ah := tk.AdmitHash()
	sharer2.send(&proto.Register{ID: 1, Share: "web.app", AdmitHash: ah[:]})
	if r := expectType[*proto.Result](t, sharer2.read()); r.Code != "" {
		t.Fatalf("register on n2: %#v", r)
	}
	waitHeld(t, nodes[1], shareSubject(tk.Sharer, "web.app"))
	conn.send(&proto.Connect{ID: 31, Sharer: tk.Sharer.String(), Share: "web.app", Admit: admit[:]})
	in := expectType[*proto.Intro](t, sharer2.read())
	sharer2.send(&proto.IntroReply{Intro: in.Intro, Port: 8080})
	if rep := expectType[*proto.ConnectReply](t, conn.read()); rep.Code != "" || rep.ID != 31 {
		t.Fatalf("after moving to n2: %#v", rep)
	}
}

// A sharer online on another node without the share: not_registered
// within the grace, as on one broker, never a final refusal.
func TestClusterNotRegistered(t *testing.T) {
	_, _, nodes := threeNodes(t)
	id := newIdentity(t)
	s := nodes[0].login(t, id, nodes[0].state.Token)
	defer s.close()
	waitHeld(t, nodes[0], agentSubject(id.ID()))
	conn := nodes[1].login(t, newIdentity(t), "")
	defer conn.close()
	conn.send(&proto.Connect{ID: 1, Sharer: id.ID().String(), Share: "nope"})
	if rep := expectType[*proto.ConnectReply](t, conn.read()); rep.Code != proto.CodeNotRegistered {
		t.Fatalf("got %#v, want not_registered", rep)
	}
}

func TestClusterRefusesOtherIdentity(t *testing.T) {
	url, _, _ := threeNodes(t)
	_, err := startNode(t, url, "intruder", t.TempDir()) // a fresh state dir: another token and key
	if !errors.Is(err, ErrClusterIdentity) {
		t.Fatalf("got %v, want ErrClusterIdentity", err)
	}
}

func TestClusterSameNodeName(t *testing.T) {
	url, first, _ := threeNodes(t)
	if _, err := startNode(t, url, "n2", copyState(t, first)); err == nil {
		t.Fatal("a second node named n2 started")
	}
}

// A client of the same NATS without the cluster key cannot introduce
// itself to a sharer: its message is not sealed, or sealed with another
// key, or a replay of a real one.
func TestClusterForgedIntroduction(t *testing.T) {
	url, _, nodes := threeNodes(t)
	sharer, tk := sharerWithTicket(t, nodes[0].harness, "web")
	defer sharer.close()
	subject := shareSubject(tk.Sharer, "web")
	waitHeld(t, nodes[0], subject)

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	admit := tk.AdmitKey()
	req, err := json.Marshal(clusterMsg{Node: "evil", Intro: &introRequest{Connector: newIdentity(t).ID().String(), Remote: "forger",
		Connect: proto.Connect{Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:]}}})
	if err != nil {
		t.Fatal(err)
	}
	other, err := newSealer("another-token-0123456789", "another-turn-secret-0123", secure.Pin{}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := other.seal(req, subject)
	for _, msg := range [][]byte{req, forged, {1, 2, 3}} {
		if _, err := nc.Request(subject, msg, 500*time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
			t.Fatalf("forged request answered: %v", err)
		}
	}
	// A real request, captured and replayed, is refused the second time.
	real, _ := nodes[1].srv.cluster.Load().seal.seal(req, subject)
	answered := make(chan error, 1)
	go func() {
		_, err := nc.Request(subject, real, 5*time.Second)
		answered <- err
	}()
	in := expectType[*proto.Intro](t, sharer.read()) // the one real introduction
	sharer.send(&proto.IntroReply{Intro: in.Intro, Port: 80})
	if err := <-answered; err != nil {
		t.Fatalf("sealed request not answered: %v", err)
	}
	if _, err := nc.Request(subject, real, 500*time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("replayed request answered: %v", err)
	}
	sharer.ping()
	waitFor(t, "refusals counted", func() bool {
		return metricValue(t, nodes[0].srv, "peerport_broker_cluster_messages_refused_total") >= 4
	})
}

// metricValue reads one unlabelled counter of srv's registry.
func metricValue(t *testing.T, srv *Server, name string) float64 {
	t.Helper()
	mfs, err := srv.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			if g := mf.GetMetric()[0].GetGauge(); g != nil {
				return g.GetValue()
			}
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// TestClusterNATSDown: with NATS gone, a node keeps serving its own
// agents, says so in /healthz and its metrics, and answers connects for
// sharers elsewhere cluster_unavailable; once NATS is back it rejoins and
// they work again.
func TestClusterNATSDown(t *testing.T) {
	opts := &natsserver.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true}
	ns := testutil.NATSServer(t, opts)
	port := ns.Addr().(*net.TCPAddr).Port
	first := t.TempDir()
	if _, err := LoadOrCreateState(first); err != nil {
		t.Fatal(err)
	}
	n1, err := startNode(t, ns.ClientURL(), "n1", first)
	if err != nil {
		t.Fatal(err)
	}
	n2, err := startNode(t, ns.ClientURL(), "n2", copyState(t, first))
	if err != nil {
		t.Fatal(err)
	}
	sharer, tk := sharerWithTicket(t, n1.harness, "db")
	defer sharer.close()
	waitHeld(t, n1, shareSubject(tk.Sharer, "db"))
	admit := tk.AdmitKey()
	connect := func(n *node, id uint64) *proto.ConnectReply {
		t.Helper()
		c := n.login(t, newIdentity(t), "")
		defer c.close()
		c.send(&proto.Connect{ID: id, Sharer: tk.Sharer.String(), Share: "db", Admit: admit[:], Candidates: connectorCands})
		for {
			switch m := c.read().(type) {
			case *proto.ConnectReply:
				return m
			case *proto.Ping:
				c.send(&proto.Pong{Nonce: m.Nonce})
			}
		}
	}
	answer := func() {
		t.Helper()
		in := expectType[*proto.Intro](t, sharer.read())
		sharer.send(&proto.IntroReply{Intro: in.Intro, Candidates: sharerCands, Port: 5432})
	}
	go answer()
	if rep := connect(n2, 1); rep.Code != "" {
		t.Fatalf("across nodes with NATS up: %#v", rep)
	}

	ns.Shutdown()
	ns.WaitForShutdown()
	for _, n := range []*node{n1, n2} {
		waitFor(t, "the node to see NATS gone", func() bool {
			return strings.Contains(n.srv.health(), "NATS unreachable") && metricValue(t, n.srv, "peerport_broker_cluster_connected") == 0
		})
	}
	// Its own agents: served as on one broker.
	go answer()
	if rep := connect(n1, 2); rep.Code != "" {
		t.Fatalf("on the sharer's own node with NATS down: %#v", rep)
	}
	// Another node's: a clear code, which agents retry.
	if rep := connect(n2, 3); rep.Code != proto.CodeClusterUnavailable {
		t.Fatalf("across nodes with NATS down: %#v, want %s", rep, proto.CodeClusterUnavailable)
	}

	opts.Port = port
	testutil.NATSServer(t, opts)
	waitFor(t, "both nodes back in the cluster", func() bool {
		return strings.Contains(n1.srv.health(), "connected, 2 nodes") && strings.Contains(n2.srv.health(), "connected, 2 nodes")
	})
	waitHeld(t, n1, shareSubject(tk.Sharer, "db"))
	waitFor(t, "the sharer's subject known to NATS again", func() bool {
		_, err := n2.srv.cluster.Load().request(context.Background(), shareSubject(tk.Sharer, "db"), &clusterMsg{}, 500*time.Millisecond)
		return !errors.Is(err, errNobody)
	})
	go answer()
	if rep := connect(n2, 4); rep.Code != "" {
		t.Fatalf("across nodes once NATS is back: %#v", rep)
	}
}

// FuzzClusterMessage: whatever a client of the cluster's NATS publishes,
// opening it fails cleanly or yields a message sealed with the key; a
// request that opens is then parsed as carefully as an agent's.
func FuzzClusterMessage(f *testing.F) {
	s, err := newSealer("fuzz-token-0123456789ab", "fuzz-turn-secret-0123456", secure.Pin{}, time.Now)
	if err != nil {
		f.Fatal(err)
	}
	good, _ := json.Marshal(clusterMsg{Node: "n", Intro: &introRequest{Connector: "x", Connect: proto.Connect{Sharer: "y"}}})
	sealed, _ := s.seal(good, "subj")
	f.Add(sealed, []byte(nil))
	f.Add([]byte{1, 2, 3}, good)
	f.Add([]byte{}, []byte(`{"intro":{"connector":""}}`))
	f.Fuzz(func(t *testing.T, msg, body []byte) {
		if b, _, err := s.open(msg, "subj"); err == nil {
			body = b
		} else if !errors.Is(err, ErrSealed) {
			t.Fatalf("open: %v, not ErrSealed", err)
		}
		var m clusterMsg
		if json.Unmarshal(body, &m) == nil && m.Intro != nil {
			m.Intro.parse()
		}
		// Sealing round-trips.
		out, _ := s.seal(body, "subj")
		if got, _, err := s.open(out, "subj"); err != nil || string(got) != string(body) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

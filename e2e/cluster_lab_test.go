package e2e

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/internal/natlab"
)

// labCluster is a labWorld whose broker is two cluster nodes over a real
// nats-server: w.broker is node 1 ("broker"), node2 is "broker2".
type labCluster struct {
	*labWorld
	node2        *natlab.Node
	addr1, addr2 string // the nodes' control addresses, IP:7000
	natsURL      string
	state1       string // node 1's state dir: the cluster's identity
}

// labClusterTopology is the cluster lab: public hosts "broker" and
// "broker2" (the two nodes, each with a second address as in Pair) and
// "nats"; the sharer's host "a" behind the cone NAT gw-a, and the
// connector's host "b" behind gw-b of kind b.
func labClusterTopology(b natlab.Kind) natlab.Topology {
	return natlab.Topology{
		Name:    "cluster-cone-" + b.String(),
		Routers: []natlab.RouterSpec{{Name: "gw-a", Kind: natlab.Cone}, {Name: "gw-b", Kind: b}},
		Hosts: []natlab.HostSpec{
			{Name: "broker", ExtraIPs: 1}, {Name: "broker2", ExtraIPs: 1}, {Name: "nats"},
			{Name: "a", Behind: "gw-a"}, {Name: "b", Behind: "gw-b"},
		},
	}
}

// newLabCluster builds the lab, starts NATS and node 1 only, and provisions
// node 2's state dir with node 1's identity (node 2 starts later: see
// labStartNode2).
func newLabCluster(t *testing.T, topo natlab.Topology) *labCluster {
	lab := natlab.New(t, topo)
	w := &labWorld{t: t, lab: lab, ctx: t.Context(), sharerDir: t.TempDir(), connDir: t.TempDir(), broker: lab.Host("broker")}
	c := &labCluster{labWorld: w, node2: lab.Host("broker2"), state1: t.TempDir()}
	c.addr1 = net.JoinHostPort(w.broker.IP().String(), "7000")
	c.addr2 = net.JoinHostPort(c.node2.IP().String(), "7000")

	nats := lab.Host("nats")
	natsAddr := net.JoinHostPort(nats.IP().String(), "4222")
	c.natsURL = "nats://" + natsAddr
	w.startCmd(nats, natlab.Command{Path: bins.nats, Args: []string{"-a", nats.IP().String(), "-p", "4222", "-n", "lab-nats"}})
	eventually(t, 15*time.Second, "nats-server to listen", func() bool {
		conn, err := nats.Dial(w.ctx, "tcp", natsAddr)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	w.url = c.labStartNode(w.broker, "broker-1", c.state1)
	return c
}

// labStartNode starts a cluster node on n with state dir dir and returns
// the URL it prints, which names only that node.
func (c *labCluster) labStartNode(n *natlab.Node, name, dir string) string {
	return c.firstLine(c.startCmd(n, natlab.Command{Path: bins.broker, Env: raceEnv, Args: []string{
		"--state-dir", dir, "--public-addr", n.IP().String(), "--listen", ":7000", "--metrics-listen", "127.0.0.1:9102",
		"--cluster", c.natsURL, "--cluster-node", name}}))
}

// labStartNode2 copies node 1's identity into a fresh state dir, starts
// node 2 with it, and waits until both nodes see each other.
func (c *labCluster) labStartNode2() {
	t := c.t
	dir := t.TempDir()
	for _, f := range []string{"broker.key", "token", "turn.secret"} {
		b, err := os.ReadFile(filepath.Join(c.state1, f))
		if err != nil {
			t.Fatalf("node 1's identity: %v", err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	url2 := c.labStartNode(c.node2, "broker-2", dir)
	if want := strings.Replace(c.url, c.addr1, c.addr2, 1); url2 != want {
		t.Fatalf("node 2 printed %q, want node 1's URL with its own address, %q", url2, want)
	}
	for _, n := range []*natlab.Node{c.broker, c.node2} {
		eventually(t, 20*time.Second, n.Name()+" to see both nodes", func() bool {
			m := c.labMetrics(n)
			return metricSum(m, "peerport_broker_cluster_connected") == 1 && metricSum(m, "peerport_broker_cluster_nodes") == 2
		})
	}
}

// labMetrics scrapes the metrics of node n.
func (c *labCluster) labMetrics(n *natlab.Node) string {
	w := *c.labWorld
	w.broker = n
	return w.brokerMetrics()
}

// labBrokerStatus is the control session of the agent of state dir dir.
func (c *labCluster) labBrokerStatus(dir string) agent.BrokerStatus {
	out, err := exec.Command(bins.agent, "--state-dir", dir, "status", "--json").Output()
	if err != nil {
		c.t.Fatalf("status: %v", err)
	}
	var st agent.Status
	if err := json.Unmarshal(out, &st); err != nil || len(st.Agents) != 1 || len(st.Agents[0].Brokers) != 1 {
		c.t.Fatalf("status %s: want one agent with one broker session (%v)", out, err)
	}
	return st.Agents[0].Brokers[0]
}

// labWaitNode waits until the agent of dir has its control session with
// the node at addr, and returns its status.
func (c *labCluster) labWaitNode(dir, addr string) agent.BrokerStatus {
	c.t.Helper()
	var st agent.BrokerStatus
	eventually(c.t, 20*time.Second, "a control session with "+addr, func() bool {
		st = c.labBrokerStatus(dir)
		return st.Connected && st.Addr == addr
	})
	return st
}

// TestLabClusterRelay: two broker nodes in a cluster over a real NATS, on
// two public addresses; the sharer, behind a cone NAT, on node 1, the
// connector on node 2. Behind a symmetric NAT the pair meets through a
// relay on the sharer's node, whichever relay is asked for, and 16 MiB come
// back intact; behind a cone NAT it punches a direct path across the nodes.
//
// The sharer logs in with a URL naming node 2 first while node 2 is not up
// yet, so it stays on node 1; its tickets name node 2 first, so the
// connector, a guest started once node 2 is up, lands on node 2.
func TestLabClusterRelay(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		b        natlab.Kind // the connector's NAT
		connArgs []string
		path     string // both sides' path
		kind     string // the relay kind, "" for whichever won
	}{
		{"cone-symmetric auto", natlab.Symmetric, nil, "relay", ""},
		{"cone-symmetric turn", natlab.Symmetric, []string{"--path", "turn"}, "relay", "turn"},
		{"cone-symmetric broker", natlab.Symmetric, []string{"--path", "broker"}, "relay", "broker"},
		{"cone-cone auto", natlab.Cone, nil, "direct", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newLabCluster(t, labClusterTopology(tc.b))
			a, b := c.lab.Host("a"), c.lab.Host("b")
			sharerURL := strings.Replace(c.url, c.addr1, c.addr2+","+c.addr1, 1)
			if out, err := a.RunCommand(c.ctx, agentCmd("--state-dir", c.sharerDir, "login", sharerURL)); err != nil {
				t.Fatalf("login: %v\n%s", err, out)
			}
			sharer := c.startCmd(a, agentCmd("--state-dir", c.sharerDir, "share", c.echoIn(a)))
			ticket := c.firstLine(sharer)
			// Its first dial, to node 2, was refused: a reconnect.
			before := c.labWaitNode(c.sharerDir, c.addr1)
			c.labStartNode2()

			conn := c.startCmd(b, agentCmd(append([]string{"--state-dir", c.connDir, "connect", ticket,
				"--listen", "127.0.0.1:18080"}, tc.connArgs...)...))
			addr := c.firstLine(conn)
			nc, err := b.Dial(c.ctx, "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			echoOver(t, nc, 16<<20)

			// The introduction crossed the nodes: the connector is on node 2,
			// which asked node 1, holding the sharer, over NATS.
			if st := c.labBrokerStatus(c.connDir); st.Addr != c.addr2 {
				t.Errorf("connector's control session with %s, want node 2 (%s)", st.Addr, c.addr2)
			}
			if st := c.labBrokerStatus(c.sharerDir); st.Addr != c.addr1 || st.Reconnects != before.Reconnects {
				t.Errorf("sharer's control session with %s (%d reconnects, %d before node 2 started), want node 1 (%s) throughout",
					st.Addr, st.Reconnects, before.Reconnects, c.addr1)
			}
			p := c.onlyPath(c.connDir, tc.path)
			s := c.onlyPath(c.sharerDir, tc.path)
			m1, m2 := c.labMetrics(c.broker), c.labMetrics(c.node2)
			remote := `peerport_broker_introductions_total{where="remote"}`
			if metricSum(m2, remote) < 1 || metricSum(m2, `peerport_broker_introductions_total{where="local"}`) != 0 ||
				metricSum(m1, "peerport_broker_introductions_total") != 0 {
				t.Errorf("introductions: node 1 %v, node 2 %v local and %v remote; want only remote ones, on node 2",
					metricSum(m1, "peerport_broker_introductions_total"), metricSum(m2, `peerport_broker_introductions_total{where="local"}`), metricSum(m2, remote))
			}

			relayed := func(m string) float64 {
				return metricSum(m, "peerport_broker_turn_relayed_bytes_total") + metricSum(m, "peerport_broker_relay_bytes_total")
			}
			if tc.path == "direct" {
				if p.Relay != "" || relayed(m1)+relayed(m2) > 1<<20 {
					t.Errorf("direct peer status %+v names a relay, or the nodes relayed %v and %v bytes", p, relayed(m1), relayed(m2))
				}
				t.Logf("%s: path direct, pair %s -> %s, NAT %s/%s", tc.name, p.Pair.Local, p.Pair.Remote, p.LocalNAT, p.PeerNAT)
				return
			}
			if tc.kind != "" && p.RelayKind != tc.kind {
				t.Errorf("connector's relay_kind %q, want %q", p.RelayKind, tc.kind)
			}
			if p.Relay == "" || p.Relay != s.Relay || p.RelayKind != s.RelayKind || p.RelayedBytes < 32<<20 || s.RelayedBytes < 32<<20 {
				t.Errorf("relayed peer status: connector %+v, sharer %+v: want one relay, 32 MiB through it on each side", p, s)
			}
			// The pair meets on the sharer's node: its relay, its bytes.
			switch ap, err := netip.ParseAddrPort(p.Relay); {
			case p.RelayKind == "broker" && p.Relay != c.addr1:
				t.Errorf("broker relay at %q, want the sharer's node, %s", p.Relay, c.addr1)
			case p.RelayKind == "turn" && (err != nil || ap.Addr() != c.broker.IP()):
				t.Errorf("TURN relayed address %q, want one on the sharer's node, %s", p.Relay, c.broker.IP())
			}
			if kind := p.RelayKind; kind == "turn" && metricSum(m1, "peerport_broker_turn_allocations_total") < 1 {
				t.Error("node 1 made no TURN allocation")
			}
			if relayed(m1) < 32<<20 || relayed(m2) > 1<<20 {
				t.Errorf("relayed bytes: node 1 %v, node 2 %v; want >= 32 MiB on node 1, none on node 2", relayed(m1), relayed(m2))
			}
			t.Logf("%s: path relay (%s) at %s on node 1, relayed %d B, NAT %s/%s", tc.name, p.RelayKind, p.Relay, p.RelayedBytes, p.LocalNAT, p.PeerNAT)
		})
	}
}

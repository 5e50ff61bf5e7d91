package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/internal/natlab"
)

// labWorld is a broker on the lab's public side and two agents, sharer on
// host "a" and connector on host "b", each behind what the topology says.
type labWorld struct {
	t                  *testing.T
	lab                *natlab.Lab
	ctx                context.Context
	url                string
	sharerDir, connDir string
	broker             *natlab.Node
}

// brokerMetrics scrapes the broker's metrics inside its namespace.
func (w *labWorld) brokerMetrics() string {
	c, err := w.broker.Dial(w.ctx, "tcp", "127.0.0.1:9102")
	if err != nil {
		w.t.Fatalf("broker metrics: %v", err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET /metrics HTTP/1.0\r\n\r\n")
	b, _ := io.ReadAll(c)
	return string(b)
}

// raceEnv keeps race-built binaries from sleeping a second at exit.
var raceEnv = []string{"GORACE=atexit_sleep_ms=0"}

// newLabWorld builds the lab and starts its broker. In a dual-stack
// topology (IPv6) the agents get IPv6 only: see newDualStackWorld for both.
func newLabWorld(t *testing.T, topo natlab.Topology) *labWorld {
	return newLabWorldStack(t, topo, false)
}

// newDualStackWorld is newLabWorld for a dual-stack topology whose agents
// keep both families: they reach the broker over IPv4 and may find each
// other over either.
func newDualStackWorld(t *testing.T, topo natlab.Topology) *labWorld {
	if !topo.IPv6 {
		t.Fatalf("topology %s is not dual-stack", topo.Name)
	}
	return newLabWorldStack(t, topo, true)
}

func newLabWorldStack(t *testing.T, topo natlab.Topology, dual bool) *labWorld {
	lab := natlab.New(t, topo)
	w := &labWorld{t: t, lab: lab, ctx: t.Context(), sharerDir: t.TempDir(), connDir: t.TempDir()}
	br := lab.Host("broker")
	w.broker = br
	public := br.IP().String()
	if topo.IPv6 && !dual {
		// IPv6 only for the agents: without an IPv4 route, every path
		// between them, and to the broker, is IPv6.
		public = br.IPv6().String()
		for _, h := range []string{"a", "b"} {
			if out, err := lab.Host(h).Run(w.ctx, "ip", "-4", "route", "del", "default"); err != nil {
				t.Fatalf("drop IPv4 route of %s: %v %s", h, err, out)
			}
		}
	}
	w.url = w.firstLine(w.startCmd(br, natlab.Command{Path: bins.broker, Env: raceEnv,
		Args: []string{"--state-dir", t.TempDir(), "--public-addr", public, "--listen", ":7000", "--metrics-listen", "127.0.0.1:9102"}}))
	if out, err := lab.Host("a").RunCommand(w.ctx, agentCmd("--state-dir", w.sharerDir, "login", w.url)); err != nil {
		t.Fatalf("login: %v\n%s", err, out)
	}
	return w
}

func agentCmd(args ...string) natlab.Command {
	return natlab.Command{Path: bins.agent, Args: args, Env: raceEnv}
}

func (w *labWorld) startCmd(n *natlab.Node, c natlab.Command) *natlab.Proc {
	p, err := n.StartCommand(w.ctx, c)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() {
		p.Stop()
		if w.t.Failed() {
			w.t.Logf("--- %s stderr:\n%s", p, p.Stderr())
		}
	})
	return p
}

func (w *labWorld) firstLine(p *natlab.Proc) string {
	ctx, cancel := context.WithTimeout(w.ctx, 30*time.Second)
	defer cancel()
	l, err := p.ReadLine(ctx)
	if err != nil {
		w.t.Fatalf("%s printed no line: %v\nstderr:\n%s", p, err, p.Stderr())
	}
	return l
}

// echoIn runs an echo service inside host h's namespace.
func (w *labWorld) echoIn(h *natlab.Node) string {
	ln, err := h.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	return serveEcho(w.t, ln)
}

// shareConnect shares an echo service on "a" and connects to it from "b";
// it returns both processes and the connector's listen address (inside b).
func (w *labWorld) shareConnect() (sharer, conn *natlab.Proc, addr string) {
	a, b := w.lab.Host("a"), w.lab.Host("b")
	sharer = w.startCmd(a, agentCmd("--state-dir", w.sharerDir, "share", w.echoIn(a)))
	ticket := w.firstLine(sharer)
	conn = w.startCmd(b, agentCmd("--state-dir", w.connDir, "connect", ticket, "--listen", "127.0.0.1:18080"))
	return sharer, conn, w.firstLine(conn)
}

func (w *labWorld) peer(dir string) agent.PeerStatus {
	out, err := exec.Command(bins.agent, "--state-dir", dir, "status", "--json").Output()
	if err != nil {
		w.t.Fatalf("status: %v", err)
	}
	var st agent.Status
	if err := json.Unmarshal(out, &st); err != nil || len(st.Agents) != 1 || len(st.Agents[0].Peers) != 1 {
		w.t.Fatalf("status %s: want one agent with one peer (%v)", out, err)
	}
	return st.Agents[0].Peers[0]
}

// TestLabDirect: in each topology the agents punch a direct path, 16 MiB
// echo intact, and both report path "direct".
func TestLabDirect(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		topo natlab.Topology
		// check inspects the connector's view of the session.
		check func(t *testing.T, w *labWorld, p agent.PeerStatus)
	}{
		{"public-public", natlab.Pair(natlab.Public, natlab.Public), nil},
		{"cone-public", natlab.Pair(natlab.BehindCone, natlab.Public), nil},
		{"public-cone", natlab.Pair(natlab.Public, natlab.BehindCone), nil},
		{"cone-cone", natlab.Pair(natlab.BehindCone, natlab.BehindCone), func(t *testing.T, w *labWorld, p agent.PeerStatus) {
			if p.LocalNAT != "cone" || p.PeerNAT != "cone" {
				t.Errorf("NAT types %q/%q, want cone/cone", p.LocalNAT, p.PeerNAT)
			}
			want := `peerport_broker_punches_total{nat="cone",peer_nat="cone",result="direct"} 1`
			eventually(t, 10*time.Second, "the broker to count the punch", func() bool { return strings.Contains(w.brokerMetrics(), want) })
		}},
		{"double-cone", natlab.Pair(natlab.BehindCGN, natlab.BehindCone), nil},
		{"firewall-firewall", natlab.Pair(natlab.BehindFW, natlab.BehindFW), nil},
		{"shared LAN", natlab.Shared(), func(t *testing.T, w *labWorld, p agent.PeerStatus) {
			// No hairpinning: only the LAN candidate can have won.
			remote, err := netip.ParseAddrPort(p.Pair.Remote)
			if err != nil || remote.Addr() != w.lab.Host("a").IP() {
				t.Errorf("candidate pair %+v: want the sharer's LAN address %s", p.Pair, w.lab.Host("a").IP())
			}
		}},
		{"ipv6 firewall-firewall", natlab.IPv6Pair(), func(t *testing.T, w *labWorld, p agent.PeerStatus) {
			if remote, err := netip.ParseAddrPort(p.Pair.Remote); err != nil || !remote.Addr().Is6() {
				t.Errorf("candidate pair %+v: want IPv6", p.Pair)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newLabWorld(t, tc.topo)
			_, _, addr := w.shareConnect()
			c, err := w.lab.Host("b").Dial(w.ctx, "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			echoOver(t, c, 16<<20)
			p := w.peer(w.connDir)
			if p.Path != "direct" || p.Pair.Remote == "" || p.Attempts == 0 {
				t.Errorf("connector's peer status %+v: want a direct path with its candidate pair and attempts", p)
			}
			if s := w.peer(w.sharerDir); s.Path != "direct" {
				t.Errorf("sharer's peer status %+v: want direct", s)
			}
			if tc.check != nil {
				tc.check(t, w, p)
			}
			t.Logf("%s: punch_ms %d, attempts %d, pair %s -> %s (%s), NAT %s/%s", tc.name, p.PunchMS, p.Attempts,
				p.Pair.Local, p.Pair.Remote, p.Pair.Kind, p.LocalNAT, p.PeerNAT)
		})
	}
}

// TestLabSymmetricRelayNeeded: behind a symmetric NAT no direct path can be
// punched; the connector says so within seconds instead of timing out.
func TestLabSymmetricRelayNeeded(t *testing.T) {
	t.Parallel()
	w := newLabWorld(t, natlab.Pair(natlab.BehindSym, natlab.BehindCone))
	start := time.Now()
	_, conn, _ := w.shareConnect()
	eventually(t, 10*time.Second, "the connector to report relay needed", func() bool {
		return strings.Contains(conn.Stderr(), "relay needed")
	})
	want := `peerport_broker_punches_total{nat="cone",peer_nat="symmetric",result="relay_needed"}`
	eventually(t, 10*time.Second, "the broker to count it", func() bool { return strings.Contains(w.brokerMetrics(), want) })
	t.Logf("relay needed reported %v after the connector started", time.Since(start).Round(time.Millisecond))
}

// TestLabNetcheck: `agent netcheck --json` tells cone from symmetric.
func TestLabNetcheck(t *testing.T) {
	t.Parallel()
	w := newLabWorld(t, natlab.Pair(natlab.BehindCone, natlab.BehindSym))
	for host, want := range map[string]struct{ typ, verdict string }{"a": {"cone", "direct likely"}, "b": {"symmetric", "relay needed"}} {
		out, err := w.lab.Host(host).RunCommand(w.ctx, agentCmd("--state-dir", t.TempDir(), "netcheck", "--json", "--broker", w.url))
		if err != nil {
			t.Fatalf("netcheck on %s: %v\n%s", host, err, out)
		}
		var r struct{ Type, Verdict string }
		if err := json.Unmarshal(out, &r); err != nil || r.Type != want.typ || r.Verdict != want.verdict {
			t.Errorf("netcheck on %s: %s (%v); want type %q verdict %q", host, out, err, want.typ, want.verdict)
		}
	}
}

// TestLabConntrackFlush: both NATs forget every mapping mid-session (a NAT
// reboot, or a rebinding); within the keepalive bound the session is either
// found alive or found dead and re-made, and new connections work.
func TestLabConntrackFlush(t *testing.T) {
	t.Parallel()
	w := newLabWorld(t, natlab.Pair(natlab.BehindCone, natlab.BehindCone))
	_, _, addr := w.shareConnect()
	b := w.lab.Host("b")
	c, err := b.Dial(w.ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	echoOver(t, c, 1<<20)
	for _, gw := range []string{"gw-a", "gw-b"} {
		if err := w.lab.FlushConntrack(w.ctx, gw); err != nil {
			t.Fatal(err)
		}
	}
	flushed := time.Now()
	// yamux pings every 15s and gives up after 20s without an answer.
	eventually(t, 60*time.Second, "a new connection through the forward after the flush", func() bool {
		c, err := b.Dial(w.ctx, "tcp", addr)
		return err == nil && tryEcho(c, 1<<20, 10*time.Second) == nil
	})
	p := w.peer(w.connDir)
	t.Logf("new connections work %v after the flush; peer session since %v (reconnected: %v)",
		time.Since(flushed).Round(time.Millisecond), p.Since.Format(time.TimeOnly), p.Since.After(flushed))
}

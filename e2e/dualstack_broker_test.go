package e2e

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/peerport/peerport/internal/natlab"
)

// newDualStackBroker is a lab whose broker is dual-stack: --public-addr
// names its IPv4 and its IPv6 address, so the URL names both. Host "a"
// keeps only IPv6 and host "b" only IPv4 when split is set; else both keep
// both families.
func newDualStackBroker(t *testing.T, topo natlab.Topology, split bool) *labWorld {
	t.Helper()
	lab := natlab.New(t, topo)
	w := &labWorld{t: t, lab: lab, ctx: t.Context(), sharerDir: t.TempDir(), connDir: t.TempDir()}
	br := lab.Host("broker")
	w.broker = br
	if split {
		for h, route := range map[string]string{"a": "-4", "b": "-6"} {
			if out, err := lab.Host(h).Run(w.ctx, "ip", route, "route", "del", "default"); err != nil {
				t.Fatalf("drop the %s default route of %s: %v %s", route, h, err, out)
			}
		}
	}
	public := br.IP().String() + "," + br.IPv6().String()
	w.url = w.firstLine(w.startCmd(br, natlab.Command{Path: bins.broker, Env: raceEnv,
		Args: []string{"--state-dir", t.TempDir(), "--public-addr", public, "--listen", ":7000", "--metrics-listen", "127.0.0.1:9102"}}))
	want := br.IP().String() + ":7000,[" + br.IPv6().String() + "]:7000"
	if !strings.Contains(w.url, "@"+want+"#") {
		t.Fatalf("broker URL %s: want both addresses, %s", w.url, want)
	}
	return w
}

// TestLabDualStackBroker: a dual-stack broker serves an agent on an
// IPv6-only host and one on an IPv4-only host. They share no family, so
// no direct path exists; they meet through the broker relay (the control
// port, reached by each over its own family) and through the TURN relay:
// the IPv6-only sharer reaches the relay over IPv6 and allocates an IPv4
// relayed address, the family of its connector, which dials it over IPv4.
// 16 MiB echoed intact each way. netcheck on a dual-stack host reports
// IPv6 reachable without NAT66, and on the IPv4-only one no IPv6.
func TestLabDualStackBroker(t *testing.T) {
	t.Parallel()
	t.Run("IPv6-only sharer, IPv4-only connector", func(t *testing.T) {
		t.Parallel()
		topo := natlab.Pair(natlab.BehindCone, natlab.BehindCone)
		topo.Name, topo.IPv6 = "dualbroker-split", true
		w := newDualStackBroker(t, topo, true)
		a, b := w.lab.Host("a"), w.lab.Host("b")
		if out, err := a.RunCommand(w.ctx, agentCmd("--state-dir", w.sharerDir, "login", w.url)); err != nil {
			t.Fatalf("login over IPv6: %v\n%s", err, out)
		}
		sharer := w.startCmd(a, agentCmd("--state-dir", w.sharerDir, "share", w.echoIn(a)))
		ticket := w.firstLine(sharer)
		for i, tt := range []struct{ path, kind, relayFamily string }{
			{"broker", "broker", "4"}, // the connector's end: the broker's IPv4 address
			{"turn", "turn", "4"},     // the relayed address, in the connector's family
			{"auto", "", ""},          // whichever relay comes up first
		} {
			dir := t.TempDir()
			listen := "127.0.0.1:" + []string{"18081", "18082", "18083"}[i]
			conn := w.startCmd(b, agentCmd("--state-dir", dir, "connect", ticket, "--listen", listen, "--path", tt.path))
			addr := w.firstLine(conn)
			c, err := b.Dial(w.ctx, "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			echoOver(t, c, 16<<20)
			c.Close()
			p := w.onlyPath(dir, "relay")
			if tt.kind != "" && p.RelayKind != tt.kind {
				t.Errorf("--path %s: relay kind %q, want %q", tt.path, p.RelayKind, tt.kind)
			}
			if relay, err := netip.ParseAddrPort(p.Relay); tt.relayFamily != "" && (err != nil || !relay.Addr().Is4()) {
				t.Errorf("--path %s: relay %q, want an IPv4 address on the connector's side", tt.path, p.Relay)
			}
			if p.RelayedBytes < 32<<20 {
				t.Errorf("--path %s: %d B relayed, want 32 MiB at least", tt.path, p.RelayedBytes)
			}
			t.Logf("--path %s: relayed (%s) at %s, %d B", tt.path, p.RelayKind, p.Relay, p.RelayedBytes)
			conn.Stop()
		}
		if logs := sharer.Stderr(); !strings.Contains(logs, "relay allocated") {
			t.Errorf("the sharer logged no TURN allocation:\n%s", logs)
		}
	})
	t.Run("netcheck", func(t *testing.T) {
		t.Parallel()
		topo := natlab.Pair(natlab.BehindCone, natlab.BehindCone)
		topo.Name, topo.IPv6 = "dualbroker-netcheck", true
		w := newDualStackBroker(t, topo, false)
		// b loses IPv6 altogether: no global address, no route.
		b := w.lab.Host("b")
		if out, err := b.Run(w.ctx, "sysctl", "-w", "net.ipv6.conf.all.disable_ipv6=1"); err != nil {
			t.Fatalf("disable IPv6 on b: %v %s", err, out)
		}
		type report struct {
			Type string
			IPv6 struct {
				HostAddrs []netip.Addr `json:"host_addrs"`
				Global    bool
				Reachable bool
				NAT66     bool
				Mapped    string
				Broker    struct{ OK bool }
				STUNTCP   struct{ OK bool } `json:"stun_tcp"`
			}
		}
		check := func(host string) (report, string) {
			h := w.lab.Host(host)
			out, err := h.RunCommand(w.ctx, agentCmd("--state-dir", t.TempDir(), "netcheck", "--json", "--broker", w.url))
			if err != nil {
				t.Fatalf("netcheck on %s: %v\n%s", host, err, out)
			}
			var r report
			if err := json.Unmarshal(out, &r); err != nil {
				t.Fatalf("netcheck on %s: %v\n%s", host, err, out)
			}
			human, err := h.RunCommand(w.ctx, agentCmd("--state-dir", t.TempDir(), "netcheck", "--broker", w.url))
			if err != nil {
				t.Fatalf("netcheck on %s: %v\n%s", host, err, human)
			}
			return r, string(human)
		}
		r, human := check("a")
		if !r.IPv6.Global || !r.IPv6.Reachable || !r.IPv6.Broker.OK || !r.IPv6.STUNTCP.OK || r.IPv6.NAT66 || r.IPv6.Mapped == "" || r.Type != "cone" {
			t.Errorf("netcheck on dual-stack a: %+v; want IPv6 global, reachable, STUN answering, no NAT66 (IPv4 NAT type cone)", r)
		}
		if !strings.Contains(human, "IPv6:          reachable") || !strings.Contains(human, "no NAT66") {
			t.Errorf("netcheck on a, for people:\n%s", human)
		}
		t.Logf("netcheck on a:\n%s", human)
		r, human = check("b")
		if r.IPv6.Global || r.IPv6.Reachable || len(r.IPv6.HostAddrs) != 0 || r.Type != "cone" {
			t.Errorf("netcheck on IPv4-only b: %+v; want no IPv6 (IPv4 NAT type cone)", r)
		}
		if !strings.Contains(human, "IPv6:          no: this host has no global IPv6 address") {
			t.Errorf("netcheck on b, for people:\n%s", human)
		}
		t.Logf("netcheck on b:\n%s", human)
	})
}

package e2e

import (
	"net/netip"
	"testing"

	"github.com/peerport/peerport/internal/natlab"
)

// TestLabDualStack: behind two symmetric IPv4 NATs no IPv4 path can be
// punched, but hosts with global IPv6 behind stateful firewalls (no NAT66)
// can open one by simultaneous open: the pair ends direct over IPv6. With
// the firewalls letting out nothing but the broker's port, the pair is
// relayed over IPv6.
func TestLabDualStack(t *testing.T) {
	t.Parallel()
	t.Run("symmetric-symmetric direct over IPv6", func(t *testing.T) {
		t.Parallel()
		topo := natlab.Pair(natlab.BehindSym, natlab.BehindSym)
		topo.Name, topo.IPv6 = "dual-symmetric-symmetric", true
		w := newDualStackWorld(t, topo)
		_, _, addr := w.shareConnect()
		c, err := w.lab.Host("b").Dial(w.ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		echoOver(t, c, 16<<20)
		p := w.onlyPath(w.connDir, "direct")
		w.onlyPath(w.sharerDir, "direct")
		if remote, err := netip.ParseAddrPort(p.Pair.Remote); err != nil || !remote.Addr().Is6() {
			t.Errorf("candidate pair %+v: want IPv6", p.Pair)
		}
		t.Logf("direct over %s -> %s, NAT %s/%s, punch_ms %d", p.Pair.Local, p.Pair.Remote, p.LocalNAT, p.PeerNAT, p.PunchMS)
	})
	t.Run("IPv6 only the broker let out: relayed over IPv6", func(t *testing.T) {
		t.Parallel()
		topo := natlab.IPv6Pair()
		for i := range topo.Routers {
			topo.Routers[i].Egress = natlab.OnlyTCPPorts(7000)
		}
		topo.Name = "ipv6-broker-only"
		w := newLabWorld(t, topo)
		_, _, addr := w.shareConnect()
		c, err := w.lab.Host("b").Dial(w.ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		echoOver(t, c, 16<<20)
		p := w.onlyPath(w.connDir, "relay")
		s := w.onlyPath(w.sharerDir, "relay")
		relay, err := netip.ParseAddrPort(p.Relay)
		if err != nil || !relay.Addr().Is6() || p.Relay != s.Relay || p.RelayedBytes < 32<<20 {
			t.Errorf("relayed peer status: connector %+v, sharer %+v: want one IPv6 relay, 32 MiB through it", p, s)
		}
		t.Logf("relayed (%s) at %s, %d B", p.RelayKind, p.Relay, p.RelayedBytes)
	})
}

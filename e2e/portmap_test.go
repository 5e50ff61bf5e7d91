package e2e

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/internal/natlab"
)

// TestLabPortmap: the sharer sits behind a symmetric NAT, where no punch
// gets through, whose gateway runs the real miniupnpd (UPnP IGD, NAT-PMP,
// PCP); the connector behind a cone NAT. The sharer maps its punch port and
// the pair ends direct through the mapping, 16 MiB intact; the mapping is
// gone from miniupnpd's table once the sharer exits. With --no-portmap the
// same pair is relayed.
func TestLabPortmap(t *testing.T) {
	t.Parallel()
	natlab.RequireMiniUPnPd(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"mapped", nil, "direct"},
		{"no-portmap", []string{"--no-portmap"}, "relay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newLabWorld(t, natlab.Pair(natlab.BehindSym, natlab.BehindCone))
			mu, err := w.lab.Router("gw-a").StartMiniUPnPd(w.ctx, natlab.MiniUPnPdConfig{})
			if err != nil {
				t.Fatal(err)
			}
			a, b := w.lab.Host("a"), w.lab.Host("b")
			sharer := w.startCmd(a, agentCmd(append([]string{"--state-dir", w.sharerDir, "share", w.echoIn(a)}, tc.args...)...))
			ticket := w.firstLine(sharer)
			conn := w.startCmd(b, agentCmd("--state-dir", w.connDir, "connect", ticket, "--listen", "127.0.0.1:18080"))
			c, err := b.Dial(w.ctx, "tcp", w.firstLine(conn))
			if err != nil {
				t.Fatal(err)
			}
			echoOver(t, c, 16<<20)
			p := w.onlyPath(w.connDir, tc.want)
			s := w.onlyPath(w.sharerDir, tc.want)
			rs, err := mu.Redirects(w.ctx)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "relay" {
				if len(rs) != 0 {
					t.Errorf("--no-portmap, yet miniupnpd holds %v", rs)
				}
				return
			}
			if p.Pair.Kind != "mapped" || p.Portmap != "peer" || s.Portmap == "" || s.LocalNAT != "symmetric" {
				t.Errorf("connector %+v, sharer %+v: want the path through the sharer's port mapping", p, s)
			}
			if len(rs) != 1 || rs[0].Proto != "tcp" || rs[0].Internal.Addr() != a.IP() {
				t.Errorf("miniupnpd's redirects %v: want the sharer's one TCP mapping", rs)
			}
			t.Logf("direct through %s's mapping %s -> %v, punch_ms %d", s.Portmap, p.Pair.Remote, rs, p.PunchMS)

			// The mapping lets in no one else: the punch port's listener is
			// closed once the punch is over, so a stranger on the internet
			// dialling the mapped address reaches no share.
			stranger := w.lab.Host("broker")
			if sc, err := stranger.Dial(w.ctx, "tcp", p.Pair.Remote); err == nil {
				if tryEcho(sc, 1024, 3*time.Second) == nil {
					t.Errorf("a stranger dialling the mapping %s got the share's echo", p.Pair.Remote)
				}
				sc.Close()
			}

			out, err := a.RunCommand(w.ctx, agentCmd("--state-dir", t.TempDir(), "netcheck", "--json", "--broker", w.url))
			var nc agent.NetcheckReport
			if err != nil || json.Unmarshal(out, &nc) != nil {
				t.Fatalf("netcheck: %v\n%s", err, out)
			}
			if nc.Portmap.Protocol == "" || len(nc.Portmap.Answered) != 3 || nc.Portmap.External != mu.External.String() {
				t.Errorf("netcheck's portmap %+v: want all three protocols answering, external %v", nc.Portmap, mu.External)
			}

			c.Close()
			sharer.Stop()
			eventually(t, 10*time.Second, "the mapping deleted after the sharer exits", func() bool {
				rs, err := mu.Redirects(w.ctx)
				return err == nil && len(rs) == 0
			})
		})
	}
}

// TestLabPortmapConnector: a fresh `agent connect` behind a symmetric NAT
// with miniupnpd maps its punch port before its first introduction (it
// waits for the gateway's answer it asked for at start), so its first path
// is direct: against a cone NAT, and against a sharer behind a symmetric
// NAT that maps too.
func TestLabPortmapConnector(t *testing.T) {
	t.Parallel()
	natlab.RequireMiniUPnPd(t)
	for _, tc := range []struct {
		name    string
		sharer  natlab.Placement
		mappers []string
	}{
		{"cone-symmetric", natlab.BehindCone, []string{"gw-b"}},
		{"symmetric-symmetric", natlab.BehindSym, []string{"gw-a", "gw-b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newLabWorld(t, natlab.Pair(tc.sharer, natlab.BehindSym))
			for _, gw := range tc.mappers {
				if _, err := w.lab.Router(gw).StartMiniUPnPd(w.ctx, natlab.MiniUPnPdConfig{}); err != nil {
					t.Fatal(err)
				}
			}
			_, _, addr := w.shareConnect()
			c, err := w.lab.Host("b").Dial(w.ctx, "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			echoOver(t, c, 4<<20)
			p := w.onlyPath(w.connDir, "direct")
			if p.Portmap == "" || p.PathSince.Sub(p.Since) > time.Second {
				t.Errorf("connector %+v: want its first path direct through a port mapping", p)
			}
			t.Logf("%s: direct at once, portmap %q, pair %s -> %s (%s)", tc.name, p.Portmap, p.Pair.Local, p.Pair.Remote, p.Pair.Kind)
		})
	}
}

package natlab_test

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// SetNAT changes how new flows are mapped: a symmetric NAT turned cone maps
// one local port to one public port whatever the destination, and back.
func TestSetNAT(t *testing.T) {
	lab := natlab.New(t, natlab.Pair(natlab.BehindSym, natlab.BehindCone))
	ctx := testCtx(t, 60*time.Second)
	broker := lab.Host("broker")
	srv, err := broker.StartCommand(ctx, probe(t, "serve", "-listen", ":7001"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Expect(ctx, "listening"); err != nil {
		t.Fatal(err)
	}
	// ports dials both broker addresses from one new local port and
	// returns the public ports they saw.
	local := 42100
	ports := func() [2]uint16 {
		t.Helper()
		local++
		var seen [2]uint16
		for i, ip := range broker.IPs()[:2] {
			to := netip.AddrPortFrom(ip, 7001).String()
			out, err := lab.Host("a").RunCommand(ctx, probe(t, "dial", "-to", to, "-local", strconv.Itoa(local)))
			if err != nil {
				t.Fatalf("dial %s: %v (%s)", to, err, out)
			}
			m, err := netip.ParseAddrPort(field(string(out), "mapped"))
			if err != nil {
				t.Fatalf("dial %s: %q: %v", to, out, err)
			}
			seen[i] = m.Port()
		}
		return seen
	}
	if p := ports(); p[0] == p[1] {
		t.Fatalf("symmetric NAT as built: one port %d for two destinations", p[0])
	}
	gw := lab.Router("gw-a")
	for _, k := range []natlab.Kind{natlab.Cone, natlab.Symmetric, natlab.Cone} {
		if err := gw.SetNAT(ctx, k); err != nil {
			t.Fatal(err)
		}
		if p := ports(); (p[0] == p[1]) != (k == natlab.Cone) {
			t.Errorf("after SetNAT(%v): two destinations saw ports %v", k, p)
		}
	}
	if err := lab.Router("gw-b").SetNAT(ctx, natlab.Firewall); err == nil {
		t.Error("a NAT turned into a firewall: want an error")
	}
}

// Renumber moves a host to a new address that still reaches out through
// its NAT.
func TestRenumber(t *testing.T) {
	lab := natlab.New(t, natlab.Pair(natlab.BehindCone, natlab.Public))
	ctx := testCtx(t, 30*time.Second)
	a := lab.Host("a")
	old := a.IP()
	moved, err := a.Renumber(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, err := a.Run(ctx, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if err != nil || !strings.Contains(string(out), moved.String()+"/") || strings.Contains(string(out), old.String()+"/") {
		t.Fatalf("after moving %v to %v: %s %v", old, moved, out, err)
	}
	srv, err := lab.Host("b").StartCommand(ctx, probe(t, "serve", "-listen", ":7001"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Expect(ctx, "listening"); err != nil {
		t.Fatal(err)
	}
	to := netip.AddrPortFrom(lab.Host("b").IP(), 7001).String()
	if out, err := a.RunCommand(ctx, probe(t, "dial", "-to", to)); err != nil || field(string(out), "mapped") == "" {
		t.Fatalf("dial out after the move: %v (%s)", err, out)
	}
	if _, err := lab.Host("b").Renumber(ctx); err == nil {
		t.Error("renumbered a public host: want an error")
	}
}

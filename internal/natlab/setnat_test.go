package natlab_test

import (
	"net/netip"
	"strconv"
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

package natlab_test

import (
	"context"
	"encoding/binary"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// TestMiniUPnPd proves the lab's miniupnpd before any client of ours uses
// it: on a symmetric NAT it comes up with forwarding enabled (STUN told it
// the WAN address is public), its table exists, it answers NAT-PMP's
// external address request with the router's WAN address, serves its UPnP
// description on the LAN, and a redirect added by hand in its chain is
// listed by Redirects and reached from the internet (the lab's inbound drop
// lets translated connections through).
func TestMiniUPnPd(t *testing.T) {
	natlab.RequireMiniUPnPd(t)
	lab := natlab.New(t, natlab.Pair(natlab.BehindSym, natlab.BehindCone))
	ctx := testCtx(t, 60*time.Second)
	gw, a, broker := lab.Router("gw-a"), lab.Host("a"), lab.Host("broker")
	m, err := gw.StartMiniUPnPd(ctx, natlab.MiniUPnPdConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if m.External != gw.IP() {
		t.Errorf("External %v, want %v", m.External, gw.IP())
	}
	rules, err := m.RulesText(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"chain prerouting_miniupnpd", "chain miniupnpd"} {
		if !strings.Contains(rules, want) {
			t.Errorf("table inet miniupnpd lacks %q:\n%s", want, rules)
		}
	}

	t.Run("natpmp address", func(t *testing.T) {
		c, err := a.Dial(ctx, "udp4", netip.AddrPortFrom(gw.LANIP(), 5351).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte{0, 0}); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 64)
		n, err := c.Read(b)
		if err != nil {
			t.Fatal(err)
		}
		if n < 12 || b[1] != 128 || binary.BigEndian.Uint16(b[2:4]) != 0 {
			t.Fatalf("answer % x", b[:n])
		}
		if got := netip.AddrFrom4([4]byte(b[8:12])); got != gw.IP() {
			t.Errorf("external address %v, want %v", got, gw.IP())
		}
	})

	t.Run("upnp description", func(t *testing.T) {
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx2 context.Context, nw, addr string) (net.Conn, error) {
			return a.DialWith(ctx2, &net.Dialer{}, nw, addr)
		}, DisableKeepAlives: true}, Timeout: 5 * time.Second}
		resp, err := hc.Get("http://" + m.HTTP.String() + "/rootDesc.xml")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("rootDesc.xml: %s", resp.Status)
		}
	})

	t.Run("redirect", func(t *testing.T) {
		ln, err := a.Listen("tcp4", ":40001")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err == nil {
				_, _ = c.Write([]byte("hi"))
				c.Close()
			}
		}()
		rule := "add rule inet miniupnpd prerouting_miniupnpd iif \"wan0\" tcp dport 40002 dnat ip to " + a.IP().String() + ":40001\n"
		if out, err := gw.RunCommand(ctx, natlab.Command{Path: "sh", Args: []string{"-c", "echo '" + rule + "' | nft -f -"}}); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		rs, err := m.Redirects(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := natlab.Redirect{Proto: "tcp", ExternalPort: 40002, Internal: netip.AddrPortFrom(a.IP(), 40001)}
		if len(rs) != 1 || rs[0] != want {
			t.Fatalf("redirects %+v, want [%+v]", rs, want)
		}
		c, err := broker.DialWith(ctx, &net.Dialer{Timeout: 3 * time.Second}, "tcp4", netip.AddrPortFrom(gw.IP(), 40002).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		b := make([]byte, 2)
		if _, err := c.Read(b); err != nil || string(b) != "hi" {
			t.Fatalf("read %q, %v", b, err)
		}
	})
}

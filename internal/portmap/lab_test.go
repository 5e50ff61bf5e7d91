package portmap

import (
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// labOptions makes a Client live in host's namespace: every socket it opens
// is created there.
func labOptions(t *testing.T, host *natlab.Node, gw netip.Addr, protos ...string) Options {
	log, _ := testLog(t)
	return Options{
		Gateway:   gw,
		Protocols: protos,
		Log:       log,
		Lease:     10 * time.Minute,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			return host.DialWith(ctx, &net.Dialer{}, network, address)
		},
		ListenPacket: func(_ context.Context, network, address string) (net.PacketConn, error) {
			return host.ListenPacket(network, address)
		},
	}
}

// serveGreeting accepts connections on ln and writes greeting to each.
func serveGreeting(ln net.Listener, greeting string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte(greeting))
		c.Close()
	}
}

// TestPortmapMiniUPnPd maps a port through the real miniupnpd on a
// symmetric NAT with each protocol in turn, and with all of them racing: the
// gateway is found from the host's routing table; the mapping has the
// router's WAN address and is in miniupnpd's nftables table; a connection
// from a public host to External reaches the listener on the host's internal
// port, which the symmetric NAT alone would never let in; after Close the
// redirect is gone. Probe finds all three protocols and the WAN address.
func TestPortmapMiniUPnPd(t *testing.T) {
	natlab.RequireMiniUPnPd(t)
	lab := natlab.New(t, natlab.Pair(natlab.BehindSym, natlab.BehindCone))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	router, host, public := lab.Router("gw-a"), lab.Host("a"), lab.Host("broker")
	mu, err := router.StartMiniUPnPd(ctx, natlab.MiniUPnPdConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var gw netip.Addr
	if err := host.Do(func() (err error) { gw, err = DefaultGateway(); return err }); err != nil {
		t.Fatal(err)
	}
	if gw != router.LANIP() {
		t.Fatalf("DefaultGateway in %s: %v, want %v", host, gw, router.LANIP())
	}

	redirected := func(t *testing.T, m Mapping) bool {
		t.Helper()
		rs, err := mu.Redirects(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Contains(rs, natlab.Redirect{Proto: "tcp", ExternalPort: m.External.Port(), Internal: m.Internal})
	}

	for _, tc := range []struct {
		name   string
		protos []string
	}{
		{PCP, []string{PCP}},
		{NATPMP, []string{NATPMP}},
		{UPnP, []string{UPnP}},
		{"auto", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := host.Listen("tcp4", ":0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go serveGreeting(ln, "hello "+tc.name)
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			c, err := New(labOptions(t, host, gw, tc.protos...))
			if err != nil {
				t.Fatal(err)
			}
			lease, err := c.Map(ctx, port)
			if err != nil {
				t.Fatalf("Map: %v\nminiupnpd:\n%s", err, mu.Proc.Stdout())
			}
			m := lease.Current()
			t.Logf("mapped %v", m)
			if tc.protos != nil && m.Protocol != tc.name {
				t.Errorf("protocol %q, want %q", m.Protocol, tc.name)
			}
			if m.External.Addr() != router.IP() || m.Internal != netip.AddrPortFrom(host.IP(), port) || m.Lease <= 0 {
				t.Errorf("mapping %v: want external address %v, internal %v:%d, a lease", m, router.IP(), host.IP(), port)
			}
			if !redirected(t, m) {
				rules, _ := mu.RulesText(ctx)
				t.Errorf("no redirect for %v in miniupnpd's table:\n%s", m, rules)
			}
			conn, err := public.DialWith(ctx, &net.Dialer{Timeout: 3 * time.Second}, "tcp4", m.External.String())
			if err != nil {
				t.Fatalf("dial External from %s: %v", public, err)
			}
			_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
			got, err := io.ReadAll(conn)
			conn.Close()
			if err != nil || string(got) != "hello "+tc.name {
				t.Errorf("through the mapping: %q, %v", got, err)
			}
			if err := lease.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if redirected(t, m) {
				rules, _ := mu.RulesText(ctx)
				t.Errorf("redirect for %v still there after Close:\n%s", m, rules)
			}
			if rs, _ := mu.Redirects(ctx); len(rs) != 0 {
				t.Errorf("redirects left after Close: %+v", rs)
			}
			// Without the mapping the symmetric NAT lets nothing in.
			if c, err := public.DialWith(ctx, &net.Dialer{Timeout: 500 * time.Millisecond}, "tcp4", m.External.String()); err == nil {
				c.Close()
				t.Errorf("External %v still reachable after Close", m.External)
			}
		})
	}

	t.Run("probe", func(t *testing.T) {
		c, err := New(labOptions(t, host, gw))
		if err != nil {
			t.Fatal(err)
		}
		res := c.Probe(ctx)
		if !slices.Equal(res.Answered, AllProtocols) || len(res.Errors) != 0 {
			t.Errorf("answered %v, errors %v; want all three", res.Answered, res.Errors)
		}
		if res.External != router.IP() {
			t.Errorf("external %v, want %v", res.External, router.IP())
		}
	})
}

package broker

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"

	"github.com/peerport/peerport/internal/logging"
	"github.com/peerport/peerport/internal/proto"
)

func TestParsePublicAddr(t *testing.T) {
	tests := []struct {
		in   string
		want []PublicHost
		err  string // a part of the one error
	}{
		{in: "broker.example.com", want: []PublicHost{{"broker.example.com", 0}}},
		{in: "broker.example.com:443", want: []PublicHost{{"broker.example.com", 443}}},
		{in: "2001:db8::10", want: []PublicHost{{"2001:db8::10", 0}}},
		{in: "[2001:db8::10]:443", want: []PublicHost{{"2001:db8::10", 443}}},
		{in: "203.0.113.10,2001:db8::10", want: []PublicHost{{"203.0.113.10", 0}, {"2001:db8::10", 0}}},
		{in: "203.0.113.10:443, [2001:db8::10]:8443", want: []PublicHost{{"203.0.113.10", 443}, {"2001:db8::10", 8443}}},
		{in: "2001:db8::10,203.0.113.10", want: []PublicHost{{"2001:db8::10", 0}, {"203.0.113.10", 0}}},
		{in: "203.0.113.10,198.51.100.1", err: "one IPv4 and one IPv6"},
		{in: "2001:db8::10,2001:db8::11", err: "one IPv4 and one IPv6"},
		{in: "broker.example.com,2001:db8::10", err: "not names"},
		{in: "203.0.113.10,2001:db8::10,192.0.2.1", err: "at most two"},
		{in: "203.0.113.10,", err: "want HOST"},
		{in: "host:99999", err: "out of range"},
		{in: "host:0", err: "out of range"},
		{in: ":7000", err: "want HOST"},
		{in: "https://broker.example.com", err: "want HOST"},
		{in: "tok@host", err: "want HOST"},
		{in: "0.0.0.0", err: "not an address agents can reach"},
		{in: "[::]:7000", err: "not an address agents can reach"},
		{in: "fe80::1%eth0", err: "not an address agents can reach"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePublicAddr(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || strings.Count(err.Error(), "public address") != 1 {
					t.Fatalf("got %v, %v; want one error saying %q", got, err, tt.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestPublicAddrsDualStack(t *testing.T) {
	bound := &net.TCPAddr{IP: net.IPv6unspecified, Port: 7001}
	got, err := publicAddrs("203.0.113.10,2001:db8::10", bound)
	if want := []string{"203.0.113.10:7001", "[2001:db8::10]:7001"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("got %v, %v; want %v", got, err, want)
	}
	got, err = publicAddrs("203.0.113.10:443,[2001:db8::10]:8443", bound)
	if want := []string{"203.0.113.10:443", "[2001:db8::10]:8443"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("got %v, %v; want %v", got, err, want)
	}
	if ips := publicIPs("203.0.113.10,2001:db8::10"); len(ips) != 2 || ipv6Of(ips) != netip.MustParseAddr("2001:db8::10") {
		t.Fatalf("publicIPs: %v", ips)
	}
	if ips := publicIPs("broker.example.com"); len(ips) != 0 || ipv6Of(ips).IsValid() {
		t.Fatalf("publicIPs of a name: %v", ips)
	}
}

func TestStunAdvertised(t *testing.T) {
	ips := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	tests := []struct {
		name  string
		bound []string
		ips   []netip.Addr
		want  []string
	}{
		{"one family", []string{"[::]:3478", "[::]:3479"}, ips("203.0.113.10"), []string{"[::]:3478", "[::]:3479"}},
		{"a name", []string{"[::]:3478", "[::]:3479"}, nil, []string{"[::]:3478", "[::]:3479"}},
		{"dual-stack wildcard", []string{"[::]:3478", "[::]:3479"}, ips("203.0.113.10", "2001:db8::10"),
			[]string{"203.0.113.10:3478", "203.0.113.10:3479", "[2001:db8::10]:3478", "[2001:db8::10]:3479"}},
		{"IPv6 given first", []string{"[::]:3478"}, ips("2001:db8::10", "203.0.113.10"),
			[]string{"203.0.113.10:3478", "[2001:db8::10]:3478"}},
		{"specific addresses", []string{"198.51.100.1:3478", "198.51.100.2:3478", "[2001:db8::10]:3478"}, ips("198.51.100.1", "2001:db8::10"),
			[]string{"198.51.100.1:3478", "198.51.100.2:3478", "[2001:db8::10]:3478"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := stunAdvertised(tt.bound, tt.ips); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestStunDefaultIPv6(t *testing.T) {
	lo := netip.MustParseAddr("::1") // this machine's, as interfaceAddrs sees it
	two := []string{"198.51.100.1:3478", "198.51.100.1:3479", "198.51.100.2:3478", "198.51.100.2:3479"}
	if got := stunDefaultIPv6(two, lo); len(got) != 6 || got[4] != "[::1]:3478" || got[5] != "[::1]:3479" {
		t.Errorf("two IPv4 addresses: %v, want the IPv6 ports added", got)
	}
	wild := []string{":3478", ":3479"}
	if got := stunDefaultIPv6(wild, lo); !slices.Equal(got, wild) {
		t.Errorf("wildcard: %v, want it as it is (it serves IPv6)", got)
	}
	if got := stunDefaultIPv6(two, netip.MustParseAddr("2001:db8::99")); !slices.Equal(got, two) {
		t.Errorf("an IPv6 address not this machine's: %v, want nothing added", got)
	}
}

func TestRelayConfigIPv6(t *testing.T) {
	v4, v6 := netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("2001:db8::10")
	tests := []struct {
		name string
		c    RelayConfig
		err  string
	}{
		{"dual-stack", RelayConfig{RelayIP: v4, RelayIP6: v6}, ""},
		{"IPv6 only", RelayConfig{RelayIP: v6}, ""},
		{"relay_ip6 IPv4", RelayConfig{RelayIP: v4, RelayIP6: netip.MustParseAddr("198.51.100.1")}, "relay_ip6: 198.51.100.1 is not an IPv6"},
		{"relay_ip6 mapped", RelayConfig{RelayIP: v4, RelayIP6: netip.MustParseAddr("::ffff:198.51.100.1")}, "relay_ip6"},
		{"two IPv6", RelayConfig{RelayIP: v6, RelayIP6: netip.MustParseAddr("2001:db8::11")}, "a dual-stack relay has an IPv4 relay_ip"},
		{"bind_ip6 IPv4", RelayConfig{RelayIP: v4, RelayIP6: v6, BindIP6: netip.MustParseAddr("10.0.0.1")}, "bind_ip6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.c
			c.setDefaults(&Server{cfg: Config{}})
			err := c.validate()
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("validate: %v, want %q", err, tt.err)
			}
			if tt.err == "" && c.RelayIP6.IsValid() && c.BindIP6 != c.RelayIP6 {
				t.Errorf("bind_ip6 %v, want relay_ip6 by default", c.BindIP6)
			}
		})
	}
}

func TestRelayIssuerURLFor(t *testing.T) {
	r := &RelayIssuer{URL: turnURL("203.0.113.10", 3480), URL6: turnURL("2001:db8::10", 3480)}
	for _, tt := range []struct{ remote, want string }{
		{"198.51.100.7:5000", r.URL},
		{"[::ffff:198.51.100.7]:5000", r.URL},
		{"[2001:db8:1::7]:5000", r.URL6},
	} {
		if got := r.urlFor(tcpAddr(tt.remote)); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.remote, got, tt.want)
		}
	}
	if got := (&RelayIssuer{URL: r.URL}).urlFor(tcpAddr("[2001:db8:1::7]:5000")); got != r.URL {
		t.Errorf("single-stack: %s, want %s", got, r.URL)
	}
}

// dualStackHarness is a relay announced at 192.0.2.10 and 2001:db8::10
// (documentation addresses standing for a dual-stack broker's public ones),
// bound on 127.0.0.1 and ::1.
func dualStackHarness(t *testing.T) *relayHarness {
	t.Helper()
	return newRelayHarness(t, func(c *RelayConfig) {
		c.RelayIP, c.BindIP = netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("127.0.0.1")
		c.RelayIP6, c.BindIP6 = netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("::1")
		c.MaxPermissionsPerAllocation = 32
	})
}

// dialTURN6 is a TURN client over IPv6 to addr, asking for an allocation
// of family fam (IPv4: none asked, which RFC 6156 makes IPv4).
func dialTURN6(t *testing.T, addr, user, pass string, fam turn.RequestedAddressFamily) *turn.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := turn.NewClient(&turn.ClientConfig{
		TURNServerAddr: addr, Conn: turn.NewSTUNConn(conn), Username: user, Password: pass,
		RequestedAddressFamily: fam,
		LoggerFactory:          logging.Pion(testLogger(t).WithField("component", "turn-client")),
	})
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	if err := cl.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cl.Close()
		conn.Close()
	})
	return cl
}

// TestRelayDualStackFamilies: a dual-stack relay allocates IPv4 unless
// IPv6 is asked for (RFC 6156), over either family of client connection:
// an IPv4 allocation for a client that came over IPv6 is what bridges an
// IPv6-only sharer to an IPv4-only connector.
func TestRelayDualStackFamilies(t *testing.T) {
	h := dualStackHarness(t)
	sharer, tk := sharerWithTicket(t, h.harness, "web")
	defer sharer.close()
	in := h.relayIntro(t, sharer, tk, srflx("[2001:db8:1::5]:1"))
	v4 := h.turnClient(t, in.TURN.Username, in.TURN.Password)
	if a := mustAllocate(t, v4.AllocateTCP); !strings.HasPrefix(a.Addr().String(), "192.0.2.10:") {
		t.Errorf("IPv4 client, no family asked: relayed at %s, want 192.0.2.10", a.Addr())
	}
	over6 := h.turnClient6(t, in.TURN.Username, in.TURN.Password, turn.RequestedAddressFamilyIPv4)
	if a := mustAllocate(t, over6.AllocateTCP); !strings.HasPrefix(a.Addr().String(), "192.0.2.10:") {
		t.Errorf("IPv6 client, no family asked: relayed at %s, want 192.0.2.10", a.Addr())
	}
	v6 := h.turnClient6(t, in.TURN.Username, in.TURN.Password, turn.RequestedAddressFamilyIPv6)
	a6 := mustAllocate(t, v6.AllocateTCP)
	if !strings.HasPrefix(a6.Addr().String(), "[2001:db8::10]:") {
		t.Errorf("IPv6 asked: relayed at %s, want 2001:db8::10", a6.Addr())
	}
	if err := v6.CreatePermission(tcpAddr("[2001:db8:1::5]:7")); err != nil {
		t.Errorf("an introduced global IPv6 peer: %v", err)
	}
	if code := turnCode(v6.CreatePermission(tcpAddr("127.0.0.1:7"))); code != int(stun.CodePeerAddrFamilyMismatch) {
		t.Errorf("an IPv4 peer of an IPv6 allocation: code %d, want 443", code)
	}
}

// turnClient6 is a TURN client of the harness's relay over ::1, asking for
// an allocation of family fam.
func (h *relayHarness) turnClient6(t *testing.T, user, pass string, fam turn.RequestedAddressFamily) *turn.Client {
	t.Helper()
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	// A hop from ::1 to the relay's one listener (127.0.0.1): the client's
	// connection is IPv6, and the allocation's family is what it asks for.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go proxyTo(c, h.addr)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return dialTURN6(t, ln.Addr().String(), user, pass, fam)
}

func proxyTo(c net.Conn, addr string) {
	defer c.Close()
	u, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}
	go cp(u, c)
	go cp(c, u)
	<-done
}

// TestRelayPeerPolicyIPv6: on the IPv6 side of a dual-stack relay, the
// IPv6 forms of forbidden addresses are refused as peers, introduced or
// not: unique-local, link-local, loopback, the relay's own, and the NAT64
// and 6to4 forms of forbidden IPv4 addresses; an IPv4-mapped one is of the
// other family (443 on CreatePermission) and refused by the policy on
// Connect.
func TestRelayPeerPolicyIPv6(t *testing.T) {
	h := dualStackHarness(t)
	forbidden := []struct{ name, addr string }{
		{"unique-local", "[fd00::1]:7"},
		{"unique-local (fc00::/8)", "[fc12:3456::1]:7"},
		{"link-local", "[fe80::1]:7"},
		{"loopback", "[::1]:7"},
		{"unspecified", "[::]:7"},
		{"multicast", "[ff02::1]:7"},
		{"site-local (deprecated)", "[fec0::1]:7"},
		{"IPv4-compatible (deprecated)", "[::7f00:1]:7"},
		{"the relay's own", "[2001:db8::10]:7"},
		{"NAT64 of loopback", "[64:ff9b::7f00:1]:7"},
		{"NAT64 of a private address", "[64:ff9b::a00:1]:7"},
		{"NAT64 of cloud metadata", "[64:ff9b::a9fe:a9fe]:80"},
		{"local-use NAT64 of a private address", "[64:ff9b:1::c0a8:101]:7"},
		{"6to4 of loopback", "[2002:7f00:1::1]:7"},
		{"6to4 of a private address", "[2002:a00:1::1]:7"},
		{"6to4 of carrier-grade NAT", "[2002:6440:1::1]:7"},
		{"6to4 of the relay's own IPv4", "[2002:c000:20a::1]:7"},
	}
	mapped := []struct{ name, addr string }{
		{"IPv4-mapped loopback", "[::ffff:127.0.0.1]:7"},
		{"IPv4-mapped private", "[::ffff:10.0.0.1]:7"},
		{"IPv4-mapped metadata", "[::ffff:169.254.169.254]:80"},
	}
	var cands []proto.Candidate
	for _, p := range append(forbidden, mapped...) {
		cands = append(cands, srflx(p.addr))
	}
	sharer, tk := sharerWithTicket(t, h.harness, "web")
	defer sharer.close()
	in := h.relayIntro(t, sharer, tk, cands...)
	cl := h.turnClient6(t, in.TURN.Username, in.TURN.Password, turn.RequestedAddressFamilyIPv6)
	alloc := mustAllocate(t, cl.AllocateTCP)
	if !strings.HasPrefix(alloc.Addr().String(), "[2001:db8::10]:") {
		t.Fatalf("relayed at %s, want the IPv6 relay address", alloc.Addr())
	}
	for _, p := range forbidden {
		if code := turnCode(cl.CreatePermission(tcpAddr(p.addr))); code != int(stun.CodeForbidden) {
			t.Errorf("%s: CreatePermission %s: code %d, want 403", p.name, p.addr, code)
		}
		if _, err := alloc.Connect(tcpAddr(p.addr)); turnCode(err) != int(stun.CodeForbidden) {
			t.Errorf("%s: Connect %s: %v, want 403", p.name, p.addr, err)
		}
	}
	for _, p := range mapped {
		if code := turnCode(cl.CreatePermission(tcpAddr(p.addr))); code != int(stun.CodePeerAddrFamilyMismatch) && code != int(stun.CodeForbidden) {
			t.Errorf("%s: CreatePermission %s: code %d, want 443 or 403", p.name, p.addr, code)
		}
		if _, err := alloc.Connect(tcpAddr(p.addr)); turnCode(err) != int(stun.CodeForbidden) {
			t.Errorf("%s: Connect %s: %v, want 403", p.name, p.addr, err)
		}
		// The policy alone, as the relay judges an inbound connection.
		if why := h.relay.policy.denied(netip.MustParseAddrPort(p.addr).Addr()); why == "" {
			t.Errorf("%s: the policy admits it", p.name)
		}
	}
	if n := metric(t, h.srv.Registry(), "peerport_broker_turn_permission_denials_total", "reason", deniedAddress); n < float64(2*len(forbidden)) {
		t.Errorf("permission_denials_total{reason=denied_address} = %v, want at least %d", n, 2*len(forbidden))
	}
}

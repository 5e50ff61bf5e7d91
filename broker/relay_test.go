package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/peerport/peerport/internal/logging"
	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/relay"
	"github.com/peerport/peerport/internal/secure"
)

const testTURNSecret = "relay-test-secret-0123456789"

// testClock is the relay's clock in tests, moved by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// relayHarness is a broker (over loopback TCP, so connectors have an
// observed address) with its embedded relay serving on loopback.
type relayHarness struct {
	*harness
	relay *Relay
	addr  string // the TURN listener
	clock *testClock
}

// newRelayHarness starts a relay at 127.0.0.1 unless tweak says otherwise.
// Its Dial refuses anything but loopback, so a wrongly admitted peer can
// never make a test send traffic elsewhere.
func newRelayHarness(t *testing.T, tweak func(*RelayConfig)) *relayHarness {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	h := newHarness(t, "tcp", func(c *Config) {
		c.Relay = &RelayIssuer{URL: turnURL("127.0.0.1", port), Secret: []byte(testTURNSecret)}
	})
	clock := &testClock{t: time.Now()}
	rc := RelayConfig{
		RelayIP:      netip.MustParseAddr("127.0.0.1"),
		Now:          clock.Now,
		OfflineGrace: 50 * time.Millisecond,
		Dial: func(ctx context.Context, local, remote netip.AddrPort) (net.Conn, error) {
			if !remote.Addr().IsLoopback() {
				t.Errorf("relay dialed %s: tests reach loopback only", remote)
				return nil, errors.New("test: not loopback")
			}
			return dialReusePort(ctx, local, remote)
		},
	}
	if tweak != nil {
		tweak(&rc)
	}
	rl, err := NewRelay(h.srv, rc)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := rl.Serve(ctx, ln); err != nil {
			t.Errorf("relay serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return &relayHarness{harness: h, relay: rl, addr: ln.Addr().String(), clock: clock}
}

// relayIntro introduces a fresh guest connector with cands to sharer's
// share over the relay path, answers it, and returns the sharer's Intro.
func (h *harness) relayIntro(t *testing.T, sharer *client, tk secure.Ticket, cands ...proto.Candidate) *proto.Intro {
	t.Helper()
	conn := h.login(t, newIdentity(t), "")
	defer conn.close()
	admit := tk.AdmitKey()
	conn.send(&proto.Connect{ID: 1, Sharer: tk.Sharer.String(), Share: tk.Share, Admit: admit[:], Candidates: cands, Path: proto.PathRelay})
	in := expectType[*proto.Intro](t, sharer.read())
	sharer.send(&proto.IntroReply{Intro: in.Intro, Candidates: []proto.Candidate{{Kind: proto.KindRelay, Addr: "127.0.0.1:1"}}})
	if rep := expectType[*proto.ConnectReply](t, conn.read()); rep.Code != "" {
		t.Fatalf("relay connect: %#v", rep)
	}
	if in.TURN == nil {
		t.Fatal("relay intro without TURN credential")
	}
	return in
}

// turnClient is a pion TURN client over a TCP connection to the relay.
func (h *relayHarness) turnClient(t *testing.T, user, pass string) *turn.Client {
	t.Helper()
	return dialTURN(t, h.addr, user, pass)
}

func dialTURN(t *testing.T, addr, user, pass string) *turn.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := turn.NewClient(&turn.ClientConfig{
		TURNServerAddr: addr, Conn: turn.NewSTUNConn(conn),
		Username: user, Password: pass,
		LoggerFactory: logging.Pion(testLogger(t).WithField("component", "turn-client")),
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

// mustAllocate runs AllocateTCP (passed as f, so the unexported type of pion's
// allocation is inferred) and closes the allocation at cleanup.
func mustAllocate[A interface{ Close() error }](t *testing.T, f func() (A, error)) A {
	t.Helper()
	a, err := f()
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// turnCode is the TURN error code of err, 0 for none, -1 for another error.
func turnCode(err error) int {
	if err == nil {
		return 0
	}
	var te *stun.TurnError
	if errors.As(err, &te) {
		return int(te.ErrorCodeAttr.Code)
	}
	return -1
}

// metric reads a counter or gauge of reg; labels are name, value pairs.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	return 0
}

// echoServer serves TCP echo on ip until the test ends.
func echoServer(t *testing.T, ip string) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				io.Copy(c, c)
				c.Close()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr)
}

// echoThrough writes n random bytes to c while reading them back.
func echoThrough(t *testing.T, c net.Conn, n int) {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		errc <- err
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("echo write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("echo came back altered")
	}
}

// dialFrom dials addr from local (an IP) over TCP.
func dialFrom(t *testing.T, local string, addr net.Addr) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func tcpAddr(s string) *net.TCPAddr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

func srflx(addr string) proto.Candidate { return proto.Candidate{Kind: proto.KindSrflx, Addr: addr} }

var loopback8 = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// TestRelayIntro: a relay introduction carries a fresh credential for the
// sharer's agent ID, the Path, and the connector's observed address.
func TestRelayIntro(t *testing.T) {
	h := newRelayHarness(t, nil)
	sharer, tk := sharerWithTicket(t, h.harness, "web")
	defer sharer.close()
	conn := h.login(t, newIdentity(t), "")
	defer conn.close()
	obs := conn.raw.LocalAddr().String()
	admit := tk.AdmitKey()

	before := time.Now()
	conn.send(&proto.Connect{ID: 1, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:], Candidates: connectorCands, Path: proto.PathRelay})
	in := expectType[*proto.Intro](t, sharer.read())
	sharer.send(&proto.IntroReply{Intro: in.Intro, Code: proto.CodeRefused})
	expectType[*proto.ConnectReply](t, conn.read())
	if in.Path != proto.PathRelay || in.TURN == nil || in.TURN.URL != "turn:"+h.addr+"?transport=tcp" {
		t.Fatalf("intro %#v, TURN %#v", in, in.TURN)
	}
	exp, id, err := relay.ParseUsername(in.TURN.Username)
	if err != nil || id != tk.Sharer.String() || exp.Before(before.Add(DefaultCredentialTTL-time.Second)) || exp.After(time.Now().Add(DefaultCredentialTTL)) {
		t.Errorf("username %q: expiry %v, agent %q, %v", in.TURN.Username, exp, id, err)
	}
	if in.TURN.Password != relay.Password([]byte(testTURNSecret), in.TURN.Username) {
		t.Error("password is not the HMAC of the username under the secret")
	}
	want := append(append([]proto.Candidate{}, connectorCands...), proto.Candidate{Kind: proto.KindObserved, Addr: obs})
	if fmt.Sprint(in.Candidates) != fmt.Sprint(want) {
		t.Errorf("candidates %v, want %v", in.Candidates, want)
	}

	// Observed already among the candidates: not repeated. A direct Connect
	// gets no credential.
	conn.send(&proto.Connect{ID: 2, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:], Candidates: want, Path: proto.PathRelay})
	in = expectType[*proto.Intro](t, sharer.read())
	sharer.send(&proto.IntroReply{Intro: in.Intro, Code: proto.CodeRefused})
	expectType[*proto.ConnectReply](t, conn.read())
	if fmt.Sprint(in.Candidates) != fmt.Sprint(want) {
		t.Errorf("candidates %v, want %v", in.Candidates, want)
	}
	conn.send(&proto.Connect{ID: 3, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:], Candidates: connectorCands})
	in = expectType[*proto.Intro](t, sharer.read())
	sharer.send(&proto.IntroReply{Intro: in.Intro, Code: proto.CodeRefused})
	expectType[*proto.ConnectReply](t, conn.read())
	if in.TURN != nil || in.Path != "" || len(in.Candidates) != len(connectorCands) {
		t.Errorf("direct intro %#v", in)
	}
	if n := metric(t, h.srv.Registry(), "peerport_broker_turn_credentials_issued_total"); n != 2 {
		t.Errorf("credentials issued = %v, want 2", n)
	}
}

func TestWithObserved(t *testing.T) {
	full := make([]proto.Candidate, proto.MaxCandidates)
	for i := range full {
		full[i] = proto.Candidate{Kind: proto.KindHost, Addr: fmt.Sprintf("192.0.2.%d:1", i)}
	}
	obs := proto.Candidate{Kind: proto.KindObserved, Addr: "203.0.113.5:40000"}
	tests := []struct {
		name  string
		in    []proto.Candidate
		obs   string
		want  []proto.Candidate
		check func([]proto.Candidate) bool
	}{
		{"none", nil, obs.Addr, []proto.Candidate{obs}, nil},
		{"no observed address (pipe)", connectorCands, "", connectorCands, nil},
		{"present as srflx", []proto.Candidate{srflx(obs.Addr)}, obs.Addr, []proto.Candidate{srflx(obs.Addr)}, nil},
		{"full: takes the last place", full, obs.Addr, append(append([]proto.Candidate{}, full[:proto.MaxCandidates-1]...), obs), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]proto.Candidate(nil), tt.in...)
			got := withObserved(in, tt.obs)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if fmt.Sprint(in) != fmt.Sprint(tt.in) {
				t.Error("the connector's candidates were changed")
			}
		})
	}
	ips := connectorIPs("[::ffff:203.0.113.5]:1", []proto.Candidate{
		{Kind: proto.KindHost, Addr: "10.0.0.2:1"}, srflx("198.51.100.1:2"), srflx("203.0.113.5:3"),
		{Kind: proto.KindObserved, Addr: "[2001:db8::1]:4"}, {Kind: proto.KindRelay, Addr: "192.0.2.9:5"},
	})
	if fmt.Sprint(ips) != "[203.0.113.5 198.51.100.1 2001:db8::1]" {
		t.Errorf("connectorIPs = %v", ips)
	}
}

// TestNoRelay: without a relay, a relay Connect fails with no_relay and a
// message saying what to do; the session goes on.
func TestNoRelay(t *testing.T) {
	h := newHarness(t, "pipe", nil)
	sharer, tk := sharerWithTicket(t, h, "web")
	defer sharer.close()
	conn := h.login(t, newIdentity(t), "")
	defer conn.close()
	admit := tk.AdmitKey()
	conn.send(&proto.Connect{ID: 4, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:], Path: proto.PathRelay})
	rep := expectType[*proto.ConnectReply](t, conn.read())
	if rep.ID != 4 || rep.Code != proto.CodeNoRelay || !strings.Contains(rep.Message, "path direct") {
		t.Fatalf("%#v", rep)
	}
	conn.ping()
	sharer.ping()
	if n := metric(t, h.srv.Registry(), "peerport_broker_introductions_failed_total", "code", proto.CodeNoRelay); n != 1 {
		t.Errorf("introductions_failed_total{code=no_relay} = %v", n)
	}
}

// TestRelayAuth: Allocate takes only a fresh credential made with the
// broker's secret, for an agent with a member session.
func TestRelayAuth(t *testing.T) {
	h := newRelayHarness(t, nil)
	sharer, tk := sharerWithTicket(t, h.harness, "web")
	defer sharer.close()
	in := h.relayIntro(t, sharer, tk)
	secret := []byte(testTURNSecret)
	me := tk.Sharer.String()
	guest := newIdentity(t)
	g := h.login(t, guest, "")
	defer g.close()
	now := h.clock.Now()
	cred := func(id string, exp time.Time) [2]string {
		u, p := relay.Credentials(secret, id, exp)
		return [2]string{u, p}
	}
	tests := []struct {
		name   string
		cred   [2]string
		code   int
		reason string // auth_failures_total label
	}{
		{"issued with the intro", [2]string{in.TURN.Username, in.TURN.Password}, 0, ""},
		{"made with the secret", cred(me, now.Add(time.Minute)), 0, ""},
		{"expired", cred(me, now.Add(-time.Second)), int(stun.CodeUnauthorized), authExpired},
		{"forged", [2]string{cred(me, now.Add(time.Hour))[0], relay.Password([]byte("not-the-secret"), cred(me, now.Add(time.Hour))[0])}, int(stun.CodeUnauthorized), authForged},
		{"malformed username", [2]string{"bob", relay.Password(secret, "bob")}, int(stun.CodeUnauthorized), authMalformed},
		{"agent offline", cred(newIdentity(t).ID().String(), now.Add(time.Hour)), int(stun.CodeUnauthorized), authOffline},
		{"agent only a guest", cred(guest.ID().String(), now.Add(time.Hour)), int(stun.CodeUnauthorized), authOffline},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before float64
			if tt.reason != "" {
				before = metric(t, h.srv.Registry(), "peerport_broker_turn_auth_failures_total", "reason", tt.reason)
			}
			cl := h.turnClient(t, tt.cred[0], tt.cred[1])
			alloc, err := cl.AllocateTCP()
			if code := turnCode(err); code != tt.code {
				t.Fatalf("allocate: %v (code %d), want code %d", err, code, tt.code)
			}
			if err == nil {
				defer alloc.Close()
				if a := alloc.Addr().(*net.TCPAddr); !a.IP.Equal(net.IPv4(127, 0, 0, 1)) || a.Port < DefaultRelayPortMin {
					t.Errorf("relayed address %v", a)
				}
				return
			}
			if got := metric(t, h.srv.Registry(), "peerport_broker_turn_auth_failures_total", "reason", tt.reason); got != before+1 {
				t.Errorf("auth_failures_total{reason=%q} = %v, want %v", tt.reason, got, before+1)
			}
		})
	}
}

// TestRelayPeerPolicy: the relay refuses denied addresses, also when they
// were introduced, until allow_peers opens them; and peers the broker never
// introduced, always.
func TestRelayPeerPolicy(t *testing.T) {
	// The relay is announced at 192.0.2.10 (a 1:1 NAT's public address, a
	// documentation address here) and bound on loopback.
	own := "192.0.2.10"
	introduced := []proto.Candidate{srflx("127.0.0.2:1"), srflx("10.0.0.1:1"), srflx("169.254.169.254:1"),
		srflx(own + ":1"), srflx("[::1]:1"), srflx("[::ffff:127.0.0.4]:1")}
	peers := []struct {
		name        string
		addr        string
		openedByAll bool // allowed once allow_peers opens its range
	}{
		{"loopback", "127.0.0.1:7", true}, // the connector's observed address
		{"loopback (other)", "127.0.0.2:7", true},
		{"IPv6 loopback", "[::1]:7", false}, // not of the allocation's family: 443
		{"IPv4-mapped loopback", "[::ffff:127.0.0.4]:7", true},
		{"private", "10.0.0.1:7", true},
		{"cloud metadata", "169.254.169.254:80", true},
		{"the broker's own", own + ":7", true},
		{"never introduced", "127.0.0.3:7", false},
	}
	for _, opened := range []bool{false, true} {
		t.Run(fmt.Sprintf("allow_peers=%v", opened), func(t *testing.T) {
			h := newRelayHarness(t, func(c *RelayConfig) {
				c.RelayIP, c.BindIP = netip.MustParseAddr(own), netip.MustParseAddr("127.0.0.1")
				if opened {
					c.AllowPeers = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8"),
						netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix(own + "/32")}
					c.MaxPermissionsPerAllocation = 16
				}
			})
			sharer, tk := sharerWithTicket(t, h.harness, "web")
			defer sharer.close()
			in := h.relayIntro(t, sharer, tk, introduced...)
			cl := h.turnClient(t, in.TURN.Username, in.TURN.Password)
			alloc := mustAllocate(t, cl.AllocateTCP)
			if a := alloc.Addr().String(); !strings.HasPrefix(a, own+":") {
				t.Errorf("relayed address %s, want the announced %s", a, own)
			}
			for _, p := range peers {
				want := int(stun.CodeForbidden)
				switch {
				case strings.HasPrefix(p.addr, "[::1]"):
					want = int(stun.CodePeerAddrFamilyMismatch)
				case opened && p.openedByAll:
					want = 0
				}
				err := cl.CreatePermission(tcpAddr(p.addr))
				if code := turnCode(err); code != want {
					t.Errorf("%s: CreatePermission %s: %v (code %d), want code %d", p.name, p.addr, err, code, want)
				}
				if want == 0 {
					continue // a Connect would dial it: tests reach loopback only
				}
				if want == int(stun.CodePeerAddrFamilyMismatch) {
					want = int(stun.CodeForbidden) // Connect has no family check; the policy refuses it
				}
				_, err = alloc.Connect(tcpAddr(p.addr))
				if code := turnCode(err); code != want {
					t.Errorf("%s: Connect %s: %v (code %d), want code %d", p.name, p.addr, err, code, want)
				}
			}
			if opened {
				// An opened, introduced peer is reached through the relay.
				echo := echoServer(t, "127.0.0.2")
				c, err := alloc.Dial("tcp", echo.String())
				if err != nil {
					t.Fatalf("dial the echo server through the relay: %v", err)
				}
				defer c.Close()
				echoThrough(t, c, 64<<10)
			} else if n := metric(t, h.srv.Registry(), "peerport_broker_turn_permission_denials_total", "reason", deniedAddress); n < 10 {
				t.Errorf("permission_denials_total{reason=denied_address} = %v, want at least 10", n)
			}
			// Denied addresses are refused before the introductions are
			// looked at: the stranger counts as not introduced only when
			// loopback is open.
			wantStranger := 0.0
			if opened {
				wantStranger = 2
			}
			if n := metric(t, h.srv.Registry(), "peerport_broker_turn_permission_denials_total", "reason", deniedNotIntroduced); n != wantStranger {
				t.Errorf("permission_denials_total{reason=not_introduced} = %v, want %v", n, wantStranger)
			}
		})
	}
}

func TestPeerPolicy(t *testing.T) {
	own := []netip.Addr{netip.MustParseAddr("198.51.100.7")}
	closed := newPeerPolicy(nil, own)
	opened := newPeerPolicy([]netip.Prefix{
		netip.MustParsePrefix("::ffff:127.0.0.0/104"), // 127.0.0.0/8, written mapped
		netip.MustParsePrefix("198.51.100.7/32"),
	}, own)
	tests := []struct {
		ip             string
		closed, opened bool // refused
	}{
		{"0.0.0.0", true, true},
		{"::", true, true},
		{"127.0.0.1", true, false},
		{"127.255.0.9", true, false},
		{"::1", true, true},
		{"::ffff:127.0.0.1", true, false},
		{"::ffff:10.1.2.3", true, true},
		{"10.0.0.1", true, true},
		{"172.31.255.1", true, true},
		{"172.32.0.1", false, false},
		{"192.168.1.1", true, true},
		{"fd00::1", true, true},
		{"169.254.169.254", true, true},
		{"fe80::1", true, true},
		{"fe80::1%eth0", true, true},
		{"100.64.0.1", true, true},
		{"100.128.0.1", false, false},
		{"224.0.0.251", true, true},
		{"ff02::1", true, true},
		{"255.255.255.255", true, true},
		{"64:ff9b::7f00:1", true, false}, // NAT64 of 127.0.0.1
		{"64:ff9b::cb00:7105", false, false},
		{"2002:a00:1::1", true, true}, // 6to4 of 10.0.0.1
		{"198.51.100.7", true, false}, // the broker's own
		{"203.0.113.5", false, false},
		{"2001:db8::1", false, false},
	}
	for _, tt := range tests {
		ip := netip.MustParseAddr(tt.ip)
		if got := closed.denied(ip) != ""; got != tt.closed {
			t.Errorf("%s: refused %v (%q), want %v", tt.ip, got, closed.denied(ip), tt.closed)
		}
		if got := opened.denied(ip) != ""; got != tt.opened {
			t.Errorf("%s with allow_peers: refused %v (%q), want %v", tt.ip, got, opened.denied(ip), tt.opened)
		}
	}
}

func TestIntroBook(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	b := make(introBook)
	b.add([]netip.Addr{ip("203.0.113.1"), ip("::ffff:203.0.113.2")}, t0, t0.Add(time.Hour), 3)
	b.add([]netip.Addr{ip("203.0.113.3")}, t0.Add(time.Minute), t0.Add(2*time.Hour), 3)
	if !b.has(ip("203.0.113.2"), t0) || !b.has(ip("::ffff:203.0.113.1"), t0) || b.has(ip("203.0.113.9"), t0) {
		t.Errorf("book %v", b)
	}
	if b.has(ip("203.0.113.1"), t0.Add(time.Hour)) || !b.has(ip("203.0.113.3"), t0.Add(time.Hour)) {
		t.Error("expiry not kept")
	}
	// Over the bound, the ones closest to expiry go.
	b.add([]netip.Addr{ip("203.0.113.4")}, t0.Add(2*time.Minute), t0.Add(3*time.Hour), 3)
	if len(b) != 3 {
		t.Errorf("book of %d, want 3", len(b))
	}
	b.add([]netip.Addr{ip("203.0.113.5")}, t0.Add(90*time.Minute), t0.Add(4*time.Hour), 3)
	if len(b) != 3 || b.has(ip("203.0.113.1"), t0) || b.has(ip("203.0.113.2"), t0) {
		t.Errorf("expired entries kept: %v", b)
	}
	var none introBook
	if none.has(ip("203.0.113.1"), t0) {
		t.Error("nil book has an entry")
	}
}

// TestRelayEcho: an introduced peer's inbound connection reaches the
// client over ConnectionBind, and the client's Connect reaches a peer; 1
// MiB echoes intact each way, and the relayed bytes are counted.
func TestRelayEcho(t *testing.T) {
	h := newRelayHarness(t, func(c *RelayConfig) { c.AllowPeers = loopback8 })
	sharer, tk := sharerWithTicket(t, h.harness, "web")
	defer sharer.close()
	in := h.relayIntro(t, sharer, tk, srflx("127.0.0.2:5000"))
	cl := h.turnClient(t, in.TURN.Username, in.TURN.Password)
	alloc := mustAllocate(t, cl.AllocateTCP)
	reg := h.srv.Registry()
	if n := metric(t, reg, "peerport_broker_turn_allocations"); n != 1 {
		t.Errorf("turn_allocations = %v, want 1", n)
	}

	// Inbound: the peer dials the relayed address.
	if err := cl.CreatePermission(tcpAddr("127.0.0.2:0")); err != nil {
		t.Fatal(err)
	}
	peer := dialFrom(t, "127.0.0.2", alloc.Addr())
	alloc.SetDeadline(time.Now().Add(10 * time.Second))
	data, err := alloc.AcceptTCP()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer data.Close()
	wg.Go(func() { io.Copy(data, data) })
	echoThrough(t, peer, 1<<20)

	// Outbound: Connect to the peer's echo server.
	echo := echoServer(t, "127.0.0.2")
	out, err := alloc.Dial("tcp", echo.String())
	if err != nil {
		t.Fatalf("dial through the relay: %v", err)
	}
	defer out.Close()
	echoThrough(t, out, 1<<20)

	for _, d := range []string{directionToPeer, directionFromPeer} {
		if n := metric(t, reg, "peerport_broker_turn_relayed_bytes_total", "direction", d); n < 2<<20 {
			t.Errorf("relayed_bytes_total{direction=%s} = %v, want at least 2 MiB", d, n)
		}
	}
	if n := metric(t, reg, "peerport_broker_turn_allocations_total"); n != 1 {
		t.Errorf("turn_allocations_total = %v, want 1", n)
	}

	// An inbound connection from a peer never introduced is closed at once.
	stranger := dialFrom(t, "127.0.0.3", alloc.Addr())
	stranger.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := stranger.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("stranger's connection: %v, want it closed", err)
	}
	// So is one from a peer whose introduction has expired, though pion
	// still holds its permission: the relay's listener checks it.
	h.clock.Add(DefaultIntroducedTTL + time.Second)
	late := dialFrom(t, "127.0.0.2", alloc.Addr())
	late.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := late.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("connection after the introduction expired: %v, want it closed", err)
	}
	if n := metric(t, reg, "peerport_broker_turn_permission_denials_total", "reason", deniedNotIntroduced); n != 2 {
		t.Errorf("permission_denials_total{reason=not_introduced} = %v, want 2 (the stranger, the expired one)", n)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestRelayDuplicateConnect: a second Connect to the same peer on one
// allocation is refused with 446; the relay serves other clients on.
func TestRelayDuplicateConnect(t *testing.T) {
	h := newRelayHarness(t, func(c *RelayConfig) { c.AllowPeers = loopback8 })
	sharer, tk := sharerWithTicket(t, h.harness, "web")
	defer sharer.close()
	in := h.relayIntro(t, sharer, tk, srflx("127.0.0.2:5000"))
	echo := echoServer(t, "127.0.0.2")

	cl := h.turnClient(t, in.TURN.Username, in.TURN.Password)
	alloc := mustAllocate(t, cl.AllocateTCP)
	if _, err := alloc.Connect(echo); err != nil {
		t.Fatalf("first connect: %v", err)
	}
	_, err := alloc.Connect(echo)
	if code := turnCode(err); code != int(stun.CodeConnAlreadyExists) {
		t.Fatalf("second connect: %v (code %d), want 446", err, code)
	}

	other := h.turnClient(t, in.TURN.Username, in.TURN.Password)
	alloc2 := mustAllocate(t, other.AllocateTCP)
	c, err := alloc2.Dial("tcp", echo.String())
	if err != nil {
		t.Fatalf("another allocation: %v", err)
	}
	defer c.Close()
	echoThrough(t, c, 64<<10)
}

// TestRelayQuotas: allocations per agent, and distinct peers per allocation.
func TestRelayQuotas(t *testing.T) {
	h := newRelayHarness(t, func(c *RelayConfig) {
		c.AllowPeers = loopback8
		c.MaxAllocationsPerAgent = 2
		c.MaxPermissionsPerAllocation = 2
	})
	sharer, tk := sharerWithTicket(t, h.harness, "web")
	defer sharer.close()
	in := h.relayIntro(t, sharer, tk, srflx("127.0.0.2:1"), srflx("127.0.0.3:1"), srflx("127.0.0.4:1"))
	user, pass := in.TURN.Username, in.TURN.Password

	first := mustAllocate(t, h.turnClient(t, user, pass).AllocateTCP)
	mustAllocate(t, h.turnClient(t, user, pass).AllocateTCP)
	_, err := h.turnClient(t, user, pass).AllocateTCP()
	if code := turnCode(err); code != int(stun.CodeAllocQuotaReached) {
		t.Fatalf("third allocation: %v (code %d), want 486", err, code)
	}
	if n := metric(t, h.srv.Registry(), "peerport_broker_turn_allocations_refused_total", "reason", refusedQuota); n != 1 {
		t.Errorf("allocations_refused_total{reason=quota} = %v, want 1", n)
	}
	// Another agent has its own quota.
	other, tk2 := sharerWithTicket(t, h.harness, "db")
	defer other.close()
	in2 := h.relayIntro(t, other, tk2)
	mustAllocate(t, h.turnClient(t, in2.TURN.Username, in2.TURN.Password).AllocateTCP)

	// A closed allocation frees its place.
	first.Close()
	waitFor(t, "the first allocation closed", func() bool { return h.relay.allocations() == 2 })
	cl := h.turnClient(t, user, pass)
	mustAllocate(t, cl.AllocateTCP)

	for i, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"} {
		want := 0
		if i == 2 {
			want = int(stun.CodeForbidden)
		}
		if code := turnCode(cl.CreatePermission(tcpAddr(ip + ":1"))); code != want {
			t.Errorf("permission %d for %s: code %d, want %d", i, ip, code, want)
		}
	}
	if n := metric(t, h.srv.Registry(), "peerport_broker_turn_permission_denials_total", "reason", deniedQuota); n != 1 {
		t.Errorf("permission_denials_total{reason=quota} = %v, want 1", n)
	}
}

// TestRelayBandwidth: an allocation moves no more than its bytes per second.
func TestRelayBandwidth(t *testing.T) {
	const rate = 1 << 20
	h := newRelayHarness(t, func(c *RelayConfig) { c.AllowPeers = loopback8; c.Bandwidth = rate })
	sharer, tk := sharerWithTicket(t, h.harness, "web")
	defer sharer.close()
	in := h.relayIntro(t, sharer, tk, srflx("127.0.0.2:1"))
	alloc := mustAllocate(t, h.turnClient(t, in.TURN.Username, in.TURN.Password).AllocateTCP)
	c, err := alloc.Dial("tcp", echoServer(t, "127.0.0.2").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	echoThrough(t, c, rate/2)
	// Half a second's worth, less the bucket's tenth of a second saved.
	if d := time.Since(start); d < 350*time.Millisecond {
		t.Errorf("%d bytes each way at %d B/s took %v", rate/2, rate, d)
	}
}

func TestBucket(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	b := newBucket(100 << 10) // 100 KiB/s, 10 KiB saved
	if b.burst != 10<<10 || b.chunk != 10<<10 {
		t.Fatalf("burst %v, chunk %d", b.burst, b.chunk)
	}
	steps := []struct {
		at   time.Duration
		n    int
		wait time.Duration
	}{
		{0, 10 << 10, 0},                                     // the saved burst
		{0, 10 << 10, 100 * time.Millisecond},                // in debt: wait for it
		{100 * time.Millisecond, 0, 0},                       // repaid
		{time.Hour, 20 << 10, 100 * time.Millisecond},        // saved no more than the burst
		{time.Hour - time.Second, 0, 100 * time.Millisecond}, // a clock going back changes nothing
	}
	for i, s := range steps {
		if got := b.reserve(t0.Add(s.at), s.n); got != s.wait {
			t.Errorf("step %d: wait %v, want %v", i, got, s.wait)
		}
	}
	if small := newBucket(1000); small.burst != 4<<10 || small.chunk != 4<<10 {
		t.Errorf("small bucket: burst %v", small.burst)
	}
}

// TestRelayCredentialLifetime: an expired credential still serves the
// allocation it made while the agent is online; once the agent has been
// offline for OfflineGrace, its allocations close, relayed connections too,
// and its credentials are refused.
func TestRelayCredentialLifetime(t *testing.T) {
	h := newRelayHarness(t, func(c *RelayConfig) { c.AllowPeers = loopback8 })
	sharer, tk := sharerWithTicket(t, h.harness, "web")
	in := h.relayIntro(t, sharer, tk, srflx("127.0.0.2:1"), srflx("127.0.0.3:1"))
	cl := h.turnClient(t, in.TURN.Username, in.TURN.Password)
	alloc := mustAllocate(t, cl.AllocateTCP)
	c, err := alloc.Dial("tcp", echoServer(t, "127.0.0.2").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	h.clock.Add(2 * DefaultCredentialTTL)
	if err := cl.CreatePermission(tcpAddr("127.0.0.3:1")); err != nil {
		t.Errorf("CreatePermission with an expired credential on its allocation: %v", err)
	}
	_, err = h.turnClient(t, in.TURN.Username, in.TURN.Password).AllocateTCP()
	if code := turnCode(err); code != int(stun.CodeUnauthorized) {
		t.Errorf("new allocation with an expired credential: %v, want 401", err)
	}
	echoThrough(t, c, 1<<10)

	sharer.close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("relayed connection after the agent went offline: %d, %v; want it closed", n, err)
	}
	waitFor(t, "allocation gone", func() bool { return h.relay.allocations() == 0 })
	if code := turnCode(cl.CreatePermission(tcpAddr("127.0.0.2:1"))); code == 0 {
		t.Error("CreatePermission after the agent went offline succeeded")
	}
}

// TestRelayAgentReconnects: an agent back within OfflineGrace keeps its
// allocations.
func TestRelayAgentReconnects(t *testing.T) {
	h := newRelayHarness(t, func(c *RelayConfig) { c.AllowPeers = loopback8; c.OfflineGrace = 300 * time.Millisecond })
	sharer, tk := sharerWithTicket(t, h.harness, "web")
	in := h.relayIntro(t, sharer, tk, srflx("127.0.0.2:1"))
	alloc := mustAllocate(t, h.turnClient(t, in.TURN.Username, in.TURN.Password).AllocateTCP)
	c, err := alloc.Dial("tcp", echoServer(t, "127.0.0.2").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sharer.close()
	waitFor(t, "sharer offline", func() bool { return h.srv.Stats().Agents == 0 })
	again := h.login(t, sharer.id, h.state.Token)
	defer again.close()
	time.Sleep(500 * time.Millisecond)
	echoThrough(t, c, 1<<10)
	if n := h.relay.allocations(); n != 1 {
		t.Errorf("%d allocations, want 1", n)
	}
}

// TestRelayUDPAllocate: an Allocate for UDP gets 442 Unsupported Transport
// Protocol (RFC 5766 §6.2), not 508, and a TCP one on the same credential
// still works.
func TestRelayUDPAllocate(t *testing.T) {
	h := newRelayHarness(t, nil)
	sharer, tk := sharerWithTicket(t, h.harness, "web")
	defer sharer.close()
	in := h.relayIntro(t, sharer, tk)
	cl := h.turnClient(t, in.TURN.Username, in.TURN.Password)
	pc, err := cl.Allocate()
	if err == nil {
		pc.Close()
		t.Fatal("UDP allocation succeeded")
	}
	if code := turnCode(err); code != int(stun.CodeUnsupportedTransProto) {
		t.Fatalf("UDP allocate: %v (code %d), want 442", err, code)
	}
	mustAllocate(t, h.turnClient(t, in.TURN.Username, in.TURN.Password).AllocateTCP)
}

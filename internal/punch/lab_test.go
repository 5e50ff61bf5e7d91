package punch_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/nat"
	"github.com/peerport/peerport/internal/natlab"
	"github.com/peerport/peerport/internal/punch"
)

// TestLab runs discovery and punching between the hosts of one zoo lab
// (every NAT kind, dual-stack), with the STUN server on the broker's two
// addresses and two ports. Subtests run one after another so one pair's
// traffic does not time another's.
func TestLab(t *testing.T) {
	lab := natlab.New(t, natlab.Zoo())
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	stunAddr := startSTUN(t, ctx, lab.Host("broker"))

	t.Run("discover", func(t *testing.T) {
		tests := []struct {
			host        string
			wantType    string
			wantMapping string
			wantPublic  netip.Addr
			preserved   bool
			filtering   string // UDP; every lab router filters by address and port
		}{
			{"pub", nat.TypePublic, nat.MappingNone, lab.Host("pub").IP(), true, nat.FilteringEndpointIndependent},
			{"fw1", nat.TypePublic, nat.MappingNone, lab.Host("fw1").IP(), true, nat.FilteringAddressPort},
			{"cone1", nat.TypeCone, nat.MappingEndpointIndependent, lab.Router("gw-cone1").IP(), true, nat.FilteringAddressPort},
			{"dbl", nat.TypeCone, nat.MappingEndpointIndependent, lab.Router("cgn-dbl").IP(), true, nat.FilteringAddressPort},
			{"sym1", nat.TypeSymmetric, nat.MappingDestinationDependent, lab.Router("gw-sym1").IP(), false, nat.FilteringAddressPort},
		}
		var wg sync.WaitGroup
		for _, tt := range tests {
			wg.Go(func() {
				r, err := discover(ctx, lab.Host(tt.host), stunAddr)
				if err != nil {
					t.Errorf("%s: %v", tt.host, err)
					return
				}
				t.Logf("%s:\n%s", tt.host, r)
				if r.Type != tt.wantType || r.TCP.Behavior != tt.wantMapping || r.PublicIP != tt.wantPublic ||
					r.TCP.PortPreserved != tt.preserved {
					t.Errorf("%s: type %s, tcp mapping %s, public %s, port preserved %v; want %s, %s, %s, %v",
						tt.host, r.Type, r.TCP.Behavior, r.PublicIP, r.TCP.PortPreserved,
						tt.wantType, tt.wantMapping, tt.wantPublic, tt.preserved)
				}
				if r.UDP.Behavior != tt.wantMapping || r.UDP.Filtering != tt.filtering {
					t.Errorf("%s: udp mapping %s, filtering %s; want %s, %s", tt.host, r.UDP.Behavior, r.UDP.Filtering, tt.wantMapping, tt.filtering)
				}
				wantVerdict := nat.VerdictDirect
				if tt.wantType == nat.TypeSymmetric {
					wantVerdict = nat.VerdictRelay
				}
				if r.Verdict != wantVerdict {
					t.Errorf("%s: verdict %q, want %q", tt.host, r.Verdict, wantVerdict)
				}
			})
		}
		wg.Wait()
	})

	t.Run("mapped-addr-tcp", func(t *testing.T) {
		s := newSide(t, ctx, lab.Host("cone1"), stunAddr, false)
		if s.srflx.Addr() != lab.Router("gw-cone1").IP() || s.srflx.Port() != s.port {
			t.Errorf("mapped %s, want %s:%d (the NAT's address, the port kept)", s.srflx, lab.Router("gw-cone1").IP(), s.port)
		}
		s.ln.Close()
	})

	pairs := []struct {
		name, a, b string // a is the initiator (connector)
		v6         bool
		wantRemote func(b *side) netip.Addr // the address a must reach b on; zero: any
	}{
		{name: "cone-cone", a: "cone1", b: "cone2"},
		{name: "double-cone", a: "dbl", b: "cone1"},
		{name: "firewall-firewall", a: "fw1", b: "fw2"},
		{name: "public-cone", a: "pub", b: "cone2"},
		{name: "cone-public", a: "cone1", b: "pub"},
		{name: "shared-lan", a: "lan1", b: "lan2", wantRemote: func(b *side) netip.Addr { return lab.Host(b.node.Name()).IP() }},
		{name: "ipv6-firewall-firewall", a: "fw1", b: "fw2", v6: true, wantRemote: func(b *side) netip.Addr { return lab.Host(b.node.Name()).IPv6() }},
	}
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			a := newSide(t, ctx, lab.Host(p.a), stunAddr, p.v6)
			b := newSide(t, ctx, lab.Host(p.b), stunAddr, p.v6)
			ra, rb := runPair(t, ctx, a, b, 10*time.Second)
			if ra.err != nil || rb.err != nil {
				t.Fatalf("punch: %s: %v; %s: %v", p.a, ra.err, p.b, rb.err)
			}
			t.Logf("%s -> %s: %s->%s via %s (%s), %d attempts, %d ms", p.a, p.b, ra.res.Local, ra.res.Remote,
				ra.res.Via, ra.res.Candidate.Kind, ra.res.Attempts, ra.res.PunchMS)
			// Behind a NAT the addresses differ by side, but these NATs keep
			// ports; the echo below proves it is one connection.
			if ra.res.Local.Port() != rb.res.Remote.Port() || ra.res.Remote.Port() != rb.res.Local.Port() {
				t.Fatalf("the sides kept different connections: %s->%s, %s->%s", ra.res.Local, ra.res.Remote, rb.res.Local, rb.res.Remote)
			}
			if p.wantRemote != nil && ra.res.Remote.Addr() != p.wantRemote(b) {
				t.Errorf("connected to %s, want %s", ra.res.Remote, p.wantRemote(b))
			}
			echo(t, ra.c, rb.c)
		})
	}

	t.Run("symmetric-cone", func(t *testing.T) {
		a := newSide(t, ctx, lab.Host("sym1"), stunAddr, false)
		b := newSide(t, ctx, lab.Host("cone1"), stunAddr, false)
		ra, err := discover(ctx, a.node, stunAddr)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, _, err = punch.Punch(ctx, punch.Config{Listener: a.ln, Remote: b.cands, Initiator: true, LocalNAT: ra, Exec: a.node.Do})
		if !errors.Is(err, punch.ErrRelayNeeded) {
			t.Fatalf("with the report: %v, want ErrRelayNeeded", err)
		}
		t.Logf("relay needed after %v", time.Since(start).Round(time.Microsecond))
		b.ln.Close()

		// Without the report, the punch runs into its deadline.
		a = newSide(t, ctx, lab.Host("sym1"), stunAddr, false)
		b = newSide(t, ctx, lab.Host("cone1"), stunAddr, false)
		r1, r2 := runPair(t, ctx, a, b, 3*time.Second)
		if !errors.Is(r1.err, punch.ErrDeadline) || !errors.Is(r2.err, punch.ErrDeadline) {
			t.Fatalf("without the report: %v, %v; want ErrDeadline on both", r1.err, r2.err)
		}
		t.Logf("deadline after %d ms, %d attempts", r1.res.PunchMS, r1.res.Attempts)
	})
}

// startSTUN serves STUN on the broker's two addresses and two ports.
func startSTUN(t *testing.T, ctx context.Context, broker *natlab.Node) string {
	t.Helper()
	ls := &nat.Listeners{}
	for _, ip := range broker.IPs()[:2] {
		for _, port := range []int{nat.DefaultPort, nat.DefaultAltPort} {
			addr := net.JoinHostPort(ip.String(), strconv.Itoa(port))
			pc, err := broker.ListenPacket("udp", addr)
			if err != nil {
				t.Fatal(err)
			}
			ln, err := broker.Listen("tcp", addr)
			if err != nil {
				pc.Close()
				t.Fatal(err)
			}
			ls.UDP, ls.TCP = append(ls.UDP, pc), append(ls.TCP, ln)
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = nat.NewServer(nat.ServerConfig{}).Serve(sctx, ls)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ls.Addrs()[0]
}

func discover(ctx context.Context, n *natlab.Node, server string) (*nat.Report, error) {
	return nat.Discover(ctx, nat.Options{Server: server, Exec: n.Do})
}

// side is one agent's punch socket and candidates.
type side struct {
	node  *natlab.Node
	ln    net.Listener
	port  uint16
	srflx netip.AddrPort
	cands []punch.Candidate
}

// newSide does what the agent does before an introduction: listen on the
// punch port, learn its mapping over STUN/TCP from it, gather candidates.
func newSide(t *testing.T, ctx context.Context, n *natlab.Node, stunAddr string, v6 bool) *side {
	t.Helper()
	ln, err := punch.Listen(ctx, n.Do, ":0")
	if err != nil {
		t.Fatal(err)
	}
	s := &side{node: n, ln: ln, port: uint16(ln.Addr().(*net.TCPAddr).Port)}
	t.Cleanup(func() { ln.Close() })
	err = n.Do(func() error {
		var err error
		if s.srflx, err = nat.MappedAddrTCP(ctx, netip.AddrPortFrom(netip.IPv4Unspecified(), s.port), stunAddr); err != nil {
			return err
		}
		s.cands, err = punch.HostCandidates(s.port)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	s.cands = append(s.cands, punch.Candidate{Addr: s.srflx, Kind: punch.Srflx})
	s.cands = slices.DeleteFunc(s.cands, func(c punch.Candidate) bool { return c.Addr.Addr().Is4() == v6 })
	return s
}

type outcome struct {
	c   net.Conn
	res *punch.Result
	err error
}

// runPair punches a (initiator) and b at the same moment.
func runPair(t *testing.T, ctx context.Context, a, b *side, timeout time.Duration) (outcome, outcome) {
	t.Helper()
	var oa, ob outcome
	var wg sync.WaitGroup
	startAt := time.Now().Add(20 * time.Millisecond)
	wg.Go(func() {
		oa.c, oa.res, oa.err = punch.Punch(ctx, punch.Config{Listener: a.ln, Remote: b.cands, Initiator: true,
			Timeout: timeout, StartAt: startAt, Exec: a.node.Do, Tracer: logEvents(t, a.node.Name())})
	})
	wg.Go(func() {
		ob.c, ob.res, ob.err = punch.Punch(ctx, punch.Config{Listener: b.ln, Remote: a.cands,
			Timeout: timeout, StartAt: startAt, Exec: b.node.Do, Tracer: logEvents(t, b.node.Name())})
	})
	wg.Wait()
	t.Cleanup(func() {
		for _, o := range []outcome{oa, ob} {
			if o.c != nil {
				o.c.Close()
			}
		}
	})
	return oa, ob
}

func logEvents(t *testing.T, who string) punch.Tracer {
	start := time.Now()
	return func(e punch.Event) {
		if e.Type == punch.EventSYN && e.Attempt > 1 {
			return
		}
		t.Logf("%6.1fms %s %s %s %s %s %v", float64(time.Since(start).Microseconds())/1000, who, e.Type,
			e.Candidate, e.Via, e.Remote, e.Err)
	}
}

// echo sends 1 MiB each way at once and checks both arrive intact.
func echo(t *testing.T, a, b net.Conn) {
	t.Helper()
	const n = 1 << 20
	send := func(c net.Conn) ([32]byte, error) {
		buf := make([]byte, n)
		_, _ = rand.Read(buf)
		_, err := c.Write(buf)
		return sha256.Sum256(buf), err
	}
	recv := func(c net.Conn) ([32]byte, error) {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		h := sha256.New()
		_, err := io.CopyN(h, c, n)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		return sum, err
	}
	var wg sync.WaitGroup
	var sa, sb, ga, gb [32]byte
	var e1, e2, e3, e4 error
	wg.Go(func() { sa, e1 = send(a) })
	wg.Go(func() { sb, e2 = send(b) })
	wg.Go(func() { gb, e3 = recv(b) })
	wg.Go(func() { ga, e4 = recv(a) })
	wg.Wait()
	if err := errors.Join(e1, e2, e3, e4); err != nil {
		t.Fatalf("echo: %v", err)
	}
	if !bytes.Equal(sa[:], gb[:]) || !bytes.Equal(sb[:], ga[:]) {
		t.Fatal("echo: data corrupted")
	}
}

package natlab_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// probeTimeout bounds every attempt that is expected to get nothing: long
// enough for a lab round trip (well under a millisecond), short enough that
// the tests stay fast.
const probeTimeout = 700 * time.Millisecond

// serveEchoOn echoes, inside n, every TCP connection to port (one line
// "hello <port>" first, so a client sees it reached the right service) and
// every UDP datagram to port, until the test ends.
func serveEchoOn(t *testing.T, n *natlab.Node, tcpPorts, udpPorts []int) {
	t.Helper()
	var wg sync.WaitGroup
	var closers []io.Closer
	for _, port := range tcpPorts {
		ln, err := n.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			t.Fatal(err)
		}
		closers = append(closers, ln)
		wg.Go(func() {
			var conns sync.WaitGroup
			defer conns.Wait()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				conns.Go(func() {
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(30 * time.Second))
					if _, err := io.WriteString(c, "hello "+strconv.Itoa(port)+"\n"); err == nil {
						_, _ = io.Copy(c, c)
					}
				})
			}
		})
	}
	for _, port := range udpPorts {
		pc, err := n.ListenPacket("udp", ":"+strconv.Itoa(port))
		if err != nil {
			t.Fatal(err)
		}
		closers = append(closers, pc)
		wg.Go(func() {
			buf := make([]byte, 2048)
			for {
				k, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo(buf[:k], from)
			}
		})
	}
	// Accepted connections end by their deadline or when the client closes;
	// every client of these tests closes before the test ends.
	t.Cleanup(func() {
		for _, c := range closers {
			c.Close()
		}
		wg.Wait()
	})
}

// outcome classifies a dial or read error as the lab's probes do:
// "connected", "refused" (a RST or ICMP error came back), "timeout" (nothing
// came back), or the error itself.
func outcome(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return "connected"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return err.Error()
}

// reach tries network (tcp or udp) to addr from n and returns the outcome.
// TCP: the connect, then the service's hello line and one echoed line, so a
// "connected" also proves replies come back. UDP: one datagram and its echo.
func reach(ctx context.Context, n *natlab.Node, network, addr string) string {
	c, err := n.DialWith(ctx, &net.Dialer{Timeout: probeTimeout}, network, addr)
	if err != nil {
		return outcome(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(probeTimeout))
	if network == "udp" {
		if _, err := c.Write([]byte("ping")); err != nil {
			return outcome(err)
		}
		buf := make([]byte, 16)
		k, err := c.Read(buf)
		if err != nil {
			return outcome(err)
		}
		if string(buf[:k]) != "ping" {
			return "wrong echo " + strconv.Quote(string(buf[:k]))
		}
		return "connected"
	}
	return checkEcho(c, addr)
}

// checkEcho reads the echo service's hello and echoes one line over c.
func checkEcho(c net.Conn, addr string) string {
	br := bufio.NewReader(c)
	_, port, _ := net.SplitHostPort(addr)
	if hello, err := br.ReadString('\n'); err != nil || strings.TrimSpace(hello) != "hello "+port {
		return "connected, but hello " + strconv.Quote(hello) + ": " + outcome(err)
	}
	if _, err := io.WriteString(c, "echo me\n"); err != nil {
		return "connected, but write: " + outcome(err)
	}
	if l, err := br.ReadString('\n'); err != nil || l != "echo me\n" {
		return "connected, but echo " + strconv.Quote(l) + ": " + outcome(err)
	}
	return "connected"
}

// TestEgressOnly443 proves the "cone443" network with sockets before any
// agent is involved: from behind gw-a only TCP to port 443 leaves (and its
// replies come back), UDP and every other port get nothing at all, the
// router answers nothing; the plain cone NAT beside it, the control, lets
// everything out. Dual-stack, so the IPv6 rules are proven as well.
func TestEgressOnly443(t *testing.T) {
	topo := natlab.Pair(natlab.BehindCone443, natlab.BehindCone)
	topo.IPv6 = true
	lab := natlab.New(t, topo)
	ctx := testCtx(t, 60*time.Second)
	broker := lab.Host("broker")
	serveEchoOn(t, broker, []int{443, 7000}, []int{3478})
	b4, b6 := broker.IP().String(), broker.IPv6().String()
	hp := func(h string, port int) string { return net.JoinHostPort(h, strconv.Itoa(port)) }
	gwa, gwb := lab.Router("gw-a").LANIP().String(), lab.Router("gw-b").LANIP().String()

	tests := []struct {
		name, from, network, to, want string
	}{
		{"tcp 443", "a", "tcp", hp(b4, 443), "connected"},
		{"tcp 7000", "a", "tcp", hp(b4, 7000), "timeout"},
		{"udp 3478", "a", "udp", hp(b4, 3478), "timeout"},
		{"ipv6 tcp 443", "a", "tcp", hp(b6, 443), "connected"},
		{"ipv6 tcp 7000", "a", "tcp", hp(b6, 7000), "timeout"},
		{"ipv6 udp 3478", "a", "udp", hp(b6, 3478), "timeout"},
		// Nothing listens on the router: without the filter it would refuse.
		{"router tcp 443", "a", "tcp", hp(gwa, 443), "timeout"},
		{"router tcp 22", "a", "tcp", hp(gwa, 22), "timeout"},
		// Controls: the services answer, and a router without the filter
		// does refuse, so the timeouts above are the filter's doing.
		{"control tcp 7000", "b", "tcp", hp(b4, 7000), "connected"},
		{"control udp 3478", "b", "udp", hp(b4, 3478), "connected"},
		{"control ipv6 udp 3478", "b", "udp", hp(b6, 3478), "connected"},
		{"control router tcp 22", "b", "tcp", hp(gwb, 22), "refused"},
	}
	t.Run("filter", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				start := time.Now()
				if got := reach(ctx, lab.Host(tt.from), tt.network, tt.to); got != tt.want {
					t.Errorf("%s %s -> %s: %s, want %s", tt.from, tt.network, tt.to, got, tt.want)
				}
				t.Logf("%s %s -> %s in %v", tt.from, tt.network, tt.to, time.Since(start).Round(time.Millisecond))
			})
		}
	})

	// The same filter put on gw-b at run time, then lifted again.
	t.Run("SetEgress", func(t *testing.T) {
		steps := []struct {
			egress *natlab.Egress
			want   map[string]string // address: outcome of tcp from b
		}{
			{natlab.OnlyTCPPorts(443), map[string]string{hp(b4, 443): "connected", hp(b4, 7000): "timeout"}},
			{natlab.OnlyTCPPorts(7000), map[string]string{hp(b4, 443): "timeout", hp(b4, 7000): "connected"}},
			{nil, map[string]string{hp(b4, 443): "connected", hp(b4, 7000): "connected"}},
		}
		for _, s := range steps {
			if err := lab.SetEgress(ctx, "gw-b", s.egress); err != nil {
				t.Fatal(err)
			}
			for to, want := range s.want {
				if got := reach(ctx, lab.Host("b"), "tcp", to); got != want {
					t.Errorf("egress %v: b -> %s: %s, want %s", s.egress, to, got, want)
				}
			}
		}
		if err := lab.SetEgress(ctx, "gw-b", natlab.OnlyVia("a")); err == nil || !strings.Contains(err.Error(), `no host "a" directly behind router "gw-b"`) {
			t.Errorf("exempting a host of another LAN: %v, want an error naming it", err)
		}
	})
}

// TestEgressValidate: a policy may only exempt hosts of its own LAN.
func TestEgressValidate(t *testing.T) {
	topo := natlab.Pair(natlab.BehindProxy, natlab.BehindCone)
	if err := topo.Validate(); err != nil {
		t.Fatalf("proxy-cone: %v", err)
	}
	topo.Routers[1].Egress = natlab.OnlyVia("proxy-a") // gw-b
	if err := topo.Validate(); err == nil || !strings.Contains(err.Error(), `routers[1].egress.exempt[0]: no host "proxy-a" directly behind router "gw-b"`) {
		t.Errorf("exempting a host of another LAN: %v", err)
	}
	topo.Routers[1].Egress = natlab.OnlyTCPPorts(0)
	if err := topo.Validate(); err == nil || !strings.Contains(err.Error(), "routers[1].egress.tcpPorts[0]: port 0") {
		t.Errorf("port 0: %v", err)
	}
	info, err := natlab.PlanInfo(natlab.Pair(natlab.BehindProxy, natlab.BehindCone443))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "10.0.1.10", "proxy-a": "10.0.1.11", "b": "10.0.2.10"}
	for _, n := range info {
		if ip, ok := want[n.Name]; ok && n.IP != ip {
			t.Errorf("%s at %s, want %s", n.Name, n.IP, ip)
		}
		delete(want, n.Name)
	}
	if len(want) != 0 {
		t.Errorf("proxy-cone443 lacks %v", want)
	}
}

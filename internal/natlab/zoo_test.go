package natlab_test

import (
	"bufio"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// TestZoo is the lab's truth table: one dual-stack lab with every router
// kind, probed in parallel.
func TestZoo(t *testing.T) {
	lab := natlab.New(t, natlab.Zoo())
	ctx := testCtx(t, 90*time.Second)
	broker := lab.Host("broker")
	// A reflector on the broker and a listener on every host, so an inbound
	// SYN that got through would be accepted.
	start := time.Now()
	var procs []*natlab.Proc
	for _, n := range lab.Nodes() {
		if n.Kind() == 0 && n.Name() != natlab.InternetName {
			p, err := n.StartCommand(ctx, probe(t, "serve", "-listen", ":7001"))
			if err != nil {
				t.Fatal(err)
			}
			procs = append(procs, p)
		}
	}
	for _, p := range procs {
		if _, err := p.Expect(ctx, "listening"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d listeners up in %v", len(procs), time.Since(start).Round(time.Millisecond))
	refl4 := func(i int) string { return net.JoinHostPort(broker.IPs()[i].String(), "7001") }
	refl6 := net.JoinHostPort(broker.IPv6().String(), "7001")

	t.Run("mapping", func(t *testing.T) {
		tests := []struct {
			host     string
			v6       bool
			wantIP   netip.Addr
			wantPort string // "kept": the local port on both; "differ": two ports, one per destination
		}{
			{host: "pub", wantIP: lab.Host("pub").IP(), wantPort: "kept"},
			{host: "cone1", wantIP: lab.Router("gw-cone1").IP(), wantPort: "kept"},
			{host: "sym1", wantIP: lab.Router("gw-sym1").IP(), wantPort: "differ"},
			{host: "fw1", wantIP: lab.Host("fw1").IP(), wantPort: "kept"},
			{host: "dbl", wantIP: lab.Router("cgn-dbl").IP(), wantPort: "kept"},
			{host: "lan1", wantIP: lab.Router("gw-lan").IP(), wantPort: "kept"},
			{host: "cone1", v6: true, wantIP: lab.Host("cone1").IPv6(), wantPort: "kept"},
		}
		for i, tt := range tests {
			name := tt.host
			if tt.v6 {
				name += "/ipv6"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				local := strconv.Itoa(42000 + i)
				dests := []string{refl4(0), refl4(1)}
				if tt.v6 {
					dests = []string{refl6}
				}
				var ports []string
				for _, d := range dests {
					out, err := lab.Host(tt.host).RunCommand(ctx, probe(t, "dial", "-to", d, "-local", local))
					if err != nil {
						t.Fatalf("dial %s: %v (%s)", d, err, out)
					}
					mapped, err := netip.ParseAddrPort(field(string(out), "mapped"))
					if err != nil {
						t.Fatalf("dial %s: %q: %v", d, out, err)
					}
					if mapped.Addr() != tt.wantIP {
						t.Errorf("%s sees %s, want address %s", d, mapped, tt.wantIP)
					}
					ports = append(ports, strconv.Itoa(int(mapped.Port())))
					t.Logf("%s:%s -> %s sees %s", tt.host, local, d, mapped)
				}
				switch tt.wantPort {
				case "kept":
					for _, p := range ports {
						if p != local {
							t.Errorf("port %s not kept: seen as %v", local, ports)
						}
					}
				case "differ":
					if ports[0] == ports[1] {
						t.Errorf("one port %s for two destinations, want two (symmetric NAT)", ports[0])
					}
				}
			})
		}
	})

	t.Run("inbound", func(t *testing.T) {
		tests := []struct {
			name, to, want string
		}{
			{"cone", lab.Router("gw-cone1").IP().String(), "timeout"},
			{"symmetric", lab.Router("gw-sym1").IP().String(), "timeout"},
			{"firewall", lab.Host("fw1").IP().String(), "timeout"},
			{"double", lab.Router("cgn-dbl").IP().String(), "timeout"},
			{"shared", lab.Router("gw-lan").IP().String(), "timeout"},
			{"firewall/ipv6", lab.Host("fw1").IPv6().String(), "timeout"},
			{"cone/ipv6", lab.Host("cone1").IPv6().String(), "timeout"},
			// Controls: the probe does tell the three outcomes apart.
			{"public", lab.Host("pub").IP().String(), "connected"},
			{"public/closed-port", lab.Host("pub").IP().String() + ":7999", "refused"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				to := tt.to
				if !strings.Contains(to, ":7999") {
					to = net.JoinHostPort(to, "7001")
				}
				out, _ := broker.RunCommand(ctx, probe(t, "dial", "-to", to, "-timeout", "1500ms"))
				got := field("x "+strings.Replace(string(out), "result ", "result=", 1), "result")
				if got != tt.want {
					t.Errorf("SYN from the internet to %s: %q, want %s", to, strings.TrimSpace(string(out)), tt.want)
				}
			})
		}
	})

	t.Run("hairpin", func(t *testing.T) {
		t.Parallel()
		lan1, lan2, gw := lab.Host("lan1"), lab.Host("lan2"), lab.Router("gw-lan")
		// lan2 holds a mapping gw-lan:7002 open to the broker.
		c, err := lan2.DialWith(ctx, &net.Dialer{LocalAddr: &net.TCPAddr{Port: 7002}}, "tcp", refl4(0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadString('\n')
		if want := "you=" + gw.IP().String() + ":7002"; err != nil || strings.TrimSpace(line) != want {
			t.Fatalf("broker saw %q, %v; want %s", line, err, want)
		}
		// On the LAN: direct.
		out, err := lan1.RunCommand(ctx, probe(t, "dial", "-to", net.JoinHostPort(lan2.IP().String(), "7001")))
		if err != nil || field(string(out), "mapped") != net.JoinHostPort(lan1.IP().String(), field(string(out), "local")[len(lan1.IP().String())+1:]) {
			t.Errorf("lan1 -> lan2 on the LAN: %q, %v", out, err)
		}
		// Through the NAT's public address: no hairpinning.
		out, _ = lan1.RunCommand(ctx, probe(t, "dial", "-to", net.JoinHostPort(gw.IP().String(), "7002"), "-timeout", "1500ms"))
		if strings.Contains(string(out), "connected") {
			t.Errorf("lan1 reached lan2 through %s:7002 (hairpinning): %q", gw.IP(), out)
		}
		t.Logf("lan1 -> %s:7002: %s", gw.IP(), strings.TrimSpace(string(out)))
	})

	t.Run("simopen", func(t *testing.T) {
		tests := []struct {
			a, b string
			v6   bool
			want string
		}{
			{"cone1", "cone2", false, "connected"},
			{"dbl", "cone1", false, "connected"},
			{"fw1", "fw2", false, "connected"},
			{"fw1", "fw2", true, "connected"},
			{"sym1", "cone2", false, "failed"},
			{"sym1", "sym2", false, "failed"},
		}
		for i, tt := range tests {
			name := tt.a + "-" + tt.b
			if tt.v6 {
				name += "/ipv6"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				refl := refl4(0)
				if tt.v6 {
					refl = refl6
				}
				var procs [2]*natlab.Proc
				var mapped [2]string
				for j, h := range []string{tt.a, tt.b} {
					local := strconv.Itoa(43000 + 10*i + j)
					p, line := startProbe(t, ctx, lab.Host(h), "mapped", "punch", "-local", local, "-reflector", refl, "-timeout", "4s")
					procs[j], mapped[j] = p, strings.Fields(line)[1]
				}
				// The start signal: each learns the other's mapping at once.
				for j := range procs {
					if _, err := procs[j].Stdin().Write([]byte(mapped[1-j] + "\n")); err != nil {
						t.Fatal(err)
					}
				}
				for j, p := range procs {
					line, err := p.ReadLine(ctx)
					if err != nil {
						t.Fatal(err)
					}
					t.Logf("%s (mapped %s): %s", p, mapped[j], line)
					if got := strings.Fields(line)[0]; got != tt.want {
						t.Errorf("%s: %q, want %s", p, line, tt.want)
					}
				}
			})
		}
	})
}

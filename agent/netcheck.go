package agent

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/nat"
	"github.com/peerport/peerport/internal/relay"
	"github.com/peerport/peerport/internal/secure"
)

// probeTimeout bounds each reachability probe of netcheck.
const probeTimeout = 3 * time.Second

// NetcheckReport is what `agent netcheck` finds: the NAT behaviour (the
// fields of nat.Report, at the top level of its JSON) and which of the
// broker's services this network lets through.
type NetcheckReport struct {
	*nat.Report
	// Why explains a verdict that STUN could not make.
	Why   string       `json:"why,omitempty"`
	Reach Reachability `json:"reachability"`
	// IPv6 is this host's IPv6 and the broker's over it (netcheck6.go).
	IPv6 IPv6Report `json:"ipv6"`
	// Portmap is what the gateway answers to port mapping (netcheck_portmap.go).
	Portmap PortmapReport `json:"portmap"`
}

// NetcheckOptions are what netcheck takes from the agent's settings.
type NetcheckOptions struct {
	// Proxy is the HTTP CONNECT proxy to reach the broker through; nil:
	// the environment's.
	Proxy *url.URL
	// Portmap asks the gateway about port mapping; Candidates as in Options.
	Portmap    bool
	Candidates []netip.Prefix
}

// Reachability says which of a broker's ports answer from here.
type Reachability struct {
	// Broker is the broker's one TLS port: control channel and broker relay.
	Broker Probe `json:"broker"`
	// Proxy is the HTTP CONNECT proxy the broker was reached through
	// (redacted), empty when direct.
	Proxy   string `json:"proxy,omitempty"`
	STUNUDP Probe  `json:"stun_udp"`
	STUNTCP Probe  `json:"stun_tcp"`
	TURN    Probe  `json:"turn"`
	// Relays are the relay kinds a session from here can use: "broker"
	// always (where the control channel works, so does the broker relay),
	// "turn" when its port answers.
	Relays []string `json:"relays"`
}

// Probe is one port's answer.
type Probe struct {
	Addr      string  `json:"addr,omitempty"`
	OK        bool    `json:"ok"`
	RTTMillis float64 `json:"rtt_ms,omitempty"`
	Error     string  `json:"error,omitempty"`
}

// Netcheck reports the NAT behaviour seen from here, measured against the
// STUN servers of the broker at u, and which of the broker's ports this
// network lets through, directly or through the proxy. It fails only when
// the broker itself cannot be reached.
func Netcheck(ctx context.Context, id *secure.Identity, u secure.BrokerURL, o NetcheckOptions, log logrus.FieldLogger) (*NetcheckReport, error) {
	d := newBrokerDialer(id, o.Proxy)
	c, err := dialAny(ctx, d, u, log) // of several addresses, the first node that answers
	if err != nil {
		return nil, err
	}
	c.conn.Close()
	rep := &NetcheckReport{Report: &nat.Report{Type: "unknown", Verdict: nat.VerdictRelay}}
	rep.Reach.Broker = Probe{Addr: c.addr, OK: true, RTTMillis: millis(time.Duration(c.rtt.Load()))}
	rep.Reach.Proxy = c.via
	rep.Reach.Relays = []string{RelayBroker}

	var wg sync.WaitGroup
	wg.Go(func() { rep.IPv6 = netcheckIPv6(ctx, u, c.addr, c.welcome.STUN, c.via) })
	wg.Go(func() { rep.Portmap = netcheckPortmap(ctx, Options{Portmap: o.Portmap, Candidates: o.Candidates}, log) })
	if turn := c.welcome.TURN; turn != "" {
		wg.Go(func() {
			rep.Reach.TURN = probeTCP(ctx, d, turn, c.addr)
			if rep.Reach.TURN.OK {
				rep.Reach.Relays = append(rep.Reach.Relays, RelayTURN)
			}
		})
	} else {
		rep.Reach.TURN.Error = "the broker offers no TURN relay"
	}
	primary, alt := stunPair(stunServers(c.welcome.STUN, c.addr))
	switch {
	case primary == "":
		rep.Reach.STUNUDP.Error = "the broker offers no STUN server"
		rep.Reach.STUNTCP.Error = rep.Reach.STUNUDP.Error
	case c.via != "":
		// STUN through a proxy would measure the proxy's NAT, not ours; and
		// behind a proxy no direct path can be made anyway.
		rep.Reach.STUNUDP = Probe{Addr: primary, Error: "not tried: the broker is reached through a proxy"}
		rep.Reach.STUNTCP = rep.Reach.STUNUDP
		rep.Why = "behind an HTTP proxy: sessions use the broker relay"
	default:
		r, err := nat.Discover(ctx, nat.Options{Server: primary, Alternate: alt, Timeout: 2 * stunTimeout})
		if r != nil {
			rep.Reach.STUNUDP = stunProbe(primary, r.UDP, r.RTT)
			rep.Reach.STUNTCP = stunProbe(primary, r.TCP, r.RTT)
		}
		if err == nil {
			rep.Report = r
		} else {
			log.WithError(err).Debug("NAT discovery got no answer")
			rep.Server = primary
			rep.Why = "no STUN answer: this network lets only the broker's port through"
		}
	}
	wg.Wait()
	return rep, nil
}

// stunProbe turns one transport's STUN result into a probe.
func stunProbe(server string, m nat.Mapping, rtt time.Duration) Probe {
	if m.Mapped.IsValid() {
		return Probe{Addr: server, OK: true, RTTMillis: millis(rtt)}
	}
	return Probe{Addr: server, Error: m.Error}
}

// probeTCP checks that a TURN URL's port accepts a TCP connection, through
// the agent's proxy like the rest.
func probeTCP(ctx context.Context, d *brokerDialer, turnURL, brokerAddr string) Probe {
	addr, err := relay.ParseURL(turnURL)
	if err != nil {
		return Probe{Error: err.Error()}
	}
	addr = stunServers([]string{addr}, brokerAddr)[0]
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	start := time.Now()
	c, err := d.proxy.DialContext(ctx, "tcp", addr)
	if err != nil {
		return Probe{Addr: addr, Error: err.Error()}
	}
	c.Close()
	return Probe{Addr: addr, OK: true, RTTMillis: millis(time.Since(start))}
}

// String is the human-readable form: the NAT part, then the ports.
func (r *NetcheckReport) String() string {
	var b strings.Builder
	if r.Report.Server != "" && (r.Reach.STUNUDP.OK || r.Reach.STUNTCP.OK) {
		b.WriteString(r.Report.String())
	} else {
		fmt.Fprintf(&b, "NAT type:      %s\nverdict:       %s\n", r.Type, r.Verdict)
	}
	if r.Why != "" {
		fmt.Fprintf(&b, "why:           %s\n", r.Why)
	}
	b.WriteString("reachability:\n")
	line := func(name string, p Probe, extra string) {
		state := "ok"
		switch {
		case p.OK && p.RTTMillis > 0:
			state = fmt.Sprintf("ok (rtt %.1fms)", p.RTTMillis)
		case !p.OK:
			state = "no: " + p.Error
		}
		addr := p.Addr
		if addr == "" {
			addr = "-"
		}
		fmt.Fprintf(&b, "  %-9s %-24s %s%s\n", name, addr, state, extra)
	}
	via := ""
	if r.Reach.Proxy != "" {
		via = ", through proxy " + r.Reach.Proxy
	}
	line("broker", r.Reach.Broker, via)
	line("STUN/UDP", r.Reach.STUNUDP, "")
	line("STUN/TCP", r.Reach.STUNTCP, "")
	line("TURN", r.Reach.TURN, "")
	fmt.Fprintf(&b, "  relays    %s\n", strings.Join(r.Reach.Relays, ", "))
	fmt.Fprintf(&b, "port mapping:  %s\n", r.Portmap.summary())
	fmt.Fprintf(&b, "IPv6:          %s\n", r.IPv6.summary())
	if r.IPv6.Broker.Addr != "" {
		line("broker6", r.IPv6.Broker, "")
		line("STUN6/TCP", r.IPv6.STUNTCP, "")
	}
	return b.String()
}

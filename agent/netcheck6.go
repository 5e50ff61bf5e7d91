package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/peerport/peerport/internal/nat"
	"github.com/peerport/peerport/internal/punch"
	"github.com/peerport/peerport/internal/secure"
)

// The IPv6 part of `agent netcheck`: whether this host has a global IPv6
// address, whether the broker answers over IPv6 (TCP to its IPv6 address,
// and STUN/TCP there), and whether a NAT66 rewrites the address on the way.
// Where both are true and there is no NAT66, two agents can punch a direct
// IPv6 path even behind symmetric IPv4 NATs (stateful firewalls let a
// simultaneous open through).

// IPv6Report is the "ipv6" object of `agent netcheck --json`.
type IPv6Report struct {
	// HostAddrs are this host's global IPv6 addresses (not unique-local,
	// not link-local); Global says there is one.
	HostAddrs []netip.Addr `json:"host_addrs"`
	Global    bool         `json:"global"`
	// Broker is a TCP connection to the broker's IPv6 address (the URL's,
	// else its name's AAAA record); STUNTCP a STUN binding over TCP to its
	// STUN server there.
	Broker  Probe `json:"broker"`
	STUNTCP Probe `json:"stun_tcp"`
	// Local and Mapped are the STUN binding's addresses as this host and
	// the broker see them; NAT66 says they differ.
	Local  netip.AddrPort `json:"local,omitzero"`
	Mapped netip.AddrPort `json:"mapped,omitzero"`
	NAT66  bool           `json:"nat66"`
	// Reachable says the broker answers over IPv6 from here.
	Reachable bool `json:"reachable"`
	// Why explains a Reachable of false, or a NAT66.
	Why string `json:"why,omitempty"`
}

// netcheckIPv6 measures the IPv6 part. brokerAddr is the address the
// control connection went to, welcome its STUN list; via is the proxy the
// broker is reached through ("" when direct).
func netcheckIPv6(ctx context.Context, u secure.BrokerURL, brokerAddr string, welcome []string, via string) IPv6Report {
	r := IPv6Report{HostAddrs: globalIPv6s()}
	r.Global = len(r.HostAddrs) > 0
	addr := brokerIPv6(ctx, u, brokerAddr)
	switch {
	case addr == "":
		r.Broker.Error = "the broker URL names no IPv6 address (a dual-stack broker names both: --public-addr IPv4,IPv6)"
		r.STUNTCP.Error = r.Broker.Error
		r.Why = "the broker has no IPv6 address"
		return r
	case via != "":
		r.Broker = Probe{Addr: addr, Error: "not tried: the broker is reached through a proxy"}
		r.STUNTCP = r.Broker
		r.Why = "behind an HTTP proxy"
		return r
	}
	r.Broker = probeTCPAddr(ctx, addr)
	r.Reachable = r.Broker.OK
	if !r.Reachable {
		r.STUNTCP = Probe{Error: "not tried: the broker does not answer over IPv6"}
		r.Why = "the broker does not answer over IPv6 from here"
		if !r.Global {
			r.Why = "this host has no global IPv6 address"
		}
		return r
	}
	servers := slices.DeleteFunc(stunServers(welcome, addr), func(s string) bool { return hostFamily(hostOf(s)) != 6 })
	primary, alt := stunPair(servers)
	if primary == "" {
		r.STUNTCP.Error = "the broker offers no STUN server on IPv6"
		return r
	}
	rep, err := nat.Discover(ctx, nat.Options{Server: primary, Alternate: alt, Timeout: 2 * stunTimeout, TCPOnly: true})
	if rep == nil {
		r.STUNTCP = Probe{Addr: primary, Error: fmt.Sprint(err)}
		return r
	}
	r.STUNTCP = stunProbe(primary, rep.TCP, rep.RTT)
	r.Local, r.Mapped = rep.TCP.Local, rep.TCP.Mapped
	if r.Mapped.IsValid() && r.Local.IsValid() && r.Mapped.Addr() != r.Local.Addr() {
		r.NAT66 = true
		r.Why = fmt.Sprintf("a NAT66 maps %s to %s: IPv6 candidates are not this host's address", r.Local.Addr(), r.Mapped.Addr())
	}
	return r
}

// brokerIPv6 is the broker's IPv6 address (host:port): the one dialed if
// it was IPv6, else the URL's first IPv6 address, else the AAAA record of
// the dialed name; "" when there is none.
func brokerIPv6(ctx context.Context, u secure.BrokerURL, dialed string) string {
	for _, a := range append([]string{dialed}, u.Addrs()...) {
		if hostFamily(hostOf(a)) == 6 {
			return a
		}
	}
	host, port, err := net.SplitHostPort(dialed)
	if err != nil || hostFamily(host) != 0 {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip6", host)
	if err != nil {
		return ""
	}
	for _, ip := range ips {
		if ip.Is6() && !ip.Is4In6() {
			return net.JoinHostPort(ip.String(), port)
		}
	}
	return ""
}

// probeTCPAddr checks that addr accepts a TCP connection.
func probeTCPAddr(ctx context.Context, addr string) Probe {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	start := time.Now()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return Probe{Addr: addr, Error: err.Error()}
	}
	c.Close()
	return Probe{Addr: addr, OK: true, RTTMillis: millis(time.Since(start))}
}

// globalIPv6s are the global unicast IPv6 addresses of up, non-loopback
// interfaces: not unique-local (fc00::/7), not link-local.
func globalIPv6s() []netip.Addr {
	ips, err := punch.HostAddrs()
	if err != nil {
		return nil
	}
	out := []netip.Addr{}
	for _, ip := range ips {
		if ip.Is6() && ip.IsGlobalUnicast() && !ip.IsPrivate() && !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out
}

// summary is the report's one line for people.
func (r IPv6Report) summary() string {
	host := "no global IPv6 address on this host"
	if r.Global {
		as := make([]string, len(r.HostAddrs))
		for i, a := range r.HostAddrs {
			as[i] = a.String()
		}
		host = "global " + strings.Join(as, ", ")
	}
	switch {
	case r.Reachable && r.Global && !r.NAT66:
		nat66 := "no NAT66"
		if !r.Mapped.IsValid() {
			nat66 = "NAT66 not tested"
		}
		return fmt.Sprintf("reachable (%s, %s): direct IPv6 paths possible", host, nat66)
	case r.Reachable:
		why := r.Why
		if why == "" {
			why = "no global address of this host to offer peers"
		}
		return fmt.Sprintf("reachable (%s): %s", host, why)
	case !r.Global:
		return "no: this host has no global IPv6 address"
	case r.Why != "":
		return fmt.Sprintf("no: %s (%s)", r.Why, host)
	}
	return "no (" + host + ")"
}

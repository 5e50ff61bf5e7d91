package natlab

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Egress limits what a router lets out of its LAN, as the networks of hotels,
// campuses and companies do: only TCP to port 443, or nothing but their HTTP
// proxy. peerport must still connect from there (issue 13), so the lab has to
// be able to build such networks.
//
// Everything not let out is dropped silently (no RST, no ICMP error), which
// is what such firewalls do and what makes a client wait for a timeout
// rather than fail fast. Replies to what was let out come back (conntrack
// established/related). The router itself answers its LAN nothing but ICMP
// (ping, IPv6 neighbour discovery), so no service on the router opens a side
// door. The rules are an nftables table of their own (inet natlab_egress,
// IPv4 and IPv6 alike) beside the router's NAT and inbound rules, which they
// do not change. A nil *Egress lets everything out.
type Egress struct {
	// TCPPorts are the destination ports new TCP connections from the LAN may
	// go to. UDP, ICMP and every other port are dropped. Empty: none.
	TCPPorts []uint16
	// Exempt names hosts directly on the router's LAN whose traffic leaves
	// unfiltered: a corporate HTTP proxy, which the rest of the LAN reaches
	// over the LAN itself (see ProxyConfig).
	Exempt []string
}

// OnlyTCPPorts returns an Egress that lets out new TCP connections to these
// destination ports and nothing else: OnlyTCPPorts(443) is the network that
// lets out only HTTPS.
func OnlyTCPPorts(ports ...uint16) *Egress { return &Egress{TCPPorts: ports} }

// OnlyVia returns an Egress whose LAN reaches nothing outside; only the named
// hosts on it (the LAN's proxies) do.
func OnlyVia(hosts ...string) *Egress { return &Egress{Exempt: hosts} }

// String describes the policy: "tcp/443", "via proxy-a", "tcp/443 via p", or
// "nothing".
func (e *Egress) String() string {
	if e == nil {
		return "everything"
	}
	var parts []string
	if len(e.TCPPorts) > 0 {
		ports := make([]string, len(e.TCPPorts))
		for i, p := range e.TCPPorts {
			ports[i] = strconv.Itoa(int(p))
		}
		parts = append(parts, "tcp/"+strings.Join(ports, ","))
	}
	if len(e.Exempt) > 0 {
		parts = append(parts, "via "+strings.Join(e.Exempt, ","))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, " ")
}

// validate checks e for the router named router; hosts are the topology's.
func (e *Egress) validate(path, router string, hosts []HostSpec) []error {
	if e == nil {
		return nil
	}
	var errs []error
	for i, p := range e.TCPPorts {
		if p == 0 {
			errs = append(errs, fmt.Errorf("%s.tcpPorts[%d]: port 0", path, i))
		}
	}
	for i, name := range e.Exempt {
		j := slices.IndexFunc(hosts, func(h HostSpec) bool { return h.Name == name })
		if j < 0 || hosts[j].Behind != router {
			errs = append(errs, fmt.Errorf("%s.exempt[%d]: no host %q directly behind router %q", path, i, name, router))
		}
	}
	return errs
}

// egressTable is the nftables table holding a router's Egress rules.
const egressTable = "natlab_egress"

// egressRules returns the nftables ruleset of e on router n ("" for nil).
// It lives in its own table: a packet must pass every base chain of a hook,
// so a drop here is final whatever the router's other table accepts.
func egressRules(n *planNode, e *Egress) string {
	if e == nil {
		return ""
	}
	var fwd strings.Builder
	fwd.WriteString("\t\tiifname \"lan0\" ct state established,related accept\n")
	var v4, v6 []string
	for _, c := range n.children {
		if c.kind != nodeHost || !slices.Contains(e.Exempt, c.name) {
			continue
		}
		for _, a := range c.addr4 {
			v4 = append(v4, a.Addr().String())
		}
		if c.addr6.IsValid() {
			v6 = append(v6, c.addr6.Addr().String())
		}
	}
	if len(v4) > 0 {
		fmt.Fprintf(&fwd, "\t\tiifname \"lan0\" ip saddr { %s } accept\n", strings.Join(v4, ", "))
	}
	if len(v6) > 0 {
		fmt.Fprintf(&fwd, "\t\tiifname \"lan0\" ip6 saddr { %s } accept\n", strings.Join(v6, ", "))
	}
	if len(e.TCPPorts) > 0 {
		ports := make([]string, len(e.TCPPorts))
		for i, p := range e.TCPPorts {
			ports[i] = strconv.Itoa(int(p))
		}
		fmt.Fprintf(&fwd, "\t\tiifname \"lan0\" ct state new tcp dport { %s } accept\n", strings.Join(ports, ", "))
	}
	fwd.WriteString("\t\tiifname \"lan0\" drop\n")
	return `table inet ` + egressTable + ` {
	chain forward {
		type filter hook forward priority filter; policy accept;
` + fwd.String() + `	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "lan0" ct state established,related accept
		iifname "lan0" meta l4proto { icmp, ipv6-icmp } accept
		iifname "lan0" drop
	}
}
`
}

// SetEgress replaces the router's egress policy while the lab runs (nil
// lets everything out again), in one nftables transaction: a network that
// turns restrictive, or opens up, mid-test. Connections already open stay
// open, as conntrack knows them; FlushConntrack cuts them too.
func (n *Node) SetEgress(ctx context.Context, e *Egress) error {
	if n.p.kind != nodeRouter {
		return fmt.Errorf("natlab: set egress of %s: not a router", n)
	}
	hosts := make([]HostSpec, 0, len(n.p.children))
	for _, c := range n.p.children {
		if c.kind == nodeHost {
			hosts = append(hosts, HostSpec{Name: c.name, Behind: n.p.name})
		}
	}
	if errs := e.validate("egress", n.p.name, hosts); len(errs) > 0 {
		return fmt.Errorf("natlab: set egress of %s: %w", n, errs[0])
	}
	// Declaring the table first makes the delete valid when it is absent.
	rules := "table inet " + egressTable + "\ndelete table inet " + egressTable + "\n" + egressRules(n.p, e)
	if _, err := nsExec(ctx, n.ns, rules, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("natlab: set egress of %s to %v: %w", n, e, err)
	}
	return nil
}

// SetEgress is Node.SetEgress for the named router.
func (l *Lab) SetEgress(ctx context.Context, router string, e *Egress) error {
	return l.Router(router).SetEgress(ctx, e)
}

package natlab

import (
	"context"
	"fmt"
	"strings"
)

// rulesFor returns the nftables ruleset of a router. Traffic from the uplink
// (wan0) is accepted only when conntrack knows it (or it is ICMP to the
// router itself, so ping and IPv6 neighbour discovery work); everything else
// from the uplink is dropped silently, so an unsolicited SYN times out.
func rulesFor(k Kind) string {
	var b strings.Builder
	b.WriteString(`table inet natlab {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan0" ct state established,related accept
		iifname "wan0" meta l4proto { icmp, ipv6-icmp } accept
		iifname "wan0" drop
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "wan0" ct state established,related accept
		iifname "wan0" drop
	}
}
`)
	b.WriteString(natRules(k))
	return b.String()
}

// natRules is the address translation of a NAT router kind, "" for others:
// a cone NAT keeps a flow's source port where it can (one mapping per
// source, whatever the destination), a symmetric one picks a random port
// per flow.
func natRules(k Kind) string {
	how := map[Kind]string{Cone: "masquerade", Symmetric: "masquerade random,fully-random"}[k]
	if how == "" {
		return ""
	}
	return `table ip ` + natTable + ` {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" ` + how + `
	}
}
`
}

const natTable = "natlab_nat"

// SetNAT turns a NAT router into one of another kind, Cone or Symmetric,
// mid-test: a home router replaced, a carrier that changes its pool. New
// flows are mapped the new way; open ones keep their mappings, as conntrack
// knows them (FlushConntrack ends those too). Kind still says what the
// router was built as.
func (n *Node) SetNAT(ctx context.Context, k Kind) error {
	if n.p.kind != nodeRouter || !n.p.rkind.IsNAT() || !k.IsNAT() {
		return fmt.Errorf("natlab: set NAT of %s to %v: only a NAT router becomes another NAT", n, k)
	}
	rules := "table ip " + natTable + "\ndelete table ip " + natTable + "\n" + natRules(k)
	if _, err := nsExec(ctx, n.ns, rules, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("natlab: set NAT of %s to %v: %w", n, k, err)
	}
	return nil
}

// nsExec runs a helper program with its network namespace set to ns (the
// child inherits the namespace of the locked thread that forks it).
func nsExec(ctx context.Context, ns, stdin, name string, args ...string) ([]byte, error) {
	var out []byte
	err := inNetns(ns, func() error {
		var err error
		out, err = run(ctx, stdin, name, args...)
		return err
	})
	if err != nil {
		return out, fmt.Errorf("in %s: %w", ns, err)
	}
	return out, nil
}

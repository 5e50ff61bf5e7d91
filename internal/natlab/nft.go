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
	switch k {
	case Cone:
		b.WriteString(`table ip natlab_nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" masquerade
	}
}
`)
	case Symmetric:
		b.WriteString(`table ip natlab_nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" masquerade random,fully-random
	}
}
`)
	}
	return b.String()
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

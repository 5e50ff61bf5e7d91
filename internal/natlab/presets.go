package natlab

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Placement is where a pair topology puts one of its two hosts.
type Placement string

// Placements of Pair.
const (
	Public     Placement = "public"    // on the internet, no router
	BehindCone Placement = "cone"      // behind its own cone NAT gw-X
	BehindSym  Placement = "symmetric" // behind its own symmetric NAT gw-X
	BehindFW   Placement = "firewall"  // behind its own firewall gw-X (public address)
	BehindCGN  Placement = "double"    // behind a cone home NAT gw-X behind a cone carrier NAT cgn-X
	// BehindCone443 is behind its own cone NAT gw-X that lets out only TCP
	// to port 443 (OnlyTCPPorts(443)): the hotel or campus network.
	BehindCone443 Placement = "cone443"
	// BehindProxy is behind its own cone NAT gw-X whose LAN reaches nothing
	// outside but the host proxy-X beside it (OnlyVia("proxy-X")): the
	// corporate network, where only the HTTP proxy gets out. Nothing runs on
	// proxy-X until the test starts one (Node.StartProxy).
	BehindProxy Placement = "proxy"
)

var placements = []Placement{Public, BehindCone, BehindSym, BehindFW, BehindCGN, BehindCone443, BehindProxy}

// Pair returns the topology "<a>-<b>": a public host "broker" (with a second
// address, for STUN tests) and hosts "a" and "b" placed as asked. Routers are
// named gw-a / gw-b (and cgn-a / cgn-b for the carrier of a double NAT);
// a proxied host's proxy is the host proxy-a / proxy-b on its LAN, declared
// right after it.
func Pair(a, b Placement) Topology {
	t := Topology{Name: string(a) + "-" + string(b), Hosts: []HostSpec{{Name: "broker", ExtraIPs: 1}}}
	for _, side := range []struct {
		host string
		p    Placement
	}{{"a", a}, {"b", b}} {
		gw := "gw-" + side.host
		switch side.p {
		case Public:
			t.Hosts = append(t.Hosts, HostSpec{Name: side.host})
			continue
		case BehindCone:
			t.Routers = append(t.Routers, RouterSpec{Name: gw, Kind: Cone})
		case BehindSym:
			t.Routers = append(t.Routers, RouterSpec{Name: gw, Kind: Symmetric})
		case BehindFW:
			t.Routers = append(t.Routers, RouterSpec{Name: gw, Kind: Firewall})
		case BehindCGN:
			cgn := "cgn-" + side.host
			t.Routers = append(t.Routers, RouterSpec{Name: cgn, Kind: Cone}, RouterSpec{Name: gw, Kind: Cone, Behind: cgn})
		case BehindCone443:
			t.Routers = append(t.Routers, RouterSpec{Name: gw, Kind: Cone, Egress: OnlyTCPPorts(443)})
		case BehindProxy:
			t.Routers = append(t.Routers, RouterSpec{Name: gw, Kind: Cone, Egress: OnlyVia("proxy-" + side.host)})
		}
		t.Hosts = append(t.Hosts, HostSpec{Name: side.host, Behind: gw})
		if side.p == BehindProxy {
			t.Hosts = append(t.Hosts, HostSpec{Name: "proxy-" + side.host, Behind: gw})
		}
	}
	return t
}

// Shared returns the topology "shared": hosts "a" and "b" on one LAN behind
// one cone NAT "gw", and the public "broker".
func Shared() Topology {
	return Topology{
		Name:    "shared",
		Routers: []RouterSpec{{Name: "gw", Kind: Cone}},
		Hosts:   []HostSpec{{Name: "broker", ExtraIPs: 1}, {Name: "a", Behind: "gw"}, {Name: "b", Behind: "gw"}},
	}
}

// IPv6Pair returns the topology "ipv6": dual-stack, hosts "a" and "b" behind
// stateful firewalls gw-a and gw-b, and the public "broker".
func IPv6Pair() Topology {
	t := Pair(BehindFW, BehindFW)
	t.Name, t.IPv6 = "ipv6", true
	return t
}

// Zoo returns the topology "zoo": one of everything in a single dual-stack
// lab, so a suite can test every NAT kind with one build. Public: broker (two
// addresses), pub. Pairs (host -> router): cone1/cone2 -> gw-cone1/gw-cone2,
// sym1/sym2 -> gw-sym1/gw-sym2, fw1/fw2 -> gw-fw1/gw-fw2, dbl -> gw-dbl ->
// cgn-dbl, lan1 and lan2 -> gw-lan (one shared cone NAT).
func Zoo() Topology {
	t := Topology{Name: "zoo", IPv6: true, Hosts: []HostSpec{{Name: "broker", ExtraIPs: 1}, {Name: "pub"}}}
	add := func(host string, k Kind, behind string) {
		gw := "gw-" + host
		t.Routers = append(t.Routers, RouterSpec{Name: gw, Kind: k, Behind: behind})
		t.Hosts = append(t.Hosts, HostSpec{Name: host, Behind: gw})
	}
	add("cone1", Cone, "")
	add("cone2", Cone, "")
	add("sym1", Symmetric, "")
	add("sym2", Symmetric, "")
	add("fw1", Firewall, "")
	add("fw2", Firewall, "")
	t.Routers = append(t.Routers, RouterSpec{Name: "cgn-dbl", Kind: Cone})
	add("dbl", Cone, "cgn-dbl")
	t.Routers = append(t.Routers, RouterSpec{Name: "gw-lan", Kind: Cone})
	t.Hosts = append(t.Hosts, HostSpec{Name: "lan1", Behind: "gw-lan"}, HostSpec{Name: "lan2", Behind: "gw-lan"})
	return t
}

// PresetNames lists the names Preset accepts, sorted.
func PresetNames() []string {
	names := []string{"shared", "ipv6", "zoo"}
	for _, a := range placements {
		for _, b := range placements {
			names = append(names, string(a)+"-"+string(b))
		}
	}
	sort.Strings(names)
	return names
}

// Preset returns a named topology: "<a>-<b>" for every pair of placements
// (public, cone, symmetric, firewall, double, cone443, proxy; see Pair),
// "shared", "ipv6" and "zoo".
func Preset(name string) (Topology, error) {
	switch name {
	case "shared":
		return Shared(), nil
	case "ipv6":
		return IPv6Pair(), nil
	case "zoo":
		return Zoo(), nil
	}
	if a, b, ok := strings.Cut(name, "-"); ok && slices.Contains(placements, Placement(a)) && slices.Contains(placements, Placement(b)) {
		return Pair(Placement(a), Placement(b)), nil
	}
	return Topology{}, fmt.Errorf("natlab: unknown topology %q; known: %s", name, strings.Join(PresetNames(), ", "))
}

// WithLink returns a copy of t whose named host or router has an impaired
// uplink with cfg.
func (t Topology) WithLink(node string, cfg LinkConfig) (Topology, error) {
	t.Routers = slices.Clone(t.Routers)
	t.Hosts = slices.Clone(t.Hosts)
	for i := range t.Routers {
		if t.Routers[i].Name == node {
			t.Routers[i].Link = &cfg
			return t, nil
		}
	}
	for i := range t.Hosts {
		if t.Hosts[i].Name == node {
			t.Hosts[i].Link = &cfg
			return t, nil
		}
	}
	return t, fmt.Errorf("natlab: topology %q has no node %q for a link", t.Name, node)
}

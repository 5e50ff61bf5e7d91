package natlab

import (
	"fmt"
	"net/netip"
	"strconv"
)

type nodeKind int

const (
	nodeInternet nodeKind = iota
	nodeRouter
	nodeHost
)

type route struct {
	dst netip.Prefix
	via netip.Addr
}

// planNode is one namespace of the lab with its addresses, before it exists.
type planNode struct {
	name     string
	kind     nodeKind
	rkind    Kind // routers only
	parent   *planNode
	children []*planNode
	link     *LinkConfig
	index    int    // routers: 1-based router index; hosts: 0
	port     string // uplink interface name in the parent's namespace
	uplink   string // uplink interface name in the node's namespace

	addr4 []netip.Prefix // uplink addresses (first is primary)
	addr6 netip.Prefix   // uplink IPv6 address (invalid without IPv6)
	gw4   netip.Addr
	gw6   netip.Addr

	lan4, lan6 netip.Prefix // routers and internet: the segment below, as the node's own address on it
	routes4    []route
	routes6    []route

	egress *Egress // routers only: see RouterSpec.Egress
}

type plan struct {
	topo  Topology
	nodes []*planNode // internet first, then routers (parents before children), then hosts
	by    map[string]*planNode
}

var (
	internet4 = netip.MustParsePrefix("203.0.113.1/24")
	internet6 = netip.MustParsePrefix("2001:db8::1/64")
)

// planAddresses assigns every address and route. It needs a topology whose
// names and references are valid (see Topology.Validate).
func planAddresses(t Topology) (*plan, error) {
	p := &plan{topo: t, by: map[string]*planNode{}}
	inet := &planNode{name: InternetName, kind: nodeInternet, lan4: internet4}
	if t.IPv6 {
		inet.lan6 = internet6
	}
	p.add(inet)
	firewalls := 0
	for i, r := range t.Routers {
		n := &planNode{name: r.Name, kind: nodeRouter, rkind: r.Kind, link: r.Link, egress: r.Egress, index: i + 1, uplink: "wan0"}
		if r.Kind == Firewall {
			firewalls++
			if firewalls > 15 {
				return nil, fmt.Errorf("router %q: at most 15 firewalls fit 198.51.100.0/24", r.Name)
			}
			n.lan4 = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(16*firewalls + 1)}), 28)
		} else {
			if i+1 > 255 {
				return nil, fmt.Errorf("router %q: at most 255 routers", r.Name)
			}
			n.lan4 = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i + 1), 1}), 24)
		}
		if t.IPv6 {
			n.lan6 = v6For(i+1, n.lan4.Addr())
		}
		p.by[n.name] = n
	}
	for _, r := range t.Routers {
		n := p.by[r.Name]
		n.parent = p.by[r.Behind]
		if r.Behind == "" {
			n.parent = inet
		}
		n.parent.children = append(n.parent.children, n)
	}
	// Parents before children, so building can go top-down.
	var walk func(n *planNode)
	walk = func(n *planNode) {
		for _, c := range n.children {
			p.add(c)
			walk(c)
		}
	}
	walk(inet)
	for _, h := range t.Hosts {
		n := &planNode{name: h.Name, kind: nodeHost, link: h.Link, uplink: "eth0"}
		n.parent = p.by[h.Behind]
		if h.Behind == "" {
			n.parent = inet
		}
		n.parent.children = append(n.parent.children, n)
		p.add(n)
	}
	// Addresses on each segment.
	extra := map[string]int{}
	for _, h := range t.Hosts {
		extra[h.Name] = h.ExtraIPs
	}
	for _, seg := range p.nodes {
		if seg.kind == nodeHost {
			continue
		}
		base := seg.lan4.Masked().Addr().As4()
		limit := int(base[3]) + (1 << (32 - seg.lan4.Bits())) - 2 // last usable
		nextHost, nextRouter := int(base[3])+10, int(base[3])+100
		if seg.kind == nodeRouter {
			nextHost = int(seg.lan4.Addr().As4()[3]) + 1
			if seg.rkind.IsNAT() {
				nextHost = 10
			}
			nextRouter = -1 // routers and hosts share one sequence
		}
		take := func(next *int, max int, who string) (netip.Addr, error) {
			if *next > max {
				return netip.Addr{}, fmt.Errorf("segment of %q: no address left for %q", seg.name, who)
			}
			a := base
			a[3] = byte(*next)
			*next++
			return netip.AddrFrom4(a), nil
		}
		// Routers first, then hosts, each in declaration order.
		ordered := make([]*planNode, 0, len(seg.children))
		for _, c := range seg.children {
			if c.kind == nodeRouter {
				ordered = append(ordered, c)
			}
		}
		for _, c := range seg.children {
			if c.kind == nodeHost {
				ordered = append(ordered, c)
			}
		}
		for i, c := range ordered {
			c.port = "p" + strconv.Itoa(i)
			next, max := &nextHost, limit
			if nextRouter >= 0 {
				if c.kind == nodeRouter {
					next = &nextRouter
				} else {
					max = 99
				}
			}
			for j := 0; j <= extra[c.name] && (j == 0 || c.kind == nodeHost); j++ {
				a, err := take(next, max, c.name)
				if err != nil {
					return nil, err
				}
				c.addr4 = append(c.addr4, netip.PrefixFrom(a, seg.lan4.Bits()))
			}
			c.gw4 = seg.lan4.Addr()
			if t.IPv6 {
				c.addr6 = v6For(routerIndex(seg), c.addr4[0].Addr())
				c.gw6 = seg.lan6.Addr()
			}
		}
	}
	// Routes towards routed LANs: IPv4 only for firewalled (public) LANs and
	// only up to the first NAT; IPv6 always up to the internet.
	for _, n := range p.nodes {
		if n.kind != nodeRouter {
			continue
		}
		v4 := n.rkind == Firewall
		below := n
		for a := n.parent; a != nil; below, a = a, a.parent {
			if v4 {
				a.routes4 = append(a.routes4, route{dst: n.lan4.Masked(), via: below.addr4[0].Addr()})
			}
			if t.IPv6 {
				a.routes6 = append(a.routes6, route{dst: n.lan6.Masked(), via: below.addr6.Addr()})
			}
			if a.kind == nodeRouter && a.rkind.IsNAT() {
				v4 = false
			}
		}
	}
	return p, nil
}

func (p *plan) add(n *planNode) {
	p.nodes = append(p.nodes, n)
	p.by[n.name] = n
}

func routerIndex(n *planNode) int {
	if n.kind == nodeRouter {
		return n.index
	}
	return 0
}

// v6For maps segment k and an IPv4 address ending in .N to
// 2001:db8:0:k::N (N's decimal digits read as hex), prefix /64.
func v6For(k int, a4 netip.Addr) netip.Prefix {
	last := a4.As4()[3]
	iid, _ := strconv.ParseUint(strconv.Itoa(int(last)), 16, 16)
	var b [16]byte
	b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
	b[6], b[7] = byte(k>>8), byte(k)
	b[14], b[15] = byte(iid>>8), byte(iid)
	return netip.PrefixFrom(netip.AddrFrom16(b), 64)
}

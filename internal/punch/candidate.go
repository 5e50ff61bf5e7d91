package punch

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// Kind is where a candidate address came from.
type Kind string

// Candidate kinds.
const (
	Host  Kind = "host"  // an address of one of the peer's interfaces
	Srflx Kind = "srflx" // the peer's NAT mapping, learnt over STUN from the punch socket
	// Mapped is a port mapping the peer's gateway holds for its punch port
	// (PCP, NAT-PMP or UPnP): it admits connections from anywhere, so it
	// works whatever either NAT does to outgoing connections.
	Mapped Kind = "mapped"
)

// Candidate is one address to try to reach the peer on.
type Candidate struct {
	Addr netip.AddrPort `json:"addr"`
	Kind Kind           `json:"kind"`
}

func (c Candidate) String() string { return string(c.Kind) + ":" + c.Addr.String() }

// Rank orders candidates, lower first: a private LAN address (two peers
// behind one NAT must meet on their LAN, since NATs rarely hairpin), then a
// unique local IPv6 one, then public IPv4 (host or server-reflexive), then
// public IPv6.
func Rank(c Candidate) int {
	a := c.Addr.Addr()
	switch {
	case a.Is4() && a.IsPrivate():
		return 0
	case a.Is6() && a.IsPrivate():
		return 1
	case a.Is4():
		return 2
	default:
		return 3
	}
}

// usable says whether a candidate can reach a peer at all.
func usable(c Candidate) bool {
	a := c.Addr.Addr()
	return c.Addr.IsValid() && c.Addr.Port() != 0 && !a.IsUnspecified() && !a.IsMulticast() &&
		!a.IsLinkLocalUnicast() && !a.IsInterfaceLocalMulticast() && a.Zone() == ""
}

// Order returns the usable candidates, deduplicated by address (the first
// kind wins), sorted by Rank; ties keep their given order.
func Order(cands []Candidate) []Candidate {
	seen := map[netip.AddrPort]bool{}
	var out []Candidate
	for _, c := range cands {
		c.Addr = netip.AddrPortFrom(c.Addr.Addr().Unmap(), c.Addr.Port())
		if !usable(c) || seen[c.Addr] {
			continue
		}
		seen[c.Addr] = true
		out = append(out, c)
	}
	slices.SortStableFunc(out, func(x, y Candidate) int { return cmp.Compare(Rank(x), Rank(y)) })
	return out
}

// HostCandidates lists this host's interface addresses with port, ordered:
// up, non-loopback interfaces; no link-local addresses.
func HostCandidates(port uint16) ([]Candidate, error) {
	ips, err := HostAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]Candidate, 0, len(ips))
	for _, ip := range ips {
		out = append(out, Candidate{Addr: netip.AddrPortFrom(ip, port), Kind: Host})
	}
	return Order(out), nil
}

// HostAddrs are the addresses of this host's up, non-loopback interfaces,
// IPv4 unmapped, in interface order.
func HostAddrs() ([]netip.Addr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("punch: host addresses: %w", err)
	}
	var out []netip.Addr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					out = append(out, ip.Unmap())
				}
			}
		}
	}
	return out, nil
}

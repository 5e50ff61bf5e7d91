package agent

import (
	"net"
	"net/netip"
	"sort"

	"github.com/peerport/peerport/internal/proto"
)

// hostCandidates lists where the peer listener at ln can be reached: every
// interface address with its port, LAN (private) addresses first so that two
// agents behind one NAT meet on their LAN, then public ones, then the address
// the broker observed, and loopback last (it only helps on one machine).
func hostCandidates(ln net.Addr, observed string) []proto.Candidate {
	ap, err := netip.ParseAddrPort(ln.String())
	if err != nil {
		return nil
	}
	port := ap.Port()
	var addrs []netip.Addr
	if ap.Addr().IsUnspecified() {
		addrs = interfaceAddrs()
	} else {
		addrs = []netip.Addr{ap.Addr().Unmap()}
	}
	sort.SliceStable(addrs, func(i, j int) bool { return addrRank(addrs[i]) < addrRank(addrs[j]) })
	var out []proto.Candidate
	seen := map[netip.Addr]bool{}
	add := func(kind string, a netip.Addr) {
		if seen[a] || len(out) >= proto.MaxCandidates {
			return
		}
		seen[a] = true
		out = append(out, proto.Candidate{Kind: kind, Addr: netip.AddrPortFrom(a, port).String()})
	}
	for _, a := range addrs {
		if !a.IsLoopback() {
			add(proto.KindHost, a)
		}
	}
	if o, err := netip.ParseAddrPort(observed); err == nil {
		add(proto.KindObserved, o.Addr().Unmap())
	}
	for _, a := range addrs {
		if a.IsLoopback() {
			add(proto.KindHost, a)
		}
	}
	return out
}

func addrRank(a netip.Addr) int {
	switch {
	case a.IsPrivate():
		return 0
	case a.IsGlobalUnicast():
		return 1
	case a.IsLoopback():
		return 3
	}
	return 2
}

// interfaceAddrs returns the usable unicast addresses of up interfaces.
func interfaceAddrs() []netip.Addr {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		as, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range as {
			p, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			ip := p.Addr().Unmap()
			if ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() {
				continue // link-local needs a zone the peer cannot know
			}
			out = append(out, ip)
		}
	}
	return out
}

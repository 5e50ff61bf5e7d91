package broker

import (
	"net/netip"
	"strings"
	"time"
)

// deniedRange is a range of addresses the relay never connects to, nor
// takes connections from, unless RelayConfig.AllowPeers opens it: a relay
// that did would let anyone with a credential reach the broker's own
// network, its loopback services, or a cloud metadata service.
type deniedRange struct {
	prefix netip.Prefix
	why    string
}

var deniedRanges = func() []deniedRange {
	var out []deniedRange
	for _, d := range []struct{ why, prefixes string }{
		{"unspecified address", "0.0.0.0/8 ::/128"},
		{"loopback address", "127.0.0.0/8 ::1/128"},
		{"private address", "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7"},
		{"link-local address (cloud metadata lives there)", "169.254.0.0/16 fe80::/10"},
		{"carrier-grade NAT address", "100.64.0.0/10"},
		{"multicast address", "224.0.0.0/4 ff00::/8"},
		{"reserved or broadcast address", "240.0.0.0/4"},
		{"deprecated IPv6 address", "::/96 fec0::/10"},
	} {
		for _, p := range strings.Fields(d.prefixes) {
			out = append(out, deniedRange{netip.MustParsePrefix(p), d.why})
		}
	}
	return out
}()

// IPv6 prefixes that carry an IPv4 address: the relay judges that one too.
var (
	nat64Prefix    = netip.MustParsePrefix("64:ff9b::/96") // RFC 6052: the last 32 bits
	nat64Local     = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFourRange = netip.MustParsePrefix("2002::/16") // RFC 3056: bits 16-48
)

// peerPolicy says which peer addresses the relay refuses whatever the
// introductions: deniedRanges, addresses embedding a denied IPv4 address,
// and the broker's own addresses; AllowPeers opens any of them. IPv4-mapped
// IPv6 addresses (::ffff:127.0.0.1) are judged as the IPv4 address they are.
type peerPolicy struct {
	allow []netip.Prefix
	own   map[netip.Addr]bool
}

func newPeerPolicy(allow []netip.Prefix, own []netip.Addr) *peerPolicy {
	p := &peerPolicy{own: make(map[netip.Addr]bool, len(own))}
	for _, a := range allow {
		if !a.IsValid() {
			continue
		}
		if a.Addr().Is4In6() && a.Bits() >= 96 { // ::ffff:127.0.0.0/104 is 127.0.0.0/8
			a = netip.PrefixFrom(a.Addr().Unmap(), a.Bits()-96)
		}
		p.allow = append(p.allow, a.Masked())
	}
	for _, a := range own {
		if a.IsValid() {
			p.own[a.Unmap().WithZone("")] = true
		}
	}
	return p
}

// denied says why ip is refused, or "" when it is not.
func (p *peerPolicy) denied(ip netip.Addr) string {
	ip = ip.Unmap().WithZone("")
	if !ip.IsValid() {
		return "not an IP address"
	}
	for _, a := range p.allow {
		if a.Contains(ip) {
			return ""
		}
	}
	if p.own[ip] {
		return "the broker's own address"
	}
	for _, d := range deniedRanges {
		if d.prefix.Contains(ip) {
			return d.why
		}
	}
	if v4, ok := embeddedIPv4(ip); ok {
		if why := p.denied(v4); why != "" {
			return why + " (embedded in " + ip.String() + ")"
		}
	}
	return ""
}

// embeddedIPv4 is the IPv4 address a NAT64 or 6to4 address stands for.
func embeddedIPv4(ip netip.Addr) (netip.Addr, bool) {
	b := ip.As16()
	switch {
	case !ip.Is6():
		return netip.Addr{}, false
	case nat64Prefix.Contains(ip):
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case nat64Local.Contains(ip):
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToFourRange.Contains(ip):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	}
	return netip.Addr{}, false
}

// introBook is the peer IPs introduced to one agent, with their expiry.
type introBook map[netip.Addr]time.Time

// add records ips until expires, dropping expired entries, and the ones
// closest to expiry beyond max.
func (b introBook) add(ips []netip.Addr, now, expires time.Time, max int) {
	for ip, exp := range b {
		if !now.Before(exp) {
			delete(b, ip)
		}
	}
	for _, ip := range ips {
		if ip.IsValid() {
			b[ip.Unmap().WithZone("")] = expires
		}
	}
	for len(b) > max {
		var oldest netip.Addr
		var at time.Time
		for ip, exp := range b {
			if !oldest.IsValid() || exp.Before(at) {
				oldest, at = ip, exp
			}
		}
		delete(b, oldest)
	}
}

// has reports whether ip was introduced and has not expired; a nil book
// has nothing.
func (b introBook) has(ip netip.Addr, now time.Time) bool {
	exp, ok := b[ip.Unmap().WithZone("")]
	return ok && now.Before(exp)
}

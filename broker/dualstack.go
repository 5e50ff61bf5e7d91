package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/peerport/peerport/internal/nat"
)

// A dual-stack broker (issue 18) has a public IPv4 and a public IPv6
// address: Options.PublicAddr names both, "203.0.113.10,2001:db8::10". The
// control port listens on both families already ([::]:7000); with both
// addresses public
//
//   - the URL names both, pp://TOKEN@203.0.113.10:7000,[2001:db8::10]:7000#PIN,
//     and agents try them in turn, so an IPv6-only network reaches the broker
//     too (the broker relay, on the control port, then works over IPv6);
//   - Welcome.STUN lists the STUN ports on each address, IPv4 first: agents
//     tell their NAT type from the family they reached the broker over and
//     can learn their IPv6 mapping (agent netcheck);
//   - the TURN relay has an IPv4 and an IPv6 relayed address (RelayIP,
//     RelayIP6) and hands agents on IPv6 a TURN URL with the IPv6 address
//     (RelayIssuer.URL6). An allocation is IPv4 unless it asks for IPv6
//     (RFC 6156), over either family: a sharer on IPv6 asks for the family
//     of its connector, so the relay bridges an IPv6-only sharer and an
//     IPv4-only connector.

// errPublicAddr is the shape every bad public address is told to take.
const errPublicAddr = "want HOST, HOST:PORT, or an IPv4 and an IPv6 address joined by a comma (203.0.113.10,2001:db8::10)"

// ParsePublicAddr splits a public address into its hosts and ports: one
// host (a name or an IP address) with an optional port, or an IPv4 and an
// IPv6 address, each with an optional port, joined by a comma (a bare IPv6
// address needs no brackets). A port of 0 means none was given.
func ParsePublicAddr(s string) ([]PublicHost, error) {
	elems := strings.Split(s, ",")
	if len(elems) > 2 {
		return nil, fmt.Errorf("public address %q: %d addresses, at most two (one IPv4, one IPv6)", s, len(elems))
	}
	out := make([]PublicHost, 0, len(elems))
	for _, e := range elems {
		h, err := parsePublicHost(strings.TrimSpace(e))
		if err != nil {
			return nil, fmt.Errorf("public address %q: %w", s, err)
		}
		out = append(out, h)
	}
	if len(out) == 2 {
		a, b := out[0].IP(), out[1].IP()
		if !a.IsValid() || !b.IsValid() || a.Is4() == b.Is4() {
			return nil, fmt.Errorf("public address %q: two addresses must be one IPv4 and one IPv6 address, not names", s)
		}
	}
	return out, nil
}

// PublicHost is one address of ParsePublicAddr.
type PublicHost struct {
	Host string // name or IP address, without brackets
	Port int    // 0: the listener's
}

// IP is the host as an IP address; invalid when it is a name.
func (h PublicHost) IP() netip.Addr {
	ip, err := netip.ParseAddr(h.Host)
	if err != nil {
		return netip.Addr{}
	}
	return ip.Unmap()
}

func parsePublicHost(s string) (PublicHost, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		if ip.Zone() != "" || ip.IsUnspecified() {
			return PublicHost{}, fmt.Errorf("%s is not an address agents can reach", s)
		}
		return PublicHost{Host: s}, nil // a bare IPv6 address has colons but no port
	}
	if strings.ContainsAny(s, "/@#?") {
		return PublicHost{}, errors.New(errPublicAddr) // likely a URL or a ticket
	}
	host, port := s, 0
	if h, p, err := net.SplitHostPort(s); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return PublicHost{}, fmt.Errorf("port %q out of range (1-65535)", p)
		}
		host, port = h, n
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" || ip.IsUnspecified() {
			return PublicHost{}, fmt.Errorf("%s is not an address agents can reach", host)
		}
		return PublicHost{Host: host, Port: port}, nil
	}
	if host == "" || strings.ContainsAny(host, "[]: ") {
		return PublicHost{}, errors.New(errPublicAddr)
	}
	return PublicHost{Host: host, Port: port}, nil
}

// publicAddrs are the host:port addresses the broker URL names: those of
// public (see ParsePublicAddr), a missing port the bound one's; else the
// listener's host if specific, else the first global IPv4 address of this
// machine, else 127.0.0.1.
func publicAddrs(public string, bound net.Addr) ([]string, error) {
	port := 0
	var host net.IP
	if ta, ok := bound.(*net.TCPAddr); ok {
		port, host = ta.Port, ta.IP
	}
	if public != "" {
		hs, err := ParsePublicAddr(public)
		if err != nil {
			return nil, err
		}
		out := make([]string, len(hs))
		for i, h := range hs {
			p := h.Port
			if p == 0 {
				p = port
			}
			out[i] = net.JoinHostPort(h.Host, strconv.Itoa(p))
		}
		return out, nil
	}
	if host != nil && !host.IsUnspecified() {
		return []string{net.JoinHostPort(host.String(), strconv.Itoa(port))}, nil
	}
	ip := "127.0.0.1"
	if ips := nat.GlobalIPv4s(); len(ips) > 0 {
		ip = ips[0].String()
	}
	return []string{net.JoinHostPort(ip, strconv.Itoa(port))}, nil
}

// publicIPs are the IP addresses among a public address's hosts (none for
// a name), in order; nil when it does not parse.
func publicIPs(public string) []netip.Addr {
	if public == "" {
		return nil
	}
	hs, err := ParsePublicAddr(public)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, h := range hs {
		if ip := h.IP(); ip.IsValid() {
			out = append(out, ip)
		}
	}
	return out
}

// ipv6Of is the IPv6 address among ips; invalid when there is none.
func ipv6Of(ips []netip.Addr) netip.Addr {
	for _, ip := range ips {
		if ip.Is6() && !ip.Is4In6() {
			return ip
		}
	}
	return netip.Addr{}
}

// stunDefaultIPv6 adds to the default STUN addresses the public IPv6
// address's two ports when none of them serves IPv6 (they are two specific
// IPv4 addresses) and that address is this machine's.
func stunDefaultIPv6(addrs []string, v6 netip.Addr) []string {
	if !v6.IsValid() || !slices.Contains(interfaceAddrs(), v6) {
		return addrs
	}
	for _, a := range addrs {
		h, _, _ := net.SplitHostPort(a)
		if ip, err := netip.ParseAddr(h); err != nil || !ip.Is4() {
			return addrs // a wildcard (both families), a name, or IPv6 already
		}
	}
	return append(addrs, net.JoinHostPort(v6.String(), strconv.Itoa(nat.DefaultPort)), net.JoinHostPort(v6.String(), strconv.Itoa(nat.DefaultAltPort)))
}

// stunAdvertised are the STUN addresses Welcome lists: with a dual-stack
// public address, each wildcard listener's port on each public IP, IPv4
// first, so agents find the STUN server of either family; else the bound
// addresses as they are (a wildcard host means the broker's own).
func stunAdvertised(bound []string, ips []netip.Addr) []string {
	if len(ips) < 2 {
		return bound
	}
	ips = slices.Clone(ips)
	slices.SortStableFunc(ips, func(a, b netip.Addr) int { return boolInt(b.Is4()) - boolInt(a.Is4()) })
	var wild, out []string
	for _, a := range bound {
		h, p, err := net.SplitHostPort(a)
		if ip, perr := netip.ParseAddr(h); err == nil && (h == "" || perr == nil && ip.IsUnspecified()) {
			wild = append(wild, p)
			continue
		}
		out = append(out, a)
	}
	var exp []string
	for _, ip := range ips {
		for _, p := range wild {
			exp = append(exp, net.JoinHostPort(ip.String(), p))
		}
	}
	return append(exp, out...)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// resolveRelayIPs are the relay's IPv4 and IPv6 addresses for the public
// hosts: the IP addresses given, or what a name resolves to. Either may be
// invalid; not both.
func resolveRelayIPs(ctx context.Context, hosts []string) (v4, v6 netip.Addr, err error) {
	for _, host := range hosts {
		if ip, perr := netip.ParseAddr(host); perr == nil {
			ip = ip.Unmap()
			if ip.Is4() && !v4.IsValid() {
				v4 = ip
			} else if ip.Is6() && !v6.IsValid() {
				v6 = ip
			}
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ips, lerr := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
		cancel()
		if lerr != nil || len(ips) == 0 {
			err = fmt.Errorf("public address %q does not resolve to the relay's IP (%v)", host, lerr)
			continue
		}
		for _, ip := range ips {
			ip = ip.Unmap()
			if ip.Is4() && !v4.IsValid() {
				v4 = ip
			} else if ip.Is6() && !v6.IsValid() {
				v6 = ip
			}
		}
	}
	if v4.IsValid() || v6.IsValid() {
		return v4, v6, nil
	}
	if err == nil {
		err = errors.New("no public address to give the relay")
	}
	return v4, v6, err
}

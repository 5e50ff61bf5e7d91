package agent

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/nat"
	"github.com/peerport/peerport/internal/proto"
)

// NAT discovery, per control session: the broker's STUN servers tell this
// agent its public address and how its NAT maps and filters, which every
// introduction carries to the peer (package nat).

const (
	stunTimeout    = 3 * time.Second
	discoverEvery  = 5 * time.Minute
	discoverBudget = 5 * time.Second
)

// stunServers resolves the Welcome's STUN list against the broker's address:
// an unspecified host there means the broker's own. A dual-stack broker
// lists its STUN ports on both its addresses; those of the family this
// agent reached the broker over come first, so the NAT type is that
// family's (IPv4, where the URL names IPv4 first and it works).
func stunServers(welcome []string, brokerAddr string) []string {
	bhost, _, _ := net.SplitHostPort(brokerAddr)
	var out []string
	for _, s := range welcome {
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			continue
		}
		if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
			host = bhost
		}
		out = append(out, net.JoinHostPort(host, port))
	}
	if fam := hostFamily(bhost); fam != 0 {
		other := slices.DeleteFunc(slices.Clone(out), func(s string) bool { return hostFamily(hostOf(s)) == fam })
		out = append(slices.DeleteFunc(out, func(s string) bool { return hostFamily(hostOf(s)) != fam }), other...)
	}
	return out
}

// hostFamily is 4 or 6 for an IP address, 0 for a name.
func hostFamily(host string) int {
	ip, err := netip.ParseAddr(host)
	switch {
	case err != nil:
		return 0
	case ip.Unmap().Is4():
		return 4
	}
	return 6
}

func hostOf(hostport string) string {
	h, _, _ := net.SplitHostPort(hostport)
	return h
}

// stunPair picks a primary STUN server and an alternate on another address
// (else another port) of the same IP family, for the mapping test of package
// nat: a mapping seen over IPv4 and one over IPv6 always differ, and would
// make any NAT look symmetric.
func stunPair(servers []string) (primary, alternate string) {
	if len(servers) == 0 {
		return "", ""
	}
	primary = servers[0]
	ph, pp, _ := net.SplitHostPort(primary)
	fam := hostFamily(ph)
	same := func(h string) bool { f := hostFamily(h); return f == 0 || fam == 0 || f == fam }
	for _, s := range servers[1:] {
		if h, _, _ := net.SplitHostPort(s); h != ph && same(h) {
			return primary, s
		}
	}
	for _, s := range servers[1:] {
		if h, p, _ := net.SplitHostPort(s); p != pp && same(h) {
			return primary, s
		}
	}
	return primary, ""
}

// discover runs NAT discovery against the broker's STUN servers and keeps
// the report for the introductions of this control session.
func (b *brokerClient) discover(ctx context.Context, servers []string, scanned chan struct{}) {
	primary, alt := stunPair(servers)
	if primary == "" {
		close(scanned)
		b.logger().Info("broker offers no STUN server: NAT type unknown, punching blind")
		return
	}
	// First the TCP mapping alone, which introductions wait for; then the
	// whole picture, for status and logs, now and every discoverEvery.
	for first := true; ; first = false {
		dctx, cancel := context.WithTimeout(ctx, discoverBudget)
		r, err := nat.Discover(dctx, nat.Options{Server: primary, Alternate: alt, Timeout: stunTimeout, TCPOnly: first})
		cancel()
		if err != nil {
			b.logger().WithError(err).Info("NAT discovery failed")
		} else {
			b.mu.Lock()
			b.report = r
			b.mu.Unlock()
			if !first {
				b.logger().WithFields(logrus.Fields{"nat": r.Type, "verdict": r.Verdict, "public": r.PublicIP,
					"udp_filtering": r.UDP.Filtering}).Info("NAT discovered")
			}
		}
		if first {
			close(scanned)
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(discoverEvery):
		}
	}
}

// stunUnreachable reports whether this session's first discovery has ended
// without an answer from the broker's STUN servers.
func (b *brokerClient) stunUnreachable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.report != nil || b.firstScan == nil {
		return false
	}
	select {
	case <-b.firstScan:
		return true
	default:
		return false
	}
}

// rediscover runs NAT discovery again at once when the last verdict ruled
// punching out. A relayed session that tries direct again must not trust a
// verdict from before the network changed under it (a NAT replaced by one
// that can be punched), or it would never try: the periodic discovery is
// minutes away.
func (b *brokerClient) rediscover(ctx context.Context) {
	b.mu.Lock()
	old, servers := b.report, b.stun
	b.mu.Unlock()
	primary, alt := stunPair(servers)
	if !old.RelayNeeded() || primary == "" {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, discoverBudget)
	defer cancel()
	r, err := nat.Discover(dctx, nat.Options{Server: primary, Alternate: alt, Timeout: stunTimeout})
	if err != nil {
		b.logger().WithError(err).Debug("NAT discovery again failed")
		return
	}
	b.mu.Lock()
	b.report = r
	b.mu.Unlock()
	if r.Verdict != old.Verdict {
		b.logger().WithFields(logrus.Fields{"nat": r.Type, "verdict": r.Verdict, "was": old.Verdict}).Info("NAT changed")
	}
}

func (b *brokerClient) natReport() *nat.Report {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.report
}

// ready waits for a control session and for its first NAT discovery, so an
// introduction carries our STUN mapping and NAT type.
func (b *brokerClient) ready(ctx context.Context) error {
	if _, err := b.conn(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	scanned := b.firstScan
	b.mu.Unlock()
	select {
	case <-scanned:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

func natInfo(r *nat.Report) *proto.NAT {
	if r == nil {
		return &proto.NAT{Type: "unknown"}
	}
	return &proto.NAT{Type: r.Type, Mapping: r.TCP.Behavior, Verdict: r.Verdict}
}

// peerReport turns what the peer said of its NAT into the form punch reads.
func peerReport(n *proto.NAT) *nat.Report {
	if n == nil {
		return nil
	}
	r := &nat.Report{Type: n.Type, Verdict: n.Verdict}
	r.TCP.Behavior = n.Mapping
	return r
}

func natType(n *proto.NAT) string {
	if n == nil || n.Type == "" {
		return "unknown"
	}
	return n.Type
}

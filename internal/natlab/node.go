package natlab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

var lookPath = exec.LookPath

// Node is one namespace of a lab: a host, a router or the internet.
type Node struct {
	lab     *Lab
	p       *planNode
	ns      string
	created bool
}

func (n *Node) name() string { return n.p.name }

func (n *Node) bridge() string {
	switch n.p.kind {
	case nodeInternet:
		return "br0"
	case nodeRouter:
		return "lan0"
	}
	return ""
}

// String returns the node's name.
func (n *Node) String() string { return n.p.name }

// Name returns the node's name in the topology.
func (n *Node) Name() string { return n.p.name }

// Namespace returns the name of the node's network namespace (for
// "ip netns exec").
func (n *Node) Namespace() string { return n.ns }

// Kind returns the router's kind; 0 for hosts and the internet.
func (n *Node) Kind() Kind { return n.p.rkind }

// IP returns the node's primary IPv4 address on its uplink (for the
// internet: 203.0.113.1).
func (n *Node) IP() netip.Addr {
	if n.p.parent == nil {
		return n.p.lan4.Addr()
	}
	return n.p.addr4[0].Addr()
}

// IPs returns all IPv4 addresses of the node's uplink (see HostSpec.ExtraIPs).
func (n *Node) IPs() []netip.Addr {
	if n.p.parent == nil {
		return []netip.Addr{n.p.lan4.Addr()}
	}
	out := make([]netip.Addr, len(n.p.addr4))
	for i, a := range n.p.addr4 {
		out[i] = a.Addr()
	}
	return out
}

// IPv6 returns the node's IPv6 address, or the zero Addr when the topology
// has no IPv6.
func (n *Node) IPv6() netip.Addr {
	if n.p.parent == nil {
		return n.p.lan6.Addr()
	}
	return n.p.addr6.Addr()
}

// LANIP returns a router's (or the internet's) address on the segment below
// it: the default gateway of its children.
func (n *Node) LANIP() netip.Addr { return n.p.lan4.Addr() }

// LANIPv6 is LANIP for IPv6.
func (n *Node) LANIPv6() netip.Addr { return n.p.lan6.Addr() }

// PublicIP returns the IPv4 address the internet sees for this node: the
// outer address of the outermost NAT above it, or its own address.
func (n *Node) PublicIP() netip.Addr {
	a := n.IP()
	for r := n.p.parent; r != nil && r.kind == nodeRouter; r = r.parent {
		if r.rkind.IsNAT() {
			a = r.addr4[0].Addr()
		}
	}
	return a
}

// Do runs fn on an OS thread inside the node's namespace. Sockets fn creates
// belong to the namespace for their whole life, so tests can listen and dial
// from the test process itself. fn must not start goroutines that expect to
// be in the namespace.
func (n *Node) Do(fn func() error) error { return inNetns(n.ns, fn) }

// Listen is net.Listen inside the node's namespace.
func (n *Node) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("natlab: listen on %s: %w", n, err)
	}
	return ln, nil
}

// ListenPacket is net.ListenPacket inside the node's namespace.
func (n *Node) ListenPacket(network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.Do(func() (err error) {
		pc, err = net.ListenPacket(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("natlab: listen packet on %s: %w", n, err)
	}
	return pc, nil
}

// Dial dials from the node's namespace. The whole connect happens there.
func (n *Node) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	return n.DialWith(ctx, &net.Dialer{}, network, address)
}

// DialWith dials with d (e.g. with a LocalAddr or Control) from the node's namespace.
func (n *Node) DialWith(ctx context.Context, d *net.Dialer, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("natlab: dial %s from %s: %w", address, n, err)
	}
	return c, nil
}

// Run runs a program in the node's namespace to completion and returns its
// stdout. The error carries stderr.
func (n *Node) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return n.RunCommand(ctx, Command{Path: name, Args: args})
}

// RunCommand is Run for a Command.
func (n *Node) RunCommand(ctx context.Context, c Command) ([]byte, error) {
	p, err := n.StartCommand(ctx, c)
	if err != nil {
		return nil, err
	}
	_ = p.Stdin().Close()
	werr := p.Wait(ctx)
	if ctx.Err() != nil {
		_ = p.Stop()
	}
	out := []byte(p.Stdout())
	if werr != nil {
		return out, fmt.Errorf("natlab: run %s on %s: %w: %s", c.Path, n, werr, strings.TrimSpace(p.Stderr()))
	}
	return out, nil
}

// FlushConntrack empties the node's conntrack table.
func (n *Node) FlushConntrack(ctx context.Context) error {
	if _, err := nsExec(ctx, n.ns, "", "conntrack", "-F"); err != nil {
		return fmt.Errorf("natlab: flush conntrack of %s: %w", n, err)
	}
	return nil
}

// ConntrackCount returns the number of entries in the node's conntrack table.
func (n *Node) ConntrackCount(ctx context.Context) (int, error) {
	out, err := nsExec(ctx, n.ns, "", "conntrack", "-C")
	if err != nil {
		return 0, fmt.Errorf("natlab: count conntrack of %s: %w", n, err)
	}
	c, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		return 0, fmt.Errorf("natlab: count conntrack of %s: %w", n, err)
	}
	return c, nil
}

// SetConntrackTCPEstablishedTimeout sets net.netfilter.
// nf_conntrack_tcp_timeout_established in the node's namespace (whole
// seconds, at least 1): how long an idle established TCP mapping lives.
func (n *Node) SetConntrackTCPEstablishedTimeout(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s := max(int(d.Round(time.Second)/time.Second), 1)
	if err := writeSysctls(n.ns, [][2]string{{"net.netfilter.nf_conntrack_tcp_timeout_established", strconv.Itoa(s)}}); err != nil {
		return fmt.Errorf("natlab: set established timeout of %s: %w", n, err)
	}
	return nil
}

// Renumber gives a host a new IPv4 address on its LAN in place of its own,
// as a laptop that joins another network gets one: connections from the
// old address die with no packet to say so, and the NAT above maps the
// host anew. The new address is the old one plus 100. IP still reports the
// address the host was built with.
func (n *Node) Renumber(ctx context.Context) (netip.Addr, error) {
	if n.p.kind != nodeHost || n.p.parent == nil || n.p.parent.kind != nodeRouter {
		return netip.Addr{}, fmt.Errorf("natlab: renumber %s: not a host behind a router", n)
	}
	run := func(args ...string) (string, error) {
		out, err := n.Run(ctx, args[0], args[1:]...)
		if err != nil {
			return "", fmt.Errorf("natlab: renumber %s: %v: %w: %s", n, args, err, out)
		}
		return string(out), nil
	}
	old := n.p.addr4[0]
	moved := old.Addr()
	for range 100 {
		moved = moved.Next()
	}
	if !old.Contains(moved) {
		return netip.Addr{}, fmt.Errorf("natlab: renumber %s: %v+100 leaves %v", n, old.Addr(), old.Masked())
	}
	route, err := run("ip", "-4", "route", "show", "default")
	if err != nil {
		return netip.Addr{}, err
	}
	// Deleting the primary address would take the new, secondary one with
	// it unless it is promoted.
	for _, args := range [][]string{
		{"sysctl", "-qw", "net.ipv4.conf." + n.p.uplink + ".promote_secondaries=1"},
		{"ip", "addr", "add", netip.PrefixFrom(moved, old.Bits()).String(), "dev", n.p.uplink},
		{"ip", "addr", "del", old.String(), "dev", n.p.uplink},
	} {
		if _, err := run(args...); err != nil {
			return netip.Addr{}, err
		}
	}
	if f := strings.Fields(route); len(f) >= 3 && f[1] == "via" {
		if _, err := run("ip", "route", "replace", "default", "via", f[2], "dev", n.p.uplink); err != nil {
			return netip.Addr{}, err
		}
	}
	return moved, nil
}

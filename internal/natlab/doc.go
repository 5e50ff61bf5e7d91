// Package natlab builds real NATs, firewalls and impaired WAN links out of
// Linux network namespaces, for every peerport test and benchmark that has to
// cross a network. It owns the lab: topology declaration, address plan,
// nftables rules, the userspace WAN link, running programs on lab hosts, and
// teardown.
//
// A topology is a tree. Its root is the "internet" (namespace inet, a bridge
// with 203.0.113.1 that also routes the public prefixes of firewalled LANs).
// Hosts and routers hang below it or below another router:
//
//	                       internet 203.0.113.0/24  (2001:db8::/64)
//	     ┌──────────────────┬─────┴──────────────┬────────────────────┐
//	broker .10          gw-a .100 (cone)      gw-b .101 (fw)       cgn-c .102 (cone)
//	                        │ 10.0.1.0/24          │ 198.51.100.16/28     │ 10.0.3.0/24
//	                    a 10.0.1.10          b 198.51.100.18       gw-c 10.0.3.10 (cone)
//	                                                                      │ 10.0.4.0/24
//	                                                                  c 10.0.4.10
//
// Address plan (deterministic, in declaration order):
//
//   - internet: 203.0.113.0/24; the internet router is .1, public hosts get
//     .10, .11, ... and routers attached to the internet get .100, .101, ...
//   - the LAN of the k-th router (k = 1, 2, ... in Topology.Routers order):
//     a NAT (Cone, Symmetric) gets 10.0.k.0/24; a Firewall gets a routed
//     public /28 out of 198.51.100.0/24 (the j-th firewall, j = 1, 2, ...,
//     gets 198.51.100.16j/28). The router is .1 (or 16j+1); the routers
//     below it, then the hosts, follow in declaration order from .10 (from
//     16j+2).
//   - with Topology.IPv6, every segment also gets a /64 out of the
//     documentation prefix 2001:db8::/32: the internet 2001:db8::/64, router k
//     2001:db8:0:k::/64; a node whose IPv4 address ends in .N gets ::N
//     (N written in decimal digits). There is no IPv6 NAT: every router is a
//     stateful IPv6 firewall.
//
// No other addresses are used (192.0.2.0/24 is left for callers), and no
// lab interface ever lives in the machine's own namespace: veth pairs are
// created between two lab namespaces, bridges live inside lab namespaces.
//
// Router kinds (nftables, one table per router):
//
//   - Cone: masquerade (endpoint-independent mapping, port kept when free),
//     new inbound connections dropped.
//   - Symmetric: masquerade random,fully-random (a new random port per
//     destination), new inbound connections dropped.
//   - Firewall: no translation, new inbound connections dropped (no RST).
//
// Neither NAT hairpins. A router's own input from its upstream is dropped too,
// so an unsolicited SYN times out instead of drawing a RST.
//
// WAN links: a node's uplink is normally a veth pair. With a Link config it is
// instead a pair of TAP devices (opened through /dev/net/tun, one in each
// namespace) joined by a Go forwarder running inside the lab owner's process,
// which adds delay, jitter, random loss and a token-bucket rate cap, with
// bounded queues. See LinkConfig.
//
// Names: every namespace is named "ppl<pid>-<seq>-<node>", where pid is the
// creating process. At Build, namespaces whose pid is no longer alive are
// removed (their processes killed first); live ones belong to other runs and
// are left alone.
//
// Tests call New (which calls Require and registers Close with t.Cleanup);
// other programs call Build and Close.
package natlab

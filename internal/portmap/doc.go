// Package portmap owns asking the local gateway for a TCP port mapping, so
// that a peer behind an endpoint-dependent (symmetric) NAT can still be
// reached directly. It speaks the three protocols home routers serve:
//
//   - PCP, the Port Control Protocol (RFC 6887), pcp.go;
//   - NAT-PMP (RFC 6886), natpmp.go;
//   - UPnP IGD v1 and v2 (WANIPConnection:2, WANIPConnection:1,
//     WANPPPConnection:1), upnp.go, discovered by a unicast SSDP M-SEARCH
//     sent to the gateway only (ssdp.go) and driven with
//     github.com/huin/goupnp's SOAP clients.
//
// A Client races the protocols it is allowed (Options.Protocols) by their
// probes, which map nothing, and maps with the first to answer validly
// (falling back to the next), so no second mapping is ever made. The Lease it
// returns renews the mapping at about half its lifetime until Close, which
// deletes it. Probe asks each protocol, without mapping anything, whether it
// is served and what the external address is (for "agent netcheck").
//
// Every answer is checked before it is believed: datagrams that do not
// decode, a lifetime of 0, and above all a mapping for someone else (another
// internal port, another internal client, another PCP nonce) are refused
// with a log line; the attempt goes on until a valid answer or its deadline.
// An external address that is unspecified or private is reported as it is:
// a caller decides what it is worth.
//
// NAT-PMP and PCP are implemented here from the RFCs (go-nat-pmp has fixed
// timeouts and retries, no context and no way to inject the socket). Both
// run over UDP to the gateway's port 5351 and retransmit at 250 ms, doubling
// (RFC 6886 §3.1), until the context ends. Their wire formats, all integers
// big-endian:
//
//	NAT-PMP (RFC 6886)
//	external address request   | 0 ver | 0 op |
//	external address response  | 0 ver | 128 op | result u16 | epoch u32 | address [4] |
//	map request                | 0 ver | 2 op (TCP) | 0 u16 | internal port u16 |
//	                           | suggested external port u16 | lifetime u32 |
//	map response               | 0 ver | 130 op | result u16 | epoch u32 |
//	                           | internal port u16 | external port u16 | lifetime u32 |
//	delete: a map request with lifetime 0 and external port 0.
//
//	PCP (RFC 6887), request header (24 bytes), then opcode data, then options
//	| 2 ver | R=0,opcode 7 bits | reserved u16 | requested lifetime u32 |
//	| client IP address [16] (IPv4 as ::ffff:a.b.c.d)                   |
//	response header (24 bytes)
//	| 2 ver | R=1,opcode 7 bits | reserved u8 | result u8 | lifetime u32 |
//	| epoch u32 | reserved [12]                                          |
//	MAP opcode data (36 bytes, request and response alike)
//	| nonce [12] | protocol u8 (6 = TCP) | reserved [3] | internal port u16 |
//	| suggested (request) / assigned (response) external port u16         |
//	| suggested / assigned external IP address [16]                       |
//	options: | code u8 | reserved u8 | length u16 | data, padded to 4 |
//	ANNOUNCE (opcode 0) has no opcode data; it tells whether PCP is served.
//	delete: a MAP with lifetime 0 and the mapping's nonce.
package portmap

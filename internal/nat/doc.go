// Package nat owns NAT behaviour discovery over STUN (RFC 5389 Binding, with
// the RFC 5780 extensions): the STUN server the broker runs, the client-side
// Discover behind `agent netcheck`, and MappedAddrTCP, which tells a punch
// socket its own server-reflexive address.
//
// The server answers on a primary and an alternate port, and on a second
// address where the host has one:
//
//	        port 3478             port 3479
//	addr 1  primary               alternate port
//	addr 2  alternate address     alternate address and port (OTHER-ADDRESS)
//
// Wire format (RFC 5389 §6, every message; over TCP the 20-byte header's
// length field frames the message):
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|0 0|     STUN Message Type     |         Message Length        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                  Magic Cookie (0x2112A442)                    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                 Transaction ID (96 bits)                      |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|         attributes: type(16) length(16) value, padded to 4    |
//
// A Binding success response carries XOR-MAPPED-ADDRESS (where the request
// came from), RESPONSE-ORIGIN (where the response leaves from) and, when the
// server has an alternate address, OTHER-ADDRESS. Over UDP a request may
// carry CHANGE-REQUEST (flags 0x4 change IP, 0x2 change port); the server
// answers from the asked-for socket, or with error 420 when it has none.
//
// Mapping behaviour is measured by binding one local port (SO_REUSEADDR +
// SO_REUSEPORT for TCP) to the primary and to the alternate endpoint: the
// same mapped address means endpoint-independent mapping (punching works),
// a different one destination-dependent (a relay is needed).
package nat

// Package secure owns peerport's identities and credentials: agent identities
// (ed25519), the broker's key and SPKI pin, broker URLs, tickets, and the TLS 1.3
// configurations of the control channel (agent -> broker) and the peer channel
// (agent <-> agent).
//
// A ticket is "pp1" followed by lowercase base32 (no padding) of:
//
//	+-------+-------------+----------+-------------+-------+-------+----------+--------+
//	| alen  | broker addr | pin      | sharer id   | nlen  | share | secret   | crc32  |
//	| 1 B   | alen B      | 32 B     | 32 B        | 1 B   | nlen B| 32 B     | 4 B BE |
//	+-------+-------------+----------+-------------+-------+-------+----------+--------+
//
// The broker addr is host:port, or several host:port joined by commas (at
// most 8, 255 bytes in all) for a broker run as several nodes: the same
// format, the connector tries them in turn. Broker URLs name several the
// same way: pp://TOKEN@b1.example.com:7000,b2.example.com:7000#PIN.
//
// A pin of 32 zero bytes means the broker has no pin: its certificate comes
// from a CA and must verify, against the system roots, for the broker
// address's host. Broker URLs then have no "#PIN" either.
//
// Two keys are derived from the secret with HKDF-SHA256. The admit key is shown
// to the broker (as its SHA-256 by the sharer, in full by the connector) to
// admit the connector to an introduction. The proof key never leaves the two
// agents: the connector proves it to the sharer with an HMAC over a TLS exporter
// of the peer channel, so the proof cannot be replayed on another TLS session
// and the broker, knowing only the admit key, cannot open a share itself.
package secure

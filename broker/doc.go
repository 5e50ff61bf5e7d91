// Package broker owns the peerport broker's control server: the TLS 1.3
// control channel agents keep open to it, the registry of online agents and
// their shares, and introductions between a connector and a sharer. It also
// owns the broker's persistent state (key, pin, token) and Start, which is
// everything the `broker` command does, so the agent's embedded broker reuses it.
// Its TURN relay (relay.go: RFC 6062 TCP allocations, embedding pion/turn) is
// tied to the control channel: credentials come with relay introductions,
// only agents online may allocate, and only to peers the broker introduced.
// Its Prometheus metrics live in a registry each Server owns (Registry), never
// the global one; Start serves them on Options.MetricsListen.
//
// The server is handed connections (Accept) rather than owning a port, so it
// can be embedded and tested over net.Pipe; Serve is a thin accept loop.
//
// One control session, after TLS (ALPN peerport-control/1, the agent's ID from
// its client certificate):
//
//	agent                                 broker
//	Hello{token}                 ───────▶ token == broker token: member
//	                                      empty token: guest (Connect with an
//	                                      admit key, Ping; nothing else)
//	                             ◀─────── Welcome{agent_id, observed_addr} | Error
//	Register{id, share, admit_hash, allow} ▶ Result{id[, code]}
//	Unregister{id, share}        ───────▶ Result{id}
//	Ping{nonce}                  ───────▶ Pong{nonce}
//
// An introduction, the connector C and the sharer S each on their own session:
//
//	C: Connect{id, sharer, share, admit, candidates[, path]} ──▶ broker
//	   broker checks sha256(admit) == the share's admit_hash, or C's ID in allow
//	S: ◀── Intro{intro, connector, share, candidates[, path, turn]}
//	       path relay: turn is a fresh TURN credential for S, the candidates
//	       gain C's observed address, and the relay admits C's addresses as
//	       S's peers; without a relay C gets no_relay at once
//	S: IntroReply{intro, candidates, port} ──▶ broker
//	C: ◀── ConnectReply{id, candidates, port} (or code: not_found, unauthorized,
//	       timeout, limit, or the sharer's own code)
//
// One agent ID may hold several member sessions (two processes of one state
// dir, or a reconnect before the old session timed out); an introduction goes
// to the newest session holding the share. Guests are not in the registry. A
// malformed frame ends only its own session, after an Error.
package broker

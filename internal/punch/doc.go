// Package punch owns TCP hole punching: candidate ordering, reuse-port
// listen and dial from one local port, the race of dials and accepts under a
// deadline, and the choice of exactly one connection when several succeed.
//
// Both sides bind one local port with SO_REUSEADDR + SO_REUSEPORT, listen on
// it and dial every remote candidate from it at once; each dial's SYN opens
// the local NAT's mapping so the peer's SYN can come in (or both SYNs cross
// and the kernels complete a simultaneous open, which gives each side a
// dialed connection). Each attempt is short; failed attempts retry with
// exponential backoff and full jitter until the deadline.
//
// Selection, when more than one connection comes up (roles fixed by
// Config.Initiator, the connector; not by which socket call won):
//
//	initiator                               responder
//	first connection up (best-ranked of
//	those up at that moment)
//	  ---- "PPH" 0x01 (select) ---------->  keeps the first connection
//	                                        that carries it
//	  <--- "PPH" 0x02 (ack) -------------
//	both close every other connection; the TLS handshake follows on the
//	kept one, the initiator as client.
//
// Trace events (candidate, syn, attempt-failed, connected, chosen, failed)
// go to a Tracer, apart from the logic, for logs, metrics and tests.
package punch

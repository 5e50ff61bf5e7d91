// Package resume is the layer between an agent's TLS peer channel and its
// mux session that lets the session outlive its path (issue 15, DESIGN §3).
// Both ends count the bytes they send and receive and keep what the other
// side has not acknowledged; when a path dies and a new authenticated
// carrier comes up (a relay, or a new punched path), each side says how
// much it has received and the other resends from there, so the byte
// stream the mux sees, and the TCP connections riding it, go on untouched.
//
// This file set holds the wire format: the hello that opens every carrier
// and the frames that follow it. Decoders bound every length and are
// fuzzed (FuzzHello, FuzzFrame).
package resume

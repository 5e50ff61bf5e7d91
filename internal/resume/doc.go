// Package resume is the layer between an agent's TLS peer channel and its
// mux session that lets the session outlive its path (issue 15, DESIGN §3).
// Both ends count the bytes they send and receive and keep what the other
// side has not acknowledged; when a path dies and a new authenticated
// carrier comes up (a relay, or a new punched path), each side says how
// much it has received and the other resends from there, so the byte
// stream the mux sees, and the TCP connections riding it, go on untouched.
//
// hello.go and frame.go hold the wire format: the hello that opens every
// carrier and the frames that follow it, lengths bounded before bodies are
// read (fuzzed: FuzzHello, FuzzFrame). conn.go is the session end, a
// net.Conn; carrier.go its reader and writer; handshake.go how a session
// starts (Dial, Table.Accept) and moves (Resume), fuzzed from both sides
// (FuzzAccept, FuzzAnswer).
//
// A dead carrier is found by silence: the dialing side pings after
// Config.KeepAlive without a frame, and a carrier that stays silent for
// max(Config.DeadFloor, 4 round trips) while an ack or a pong is due is
// dropped; Lost tells the owner to bring a new one. Writers pause at
// Config.MaxUnacked unacknowledged bytes, as TCP's window does, and a
// session with no carrier for Config.ResumeTimeout ends with
// ErrResumeTimeout.
package resume

// Package yamux is hashicorp/yamux v0.1.2 (MPL-2.0, see LICENSE) with the
// changes peerport needs, each marked "peerport:" in the source:
//
//   - a stream's Read and Write return as soon as the session shuts down
//     instead of spinning until Session.Close reaches that stream, which
//     with thousands of blocked readers took minutes at full CPU
//     (upstream PR #176);
//   - the send loop writes a frame's header and body in one Write, so over
//     TLS a data frame costs no record of its own for its 12-byte header.
package yamux

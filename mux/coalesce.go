package mux

import (
	"encoding/binary"
	"net"
	"sync"
)

// yamux frame header layout (hashicorp/yamux v0.1.x): version, type, flags,
// stream ID, length. Only the parts coalesceConn needs.
const (
	frameHeaderSize = 12
	frameVersion    = 0
	frameTypeData   = 0
)

// tlsRecord is the largest TLS plaintext record. A held header goes out
// with the first tlsRecord-12 bytes of its body, so the frame fills whole
// records and only that much is copied; the rest is written from yamux's
// buffer as it is.
const tlsRecord = 16 << 10

// coalesceConn sits under a yamux session and turns yamux's two writes per
// data frame (the 12-byte header, then the body) into one stream of full
// records, so that over TLS a frame costs no record and syscall of its own
// for its header: a header alone is a full TLS record (22 bytes of
// overhead, an AEAD seal and a write syscall) for 12 bytes of payload.
//
// It holds a data header back only until the very next write, which yamux's
// send loop issues at once with that header's body. Any other write (a
// header-only frame, or anything not matching the held header's length)
// first sends the held header alone, so no byte is ever delayed past the
// write that follows it and the bytes on the wire are exactly yamux's.
type coalesceConn struct {
	net.Conn

	mu      sync.Mutex // yamux writes from one goroutine; this is belt and braces
	held    bool
	hdr     [frameHeaderSize]byte // the held data frame header
	pending int                   // its body length
	buf     [tlsRecord]byte
}

func newCoalesceConn(c net.Conn) *coalesceConn { return &coalesceConn{Conn: c} }

func (c *coalesceConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held {
		c.held = false
		if len(p) == c.pending {
			return c.writeFrame(p)
		}
		if _, err := c.Conn.Write(c.hdr[:]); err != nil {
			return 0, err
		}
	}
	if len(p) == frameHeaderSize && p[0] == frameVersion && p[1] == frameTypeData {
		if n := binary.BigEndian.Uint32(p[8:12]); n > 0 {
			copy(c.hdr[:], p)
			c.held, c.pending = true, int(n)
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}

// writeFrame writes the held header and its body p.
func (c *coalesceConn) writeFrame(p []byte) (int, error) {
	k := min(len(p), tlsRecord-frameHeaderSize)
	copy(c.buf[:], c.hdr[:])
	copy(c.buf[frameHeaderSize:], p[:k])
	n, err := c.Conn.Write(c.buf[:frameHeaderSize+k])
	if err != nil {
		return max(n-frameHeaderSize, 0), err
	}
	if k == len(p) {
		return k, nil
	}
	m, err := c.Conn.Write(p[k:])
	return k + m, err
}

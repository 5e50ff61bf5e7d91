package resume

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// FrameType is the first byte of a frame.
type FrameType byte

// Frames after the hello. Each is a 4-byte header, type and 24-bit
// length, then the body.
const (
	FrameData  FrameType = 1 // body: session bytes, the next ones in order
	FrameAck   FrameType = 2 // body: 8 bytes, total session bytes received (cumulative)
	FramePing  FrameType = 3 // body: 8 bytes the peer echoes
	FramePong  FrameType = 4 // body: the ping's 8 bytes
	FrameClose FrameType = 5 // body: why, UTF-8, at most MaxReason bytes; the session is over
)

const (
	frameHeaderLen = 4
	// MaxData bounds a data frame's body: small enough that an ack or a
	// pong is never queued long behind one, large enough that the header
	// costs nothing (4 of 32 768 bytes).
	MaxData   = 32 << 10
	MaxReason = 256
)

// ErrBadFrame is a frame that breaks the format: an unknown type, or a
// length that type cannot have.
var ErrBadFrame = errors.New("resume: malformed frame")

// Frame is one decoded frame. Body aliases the buffer ReadFrame was given.
type Frame struct {
	Type FrameType
	Body []byte
}

// Count is the 8-byte value of an ack, ping or pong.
func (f Frame) Count() uint64 { return binary.BigEndian.Uint64(f.Body) }

// bodyLimits are, per type, the least and most a body may hold.
var bodyLimits = map[FrameType][2]int{
	FrameData:  {1, MaxData},
	FrameAck:   {8, 8},
	FramePing:  {8, 8},
	FramePong:  {8, 8},
	FrameClose: {0, MaxReason},
}

// AppendFrame appends a frame of type t with body to b.
func AppendFrame(b []byte, t FrameType, body []byte) ([]byte, error) {
	if err := checkLen(t, len(body)); err != nil {
		return b, err
	}
	n := len(body)
	b = append(b, byte(t), byte(n>>16), byte(n>>8), byte(n))
	return append(b, body...), nil
}

// AppendCount appends an ack, ping or pong carrying v.
func AppendCount(b []byte, t FrameType, v uint64) ([]byte, error) {
	var body [8]byte
	binary.BigEndian.PutUint64(body[:], v)
	return AppendFrame(b, t, body[:])
}

func checkLen(t FrameType, n int) error {
	lim, ok := bodyLimits[t]
	if !ok {
		return fmt.Errorf("%w: type %d", ErrBadFrame, t)
	}
	if n < lim[0] || n > lim[1] {
		return fmt.Errorf("%w: type %d with a %d-byte body (want %d to %d)", ErrBadFrame, t, n, lim[0], lim[1])
	}
	return nil
}

// ReadFrame reads one frame from r into buf, which must hold MaxData
// bytes. The length is checked before the body is read, so a hostile
// length costs nothing.
func ReadFrame(r io.Reader, buf []byte) (Frame, error) {
	t, n, err := readHeader(r)
	if err != nil {
		return Frame{}, err
	}
	if len(buf) < n {
		return Frame{}, fmt.Errorf("resume: frame buffer of %d bytes for a %d-byte body", len(buf), n)
	}
	if err := readBody(r, buf[:n]); err != nil {
		return Frame{}, err
	}
	return Frame{Type: t, Body: buf[:n]}, nil
}

// readHeader reads a frame's header, checked: its type and body length.
func readHeader(r io.Reader) (FrameType, int, error) {
	var h [frameHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, 0, err // io.EOF between frames: the carrier ended cleanly
	}
	t, n := FrameType(h[0]), int(h[1])<<16|int(h[2])<<8|int(h[3])
	if err := checkLen(t, n); err != nil {
		return 0, 0, err
	}
	return t, n, nil
}

// readBody reads the body the header announced into body.
func readBody(r io.Reader, body []byte) error {
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the header promised a body
		}
		return fmt.Errorf("resume: frame body: %w", err)
	}
	return nil
}

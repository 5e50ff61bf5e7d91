package resume

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Wire constants of the hello.
const (
	helloMagic   = "PPR1" // "peerport resume", version 1
	SessionIDLen = 16
	helloLen     = len(helloMagic) + 1 + SessionIDLen + 8
)

// Hello flags.
const (
	flagNew    = 1 << iota // the first carrier of a new session
	flagResume             // a later carrier of a session both sides know
)

// ErrBadHello is a hello that is not one: wrong magic, flags or length.
var ErrBadHello = errors.New("resume: malformed hello")

// SessionID names a resumable session. The dialing side picks it at random
// when the session starts; it is no secret (the carrier is authenticated
// TLS), only a name.
type SessionID [SessionIDLen]byte

// Hello opens every carrier: which session it is for, whether that session
// is new, and how many of the session's bytes the sender has received, so
// that the other side resends from there.
type Hello struct {
	Session  SessionID
	Resume   bool   // false: a new session (Received is 0)
	Received uint64 // bytes of the session's stream received so far
}

// MarshalBinary encodes h.
func (h Hello) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, helloLen)
	b = append(b, helloMagic...)
	flag := byte(flagNew)
	if h.Resume {
		flag = flagResume
	} else if h.Received != 0 {
		return nil, fmt.Errorf("%w: a new session has received nothing yet", ErrBadHello)
	}
	b = append(b, flag)
	b = append(b, h.Session[:]...)
	return binary.BigEndian.AppendUint64(b, h.Received), nil
}

// UnmarshalBinary decodes a hello of exactly helloLen bytes.
func (h *Hello) UnmarshalBinary(b []byte) error {
	if len(b) != helloLen {
		return fmt.Errorf("%w: %d bytes, want %d", ErrBadHello, len(b), helloLen)
	}
	if string(b[:len(helloMagic)]) != helloMagic {
		return fmt.Errorf("%w: not a resume hello (magic %q)", ErrBadHello, b[:len(helloMagic)])
	}
	b = b[len(helloMagic):]
	switch b[0] {
	case flagNew:
		h.Resume = false
	case flagResume:
		h.Resume = true
	default:
		return fmt.Errorf("%w: flags %#x", ErrBadHello, b[0])
	}
	copy(h.Session[:], b[1:1+SessionIDLen])
	h.Received = binary.BigEndian.Uint64(b[1+SessionIDLen:])
	if !h.Resume && h.Received != 0 {
		return fmt.Errorf("%w: a new session that has received %d bytes", ErrBadHello, h.Received)
	}
	return nil
}

// ReadHello reads one hello from r.
func ReadHello(r io.Reader) (Hello, error) {
	var b [helloLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Hello{}, fmt.Errorf("resume: read hello: %w", err)
	}
	var h Hello
	return h, h.UnmarshalBinary(b[:])
}

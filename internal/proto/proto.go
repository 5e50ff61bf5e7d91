// Package proto defines the control protocol between agents and the broker:
// length-prefixed, versioned messages over the TLS 1.3 control channel.
//
// Every message is one frame:
//
//	+----------------+---------+--------+----------------------------+
//	| length  uint32 | version | type   | body (JSON object)         |
//	| big endian     | uint8   | uint8  | length-2 bytes             |
//	+----------------+---------+--------+----------------------------+
//
// length counts the version, type and body bytes. A reader refuses a frame
// longer than its limit before allocating it, a version other than Version,
// and a type it does not know, each with its own sentinel error.
//
// The exchanges:
//
//	agent -> broker  Hello{token}          broker -> agent  Welcome | Error
//	agent -> broker  Register{id, share}   broker -> agent  Result{id}
//	connector        Connect{id, ...}      broker -> sharer Intro{intro, ...}
//	sharer           IntroReply{intro}     broker -> conn.  ConnectReply{id, ...}
//	either           Ping{nonce}           other side       Pong{nonce}
//	connector        Outcome{...}          (no answer: how the punch went, for metrics)
//
// On a broker relay connection (its own TLS connection to the broker's port,
// ALPN peerport-relay/1), after a PathBroker introduction:
//
//	either agent     RelayBind{token}      broker -> agent  Result (both bound) | Error
//	                 then raw bytes, copied to the other agent's connection
package proto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version this build speaks.
const Version = 1

// MaxMessageSize is the default limit on a frame's length.
const MaxMessageSize = 64 << 10

const headerSize = 6 // length, version, type

// Sentinel errors; decode errors wrap one of them.
var (
	ErrTooLarge    = errors.New("message too large")
	ErrVersion     = errors.New("unsupported protocol version")
	ErrUnknownType = errors.New("unknown message type")
	ErrMalformed   = errors.New("malformed message")
)

// Type identifies a message.
type Type uint8

// Message types.
const (
	TypeHello Type = iota + 1
	TypeWelcome
	TypeError
	TypeRegister
	TypeUnregister
	TypeResult
	TypeConnect
	TypeIntro
	TypeIntroReply
	TypeConnectReply
	TypePing
	TypePong
	TypeOutcome
	TypeRelayBind
	TypePresence
	TypeCodeOpen
	TypeCodeOpened
	TypeCodeClose
	TypeCodeClaim
	TypeCodeClaimReply
	TypeCodePass
	TypeCodePassReply
)

// Message is one control message.
type Message interface {
	Type() Type
	validate() error
}

func newMessage(t Type) Message {
	switch t {
	case TypeHello:
		return new(Hello)
	case TypeWelcome:
		return new(Welcome)
	case TypeError:
		return new(Error)
	case TypeRegister:
		return new(Register)
	case TypeUnregister:
		return new(Unregister)
	case TypeResult:
		return new(Result)
	case TypeConnect:
		return new(Connect)
	case TypeIntro:
		return new(Intro)
	case TypeIntroReply:
		return new(IntroReply)
	case TypeConnectReply:
		return new(ConnectReply)
	case TypePing:
		return new(Ping)
	case TypePong:
		return new(Pong)
	case TypeRelayBind:
		return new(RelayBind)
	case TypeOutcome:
		return new(Outcome)
	case TypePresence:
		return new(Presence)
	case TypeCodeOpen:
		return new(CodeOpen)
	case TypeCodeOpened:
		return new(CodeOpened)
	case TypeCodeClose:
		return new(CodeClose)
	case TypeCodeClaim:
		return new(CodeClaim)
	case TypeCodeClaimReply:
		return new(CodeClaimReply)
	case TypeCodePass:
		return new(CodePass)
	case TypeCodePassReply:
		return new(CodePassReply)
	}
	return nil
}

// Encode returns m as one frame.
func Encode(m Message) ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("encode %T: %w", m, err)
	}
	body, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", m, err)
	}
	if 2+len(body) > MaxMessageSize {
		return nil, fmt.Errorf("encode %T: %w: %d bytes, limit %d", m, ErrTooLarge, 2+len(body), MaxMessageSize)
	}
	b := make([]byte, headerSize, headerSize+len(body))
	binary.BigEndian.PutUint32(b, uint32(2+len(body)))
	b[4], b[5] = Version, byte(m.Type())
	return append(b, body...), nil
}

// Write writes m as one frame.
func Write(w io.Writer, m Message) error {
	b, err := Encode(m)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// Read reads one frame of at most max bytes (0 means MaxMessageSize).
func Read(r io.Reader, max int) (Message, error) {
	if max <= 0 {
		max = MaxMessageSize
	}
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(h[:4]))
	if err := checkHeader(n, h[4], Type(h[5]), max); err != nil {
		return nil, err
	}
	body := make([]byte, n-2)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("%w: truncated body: %w", ErrMalformed, err)
	}
	return decodeBody(Type(h[5]), body)
}

// Decode parses exactly one frame.
func Decode(b []byte) (Message, error) {
	if len(b) < headerSize {
		return nil, fmt.Errorf("%w: short frame", ErrMalformed)
	}
	n := int(binary.BigEndian.Uint32(b[:4]))
	if err := checkHeader(n, b[4], Type(b[5]), MaxMessageSize); err != nil {
		return nil, err
	}
	if len(b)-4 != n {
		return nil, fmt.Errorf("%w: length %d, frame holds %d", ErrMalformed, n, len(b)-4)
	}
	return decodeBody(Type(b[5]), b[headerSize:])
}

func checkHeader(n int, version byte, t Type, max int) error {
	if n > max {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, n, max)
	}
	if n < 2 {
		return fmt.Errorf("%w: length %d", ErrMalformed, n)
	}
	if version != Version {
		return fmt.Errorf("%w: peer speaks v%d, this build v%d; upgrade the older side", ErrVersion, version, Version)
	}
	if newMessage(t) == nil {
		return fmt.Errorf("%w: %d", ErrUnknownType, t)
	}
	return nil
}

func decodeBody(t Type, body []byte) (Message, error) {
	m := newMessage(t)
	if err := json.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("%w: type %d: %v", ErrMalformed, t, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: type %d: %v", ErrMalformed, t, err)
	}
	return m, nil
}

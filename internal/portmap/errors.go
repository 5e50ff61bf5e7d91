package portmap

import (
	"errors"
	"fmt"
)

// Errors callers branch on. Errors returned by this package wrap one of them
// where it applies; test with errors.Is.
var (
	// ErrNoGateway: no gateway is known (no default route), or none of the
	// protocols got a valid answer from it before the deadline.
	ErrNoGateway = errors.New("portmap: no gateway answered")
	// ErrNoMapping: a gateway answered but gave no usable mapping (it
	// refused, answered a lifetime of 0, or only answered for someone else).
	ErrNoMapping = errors.New("portmap: no mapping")
	// ErrForeignMapping: the gateway's answer maps another internal port,
	// another internal client or another PCP nonce than ours. Such answers
	// are never used.
	ErrForeignMapping = errors.New("portmap: answer is for another mapping")
	// ErrMalformed: the answer does not decode.
	ErrMalformed = errors.New("portmap: malformed answer")
	// ErrRefused: the gateway answered with an error result code.
	ErrRefused = errors.New("portmap: gateway refused")
	// ErrUnsupported: the gateway does not serve this protocol (or version).
	ErrUnsupported = errors.New("portmap: protocol not supported by gateway")
	// ErrClosed: the Lease was closed.
	ErrClosed = errors.New("portmap: lease closed")
)

// GatewayError is an error result code sent by the gateway. It wraps
// ErrUnsupported for "unsupported version/opcode/protocol" codes and
// ErrRefused for the rest.
type GatewayError struct {
	Protocol string
	Code     int
	Text     string
	// unsupported marks codes that say the protocol itself is not served.
	unsupported bool
}

func (e *GatewayError) Error() string {
	return fmt.Sprintf("portmap: %s gateway answered result %d (%s)", e.Protocol, e.Code, e.Text)
}

// Unwrap returns ErrUnsupported or ErrRefused.
func (e *GatewayError) Unwrap() error {
	if e.unsupported {
		return ErrUnsupported
	}
	return ErrRefused
}

// noAnswer is the error of a protocol whose deadline passed without an
// answer it could use: ErrNoMapping when answers came but were ignored
// (last is the last one's fault), ErrNoGateway when nothing came. A Map in
// which every protocol heard nothing reports ErrNoGateway.
func noAnswer(proto string, last error, cause error) error {
	if last != nil {
		return fmt.Errorf("portmap: %s: no valid answer (%w): last answer ignored: %w", proto, ErrNoMapping, last)
	}
	return fmt.Errorf("portmap: %s: no answer (%w): %w", proto, ErrNoGateway, cause)
}

package secure

import "errors"

var (
	// ErrBadAgentID is returned for an agent ID that does not parse.
	ErrBadAgentID = errors.New("malformed agent ID")
	// ErrBadKey is returned for a key file that cannot be used.
	ErrBadKey = errors.New("unusable key file")
	// ErrBadBrokerURL is returned for a broker URL that does not parse.
	ErrBadBrokerURL = errors.New("malformed broker URL")
	// ErrBadTicket is returned for a ticket that is malformed or tampered with.
	ErrBadTicket = errors.New("malformed ticket")
	// ErrTicketVersion is returned for a ticket of a format this build does not know.
	ErrTicketVersion = errors.New("unsupported ticket version")
	// ErrPinMismatch is returned when a peer's key is not the one pinned.
	ErrPinMismatch = errors.New("key does not match pin")
	// ErrUntrustedBroker is returned when a broker without a pin presents a
	// certificate that does not verify (unknown CA, wrong name, expired).
	ErrUntrustedBroker = errors.New("certificate not trusted")
	// ErrBadProof is returned when a connector's ticket proof does not verify.
	ErrBadProof = errors.New("ticket proof does not verify")
)

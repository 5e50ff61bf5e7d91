package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
)

// Sentinels for the TURN error answers a caller branches on. Errors wrap them
// with %w, so errors.Is works through the operation named around them.
var (
	// ErrUnauthorized is a 401 answer: the credentials are wrong or expired
	// (TURN REST usernames carry their expiry; check the secret and clocks).
	ErrUnauthorized = errors.New("TURN server refused the credentials (401 Unauthorized): wrong or expired; check the TURN secret and the clocks")
	// ErrForbidden is a 403 answer: the server does not allow this request,
	// e.g. a permission for a peer address its policy denies.
	ErrForbidden = errors.New("TURN server forbids this (403 Forbidden)")
	// ErrQuota is a 486 answer: this user has as many allocations as the
	// server allows. Close unused allocations or wait for them to expire.
	ErrQuota = errors.New("TURN server allocation quota reached (486)")
)

// errStaleNonce is a 438 answer; the caller takes the new nonce and retries.
var errStaleNonce = errors.New("TURN server says the nonce is stale (438)")

// maxTries bounds the retries after 438 Stale Nonce.
const maxTries = 3

// codeError turns a TURN ERROR-CODE into an error, wrapping the sentinel
// for the codes callers branch on.
func codeError(code stun.ErrorCodeAttribute) error {
	var sentinel error
	switch code.Code {
	case stun.CodeUnauthorized:
		sentinel = ErrUnauthorized
	case stun.CodeForbidden:
		sentinel = ErrForbidden
	case stun.CodeAllocQuotaReached:
		sentinel = ErrQuota
	case stun.CodeStaleNonce:
		sentinel = errStaleNonce
	default:
		return fmt.Errorf("TURN error %d %q", int(code.Code), code.Reason)
	}
	if len(code.Reason) == 0 {
		return sentinel
	}
	return fmt.Errorf("%w; server said %q", sentinel, code.Reason)
}

// turnError maps the errors pion's client returns for error answers
// (*stun.TurnError) onto codeError; other errors pass unchanged.
func turnError(err error) error {
	var te *stun.TurnError
	if errors.As(err, &te) {
		return codeError(te.ErrorCodeAttr)
	}
	var tv stun.TurnError
	if errors.As(err, &tv) {
		return codeError(tv.ErrorCodeAttr)
	}
	return err
}

// answerError returns nil for a success response and the mapped error of an
// error response.
func answerError(m *stun.Message) error {
	if m.Type.Class != stun.ClassErrorResponse {
		return nil
	}
	var code stun.ErrorCodeAttribute
	if err := code.GetFrom(m); err != nil {
		return fmt.Errorf("TURN error response without ERROR-CODE: %s", m.Type)
	}
	return codeError(code)
}

// peerAddress is the XOR-PEER-ADDRESS attribute.
type peerAddress netip.AddrPort

func (p peerAddress) AddTo(m *stun.Message) error {
	ap := netip.AddrPort(p)
	return stun.XORMappedAddress{IP: ap.Addr().AsSlice(), Port: int(ap.Port())}.AddToAs(m, stun.AttrXORPeerAddress)
}

func getPeerAddress(m *stun.Message) (netip.AddrPort, error) {
	var a stun.XORMappedAddress
	if err := a.GetFromAs(m, stun.AttrXORPeerAddress); err != nil {
		return netip.AddrPort{}, fmt.Errorf("XOR-PEER-ADDRESS: %w", err)
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok || a.Port < 0 || a.Port > 65535 {
		return netip.AddrPort{}, fmt.Errorf("XOR-PEER-ADDRESS: bad address %v:%d", a.IP, a.Port)
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.Port)), nil
}

// connectionID is the CONNECTION-ID attribute of RFC 6062 §6.2.1.
type connectionID uint32

func (c connectionID) AddTo(m *stun.Message) error {
	m.Add(stun.AttrConnectionID, binary.BigEndian.AppendUint32(nil, uint32(c)))
	return nil
}

func getConnectionID(m *stun.Message) (connectionID, error) {
	v, err := m.Get(stun.AttrConnectionID)
	if err != nil {
		return 0, fmt.Errorf("CONNECTION-ID: %w", err)
	}
	if len(v) != 4 {
		return 0, fmt.Errorf("CONNECTION-ID: %d bytes, want 4", len(v))
	}
	return connectionID(binary.BigEndian.Uint32(v)), nil
}

// lifetime is the LIFETIME attribute, in seconds.
type lifetime uint32

func (l lifetime) AddTo(m *stun.Message) error {
	m.Add(stun.AttrLifetime, binary.BigEndian.AppendUint32(nil, uint32(l)))
	return nil
}

// lifetimeZero reports whether m carries LIFETIME 0 (a deallocation).
func lifetimeZero(m *stun.Message) bool {
	v, err := m.Get(stun.AttrLifetime)
	return err == nil && len(v) == 4 && binary.BigEndian.Uint32(v) == 0
}

// stunHeaderSize is the fixed STUN header: type, length, cookie, transaction.
const stunHeaderSize = 20

// maxStreamMessage bounds a STUN message read from a data connection; the
// ConnectionBind answer is well under 200 bytes.
const maxStreamMessage = 2048

// readMessage reads exactly one STUN message from a stream, and not a byte
// more: what follows the ConnectionBind answer belongs to the peer.
func readMessage(r io.Reader) (*stun.Message, error) {
	hdr := make([]byte, stunHeaderSize)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	if !stun.IsMessage(hdr) {
		return nil, errors.New("TURN server sent something that is not STUN")
	}
	size := stunHeaderSize + int(binary.BigEndian.Uint16(hdr[2:4]))
	if size > maxStreamMessage {
		return nil, fmt.Errorf("TURN server sent a %d-byte STUN message, more than %d", size, maxStreamMessage)
	}
	raw := make([]byte, size)
	copy(raw, hdr)
	if _, err := io.ReadFull(r, raw[stunHeaderSize:]); err != nil {
		return nil, err
	}
	m := &stun.Message{Raw: raw}
	if err := m.Decode(); err != nil {
		return nil, fmt.Errorf("bad STUN message from TURN server: %w", err)
	}
	return m, nil
}

// controlConn is the control connection as pion's client sees it: pion wants
// a net.PacketConn, which turn.STUNConn makes of the TCP stream, one STUN
// message per ReadFrom. controlConn stands between the two and lets the
// Allocation see every message: it takes ConnectionAttempt indications for
// itself (pion would queue them on a channel of 10 that blocks its read loop
// when full, and can hand them only to an Accept without a context), learns
// nonces, notices refresh failures, and passes pion only the responses it
// handles, so no stray packet can end pion's read loop.
type controlConn struct {
	*turn.STUNConn
	a *Allocation
}

func (c *controlConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, from, err := c.STUNConn.ReadFrom(p)
		if err != nil {
			c.a.controlFailed(err)
			return n, from, err
		}
		if c.a.inbound(p[:n]) {
			return n, from, nil
		}
	}
}

func (c *controlConn) WriteTo(p []byte, to net.Addr) (int, error) {
	c.a.outbound(p)
	return c.STUNConn.WriteTo(p, to)
}

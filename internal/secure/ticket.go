package secure

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net"
	"regexp"
	"strconv"
	"strings"
)

// TicketPrefix starts every ticket of format version 1.
const TicketPrefix = "pp1"

// SecretSize is the size of a ticket secret.
const SecretSize = 32

// Ticket is everything a connector needs to reach one share.
type Ticket struct {
	// Broker is the host:port of the broker's control listener, or
	// several joined by commas (BrokerURL.Addr of a broker run as several
	// nodes): the connector tries them in turn.
	Broker string
	Pin    Pin // the broker key's pin; zero: the broker has a CA-issued certificate for each address's host
	Sharer AgentID
	Share  string
	Secret [SecretSize]byte
}

var shareNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidShareName reports whether a share name is usable: 1 to 63 characters
// of lowercase letters, digits, '.', '_' and '-', starting with a letter or digit.
func ValidShareName(name string) error {
	if !shareNameRE.MatchString(name) {
		return fmt.Errorf("share name %q: use 1-63 of a-z 0-9 . _ - starting with a letter or digit", name)
	}
	return nil
}

// NewTicket makes a ticket with a fresh random secret. A zero pin makes a
// ticket for a broker with a certificate from a CA.
func NewTicket(broker string, pin Pin, sharer AgentID, share string) (Ticket, error) {
	t := Ticket{Broker: broker, Pin: pin, Sharer: sharer, Share: share}
	if _, err := rand.Read(t.Secret[:]); err != nil {
		return t, fmt.Errorf("ticket secret: %w", err)
	}
	return t, t.validate()
}

func (t Ticket) validate() error {
	addrs := t.Addrs()
	if len(addrs) == 0 {
		return fmt.Errorf("%w: broker address %q is not host:port", ErrBadTicket, t.Broker)
	}
	if len(addrs) > MaxBrokerAddrs {
		return fmt.Errorf("%w: %d broker addresses, at most %d", ErrBadTicket, len(addrs), MaxBrokerAddrs)
	}
	seen := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		if err := validBrokerAddr(a); err != nil {
			return err
		}
		if seen[a] {
			return fmt.Errorf("%w: broker address %q twice", ErrBadTicket, a)
		}
		seen[a] = true
	}
	if len(t.Broker) > 255 {
		return fmt.Errorf("%w: broker address too long", ErrBadTicket)
	}
	if err := ValidShareName(t.Share); err != nil {
		return fmt.Errorf("%w: %v", ErrBadTicket, err)
	}
	// A zero pin is no pin: the connector verifies the broker's certificate
	// chain for the host above, which is why the host is required.
	if t.Sharer.IsZero() {
		return fmt.Errorf("%w: missing sharer", ErrBadTicket)
	}
	return nil
}

// validBrokerAddr checks one address of a ticket's Broker: host:port, a
// host, a port in range.
func validBrokerAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil || host == "" {
		return fmt.Errorf("%w: broker address %q is not host:port", ErrBadTicket, a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%w: broker port %q out of range", ErrBadTicket, port)
	}
	return nil
}

// Addrs returns the broker's addresses: Broker split at its commas (one
// address, or the several of a broker URL that names more than one).
func (t Ticket) Addrs() []string {
	if t.Broker == "" {
		return nil
	}
	return strings.Split(t.Broker, ",")
}

// String returns the ticket's text form.
func (t Ticket) String() string {
	b := make([]byte, 0, 1+len(t.Broker)+32+32+1+len(t.Share)+SecretSize+4)
	b = append(b, byte(len(t.Broker)))
	b = append(b, t.Broker...)
	b = append(b, t.Pin[:]...)
	b = append(b, t.Sharer[:]...)
	b = append(b, byte(len(t.Share)))
	b = append(b, t.Share...)
	b = append(b, t.Secret[:]...)
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	return TicketPrefix + strings.ToLower(b32.EncodeToString(b))
}

// ParseTicket parses a ticket's text form. Every malformed or altered ticket
// fails with an error wrapping ErrBadTicket or ErrTicketVersion.
func ParseTicket(s string) (Ticket, error) {
	var t Ticket
	s = strings.ToLower(strings.TrimSpace(s))
	if len(s) < 3 || !strings.HasPrefix(s, "pp") {
		return t, fmt.Errorf("%w: does not start with %q; copy the whole first line `agent share` printed", ErrBadTicket, TicketPrefix)
	}
	if s[:3] != TicketPrefix && s[2] >= '0' && s[2] <= '9' {
		return t, fmt.Errorf("%w: %q (this build reads %q tickets; upgrade the agent)", ErrTicketVersion, s[:3], TicketPrefix)
	}
	if s[:3] != TicketPrefix {
		return t, fmt.Errorf("%w: does not start with %q; copy the whole first line `agent share` printed", ErrBadTicket, TicketPrefix)
	}
	b, err := b32.DecodeString(strings.ToUpper(s[3:]))
	if err != nil {
		return t, fmt.Errorf("%w: not base32 (truncated or mistyped?)", ErrBadTicket)
	}
	if len(b) < 4 {
		return t, fmt.Errorf("%w: too short", ErrBadTicket)
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.ChecksumIEEE(body) != sum {
		return t, fmt.Errorf("%w: checksum mismatch (truncated or altered)", ErrBadTicket)
	}
	// base32 leaves unused bits in the last character: a text with them set
	// decodes to the same bytes, so only the canonical text is a ticket.
	if strings.ToLower(b32.EncodeToString(b)) != s[3:] {
		return t, fmt.Errorf("%w: checksum mismatch (truncated or altered)", ErrBadTicket)
	}
	r := reader{b: body}
	t.Broker = string(r.next(int(r.byte())))
	copy(t.Pin[:], r.next(len(t.Pin)))
	copy(t.Sharer[:], r.next(len(t.Sharer)))
	t.Share = string(r.next(int(r.byte())))
	copy(t.Secret[:], r.next(SecretSize))
	if r.short || len(r.b) != 0 {
		return Ticket{}, fmt.Errorf("%w: wrong length", ErrBadTicket)
	}
	if err := t.validate(); err != nil {
		return Ticket{}, err
	}
	return t, nil
}

type reader struct {
	b     []byte
	short bool
}

func (r *reader) next(n int) []byte {
	if n > len(r.b) {
		r.short = true
		r.b = nil
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	v := r.next(1)
	if len(v) == 0 {
		return 0
	}
	return v[0]
}

// Labels bind derived keys to their one use.
const (
	admitLabel = "peerport v1 broker admit"
	proofLabel = "peerport v1 peer proof"
)

// AdmitKey is the key the connector shows the broker to be introduced.
func (t Ticket) AdmitKey() [32]byte { return derive(t.Secret[:], admitLabel) }

// AdmitHash is what the sharer registers with the broker: the SHA-256 of the
// admit key, so even the registration does not hand the broker a usable key.
func (t Ticket) AdmitHash() [32]byte { k := t.AdmitKey(); return sha256.Sum256(k[:]) }

// ProofKey is the key the connector proves to the sharer. The broker never sees it.
func (t Ticket) ProofKey() [32]byte { return derive(t.Secret[:], proofLabel) }

func derive(secret []byte, label string) [32]byte {
	var k [32]byte
	b, err := hkdf.Key(sha256.New, secret, nil, label, len(k))
	if err != nil {
		panic("hkdf: " + err.Error()) // only on a length beyond 255*32, impossible here
	}
	copy(k[:], b)
	return k
}

package shortcode

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/schollz/pake/v3"
)

// The exchange, through the broker (which routes by slot and sees all of
// it):
//
//	connector -> sharer  1: SPAKE2 message A
//	sharer -> connector  1: SPAKE2 message B, Seal_S(sharer identity, share)
//	connector -> sharer  2: Seal_C(connector identity)
//
// Seal_S and Seal_C are AES-GCM under keys derived from the SPAKE2 key and
// the transcript, so only someone who knew the code can open or make them.
// The connector learns whom to pin in TLS; the sharer learns whom to
// admit. A broker in the middle can run the exchange with each side, but
// with a guessed code: its seals do not open, and the sharer burns the code.

// MaxMessage bounds each message of the exchange.
const MaxMessage = 2048

// curve is SPAKE2's group: P-256, with schollz/pake's fixed points.
const curve = "p256"

// Errors callers branch on.
var (
	// ErrWrongCode: the peer's seal did not open, so it used another
	// code (or someone in the middle guessed).
	ErrWrongCode = errors.New("wrong code")
	// ErrMalformed: a message of the exchange is not one.
	ErrMalformed = errors.New("malformed code exchange message")
)

const (
	roleConnector = 0 // pake's role 0 speaks first
	roleSharer    = 1
)

// Offer is what the sharer proves to the connector.
type Offer struct {
	Sharer string `json:"sharer"` // agent ID
	Share  string `json:"share"`
}

type reply struct {
	PAKE []byte `json:"pake"`
	Seal []byte `json:"seal"`
}

type proof struct {
	Connector string `json:"connector"`
}

// Connector is the connector's side of one exchange.
type Connector struct {
	code Code
	self string
	p    *pake.Pake
	a    []byte
}

// NewConnector starts an exchange for code as agent self, and returns the
// first message.
func NewConnector(code Code, self string) (*Connector, []byte, error) {
	p, err := pake.InitCurve(password(code), roleConnector, curve)
	if err != nil {
		return nil, nil, fmt.Errorf("code exchange: %w", err)
	}
	c := &Connector{code: code, self: self, p: p, a: p.Bytes()}
	return c, c.a, nil
}

// Open reads the sharer's answer: whom the code leads to, and the message
// that proves this connector to the sharer.
func (c *Connector) Open(msg []byte) (Offer, []byte, error) {
	var r reply
	if err := decode(msg, &r); err != nil {
		return Offer{}, nil, err
	}
	k, err := update(c.p, r.PAKE)
	if err != nil {
		return Offer{}, nil, err
	}
	t := transcript(c.code, c.a, r.PAKE)
	plain, err := open(key(k, t, "sharer"), r.Seal, t)
	if err != nil {
		return Offer{}, nil, err
	}
	var o Offer
	if err := json.Unmarshal(plain, &o); err != nil || o.Sharer == "" || o.Share == "" {
		return Offer{}, nil, fmt.Errorf("%w: sharer's offer", ErrMalformed)
	}
	body, _ := json.Marshal(proof{Connector: c.self})
	seal, err := sealWith(key(k, t, "connector"), body, t)
	if err != nil {
		return Offer{}, nil, err
	}
	return o, seal, nil
}

// Sharer is the sharer's side of one exchange.
type Sharer struct {
	code  Code
	offer Offer
	k, t  []byte // after Answer
}

// NewSharer prepares to answer one claim of code with offer.
func NewSharer(code Code, offer Offer) *Sharer { return &Sharer{code: code, offer: offer} }

// Answer takes the connector's first message and returns the answer.
func (s *Sharer) Answer(a []byte) ([]byte, error) {
	if s.k != nil {
		return nil, errors.New("code exchange: answered already")
	}
	if len(a) > MaxMessage {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(a))
	}
	p, err := pake.InitCurve(password(s.code), roleSharer, curve)
	if err != nil {
		return nil, fmt.Errorf("code exchange: %w", err)
	}
	k, err := update(p, a)
	if err != nil {
		return nil, err
	}
	b := p.Bytes()
	s.k, s.t = k, transcript(s.code, a, b)
	body, _ := json.Marshal(s.offer)
	seal, err := sealWith(key(s.k, s.t, "sharer"), body, s.t)
	if err != nil {
		return nil, err
	}
	out, _ := json.Marshal(reply{PAKE: b, Seal: seal})
	return out, nil
}

// Check opens the connector's proof and returns its identity;
// ErrWrongCode when it does not open.
func (s *Sharer) Check(seal []byte) (string, error) {
	if s.k == nil {
		return "", errors.New("code exchange: proof before the first message")
	}
	if len(seal) > MaxMessage {
		return "", fmt.Errorf("%w: %d bytes", ErrMalformed, len(seal))
	}
	plain, err := open(key(s.k, s.t, "connector"), seal, s.t)
	if err != nil {
		return "", err
	}
	var p proof
	if err := json.Unmarshal(plain, &p); err != nil || p.Connector == "" {
		return "", fmt.Errorf("%w: connector's proof", ErrMalformed)
	}
	return p.Connector, nil
}

// password stretches nothing (SPAKE2 needs no slow hash: each guess costs
// an online run) but binds the code to this protocol, and gives pake a
// full-size scalar.
func password(c Code) []byte {
	h := sha256.Sum256([]byte("peerport short code v1\x00" + c.String()))
	return h[:]
}

// update feeds the peer's SPAKE2 message to p and returns the shared key.
// pake trusts its input, so the message is checked first: a point it
// does not have would be a nil pointer, and an off-curve one a panic.
func update(p *pake.Pake, msg []byte) ([]byte, error) {
	if len(msg) == 0 || len(msg) > MaxMessage {
		return nil, fmt.Errorf("%w: SPAKE2 message of %d bytes", ErrMalformed, len(msg))
	}
	var q *pake.Pake
	if err := json.Unmarshal(msg, &q); err != nil || q == nil {
		return nil, fmt.Errorf("%w: SPAKE2 message", ErrMalformed)
	}
	x, y := q.Xᵤ, q.Xᵥ
	if p.Role == roleConnector {
		x, y = q.Yᵤ, q.Yᵥ
	}
	if q.Role == p.Role || x == nil || y == nil || x.Sign() < 0 || y.Sign() < 0 {
		return nil, fmt.Errorf("%w: SPAKE2 message without the peer's point", ErrMalformed)
	}
	if err := p.Update(msg); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return p.SessionKey()
}

// transcript binds the keys to this slot and these two messages, so a
// seal from one run opens in no other.
func transcript(c Code, a, b []byte) []byte {
	h := sha256.New()
	var n [8]byte
	h.Write([]byte("peerport short code v1"))
	binary.BigEndian.PutUint32(n[:4], c.Slot)
	h.Write(n[:4])
	for _, m := range [][]byte{a, b} {
		binary.BigEndian.PutUint64(n[:], uint64(len(m)))
		h.Write(n[:])
		h.Write(m)
	}
	return h.Sum(nil)
}

func key(k, transcript []byte, who string) []byte {
	out, err := hkdf.Key(sha256.New, k, transcript, "peerport short code v1 "+who, 32)
	if err != nil {
		panic(err) // only for lengths beyond HKDF's limit
	}
	return out
}

func sealWith(k, plain, aad []byte) ([]byte, error) {
	g, err := gcm(k)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, g.NonceSize(), g.NonceSize()+len(plain)+g.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("code exchange: %w", err)
	}
	return g.Seal(nonce, nonce, plain, aad), nil
}

func open(k, sealed, aad []byte) ([]byte, error) {
	g, err := gcm(k)
	if err != nil {
		return nil, err
	}
	if len(sealed) < g.NonceSize()+g.Overhead() {
		return nil, fmt.Errorf("%w: seal of %d bytes", ErrMalformed, len(sealed))
	}
	plain, err := g.Open(nil, sealed[:g.NonceSize()], sealed[g.NonceSize():], aad)
	if err != nil {
		return nil, ErrWrongCode
	}
	return plain, nil
}

func gcm(k []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(k)
	if err != nil {
		return nil, fmt.Errorf("code exchange: %w", err)
	}
	return cipher.NewGCM(b)
}

func decode(msg []byte, v any) error {
	if len(msg) == 0 || len(msg) > 2*MaxMessage {
		return fmt.Errorf("%w: %d bytes", ErrMalformed, len(msg))
	}
	if err := json.Unmarshal(msg, v); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return nil
}

package broker

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Sealing (issue 17): every message between the nodes of a cluster is
// encrypted and authenticated with a key that only holders of the broker
// identity can derive, so another client of the same NATS (an agent's
// operator sharing it, a compromised service) can neither read an
// introduction (it carries ticket secrets) nor forge or replay one.

// ErrSealed is why a cluster message was refused: not sealed with this
// cluster's key, altered, too old, or seen before.
var ErrSealed = errors.New("cluster message refused")

const (
	sealVersion = 1
	nonceSize   = 12
	// sealWindow is how far a message's clock may be from ours; beyond it a
	// message is refused as stale, and within it a replay is caught by its
	// nonce.
	sealWindow = 30 * time.Second
	// maxSeen bounds the nonces remembered against replays: far more than
	// one window's worth of cross-node requests at the benchmarked rates.
	maxSeen = 1 << 20
)

// sealer seals and opens cluster messages with one cluster key.
type sealer struct {
	aead cipher.AEAD
	fp   string // the identity's fingerprint: tells nodes apart without revealing the key
	now  func() time.Time

	mu    sync.Mutex
	seen  map[[nonceSize]byte]time.Time
	swept time.Time
}

// newSealer derives the cluster key from what every node of one cluster
// shares: the token, the TURN secret and the key's pin (zero for a broker
// with a CA-issued certificate, whose nodes may hold different keys).
func newSealer(token, turnSecret string, pin [32]byte, now func() time.Time) (*sealer, error) {
	secret := make([]byte, 0, len(token)+len(turnSecret)+len(pin)+2)
	secret = append(append(append(append(secret, token...), 0), turnSecret...), 0)
	secret = append(secret, pin[:]...)
	key, err := hkdf.Key(sha256.New, secret, nil, "peerport cluster v1", 32)
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("fingerprint"))
	return &sealer{aead: aead, fp: hex.EncodeToString(m.Sum(nil)[:16]), now: now, seen: map[[nonceSize]byte]time.Time{}}, nil
}

// seal returns version || nonce || time || AES-GCM(body), bound to aad
// (the subject, or the request a reply answers).
func (s *sealer) seal(body []byte, aad string) ([]byte, []byte) {
	out := make([]byte, 1+nonceSize+8, 1+nonceSize+8+len(body)+s.aead.Overhead())
	out[0] = sealVersion
	nonce := out[1 : 1+nonceSize]
	rand.Read(nonce)
	binary.BigEndian.PutUint64(out[1+nonceSize:], uint64(s.now().UnixMilli()))
	out = s.aead.Seal(out, nonce, body, s.additional(out[:1+nonceSize+8], aad))
	return out, nonce
}

// open checks and decrypts a sealed message and remembers its nonce; a
// message older or newer than sealWindow, or one seen before, is refused.
func (s *sealer) open(msg []byte, aad string) (body, nonce []byte, err error) {
	if len(msg) < 1+nonceSize+8+s.aead.Overhead() || msg[0] != sealVersion {
		return nil, nil, fmt.Errorf("%w: not a sealed message", ErrSealed)
	}
	head := msg[:1+nonceSize+8]
	nonce = head[1 : 1+nonceSize]
	body, err = s.aead.Open(nil, nonce, msg[len(head):], s.additional(head, aad))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: not sealed with this cluster's key (another broker identity, or forged)", ErrSealed)
	}
	at := time.UnixMilli(int64(binary.BigEndian.Uint64(head[1+nonceSize:])))
	now := s.now()
	if d := now.Sub(at); d > sealWindow || d < -sealWindow {
		return nil, nil, fmt.Errorf("%w: sent %v from now (clocks apart, or replayed)", ErrSealed, d.Round(time.Second))
	}
	var n [nonceSize]byte
	copy(n[:], nonce)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.seen[n]; dup {
		return nil, nil, fmt.Errorf("%w: replayed", ErrSealed)
	}
	if now.Sub(s.swept) > sealWindow || len(s.seen) >= maxSeen {
		for k, t := range s.seen {
			if now.Sub(t) > 2*sealWindow {
				delete(s.seen, k)
			}
		}
		s.swept = now
		if len(s.seen) >= maxSeen {
			return nil, nil, fmt.Errorf("%w: too many messages in one window", ErrSealed)
		}
	}
	s.seen[n] = now
	return body, nonce, nil
}

// additional binds the header (version, nonce, time) and the context.
func (s *sealer) additional(head []byte, aad string) []byte {
	return append(append([]byte(aad), 0), head...)
}

// replyAAD binds a reply to the request it answers.
func replyAAD(requestNonce []byte) string { return "reply:" + hex.EncodeToString(requestNonce) }

package secure

import (
	"crypto"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// ALPN protocol names keep a control connection from being mistaken for a peer
// connection and the other way round.
const (
	ALPNControl = "peerport-control/1"
	ALPNPeer    = "peerport-peer/1"
)

// exporterLabel names the TLS exporter the ticket proof is bound to (RFC 8446 §7.5).
const exporterLabel = "EXPORTER-peerport-ticket-proof"

// SelfSignedCert returns a long-lived self-signed certificate for key. Peers
// never trust it by its chain, only by the pinned public key inside it.
func SelfSignedCert(key crypto.Signer, commonName string) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(20, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{commonName},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Certificate returns a self-signed certificate carrying the identity's key.
func (i *Identity) Certificate() (tls.Certificate, error) {
	return SelfSignedCert(i.priv, "peerport-agent")
}

// agentIDOf extracts the ed25519 key of a peer's leaf certificate.
func agentIDOf(rawCerts [][]byte) (AgentID, *x509.Certificate, error) {
	var id AgentID
	if len(rawCerts) == 0 {
		return id, nil, errors.New("peer sent no certificate")
	}
	cert, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return id, nil, fmt.Errorf("peer certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return id, nil, errors.New("peer certificate key is not ed25519")
	}
	copy(id[:], pub)
	return id, cert, nil
}

// PeerID returns the agent ID proven by the other side of a completed handshake.
func PeerID(cs tls.ConnectionState) (AgentID, error) {
	if len(cs.PeerCertificates) == 0 {
		return AgentID{}, errors.New("peer sent no certificate")
	}
	id, _, err := agentIDOf([][]byte{cs.PeerCertificates[0].Raw})
	return id, err
}

func baseConfig(cert tls.Certificate, alpn string) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{alpn},
	}
}

// requireKey verifies the chain-less certificate by the ed25519 key it
// carries; the TLS handshake itself proves possession of that key.
func requireKey(check func(AgentID, *x509.Certificate) error) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		id, cert, err := agentIDOf(raw)
		if err != nil {
			return err
		}
		if check == nil {
			return nil
		}
		return check(id, cert)
	}
}

// ControlServerConfig is the broker side of the control channel: it presents
// the broker certificate and asks every agent for its identity certificate.
func ControlServerConfig(cert tls.Certificate) *tls.Config {
	c := baseConfig(cert, ALPNControl)
	c.ClientAuth = tls.RequireAnyClientCert
	c.VerifyPeerCertificate = requireKey(nil)
	return c
}

// ControlClientConfig is the agent side of the control channel: the broker is
// trusted only if its key matches pin.
func ControlClientConfig(id *Identity, pin Pin) (*tls.Config, error) {
	cert, err := id.Certificate()
	if err != nil {
		return nil, err
	}
	c := baseConfig(cert, ALPNControl)
	c.InsecureSkipVerify = true // replaced by the pin check below, which is stricter than a CA chain
	c.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("broker sent no certificate")
		}
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return fmt.Errorf("broker certificate: %w", err)
		}
		if !pin.Matches(leaf) {
			return fmt.Errorf("broker %w %s: wrong broker URL, or someone in the middle", ErrPinMismatch, pin)
		}
		return nil
	}
	return c, nil
}

// PeerServerConfig is the sharer side of the peer channel. Any agent may
// complete the handshake; what it may do is decided per stream, by its proof
// of a ticket or by its ID being allowed.
func PeerServerConfig(id *Identity) (*tls.Config, error) {
	cert, err := id.Certificate()
	if err != nil {
		return nil, err
	}
	c := baseConfig(cert, ALPNPeer)
	c.ClientAuth = tls.RequireAnyClientCert
	c.VerifyPeerCertificate = requireKey(nil)
	return c, nil
}

// PeerClientConfig is the connector side of the peer channel: the sharer must
// hold the key of want, the sharer ID taken from the ticket.
func PeerClientConfig(id *Identity, want AgentID) (*tls.Config, error) {
	cert, err := id.Certificate()
	if err != nil {
		return nil, err
	}
	c := baseConfig(cert, ALPNPeer)
	c.InsecureSkipVerify = true // replaced by the key check below
	c.VerifyPeerCertificate = requireKey(func(got AgentID, _ *x509.Certificate) error {
		if got != want {
			return fmt.Errorf("sharer %w: ticket names %s, peer is %s", ErrPinMismatch, want.Short(), got.Short())
		}
		return nil
	})
	return c, nil
}

// Proof is what a connector sends the sharer to show it holds the ticket:
// HMAC-SHA256 keyed by the proof key over this TLS session's exporter, so it
// is worthless on any other session.
func Proof(cs tls.ConnectionState, proofKey [32]byte) ([]byte, error) {
	ekm, err := cs.ExportKeyingMaterial(exporterLabel, nil, 32)
	if err != nil {
		return nil, fmt.Errorf("tls exporter: %w", err)
	}
	m := hmac.New(sha256.New, proofKey[:])
	m.Write(ekm)
	return m.Sum(nil), nil
}

// VerifyProof checks a connector's proof on this TLS session.
func VerifyProof(cs tls.ConnectionState, proofKey [32]byte, proof []byte) error {
	want, err := Proof(cs, proofKey)
	if err != nil {
		return err
	}
	if !hmac.Equal(want, proof) {
		return ErrBadProof
	}
	return nil
}

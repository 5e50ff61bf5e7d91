package secure

import (
	"bytes"
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
	// ALPNRelay is a broker relay connection: an agent's own TLS connection
	// to the broker's port that the broker pairs with the other agent's.
	ALPNRelay = "peerport-relay/1"
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

// ControlServerConfigFunc is ControlServerConfig for a broker whose
// certificate can change while it runs (from ACME, or files re-read when
// they change): getCert picks it for each handshake.
func ControlServerConfigFunc(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		GetCertificate:        getCert,
		MinVersion:            tls.VersionTLS13,
		NextProtos:            []string{ALPNControl},
		ClientAuth:            tls.RequireAnyClientCert,
		VerifyPeerCertificate: requireKey(nil),
	}
}

// ControlClientConfig is the agent side of the control channel to a broker
// trusted by pin only. It is BrokerClientConfig without the URL; a zero pin
// needs the URL's host, so it is an error here.
func ControlClientConfig(id *Identity, pin Pin) (*tls.Config, error) {
	if pin.IsZero() {
		return nil, fmt.Errorf("%w: no pin (a broker without one is verified for its host name: use BrokerClientConfig)", ErrBadBrokerURL)
	}
	return BrokerClientConfig(id, BrokerURL{Pin: pin}, ALPNControl)
}

// BrokerClientConfig is the agent side of a TLS connection to the broker of
// u (the control channel, a broker relay connection), offering alpn, and
// presenting the agent's identity certificate.
//
// With a pin, the broker is trusted only if its key matches the pin; its
// chain and name do not matter. Without one, the broker's certificate chain
// must verify against the system roots (Go reads SSL_CERT_FILE and
// SSL_CERT_DIR in place of them) for u's host, a name or an IP address, as
// for any HTTPS server; a pin-less URL naming several addresses is an error:
// narrow it to the one dialed first (u.At(addr)). A refusal wraps
// ErrPinMismatch or ErrUntrustedBroker: both are final, retrying cannot help.
func BrokerClientConfig(id *Identity, u BrokerURL, alpn string) (*tls.Config, error) {
	return brokerClientConfig(id, u, alpn, nil)
}

// brokerClientConfig is BrokerClientConfig with the roots given; nil means
// the system's. Tests pass their own CA.
func brokerClientConfig(id *Identity, u BrokerURL, alpn string, roots *x509.CertPool) (*tls.Config, error) {
	cert, err := id.Certificate()
	if err != nil {
		return nil, err
	}
	c := baseConfig(cert, alpn)
	if !u.Pin.IsZero() {
		c.InsecureSkipVerify = true // replaced by the pin check below, which is stricter than a CA chain
		c.VerifyPeerCertificate = checkPin(u.Pin)
		return c, nil
	}
	// A pin-less URL naming several addresses names no one host: the
	// caller dials one node, and verifies it, by u.At(addr).
	if len(u.Addrs()) > 1 {
		return nil, fmt.Errorf("%w: broker URL names %d addresses; verify the one dialed (BrokerURL.At)", ErrBadBrokerURL, len(u.Addrs()))
	}
	host := u.Host()
	if host == "" {
		return nil, fmt.Errorf("%w: broker address %q has no host to verify its certificate for", ErrBadBrokerURL, u.Addr)
	}
	// ServerName is sent as SNI (for a name, not an IP), which a broker
	// with several names or an ACME certificate picks its certificate by.
	c.ServerName = host
	c.RootCAs = roots
	// crypto/tls would verify the chain itself, but its error ("tls: failed
	// to verify certificate: x509: ...") names no broker, says nothing of
	// what to do, and wraps nothing an agent can tell from a network error
	// that is worth retrying. So the same verification crypto/tls does
	// (x509.Verify of the leaf, with the peer's intermediates, for the host
	// and server authentication) runs here, and its error is ours.
	c.InsecureSkipVerify = true
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		return verifyBroker(u.Addr, host, roots, cs.PeerCertificates)
	}
	return c, nil
}

// checkPin accepts a broker whose leaf carries the pinned key.
func checkPin(pin Pin) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
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
}

// verifyBroker verifies a pin-less broker's chain for host and says what
// is wrong in terms of what the user can change.
func verifyBroker(addr, host string, roots *x509.CertPool, certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return fmt.Errorf("broker %s: %w (it sent no certificate)", addr, ErrUntrustedBroker)
	}
	opts := x509.VerifyOptions{Roots: roots, DNSName: host, Intermediates: x509.NewCertPool()}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err := certs[0].Verify(opts)
	if err == nil {
		return nil
	}
	var (
		hostErr    x509.HostnameError
		invalidErr x509.CertificateInvalidError
	)
	// x509 checks the name before the chain; an untrusted chain is the
	// deeper problem, and the one to report.
	if errors.As(err, &hostErr) {
		opts.DNSName = ""
		if _, cerr := certs[0].Verify(opts); cerr != nil {
			err = cerr
		}
	}
	leaf := certs[0]
	hint := "if the broker uses a private CA, point SSL_CERT_FILE at its root"
	switch {
	case leaf.Subject.CommonName == brokerCommonName && bytes.Equal(leaf.RawIssuer, leaf.RawSubject):
		hint = "this broker has a self-signed key: use the broker URL with #PIN that it printed"
	case errors.As(err, &hostErr):
		hint = "use a broker URL with a name the certificate is for"
	case errors.As(err, &invalidErr) && invalidErr.Reason == x509.Expired:
		hint = "check this machine's clock, or ask the broker's operator to renew it"
	}
	return fmt.Errorf("broker %s: %w (%v); %s", addr, ErrUntrustedBroker, err, hint)
}

// brokerCommonName is the name in a broker's self-signed certificate.
const brokerCommonName = "peerport-broker"

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

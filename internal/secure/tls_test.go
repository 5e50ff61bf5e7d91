package secure

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/testutil"
)

// connPair returns two connected ends: over net.Pipe, or over loopback TCP.
type connPair func(t *testing.T) (net.Conn, net.Conn)

func pipePair(*testing.T) (net.Conn, net.Conn) { return net.Pipe() }

func tcpPair(t *testing.T) (net.Conn, net.Conn) { return testutil.TCPPair(t) }

// handshake runs a full TLS handshake between client and server and one
// byte from server to client after it: in TLS 1.3 the client finishes before
// the server has checked the client certificate, and the server sends its
// session tickets after; the byte settles both sides. Failure cases must use
// tcpPair: over an unbuffered net.Pipe a side sending an alert while the
// other is still writing its flight waits until the deadline.
func handshake(t *testing.T, pair connPair, client, server *tls.Config) (cc, sc *tls.Conn, cerr, serr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c1, c2 := pair(t)
	cc, sc = tls.Client(c1, client), tls.Server(c2, server)
	// Closing the raw ends, not the TLS conns: a close_notify nobody reads
	// would block on a net.Pipe.
	t.Cleanup(func() { c1.Close(); c2.Close() })
	done := make(chan error, 1)
	go func() {
		err := sc.HandshakeContext(ctx)
		if err == nil {
			_, err = sc.Write([]byte{1})
		}
		if err != nil {
			c2.Close()
		}
		done <- err
	}()
	cerr = cc.HandshakeContext(ctx)
	if cerr == nil {
		var b [1]byte
		_, cerr = io.ReadFull(cc, b[:])
	}
	if cerr != nil {
		c1.Close()
	}
	serr = <-done
	return cc, sc, cerr, serr
}

var transports = []struct {
	name string
	pair connPair
}{{"pipe", pipePair}, {"tcp", tcpPair}}

func brokerCert(t *testing.T) tls.Certificate {
	t.Helper()
	c, err := SelfSignedCert(brokerKey(t), "peerport-broker")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func controlClient(t *testing.T, id *Identity, pin Pin) *tls.Config {
	t.Helper()
	c, err := ControlClientConfig(id, pin)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func peerServer(t *testing.T, id *Identity) *tls.Config {
	t.Helper()
	c, err := PeerServerConfig(id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func peerClient(t *testing.T, id *Identity, want AgentID) *tls.Config {
	t.Helper()
	c, err := PeerClientConfig(id, want)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestControlHandshake(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { testControlHandshake(t, tr.pair) })
	}
}

func testControlHandshake(t *testing.T, pair connPair) {
	broker, agent := brokerCert(t), newID(t)
	cc, sc, cerr, serr := handshake(t, pair, controlClient(t, agent, PinOf(broker.Leaf)), ControlServerConfig(broker))
	if cerr != nil || serr != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	cs, ss := cc.ConnectionState(), sc.ConnectionState()
	if cs.Version != tls.VersionTLS13 {
		t.Errorf("version %x, want TLS 1.3", cs.Version)
	}
	if cs.NegotiatedProtocol != ALPNControl || ss.NegotiatedProtocol != ALPNControl {
		t.Errorf("ALPN %q/%q, want %q", cs.NegotiatedProtocol, ss.NegotiatedProtocol, ALPNControl)
	}
	// The broker learns the agent's identity from the handshake.
	if got, err := PeerID(ss); err != nil || got != agent.ID() {
		t.Errorf("broker sees agent %v, %v; want %v", got, err, agent.ID())
	}
}

func TestControlPinMismatch(t *testing.T) {
	broker, impostor := brokerCert(t), brokerCert(t)
	_, _, cerr, serr := handshake(t, tcpPair, controlClient(t, newID(t), PinOf(broker.Leaf)), ControlServerConfig(impostor))
	if !errors.Is(cerr, ErrPinMismatch) {
		t.Errorf("client: got %v, want ErrPinMismatch", cerr)
	}
	if serr == nil {
		t.Error("server completed a handshake the client refused")
	}
}

func TestControlServerNeedsClientCert(t *testing.T) {
	broker := brokerCert(t)
	anon := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{ALPNControl}}
	if _, _, cerr, serr := handshake(t, tcpPair, anon, ControlServerConfig(broker)); serr == nil && cerr == nil {
		t.Error("broker accepted an agent without a certificate")
	}
}

func TestTLS12Refused(t *testing.T) {
	broker := brokerCert(t)
	old := controlClient(t, newID(t), PinOf(broker.Leaf))
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if _, _, cerr, serr := handshake(t, tcpPair, old, ControlServerConfig(broker)); serr == nil || cerr == nil {
		t.Errorf("TLS 1.2 handshake: client %v, server %v; want both to fail", cerr, serr)
	}
}

// TestALPNSeparatesChannels checks that a control client does not complete a
// handshake with a peer server even when the pin matches.
func TestALPNSeparatesChannels(t *testing.T) {
	sharer := newID(t)
	cert, err := sharer.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	_, _, cerr, serr := handshake(t, tcpPair, controlClient(t, newID(t), PinOf(cert.Leaf)), peerServer(t, sharer))
	if cerr == nil || serr == nil {
		t.Errorf("control client vs peer server: client %v, server %v; want both to fail", cerr, serr)
	}
}

func TestPeerHandshake(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { testPeerHandshake(t, tr.pair) })
	}
}

func testPeerHandshake(t *testing.T, pair connPair) {
	sharer, connector := newID(t), newID(t)
	cc, sc, cerr, serr := handshake(t, pair, peerClient(t, connector, sharer.ID()), peerServer(t, sharer))
	if cerr != nil || serr != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	cs, ss := cc.ConnectionState(), sc.ConnectionState()
	if cs.NegotiatedProtocol != ALPNPeer {
		t.Errorf("ALPN %q, want %q", cs.NegotiatedProtocol, ALPNPeer)
	}
	if got, err := PeerID(cs); err != nil || got != sharer.ID() {
		t.Errorf("connector sees %v, %v; want sharer %v", got, err, sharer.ID())
	}
	if got, err := PeerID(ss); err != nil || got != connector.ID() {
		t.Errorf("sharer sees %v, %v; want connector %v", got, err, connector.ID())
	}
}

func TestPeerWrongSharer(t *testing.T) {
	sharer, impostor := newID(t), newID(t)
	_, _, cerr, serr := handshake(t, tcpPair, peerClient(t, newID(t), sharer.ID()), peerServer(t, impostor))
	if !errors.Is(cerr, ErrPinMismatch) {
		t.Errorf("client: got %v, want ErrPinMismatch", cerr)
	}
	if serr == nil {
		t.Error("server completed a handshake the client refused")
	}
}

func TestPeerIDWithoutCertificate(t *testing.T) {
	if _, err := PeerID(tls.ConnectionState{}); err == nil {
		t.Error("PeerID of a state without certificates succeeded")
	}
}

func TestProof(t *testing.T) {
	sharer, connector := newID(t), newID(t)
	tk := newTicket(t, "127.0.0.1:7000", "web")
	other := newTicket(t, "127.0.0.1:7000", "web")

	session := func() (client, server tls.ConnectionState) {
		cc, sc, cerr, serr := handshake(t, pipePair, peerClient(t, connector, sharer.ID()), peerServer(t, sharer))
		if cerr != nil || serr != nil {
			t.Fatalf("handshake: client %v, server %v", cerr, serr)
		}
		return cc.ConnectionState(), sc.ConnectionState()
	}
	c1, s1 := session()
	c2, s2 := session()

	proof, err := Proof(c1, tk.ProofKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyProof(s1, tk.ProofKey(), proof); err != nil {
		t.Errorf("proof on its own session: %v", err)
	}

	otherProof, err := Proof(c1, other.ProofKey())
	if err != nil {
		t.Fatal(err)
	}
	admitProof, err := Proof(c1, tk.AdmitKey())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		state tls.ConnectionState
		proof []byte
	}{
		{"replayed on another session", s2, proof},
		{"another ticket's proof key", s1, otherProof},
		{"admit key as proof key (what the broker knows)", s1, admitProof},
		{"empty", s1, nil},
		{"truncated", s1, proof[:len(proof)-1]},
		{"flipped bit", s1, append(append([]byte(nil), proof[:len(proof)-1]...), proof[len(proof)-1]^1)},
	} {
		if err := VerifyProof(tt.state, tk.ProofKey(), tt.proof); !errors.Is(err, ErrBadProof) {
			t.Errorf("%s: got %v, want ErrBadProof", tt.name, err)
		}
	}
	// The exporter differs per session, so the same key proves differently.
	p2, err := Proof(c2, tk.ProofKey())
	if err != nil {
		t.Fatal(err)
	}
	if string(p2) == string(proof) {
		t.Error("two sessions yield the same proof")
	}
	if err := VerifyProof(s2, tk.ProofKey(), p2); err != nil {
		t.Errorf("proof on the second session: %v", err)
	}
}

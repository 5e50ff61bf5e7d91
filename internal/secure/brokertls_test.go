package secure

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/testutil"
)

func serveCert(c tls.Certificate) *tls.Config {
	return ControlServerConfigFunc(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &c, nil })
}

// TestBrokerClientCA: a broker URL without a pin trusts the broker by its
// certificate chain, for the URL's host; every refusal is ErrUntrustedBroker
// with a message that names the broker and says what to do.
func TestBrokerClientCA(t *testing.T) {
	ca, other := testutil.NewCA(t, "test root"), testutil.NewCA(t, "another root")
	now := time.Now()
	good := ca.Issue(t, now.Add(-time.Hour), now.Add(time.Hour), "broker.test", "203.0.113.7")
	expired := ca.Issue(t, now.Add(-2*time.Hour), now.Add(-time.Hour), "broker.test")
	for _, tt := range []struct {
		name  string
		addr  string
		roots *x509.CertPool
		cert  tls.Certificate
		want  string // "" = handshake succeeds; else the client's whole error
	}{
		{"name", "broker.test:443", ca.Pool, good, ""},
		{"IP address", "203.0.113.7:7000", ca.Pool, good, ""},
		{"wrong name", "other.test:443", ca.Pool, good,
			"broker other.test:443: certificate not trusted (x509: certificate is valid for broker.test, not other.test); use a broker URL with a name the certificate is for"},
		{"wrong IP", "203.0.113.8:443", ca.Pool, good,
			"broker 203.0.113.8:443: certificate not trusted (x509: certificate is valid for 203.0.113.7, not 203.0.113.8); use a broker URL with a name the certificate is for"},
		{"untrusted root", "broker.test:443", other.Pool, good,
			"broker broker.test:443: certificate not trusted (x509: certificate signed by unknown authority); if the broker uses a private CA, point SSL_CERT_FILE at its root"},
		{"untrusted root and wrong name", "other.test:443", other.Pool, good,
			"broker other.test:443: certificate not trusted (x509: certificate signed by unknown authority); if the broker uses a private CA, point SSL_CERT_FILE at its root"},
		{"expired", "broker.test:443", ca.Pool, expired, "expired"},
		{"self-signed pinned broker without its pin", "broker.test:443", ca.Pool, brokerCert(t),
			"broker broker.test:443: certificate not trusted (x509: certificate signed by unknown authority); this broker has a self-signed key: use the broker URL with #PIN that it printed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := brokerClientConfig(newID(t), BrokerURL{Token: "tok", Addr: tt.addr}, ALPNControl, tt.roots)
			if err != nil {
				t.Fatal(err)
			}
			_, _, cerr, serr := handshake(t, tcpPair, cfg, serveCert(tt.cert))
			if tt.want == "" {
				if cerr != nil || serr != nil {
					t.Fatalf("handshake: client %v, server %v", cerr, serr)
				}
				return
			}
			if !errors.Is(cerr, ErrUntrustedBroker) {
				t.Fatalf("client: %v, want ErrUntrustedBroker", cerr)
			}
			if errors.Is(cerr, ErrPinMismatch) {
				t.Errorf("client: %v is also ErrPinMismatch", cerr)
			}
			if msg := cerr.Error(); msg != tt.want && !(len(tt.want) < 80 && strings.Contains(msg, tt.want)) {
				t.Errorf("client error\n  %s\nwant\n  %s", msg, tt.want)
			}
			if !strings.HasPrefix(cerr.Error(), "broker "+tt.addr+": ") {
				t.Errorf("client error %q does not name the broker %s", cerr, tt.addr)
			}
			if serr == nil {
				t.Error("server completed a handshake the client refused")
			}
		})
	}
}

// TestBrokerClientConfigPinned: with a pin, only the key counts: a
// CA-issued certificate of the pinned key passes under any name, one of
// another key fails with ErrPinMismatch, as today.
func TestBrokerClientConfigPinned(t *testing.T) {
	ca := testutil.NewCA(t, "test root")
	now := time.Now()
	cert := ca.Issue(t, now.Add(-time.Hour), now.Add(time.Hour), "broker.test")
	u := BrokerURL{Token: "tok", Addr: "elsewhere.test:1", Pin: PinOf(cert.Leaf)}
	cfg, err := BrokerClientConfig(newID(t), u, ALPNRelay)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "" || cfg.RootCAs != nil {
		t.Errorf("pinned config has ServerName %q, RootCAs %v: the pin alone must decide", cfg.ServerName, cfg.RootCAs)
	}
	srv := serveCert(cert)
	srv.NextProtos = []string{ALPNRelay}
	if _, _, cerr, serr := handshake(t, tcpPair, cfg, srv); cerr != nil || serr != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	u.Pin = PinOf(brokerCert(t).Leaf)
	cfg, err = BrokerClientConfig(newID(t), u, ALPNRelay)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, cerr, _ := handshake(t, tcpPair, cfg, srv); !errors.Is(cerr, ErrPinMismatch) || errors.Is(cerr, ErrUntrustedBroker) {
		t.Errorf("client: %v, want ErrPinMismatch only", cerr)
	}
}

func TestBrokerClientConfigArgs(t *testing.T) {
	id := newID(t)
	cfg, err := BrokerClientConfig(id, BrokerURL{Token: "tok", Addr: "[2001:db8::1]:443"}, ALPNRelay)
	if err != nil {
		t.Fatal(err)
	}
	// nil RootCAs: the system roots, which Go reads from SSL_CERT_FILE when set.
	if cfg.ServerName != "2001:db8::1" || cfg.RootCAs != nil || cfg.NextProtos[0] != ALPNRelay || cfg.MinVersion != tls.VersionTLS13 {
		t.Errorf("config: ServerName %q, RootCAs %v, ALPN %q, min version %x", cfg.ServerName, cfg.RootCAs, cfg.NextProtos, cfg.MinVersion)
	}
	if len(cfg.Certificates) != 1 {
		t.Error("config presents no agent certificate")
	}
	for _, tt := range []struct {
		name string
		err  func() error
		want string
	}{
		{"no host", func() error {
			_, err := BrokerClientConfig(id, BrokerURL{Addr: ":443"}, ALPNControl)
			return err
		}, `malformed broker URL: broker address ":443" has no host to verify its certificate for`},
		{"ControlClientConfig without pin", func() error {
			_, err := ControlClientConfig(id, Pin{})
			return err
		}, "malformed broker URL: no pin (a broker without one is verified for its host name: use BrokerClientConfig)"},
	} {
		if err := tt.err(); err == nil || err.Error() != tt.want || !errors.Is(err, ErrBadBrokerURL) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}

// TestControlServerConfigFunc: the certificate is picked per handshake, so
// a renewed one is served without a restart.
func TestControlServerConfigFunc(t *testing.T) {
	ca := testutil.NewCA(t, "test root")
	now := time.Now()
	certs := []tls.Certificate{
		ca.Issue(t, now.Add(-time.Hour), now.Add(time.Hour), "broker.test"),
		ca.Issue(t, now.Add(-time.Hour), now.Add(time.Hour), "broker.test"),
	}
	n := 0
	srv := ControlServerConfigFunc(func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if h.ServerName != "broker.test" {
			t.Errorf("SNI %q, want broker.test", h.ServerName)
		}
		c := &certs[n%2]
		n++
		return c, nil
	})
	for i := range 2 {
		cfg, err := brokerClientConfig(newID(t), BrokerURL{Addr: "broker.test:443"}, ALPNControl, ca.Pool)
		if err != nil {
			t.Fatal(err)
		}
		cc, _, cerr, serr := handshake(t, tcpPair, cfg, srv)
		if cerr != nil || serr != nil {
			t.Fatalf("handshake %d: client %v, server %v", i, cerr, serr)
		}
		if got := cc.ConnectionState().PeerCertificates[0]; !got.Equal(certs[i].Leaf) {
			t.Errorf("handshake %d served certificate %v, want %v", i, got.SerialNumber, certs[i].Leaf.SerialNumber)
		}
	}
}

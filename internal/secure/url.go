package secure

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Pin is the SHA-256 of a certificate's DER SubjectPublicKeyInfo.
type Pin [sha256.Size]byte

// String returns the unpadded base64url form used in broker URLs.
func (p Pin) String() string { return base64.RawURLEncoding.EncodeToString(p[:]) }

// IsZero reports whether p is unset.
func (p Pin) IsZero() bool { return p == Pin{} }

// ParsePin parses the text form of a pin.
func ParsePin(s string) (Pin, error) {
	var p Pin
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != len(p) {
		return p, fmt.Errorf("%w: pin must be 43 base64url characters", ErrBadBrokerURL)
	}
	copy(p[:], b)
	return p, nil
}

// PinOf returns the pin of a certificate.
func PinOf(cert *x509.Certificate) Pin { return sha256.Sum256(cert.RawSubjectPublicKeyInfo) }

// Matches reports whether cert's public key is the pinned one, in constant time.
func (p Pin) Matches(cert *x509.Certificate) bool {
	got := PinOf(cert)
	return subtle.ConstantTimeCompare(got[:], p[:]) == 1
}

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9._~-]+$`)

// DefaultBrokerPort is the control port a broker URL without a port means.
const DefaultBrokerPort = 7000

// BrokerURL is pp://TOKEN@HOST:PORT#PIN: where a broker listens, the token
// that admits agents to it, and the pin of its key. A broker with a
// certificate from a CA has no pin, pp://TOKEN@NAME:PORT: agents then verify
// its certificate chain against the system roots, for the URL's host.
type BrokerURL struct {
	Token string
	Addr  string // host:port
	Pin   Pin    // zero: no pin; the certificate must verify for Addr's host
}

// String returns the URL form; without "#PIN" when the pin is zero.
func (u BrokerURL) String() string { return "pp://" + u.Token + "@" + u.Addr + u.fragment() }

// Redacted returns the URL with the token hidden, for logs.
func (u BrokerURL) Redacted() string { return "pp://***@" + u.Addr + u.fragment() }

func (u BrokerURL) fragment() string {
	if u.Pin.IsZero() {
		return ""
	}
	return "#" + u.Pin.String()
}

// Host returns the host of Addr (without brackets for IPv6): the name a
// broker's CA-issued certificate must be valid for.
func (u BrokerURL) Host() string {
	host, _, err := net.SplitHostPort(u.Addr)
	if err != nil {
		return ""
	}
	return host
}

// ParseBrokerURL parses pp://TOKEN@HOST[:PORT][#PIN]. Without a pin the
// broker is trusted by its certificate chain instead (see BrokerClientConfig).
func ParseBrokerURL(s string) (BrokerURL, error) {
	var u BrokerURL
	s = strings.TrimSpace(s)
	pu, err := url.Parse(s)
	if err != nil {
		// url's error quotes the whole input, token included: say less.
		return u, fmt.Errorf("%w: not a URL of the form pp://TOKEN@HOST:PORT#PIN or pp://TOKEN@HOST:PORT", ErrBadBrokerURL)
	}
	if pu.Scheme != "pp" {
		return u, fmt.Errorf("%w: scheme must be pp:// (got %q)", ErrBadBrokerURL, pu.Scheme)
	}
	if pu.User == nil || pu.User.Username() == "" {
		return u, fmt.Errorf("%w: missing token (pp://TOKEN@host:port#pin)", ErrBadBrokerURL)
	}
	if _, has := pu.User.Password(); has {
		return u, fmt.Errorf("%w: token must not contain ':'", ErrBadBrokerURL)
	}
	if pu.Path != "" || pu.RawQuery != "" {
		return u, fmt.Errorf("%w: unexpected path or query", ErrBadBrokerURL)
	}
	if !tokenRE.MatchString(pu.User.Username()) {
		return u, fmt.Errorf("%w: token may hold only A-Z a-z 0-9 - . _ ~", ErrBadBrokerURL)
	}
	host, port := pu.Hostname(), pu.Port()
	if strings.ContainsAny(host, "%") || (strings.Contains(host, ":") && !strings.HasPrefix(pu.Host, "[")) {
		return u, fmt.Errorf("%w: bad host %q (IPv6 goes in brackets, without a zone)", ErrBadBrokerURL, pu.Host)
	}
	if host == "" {
		return u, fmt.Errorf("%w: missing host", ErrBadBrokerURL)
	}
	if port == "" {
		port = strconv.Itoa(DefaultBrokerPort)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return u, fmt.Errorf("%w: port %q out of range", ErrBadBrokerURL, port)
	}
	u = BrokerURL{Token: pu.User.Username(), Addr: net.JoinHostPort(host, port)}
	// A token cannot hold '#', so a '#' in the text starts the fragment.
	if !strings.Contains(s, "#") {
		return u, nil
	}
	if pu.Fragment == "" {
		return BrokerURL{}, fmt.Errorf("%w: empty #pin (leave out the '#' for a broker with a certificate from a CA)", ErrBadBrokerURL)
	}
	pin, err := ParsePin(pu.Fragment)
	if err != nil {
		return BrokerURL{}, err
	}
	// The zero pin means "no pin"; written out, it would print back as a
	// URL without one, and is far more likely a mangled URL than a key.
	if pin.IsZero() {
		return BrokerURL{}, fmt.Errorf("%w: pin is all zeros", ErrBadBrokerURL)
	}
	u.Pin = pin
	return u, nil
}

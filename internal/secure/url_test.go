package secure

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
)

func brokerKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestPin(t *testing.T) {
	key := brokerKey(t)
	c1, err := SelfSignedCert(key, "peerport-broker")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := SelfSignedCert(key, "another-name")
	if err != nil {
		t.Fatal(err)
	}
	other, err := SelfSignedCert(brokerKey(t), "peerport-broker")
	if err != nil {
		t.Fatal(err)
	}

	p := PinOf(c1.Leaf)
	if p != sha256.Sum256(c1.Leaf.RawSubjectPublicKeyInfo) {
		t.Fatal("PinOf is not the SHA-256 of the SPKI")
	}
	// The pin names the key, so a re-issued certificate keeps it.
	if !p.Matches(c1.Leaf) || !p.Matches(c2.Leaf) {
		t.Error("pin does not match a certificate of its key")
	}
	if p.Matches(other.Leaf) {
		t.Error("pin matches a certificate of another key")
	}
	if p.IsZero() || !(Pin{}).IsZero() {
		t.Error("IsZero wrong")
	}

	s := p.String()
	if len(s) != 43 || strings.ContainsAny(s, "+/=") {
		t.Fatalf("String() = %q, want 43 base64url characters", s)
	}
	got, err := ParsePin(s)
	if err != nil || got != p {
		t.Fatalf("ParsePin(%q) = %v, %v; want %v", s, got, err, p)
	}
}

func TestParsePinErrors(t *testing.T) {
	s := PinOf(mustX509(t)).String()
	for name, in := range map[string]string{
		"empty":      "",
		"short":      s[:42],
		"long":       s + "A",
		"padded":     s + "=",
		"std base64": "+" + s[1:42] + "/",
		"space":      s[:10] + " " + s[11:],
		"hex":        strings.Repeat("ab", 32),
	} {
		if _, err := ParsePin(in); !errors.Is(err, ErrBadBrokerURL) {
			t.Errorf("%s: ParsePin(%q) = %v, want ErrBadBrokerURL", name, in, err)
		}
	}
}

func mustX509(t testing.TB) *x509.Certificate {
	t.Helper()
	c, err := SelfSignedCert(brokerKey(t), "peerport-broker")
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf
}

func TestParseBrokerURL(t *testing.T) {
	pin := PinOf(mustX509(t))
	ps := pin.String()
	good := []struct {
		in   string
		want BrokerURL
	}{
		{"pp://tok@broker.example.com:7443#" + ps, BrokerURL{"tok", "broker.example.com:7443", pin}},
		{"pp://tok@broker.example.com#" + ps, BrokerURL{"tok", "broker.example.com:7000", pin}},
		{"pp://tok@127.0.0.1:1#" + ps, BrokerURL{"tok", "127.0.0.1:1", pin}},
		{"pp://tok@127.0.0.1:65535#" + ps, BrokerURL{"tok", "127.0.0.1:65535", pin}},
		{"pp://tok@[::1]:7000#" + ps, BrokerURL{"tok", "[::1]:7000", pin}},
		{"pp://tok@[::1]#" + ps, BrokerURL{"tok", "[::1]:7000", pin}},
		{"pp://tok@[2001:db8::1]:443#" + ps, BrokerURL{"tok", "[2001:db8::1]:443", pin}},
		{"pp://tok@h:#" + ps, BrokerURL{"tok", "h:7000", pin}}, // RFC 3986: an empty port is the default
		{"  pp://tok@h:9#" + ps + "\n", BrokerURL{"tok", "h:9", pin}},
		{"pp://A-b_c.d~9@h:9#" + ps, BrokerURL{"A-b_c.d~9", "h:9", pin}},
		// No pin: a broker with a certificate from a CA.
		{"pp://tok@broker.example.com:443", BrokerURL{"tok", "broker.example.com:443", Pin{}}},
		{"pp://tok@broker.example.com", BrokerURL{"tok", "broker.example.com:7000", Pin{}}},
		{"pp://tok@203.0.113.7:443", BrokerURL{"tok", "203.0.113.7:443", Pin{}}},
		{"pp://tok@[2001:db8::1]:443", BrokerURL{"tok", "[2001:db8::1]:443", Pin{}}},
		{" pp://tok@h:9\n", BrokerURL{"tok", "h:9", Pin{}}},
	}
	for _, tt := range good {
		got, err := ParseBrokerURL(tt.in)
		if err != nil {
			t.Errorf("ParseBrokerURL(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseBrokerURL(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		again, err := ParseBrokerURL(got.String())
		if err != nil || again != got {
			t.Errorf("String round trip of %q: %q parses to %+v, %v", tt.in, got.String(), again, err)
		}
		if r := got.Redacted(); strings.Contains(r, got.Token) {
			t.Errorf("Redacted() = %q shows the token", r)
		}
		// A pin-less URL prints without '#', a pinned one with it.
		for _, s := range []string{got.String(), got.Redacted()} {
			if strings.Contains(s, "#") == got.Pin.IsZero() {
				t.Errorf("%q: '#' present %v with pin %v", s, strings.Contains(s, "#"), got.Pin)
			}
		}
	}

	bad := map[string]string{
		"empty":          "",
		"scheme https":   "https://tok@h:7000#" + ps,
		"scheme PP2":     "pp2://tok@h:7000#" + ps,
		"no scheme":      "tok@h:7000#" + ps,
		"missing token":  "pp://h:7000#" + ps,
		"empty token":    "pp://@h:7000#" + ps,
		"token with ':'": "pp://tok:secret@h:7000#" + ps,
		"token only ':'": "pp://:secret@h:7000#" + ps,
		"empty pin":      "pp://tok@h:7000#",
		"zero pin":       "pp://tok@h:7000#" + Pin{}.String(),
		"short pin":      "pp://tok@h:7000#" + ps[:42],
		"long pin":       "pp://tok@h:7000#" + ps + "A",
		"bad pin chars":  "pp://tok@h:7000#" + strings.Repeat("*", 43),
		"port 0":         "pp://tok@h:0#" + ps,
		"port 65536":     "pp://tok@h:65536#" + ps,
		"port huge":      "pp://tok@h:99999999999999999999#" + ps,
		"port letters":   "pp://tok@h:http#" + ps,
		"missing host":   "pp://tok@:7000#" + ps,
		"path":           "pp://tok@h:7000/x#" + ps,
		"root path":      "pp://tok@h:7000/#" + ps,
		"query":          "pp://tok@h:7000?a=b#" + ps,
		"empty query":    "pp://tok@h:7000?x#" + ps,
		// RFC 3986 needs brackets around an IPv6 host; without them the last
		// group would be taken for the port.
		"ipv6 unbracketed":         "pp://tok@::1:7000#" + ps,
		"ipv6 unbracketed no port": "pp://tok@2001:db8::1#" + ps,
		"control char":             "pp://tok@h:7000\x00#" + ps,
	}
	for name, in := range bad {
		if u, err := ParseBrokerURL(in); !errors.Is(err, ErrBadBrokerURL) {
			t.Errorf("%s: ParseBrokerURL(%q) = %+v, %v; want ErrBadBrokerURL", name, in, u, err)
		}
	}
}

func TestBrokerURLForms(t *testing.T) {
	pin := PinOf(mustX509(t))
	for _, tt := range []struct {
		u             BrokerURL
		str, redacted string
		host          string
	}{
		{BrokerURL{"tok", "broker.test:443", Pin{}}, "pp://tok@broker.test:443", "pp://***@broker.test:443", "broker.test"},
		{BrokerURL{"tok", "[::1]:7000", Pin{}}, "pp://tok@[::1]:7000", "pp://***@[::1]:7000", "::1"},
		{BrokerURL{"tok", "h:1", pin}, "pp://tok@h:1#" + pin.String(), "pp://***@h:1#" + pin.String(), "h"},
	} {
		if got := tt.u.String(); got != tt.str {
			t.Errorf("String() = %q, want %q", got, tt.str)
		}
		if got := tt.u.Redacted(); got != tt.redacted {
			t.Errorf("Redacted() = %q, want %q", got, tt.redacted)
		}
		if got := tt.u.Host(); got != tt.host {
			t.Errorf("Host() of %q = %q, want %q", tt.u.Addr, got, tt.host)
		}
	}
	for _, tt := range []struct{ in, want string }{
		{"pp://tok@h:7000#", "malformed broker URL: empty #pin (leave out the '#' for a broker with a certificate from a CA)"},
		{"pp://tok@h:7000#" + Pin{}.String(), "malformed broker URL: pin is all zeros"},
	} {
		if _, err := ParseBrokerURL(tt.in); err == nil || err.Error() != tt.want {
			t.Errorf("ParseBrokerURL(%q) = %v, want %q", tt.in, err, tt.want)
		}
	}
}

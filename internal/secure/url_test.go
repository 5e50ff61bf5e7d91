package secure

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"slices"
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

// TestParseBrokerURLMulti: a URL may name several addresses of one broker
// (the nodes of a cluster), comma-separated; Addr keeps them joined in
// their order, each with its port, and the URL prints back as it parsed.
func TestParseBrokerURLMulti(t *testing.T) {
	pin := PinOf(mustX509(t))
	ps := pin.String()
	for _, tt := range []struct {
		in    string
		want  BrokerURL
		addrs []string
		host  string
	}{
		{"pp://tok@b1.example.com:7000,b2.example.com:7000,[2001:db8::1]:443#" + ps,
			BrokerURL{"tok", "b1.example.com:7000,b2.example.com:7000,[2001:db8::1]:443", pin},
			[]string{"b1.example.com:7000", "b2.example.com:7000", "[2001:db8::1]:443"}, "b1.example.com"},
		{"pp://tok@b1,b2#" + ps, BrokerURL{"tok", "b1:7000,b2:7000", pin}, []string{"b1:7000", "b2:7000"}, "b1"},
		{"pp://tok@b1:,b2:9#" + ps, BrokerURL{"tok", "b1:7000,b2:9", pin}, []string{"b1:7000", "b2:9"}, "b1"},
		{"pp://tok@[::1],127.0.0.1:1", BrokerURL{"tok", "[::1]:7000,127.0.0.1:1", Pin{}}, []string{"[::1]:7000", "127.0.0.1:1"}, "::1"},
		// One host on several ports is several addresses.
		{"pp://tok@h:1,h:2,h:3", BrokerURL{"tok", "h:1,h:2,h:3", Pin{}}, []string{"h:1", "h:2", "h:3"}, "h"},
		{"pp://tok@a,b,c,d,e,f,g,h#" + ps, BrokerURL{"tok", "a:7000,b:7000,c:7000,d:7000,e:7000,f:7000,g:7000,h:7000", pin},
			[]string{"a:7000", "b:7000", "c:7000", "d:7000", "e:7000", "f:7000", "g:7000", "h:7000"}, "a"},
		{" PP://tok@x_1.internal:7443,10.0.0.2:7443\n", BrokerURL{"tok", "x_1.internal:7443,10.0.0.2:7443", Pin{}}, []string{"x_1.internal:7443", "10.0.0.2:7443"}, "x_1.internal"},
	} {
		got, err := ParseBrokerURL(tt.in)
		if err != nil {
			t.Errorf("ParseBrokerURL(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseBrokerURL(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if a := got.Addrs(); !slices.Equal(a, tt.addrs) {
			t.Errorf("%q: Addrs() = %q, want %q", tt.in, a, tt.addrs)
		}
		if h := got.Host(); h != tt.host {
			t.Errorf("%q: Host() = %q, want %q (the first address's)", tt.in, h, tt.host)
		}
		again, err := ParseBrokerURL(got.String())
		if err != nil || again != got {
			t.Errorf("String round trip of %q: %q parses to %+v, %v", tt.in, got.String(), again, err)
		}
		if r := got.Redacted(); r != "pp://***@"+tt.want.Addr+got.fragment() {
			t.Errorf("Redacted() = %q", r)
		}
		for _, a := range got.Addrs() {
			one := got.At(a)
			if one.Token != got.Token || one.Pin != got.Pin || one.Addr != a || !slices.Equal(one.Addrs(), []string{a}) {
				t.Errorf("At(%q) = %+v", a, one)
			}
			if again, err := ParseBrokerURL(one.String()); err != nil || again != one {
				t.Errorf("At(%q).String() = %q parses to %+v, %v", a, one.String(), again, err)
			}
		}
	}
	if a := (BrokerURL{}).Addrs(); a != nil {
		t.Errorf("Addrs() of an empty URL = %q, want nil", a)
	}
}

// TestParseBrokerURLErrors: every malformed URL, one address or several,
// fails with ErrBadBrokerURL, a message that says what is wrong, and never
// the token.
func TestParseBrokerURLErrors(t *testing.T) {
	ps := PinOf(mustX509(t)).String()
	const tok = "s3cretT0ken"
	for _, tt := range []struct{ in, want string }{
		{"", `scheme must be pp:// (got "")`},
		{"https://" + tok + "@h:1", `scheme must be pp:// (got "https")`},
		{tok + "@h:1", `scheme must be pp:// (got "")`},
		{"pp:" + tok + "@h:1", `scheme must be pp:// (got "pp")`},
		{"pp://h:1,h2:1", "missing token"},
		{"pp://@h:1", "missing token"},
		{"pp://" + tok + ":pw@h:1", "token must not contain ':'"},
		{"pp://" + tok + "!@h:1", "token may hold only"},
		{"pp://" + tok + "%zz@h:1", "token may hold only"},
		{"pp://" + tok + "@", "missing host"},
		{"pp://" + tok + "@:7000", "missing host"},
		{"pp://" + tok + "@h:1,:2", "missing host (address 2 of 2)"},
		{"pp://" + tok + "@h:1,", "empty address (two commas in a row, or one at an end) (address 2 of 2)"},
		{"pp://" + tok + "@,h:1", "empty address (two commas in a row, or one at an end) (address 1 of 2)"},
		{"pp://" + tok + "@h:1,,h:2", "empty address (two commas in a row, or one at an end) (address 2 of 3)"},
		{"pp://" + tok + "@,", "empty address"},
		{"pp://" + tok + "@a,b,c,d,e,f,g,h,i", "9 addresses, at most 8"},
		{"pp://" + tok + "@h:1,h:1", "address 2, h:1, repeats address 1"},
		{"pp://" + tok + "@h,h:7000", "address 2, h:7000, repeats address 1"},
		{"pp://" + tok + "@H:1,h:01", "address 2, h:01, repeats address 1"},
		{"pp://" + tok + "@[::1]:1,[0::1]:1", "address 2, [0::1]:1, repeats address 1"},
		{"pp://" + tok + "@1.2.3.4:1,[::ffff:1.2.3.4]:1", "address 2, [::ffff:1.2.3.4]:1, repeats address 1"},
		{"pp://" + tok + "@h:1,h:0", `port "0" out of range (address 2 of 2)`},
		{"pp://" + tok + "@h:65536,h2", `port "65536" out of range (address 1 of 2)`},
		{"pp://" + tok + "@h:+1", `port "+1" out of range`},
		{"pp://" + tok + "@h:-1", `port "-1" out of range`},
		{"pp://" + tok + "@h:1:2", `bad address "h:1:2" (HOST or HOST:PORT, several separated by commas)`},
		{"pp://" + tok + "@h:1,::1", `bad host "::1" (IPv6 goes in brackets, without a zone) (address 2 of 2)`},
		{"pp://" + tok + "@[::1", `bad host "[::1"`},
		{"pp://" + tok + "@[::1]x", `bad host "[::1]x"`},
		{"pp://" + tok + "@[1.2.3.4]:1", `bad host "[1.2.3.4]:1"`},
		{"pp://" + tok + "@[fe80::1%eth0]:1", `bad host "[fe80::1%eth0]:1"`},
		{"pp://" + tok + "@[fe80::1%25eth0]:1", `bad host "[fe80::1%25eth0]:1"`},
		{"pp://" + tok + "@[nothost]:1", `bad host "[nothost]:1"`},
		{"pp://" + tok + "@h x:1", `bad host "h x"`},
		{"pp://" + tok + "@b\u00fccher.example", "xn-- form"},
		{"pp://" + tok + "@h:1;h2:1", `bad address "h:1;h2:1"`}, // ';' is not a separator
		{"pp://" + tok + "@h;h2", `bad host "h;h2"`},
		{"pp://" + tok + "@fe80::1%eth0", `bad host "fe80::1%eth0" (IPv6 goes in brackets, without a zone)`},
		{"pp://" + tok + "@h:1,h2:1/x", "unexpected path or query"},
		{"pp://" + tok + "@h:1,h2:1?a", "unexpected path or query"},
		{"pp://" + tok + "@h:1,h2\x00", "control character"},
		{"pp://" + tok + "@h:1,h2#", "empty #pin"},
		{"pp://" + tok + "@h:1,h2#" + ps[:42], "pin must be 43 base64url characters"},
		{"pp://" + tok + "@h:1,h2#" + Pin{}.String(), "pin is all zeros"},
	} {
		u, err := ParseBrokerURL(tt.in)
		if !errors.Is(err, ErrBadBrokerURL) {
			t.Errorf("ParseBrokerURL(%q) = %+v, %v; want ErrBadBrokerURL", tt.in, u, err)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseBrokerURL(%q): %q, want it to say %q", tt.in, err, tt.want)
		}
		if strings.Contains(err.Error(), tok) {
			t.Errorf("ParseBrokerURL(%q): %q shows the token", tt.in, err)
		}
	}
}

// TestBrokerURLAt: At narrows a URL to one address, for dialing it and
// verifying its certificate; a pin-less URL of several addresses names no
// single host to verify, so it must be narrowed first.
func TestBrokerURLAt(t *testing.T) {
	u := BrokerURL{Token: "tok", Addr: "b1.test:1,[2001:db8::2]:2"}
	if h := u.At("[2001:db8::2]:2").Host(); h != "2001:db8::2" {
		t.Errorf("At(second).Host() = %q", h)
	}
	if s := u.At("relay.test:443").String(); s != "pp://tok@relay.test:443" {
		t.Errorf("At(another).String() = %q", s)
	}
	if u.Addr != "b1.test:1,[2001:db8::2]:2" {
		t.Errorf("At changed the URL it was called on: %q", u.Addr)
	}
	id := newID(t)
	if _, err := BrokerClientConfig(id, u, ALPNControl); !errors.Is(err, ErrBadBrokerURL) || !strings.Contains(err.Error(), "BrokerURL.At") {
		t.Errorf("BrokerClientConfig(pin-less, 2 addresses) = %v, want ErrBadBrokerURL naming At", err)
	}
	cfg, err := BrokerClientConfig(id, u.At("[2001:db8::2]:2"), ALPNControl)
	if err != nil || cfg.ServerName != "2001:db8::2" {
		t.Errorf("BrokerClientConfig(At(second)) = ServerName %q, %v", cfg.ServerName, err)
	}
	u.Pin = PinOf(mustX509(t))
	if _, err := BrokerClientConfig(id, u, ALPNControl); err != nil {
		t.Errorf("BrokerClientConfig(pinned, 2 addresses): %v (the pin alone decides, whichever node)", err)
	}
}

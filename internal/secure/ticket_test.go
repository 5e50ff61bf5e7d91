package secure

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func newTicket(t testing.TB, broker, share string) Ticket {
	t.Helper()
	tk, err := NewTicket(broker, PinOf(mustX509(t)), newID(t).ID(), share)
	if err != nil {
		t.Fatalf("NewTicket(%q, %q): %v", broker, share, err)
	}
	return tk
}

func isTicketErr(err error) bool {
	return errors.Is(err, ErrBadTicket) || errors.Is(err, ErrTicketVersion)
}

func TestTicketRoundTrip(t *testing.T) {
	for _, tt := range []struct{ broker, share string }{
		{"127.0.0.1:7000", "web"},
		{"[::1]:7000", "ssh"},
		{"[2001:db8::1]:1", "a"},
		{"broker.example.com:65535", "0"},
		{"b:7000", strings.Repeat("x", 63)},
		{strings.Repeat("h", 250) + ":7000", "my-share_1.v2"},
	} {
		tk := newTicket(t, tt.broker, tt.share)
		s := tk.String()
		if !strings.HasPrefix(s, TicketPrefix) || s != strings.ToLower(s) {
			t.Errorf("ticket %q: want %q and lowercase", s, TicketPrefix)
		}
		for _, in := range []string{
			s,
			" \t" + s + "\r\n",
			TicketPrefix + strings.ToUpper(s[len(TicketPrefix):]),
			// Tickets travel by phone, chat and QR code (whose alphanumeric
			// mode is uppercase only): an all-uppercase ticket is the same ticket.
			strings.ToUpper(s),
		} {
			got, err := ParseTicket(in)
			if err != nil {
				t.Errorf("ParseTicket(%.20q...): %v", in, err)
				continue
			}
			if got != tk {
				t.Errorf("ParseTicket(%.20q...) = %+v, want %+v", in, got, tk)
			}
		}
	}
}

// TestTicketGolden pins the ticket format and key derivation: a change here
// breaks every ticket already handed out, and tickets between versions.
func TestTicketGolden(t *testing.T) {
	var tk Ticket
	tk.Broker = "192.0.2.1:7000"
	tk.Share = "web"
	for i := range 32 {
		tk.Pin[i] = byte(i)
		tk.Sharer[i] = byte(0x80 + i)
		tk.Secret[i] = byte(0x40 + i)
	}
	const want = goldenTicket
	if got := tk.String(); got != want {
		t.Errorf("String() =\n%s\nwant\n%s", got, want)
	}
	got, err := ParseTicket(want)
	if err != nil || got != tk {
		t.Fatalf("ParseTicket(golden) = %+v, %v", got, err)
	}
	admit, proof := tk.AdmitKey(), tk.ProofKey()
	if h := hex.EncodeToString(admit[:]); h != goldenAdmit {
		t.Errorf("AdmitKey = %s, want %s", h, goldenAdmit)
	}
	if h := hex.EncodeToString(proof[:]); h != goldenProof {
		t.Errorf("ProofKey = %s, want %s", h, goldenProof)
	}
}

// TestTicketNoPin: a ticket for a broker with a CA-issued certificate has a
// zero pin (32 zero bytes in the same format) and still names the host its
// certificate is checked for.
func TestTicketNoPin(t *testing.T) {
	sharer := newID(t).ID()
	for _, broker := range []string{"broker.example.com:443", "203.0.113.7:443", "[2001:db8::1]:443"} {
		tk, err := NewTicket(broker, Pin{}, sharer, "web")
		if err != nil {
			t.Fatalf("NewTicket(%q, zero pin): %v", broker, err)
		}
		got, err := ParseTicket(tk.String())
		if err != nil || got != tk || !got.Pin.IsZero() {
			t.Errorf("ParseTicket(%q ticket) = %+v, %v; want %+v", broker, got, err, tk)
		}
	}
	for _, tt := range []struct{ broker, want string }{
		{":443", `malformed ticket: broker address ":443" is not host:port`},
		{"", `malformed ticket: broker address "" is not host:port`},
	} {
		if _, err := NewTicket(tt.broker, Pin{}, sharer, "web"); err == nil || err.Error() != tt.want {
			t.Errorf("NewTicket(%q, zero pin) = %v, want %q", tt.broker, err, tt.want)
		}
	}
	if _, err := NewTicket("h:1", Pin{}, AgentID{}, "web"); err == nil || err.Error() != "malformed ticket: missing sharer" {
		t.Errorf("NewTicket(zero sharer) = %v", err)
	}
}

// TestTicketGoldenNoPin pins the zero-pin form: the same format, the pin
// field all zeros.
func TestTicketGoldenNoPin(t *testing.T) {
	var tk Ticket
	tk.Broker = "broker.test:443"
	tk.Share = "web"
	for i := range 32 {
		tk.Sharer[i] = byte(0x80 + i)
		tk.Secret[i] = byte(0x40 + i)
	}
	if got := tk.String(); got != goldenTicketNoPin {
		t.Errorf("String() =\n%s\nwant\n%s", got, goldenTicketNoPin)
	}
	got, err := ParseTicket(goldenTicketNoPin)
	if err != nil || got != tk {
		t.Fatalf("ParseTicket(golden) = %+v, %v", got, err)
	}
}

func TestTicketKeys(t *testing.T) {
	a := newTicket(t, "127.0.0.1:7000", "web")
	b := newTicket(t, "127.0.0.1:7000", "web")
	if a.Secret == b.Secret {
		t.Fatal("two tickets share a secret")
	}
	if a.AdmitKey() == a.ProofKey() {
		t.Error("admit key equals proof key: the broker could prove the ticket to the sharer")
	}
	if a.AdmitKey() == b.AdmitKey() || a.ProofKey() == b.ProofKey() {
		t.Error("two tickets derive the same key")
	}
	k := a.AdmitKey()
	if a.AdmitHash() != sha256.Sum256(k[:]) {
		t.Error("AdmitHash is not SHA-256 of AdmitKey")
	}
	if h := a.AdmitHash(); h == a.AdmitKey() || h == a.ProofKey() {
		t.Error("AdmitHash equals a key")
	}
	p, err := ParseTicket(a.String())
	if err != nil {
		t.Fatal(err)
	}
	if p.AdmitKey() != a.AdmitKey() || p.ProofKey() != a.ProofKey() {
		t.Error("a parsed ticket derives other keys than the original")
	}
}

func TestNewTicketInvalid(t *testing.T) {
	pin, sharer := PinOf(mustX509(t)), newID(t).ID()
	for _, tt := range []struct {
		name, broker, share string
		pin                 Pin
		sharer              AgentID
	}{
		{"no port", "127.0.0.1", "web", pin, sharer},
		{"no host", ":7000", "web", pin, sharer},
		{"port 0", "h:0", "web", pin, sharer},
		{"port 65536", "h:65536", "web", pin, sharer},
		{"port name", "h:http", "web", pin, sharer},
		{"unbracketed ipv6", "::1", "web", pin, sharer},
		{"broker too long", strings.Repeat("h", 251) + ":7000", "web", pin, sharer},
		{"empty share", "h:1", "", pin, sharer},
		{"uppercase share", "h:1", "Web", pin, sharer},
		{"share leading dash", "h:1", "-web", pin, sharer},
		{"share with slash", "h:1", "a/b", pin, sharer},
		{"share too long", "h:1", strings.Repeat("x", 64), pin, sharer},
		{"zero sharer", "h:1", "web", pin, AgentID{}},
	} {
		if _, err := NewTicket(tt.broker, tt.pin, tt.sharer, tt.share); !errors.Is(err, ErrBadTicket) {
			t.Errorf("%s: NewTicket = %v, want ErrBadTicket", tt.name, err)
		}
	}
}

// TestTicketSingleCharChange alters every character of a ticket into every
// other character a typo or a transmission error could produce: each must be
// refused, never parsed into some other (or the same) ticket.
func TestTicketSingleCharChange(t *testing.T) {
	for _, tt := range []struct{ broker, share string }{
		{"127.0.0.1:7000", "web"}, // 119 bytes: the last character carries 3 unused bits
		{"127.0.0.1:7000", "we"},  // 118 bytes: 1 unused bit
		{"127.0.0.1:700", "web"},  // 118 bytes... and so on for the other remainders
		{"10.0.0.1:7000", "web"},
		{"10.0.0.1:700", "web"},
	} {
		s := newTicket(t, tt.broker, tt.share).String()
		const repl = "abcdefghijklmnopqrstuvwxyz234567018ABZ= -_.\x00\xff"
		var accepted []string
		for i := range len(s) {
			for _, c := range []byte(repl) {
				if strings.EqualFold(string(c), s[i:i+1]) && !(i < len(TicketPrefix) && c != s[i]) {
					continue // the same ticket: case does not matter after the prefix
				}
				mut := s[:i] + string(c) + s[i+1:]
				if _, err := ParseTicket(mut); !isTicketErr(err) {
					accepted = append(accepted, fmt.Sprintf("pos %d/%d %q->%q: %v", i, len(s), s[i], c, err))
				}
			}
		}
		if len(accepted) > 0 {
			t.Errorf("ticket of %d chars: %d altered tickets not refused, e.g. %v", len(s), len(accepted), accepted[:min(5, len(accepted))])
		}
	}
}

func TestTicketTruncated(t *testing.T) {
	s := newTicket(t, "[::1]:7000", "web").String()
	for n := range len(s) {
		if _, err := ParseTicket(s[:n]); !isTicketErr(err) {
			t.Errorf("ticket cut to %d of %d characters: got %v, want a ticket error", n, len(s), err)
		}
	}
	// Extra characters are as bad as missing ones.
	for _, extra := range []string{"a", "aa", "aaaaaaaa", " x"} {
		if _, err := ParseTicket(s + extra); !isTicketErr(err) {
			t.Errorf("ticket + %q: got %v, want a ticket error", extra, err)
		}
	}
}

func TestTicketPrefix(t *testing.T) {
	s := newTicket(t, "127.0.0.1:7000", "web").String()
	body := s[len(TicketPrefix):]
	for _, tt := range []struct {
		in   string
		want error
	}{
		{"pp2" + body, ErrTicketVersion},
		{"pp0" + body, ErrTicketVersion},
		{"ppx" + body, ErrBadTicket}, // a version is a digit; "pp:" is a pasted broker URL
		{"pq1" + body, ErrBadTicket},
		{"xx1" + body, ErrBadTicket},
		{body, ErrBadTicket},
		{"pp", ErrBadTicket},
		{"pp1", ErrBadTicket},
		{"", ErrBadTicket},
	} {
		if _, err := ParseTicket(tt.in); !errors.Is(err, tt.want) {
			t.Errorf("ParseTicket(%.10q...) = %v, want %v", tt.in, err, tt.want)
		}
	}
	// A broker URL pasted where a ticket belongs.
	if _, err := ParseTicket("pp://tok@h:7000#pin"); !isTicketErr(err) {
		t.Errorf("ParseTicket(broker URL) = %v, want a ticket error", err)
	}
}

// TestTicketMultiAddr: a ticket's broker may be the comma list of a
// broker URL naming several nodes, in the same format (no new version):
// each address is checked as a single one is, and Addrs splits them.
func TestTicketMultiAddr(t *testing.T) {
	for _, tt := range []struct {
		broker string
		addrs  []string
	}{
		{"b1.example.com:7000,b2.example.com:7000", []string{"b1.example.com:7000", "b2.example.com:7000"}},
		{"127.0.0.1:1,[::1]:2,h:65535", []string{"127.0.0.1:1", "[::1]:2", "h:65535"}},
		{"a:1,b:1,c:1,d:1,e:1,f:1,g:1,h:1", []string{"a:1", "b:1", "c:1", "d:1", "e:1", "f:1", "g:1", "h:1"}},
		{strings.Repeat("h", 120) + ":7000," + strings.Repeat("i", 124) + ":7000", []string{strings.Repeat("h", 120) + ":7000", strings.Repeat("i", 124) + ":7000"}},
	} {
		tk := newTicket(t, tt.broker, "web")
		if a := tk.Addrs(); !slices.Equal(a, tt.addrs) {
			t.Errorf("Addrs() of %q = %q, want %q", tt.broker, a, tt.addrs)
		}
		got, err := ParseTicket(tk.String())
		if err != nil || got != tk {
			t.Errorf("ParseTicket(ticket for %q) = %+v, %v; want %+v", tt.broker, got, err, tk)
		}
	}
	// A broker URL's Addr is a ticket's Broker as it is.
	u, err := ParseBrokerURL("pp://tok@b1,b2:9,[2001:db8::1]#" + PinOf(mustX509(t)).String())
	if err != nil {
		t.Fatal(err)
	}
	if tk, err := NewTicket(u.Addr, u.Pin, newID(t).ID(), "web"); err != nil || !slices.Equal(tk.Addrs(), u.Addrs()) {
		t.Errorf("NewTicket(%q) = %+v, %v", u.Addr, tk, err)
	}

	pin, sharer := PinOf(mustX509(t)), newID(t).ID()
	for _, tt := range []struct{ broker, want string }{
		{"h:1,", `malformed ticket: broker address "" is not host:port`},
		{",h:1", `malformed ticket: broker address "" is not host:port`},
		{"h:1,,h:2", `malformed ticket: broker address "" is not host:port`},
		{"h:1,h2", `malformed ticket: broker address "h2" is not host:port`},
		{"h:1,:2", `malformed ticket: broker address ":2" is not host:port`},
		{"h:1,::1", `malformed ticket: broker address "::1" is not host:port`},
		{"h:1,h:0", `malformed ticket: broker port "0" out of range`},
		{"h:1,h:65536", `malformed ticket: broker port "65536" out of range`},
		{"h:1,h:x", `malformed ticket: broker port "x" out of range`},
		{"h:1,h:1", `malformed ticket: broker address "h:1" twice`},
		{"a:1,b:1,c:1,d:1,e:1,f:1,g:1,h:1,i:1", "malformed ticket: 9 broker addresses, at most 8"},
		{strings.Repeat("h", 120) + ":7000," + strings.Repeat("i", 125) + ":7000", "malformed ticket: broker address too long"},
	} {
		if _, err := NewTicket(tt.broker, pin, sharer, "web"); err == nil || err.Error() != tt.want || !errors.Is(err, ErrBadTicket) {
			t.Errorf("NewTicket(%.40q) = %v, want %q", tt.broker, err, tt.want)
		}
	}
}

// TestTicketGoldenMulti pins a three-address ticket: the format of one
// address, with the commas in the broker field.
func TestTicketGoldenMulti(t *testing.T) {
	var tk Ticket
	tk.Broker = "192.0.2.1:7000,192.0.2.2:7000,[2001:db8::1]:443"
	tk.Share = "web"
	for i := range 32 {
		tk.Pin[i] = byte(i)
		tk.Sharer[i] = byte(0x80 + i)
		tk.Secret[i] = byte(0x40 + i)
	}
	if got := tk.String(); got != goldenTicketMulti {
		t.Errorf("String() =\n%s\nwant\n%s", got, goldenTicketMulti)
	}
	got, err := ParseTicket(goldenTicketMulti)
	if err != nil || got != tk {
		t.Fatalf("ParseTicket(golden) = %+v, %v", got, err)
	}
	if a := got.Addrs(); len(a) != 3 || a[2] != "[2001:db8::1]:443" {
		t.Errorf("Addrs() = %q", a)
	}
}

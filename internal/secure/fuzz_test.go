package secure

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseTicket: ParseTicket never panics, fails only with a ticket error,
// and whatever it accepts re-encodes to a ticket that parses equal. A ticket
// has one text form (up to case and surrounding space): anything else that
// parsed would be an altered ticket accepted.
func FuzzParseTicket(f *testing.F) {
	f.Add(goldenTicket)
	f.Add(goldenTicketNoPin)
	f.Add(goldenTicketMulti)
	f.Add(newTicket(f, "b1.example.com:7000,[::1]:7000", "ssh").String())
	f.Add(newTicket(f, "[::1]:7000", "ssh").String())
	f.Add("pp1")
	f.Add("pp2aaaa")
	f.Fuzz(func(t *testing.T, s string) {
		tk, err := ParseTicket(s)
		if err != nil {
			if !isTicketErr(err) {
				t.Fatalf("ParseTicket(%q): error %v wraps neither ErrBadTicket nor ErrTicketVersion", s, err)
			}
			return
		}
		if canon := strings.ToLower(strings.TrimSpace(s)); canon != tk.String() {
			t.Errorf("ParseTicket accepted %q, which is not the text of the ticket it returns, %q", canon, tk.String())
		}
		again, err := ParseTicket(tk.String())
		if err != nil {
			t.Fatalf("ParseTicket(%q) = %+v, whose String %q does not parse: %v", s, tk, tk.String(), err)
		}
		if again != tk {
			t.Fatalf("ParseTicket(%q) = %+v, re-encoded parses to %+v", s, tk, again)
		}
	})
}

// FuzzParseBrokerURL: ParseBrokerURL never panics, fails only with
// ErrBadBrokerURL, and whatever it accepts prints as a URL that parses equal.
func FuzzParseBrokerURL(f *testing.F) {
	pin := PinOf(mustX509(f)).String()
	for _, s := range []string{
		"pp://tok@broker.example.com:7000#" + pin,
		"pp://tok@[::1]:7000#" + pin,
		"pp://tok@127.0.0.1#" + pin,
		"pp://tok:x@h:1#" + pin,
		"pp://h:1#" + pin,
		"pp://tok@h:1/p?q#" + pin,
		"pp://tok@broker.example.com:443",
		"pp://tok@h:1#",
		"pp://tok@h:1#" + Pin{}.String(),
		"pp://tok@b1.example.com:7000,b2.example.com,[2001:db8::1]:443#" + pin,
		"pp://tok@b1,b2",
		"pp://tok@h:1,h:1#" + pin,
		"pp://tok@h:1,,h:2#" + pin,
		"pp://tok@a,b,c,d,e,f,g,h,i#" + pin,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseBrokerURL(s)
		if err != nil {
			if !errors.Is(err, ErrBadBrokerURL) {
				t.Fatalf("ParseBrokerURL(%q): error %v does not wrap ErrBadBrokerURL", s, err)
			}
			return
		}
		again, err := ParseBrokerURL(u.String())
		if err != nil {
			t.Fatalf("ParseBrokerURL(%q) = %+v, whose String %q does not parse: %v", s, u, u.String(), err)
		}
		if again != u {
			t.Fatalf("ParseBrokerURL(%q) = %+v, printed and parsed again %+v", s, u, again)
		}
		addrs := u.Addrs()
		if len(addrs) == 0 || len(addrs) > MaxBrokerAddrs {
			t.Fatalf("ParseBrokerURL(%q) accepted %d addresses", s, len(addrs))
		}
		// Each address alone is a URL of its own, the one its node is dialed by.
		for _, a := range addrs {
			one := u.At(a)
			if again, err := ParseBrokerURL(one.String()); err != nil || again != one {
				t.Fatalf("ParseBrokerURL(%q): address %q alone prints %q, which parses to %+v, %v", s, a, one.String(), again, err)
			}
		}
	})
}

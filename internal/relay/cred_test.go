package relay

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCredentials(t *testing.T) {
	tests := []struct {
		name, secret, agent string
		expires             time.Time
		user, pass          string
	}{
		// Expected passwords from an independent implementation:
		// printf %s USER | openssl dgst -sha1 -hmac SECRET -binary | base64
		{"coturn's example", "secret", "bob", time.Unix(1795770682, 0), "1795770682:bob", "sZ/GCHW8KGAXT2YzsUjRrNblK3o="},
		{"agent ID", "north-secret", "3l45erchgr4kzn4ljj4pp5udzxumb256n72qsbuhxnvqbd4tjsoq", time.Unix(1700000000, 999e6),
			"1700000000:3l45erchgr4kzn4ljj4pp5udzxumb256n72qsbuhxnvqbd4tjsoq", "ktVC9eY6+BFFK94Hrx8T20JvbFM="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, p := Credentials([]byte(tt.secret), tt.agent, tt.expires)
			if u != tt.user || p != tt.pass {
				t.Fatalf("Credentials = %q, %q; want %q, %q", u, p, tt.user, tt.pass)
			}
			if got := Password([]byte(tt.secret), u); got != p {
				t.Errorf("Password = %q, want %q", got, p)
			}
			exp, id, err := ParseUsername(u)
			if err != nil || id != tt.agent || exp.Unix() != tt.expires.Unix() {
				t.Errorf("ParseUsername(%q) = %v, %q, %v", u, exp, id, err)
			}
			if Password([]byte(tt.secret+"x"), u) == p {
				t.Error("another secret gives the same password")
			}
		})
	}
}

func TestParseUsername(t *testing.T) {
	tests := []struct {
		in      string
		expires int64
		id      string
	}{
		{"1:a", 1, "a"},
		{"0:a", 0, "a"},
		{"9223372036854775807:x", 1<<63 - 1, "x"},
		{"1700000000:id:with:colons", 1700000000, "id:with:colons"},
		{"1700000000:é", 1700000000, "é"},
	}
	for _, tt := range tests {
		exp, id, err := ParseUsername(tt.in)
		if err != nil || exp.Unix() != tt.expires || id != tt.id {
			t.Errorf("ParseUsername(%q) = %d, %q, %v; want %d, %q", tt.in, exp.Unix(), id, err, tt.expires, tt.id)
		}
	}
	for _, bad := range []string{
		"", "bob", ":bob", "1700000000:", "-1:bob", "+1:bob", "01:bob", "1e9:bob", " 1:bob",
		"9223372036854775808:bob", "99999999999999999999:bob", "1:bo b", "1:bob\n", "1:\x00", "1:\xff",
		"1:" + strings.Repeat("a", 257),
	} {
		if _, _, err := ParseUsername(bad); !errors.Is(err, ErrBadUsername) {
			t.Errorf("ParseUsername(%q) = %v, want ErrBadUsername", bad, err)
		}
	}
}

// FuzzParseUsername: no input panics; a username that parses is exactly
// what Credentials makes for its parts, and a refused one says why.
func FuzzParseUsername(f *testing.F) {
	f.Add("1700000000:3l45erchgr4kzn4ljj4pp5udzxumb256n72qsbuhxnvqbd4tjsoq")
	f.Add("0:a")
	f.Add("01:a")
	f.Add("-5:x")
	f.Fuzz(func(t *testing.T, u string) {
		exp, id, err := ParseUsername(u)
		if err != nil {
			if !errors.Is(err, ErrBadUsername) {
				t.Fatalf("error %v does not wrap ErrBadUsername", err)
			}
			return
		}
		back, _ := Credentials([]byte("k"), id, exp)
		if back != u {
			t.Fatalf("ParseUsername(%q) = %d, %q, which Credentials writes as %q", u, exp.Unix(), id, back)
		}
	})
}

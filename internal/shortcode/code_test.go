package shortcode

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" for an error
	}{
		{"7-tidal-orbit", "7-tidal-orbit"},
		{"  7-Tidal-ORBIT ", "7-tidal-orbit"},
		{"7 tidal orbit", "7-tidal-orbit"},
		{"99999-acorn-zephyr", "99999-acorn-zephyr"},
		{"0-tidal-orbit", ""},
		{"100000-tidal-orbit", ""},
		{"+7-tidal-orbit", ""},
		{"7-tidal", ""},
		{"7-tidal-orbit-x", ""},
		{"7-tidal-orbits", ""},
		{"seven-tidal-orbit", ""},
		{"pp1abcdef", ""},
		{"", ""},
	} {
		c, err := Parse(tc.in)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("Parse(%q) = %v, want an error", tc.in, c)
		case tc.want == "" && !errors.Is(err, ErrSyntax):
			t.Errorf("Parse(%q): %v, want ErrSyntax", tc.in, err)
		case tc.want != "" && (err != nil || c.String() != tc.want):
			t.Errorf("Parse(%q) = %v, %v; want %s", tc.in, c, err, tc.want)
		}
	}
}

func TestWordsDistinct(t *testing.T) {
	seen := map[string]bool{}
	for _, w := range words {
		if seen[w] || w == "" || strings.ToLower(w) != w {
			t.Errorf("word %q: duplicate, empty or not lower case", w)
		}
		seen[w] = true
	}
}

func TestLooks(t *testing.T) {
	for in, want := range map[string]bool{"7-tidal-orbit": true, "12-x": true, "7 tidal": true, "pp1abc": false, "-7": false, "abc-def": false} {
		if got := Looks(in); got != want {
			t.Errorf("Looks(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestNewRoundTrip(t *testing.T) {
	for range 100 {
		c, err := New(42)
		if err != nil {
			t.Fatal(err)
		}
		p, err := Parse(c.String())
		if err != nil || p != c {
			t.Fatalf("Parse(%s) = %v, %v", c, p, err)
		}
	}
	if _, err := New(0); err == nil {
		t.Error("New(0) worked")
	}
}

const (
	connectorID = "connector-id"
	sharerID    = "sharer-id"
)

var offer = Offer{Sharer: sharerID, Share: "8080"}

// run plays the exchange between a connector with code cc and a sharer
// with code sc, as a broker that only passes messages along would.
func run(t *testing.T, cc, sc Code) (Offer, string, error, error) {
	t.Helper()
	c, a, err := NewConnector(cc, connectorID)
	if err != nil {
		t.Fatal(err)
	}
	s := NewSharer(sc, offer)
	b, err := s.Answer(a)
	if err != nil {
		t.Fatal(err)
	}
	o, proof, cerr := c.Open(b)
	if cerr != nil {
		return o, "", cerr, nil
	}
	who, serr := s.Check(proof)
	return o, who, nil, serr
}

func TestExchange(t *testing.T) {
	code, _ := New(7)
	o, who, cerr, serr := run(t, code, code)
	if cerr != nil || serr != nil {
		t.Fatalf("right code: %v / %v", cerr, serr)
	}
	if o != offer || who != connectorID {
		t.Fatalf("offer %+v, connector %q", o, who)
	}

	wrong := code
	wrong.Words[1]++
	if _, _, cerr, _ := run(t, wrong, code); !errors.Is(cerr, ErrWrongCode) {
		t.Fatalf("wrong words: connector says %v, want ErrWrongCode", cerr)
	}
	other := code
	other.Slot++
	if _, _, cerr, _ := run(t, other, code); !errors.Is(cerr, ErrWrongCode) {
		t.Fatalf("wrong slot: connector says %v, want ErrWrongCode", cerr)
	}
}

// TestBrokerInTheMiddle plays a broker that sees every message and does
// all it can without the words: it answers the connector itself, claims
// at the sharer itself, splices two runs together, and reads the
// transcript. None of it yields an offer or an admitted identity.
func TestBrokerInTheMiddle(t *testing.T) {
	code, _ := New(7)
	guess := code
	guess.Words[0] ^= 0x5a

	// An honest run, recorded.
	c, a, _ := NewConnector(code, connectorID)
	s := NewSharer(code, offer)
	b, _ := s.Answer(a)
	_, proof, err := c.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	transcript := bytes.Join([][]byte{a, b, proof}, nil)
	for _, secret := range [][]byte{[]byte(code.String()), []byte(words[code.Words[0]]), password(code)} {
		if bytes.Contains(transcript, secret) {
			t.Fatalf("the transcript holds %q", secret)
		}
	}

	// The broker answers the connector in the sharer's place, with a
	// guess: the connector refuses its offer.
	c2, a2, _ := NewConnector(code, connectorID)
	fake := NewSharer(guess, Offer{Sharer: "broker-id", Share: "8080"})
	fb, _ := fake.Answer(a2)
	if _, _, err := c2.Open(fb); !errors.Is(err, ErrWrongCode) {
		t.Fatalf("connector took a guessing broker's offer: %v", err)
	}

	// It claims at the sharer with a guess, then with the recorded proof.
	mc, ma, _ := NewConnector(guess, "broker-id")
	s2 := NewSharer(code, offer)
	mb, _ := s2.Answer(ma)
	if _, mproof, err := mc.Open(mb); !errors.Is(err, ErrWrongCode) {
		t.Fatalf("guessing broker opened the sharer's offer: %v", err)
	} else if _, err := s2.Check(mproof); err == nil {
		t.Fatal("sharer admitted a guessing broker")
	}
	s3 := NewSharer(code, offer)
	s3.Answer(ma)
	if who, err := s3.Check(proof); !errors.Is(err, ErrWrongCode) {
		t.Fatalf("sharer took a proof from another run: %q, %v", who, err)
	}

	// It replays the whole recorded run to a fresh sharer: the new B
	// changes the keys, so the old proof does not open.
	s4 := NewSharer(code, offer)
	s4.Answer(a)
	if who, err := s4.Check(proof); !errors.Is(err, ErrWrongCode) {
		t.Fatalf("sharer took a replayed proof: %q, %v", who, err)
	}

	// It swaps the seal of the honest answer for one of its own.
	var r reply
	json.Unmarshal(b, &r)
	r.Seal = append([]byte(nil), r.Seal...)
	r.Seal[len(r.Seal)-1] ^= 1
	forged, _ := json.Marshal(r)
	c5, _, _ := NewConnector(code, connectorID)
	if _, _, err := c5.Open(forged); err == nil {
		t.Fatal("connector took a tampered seal")
	}
}

func TestMalformed(t *testing.T) {
	code, _ := New(7)
	for _, msg := range []string{"", "null", "{}", `{"Role":1}`, `{"Role":0,"Xᵤ":1,"Xᵥ":2}`, `{"Role":0,"Xᵤ":-1,"Xᵥ":2}`, "[1,2]", strings.Repeat("x", MaxMessage+1)} {
		if _, err := NewSharer(code, offer).Answer([]byte(msg)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Answer(%.40q): %v, want ErrMalformed", msg, err)
		}
		c, _, _ := NewConnector(code, connectorID)
		if _, _, err := c.Open([]byte(msg)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Open(%.40q): %v, want ErrMalformed", msg, err)
		}
	}
}

// FuzzExchange feeds arbitrary first messages to a sharer and arbitrary
// answers to a connector: errors, never a panic.
func FuzzExchange(f *testing.F) {
	code, _ := New(7)
	_, a, _ := NewConnector(code, connectorID)
	b, _ := NewSharer(code, offer).Answer(a)
	f.Add(a)
	f.Add(b)
	f.Add([]byte(`{"Role":0,"Xᵤ":0,"Xᵥ":0}`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		s := NewSharer(code, offer)
		if _, err := s.Answer(msg); err == nil {
			s.Check(msg)
		}
		c, _, _ := NewConnector(code, connectorID)
		c.Open(msg)
	})
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"7-tidal-orbit", "1 acorn zephyr", "0-a-b", "99999999999-x-y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			return
		}
		if p, err := Parse(c.String()); err != nil || p != c {
			t.Fatalf("Parse(%q) = %v, but Parse(%q) = %v, %v", s, c, c.String(), p, err)
		}
	})
}

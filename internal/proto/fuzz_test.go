package proto

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecode: Decode never panics, fails only with one of the package's
// sentinel errors, and whatever it decodes re-encodes (unless Encode refuses
// it as too large) into a frame that decodes to a message encoding to the
// very same frame.
func FuzzDecode(f *testing.F) {
	for _, m := range filled {
		b, err := Encode(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(frameOf(TypeConnect, `{"sharer":"s","share":"w","candidates":[]}`))
	f.Add(frameOf(TypeHello, `null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) &&
				!errors.Is(err, ErrVersion) && !errors.Is(err, ErrUnknownType) {
				t.Fatalf("Decode(%.200q): error %v wraps no sentinel", b, err)
			}
			return
		}
		// Compare frames, not structs: JSON may turn [] into nil and
		// invalid UTF-8 into U+FFFD, which changes nothing on the wire again.
		e1, err := Encode(m)
		if errors.Is(err, ErrTooLarge) {
			return // re-encoding may grow a frame near the limit (JSON escapes); refused, not sent
		}
		if err != nil {
			t.Fatalf("Decode(%.200q) = a %T, which Encode refuses: %v", b, m, err)
		}
		m2, err := Decode(e1)
		if err != nil {
			t.Fatalf("Decode(%.200q) = a %T, re-encoded %.200q does not decode: %v", b, m, e1, err)
		}
		if m2.Type() != m.Type() {
			t.Fatalf("type %d became %d", m.Type(), m2.Type())
		}
		e2, err := Encode(m2)
		if err != nil || !bytes.Equal(e1, e2) {
			t.Fatalf("re-encoding is not stable: %.200q then %.200q (%v)", e1, e2, err)
		}
	})
}

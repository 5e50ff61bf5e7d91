package broker

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// stunFrame is a Binding request, as a TURN client would start with.
func stunFrame(t testing.TB) []byte {
	m, err := stun.Build(stun.TransactionID, stun.BindingRequest)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

// TestTURNGuardFraming: the guard passes STUN messages, split anywhere, and refuses bytes that are neither, or a STUN length beyond
// what the relay reads.
func TestTURNGuardFraming(t *testing.T) {
	msg := stunFrame(t)
	chData := []byte{0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0} // 5 bytes, padded to 8
	huge := append([]byte(nil), msg...)
	binary.BigEndian.PutUint16(huge[2:4], 4096)
	badCookie := append([]byte(nil), msg...)
	badCookie[4] = 0
	tests := []struct {
		name    string
		in      []byte
		garbage bool
	}{
		{"stun", msg, false},
		{"stun twice", append(append([]byte(nil), msg...), msg...), false},
		{"channel data (no channels on TCP allocations)", append(append([]byte(nil), chData...), msg...), true},
		{"http", []byte("GET / HTTP/1.1\r\n\r\n"), true},
		{"tls hello", []byte{0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0x00, 0x00, 0x0c, 0x03, 0x03}, true},
		{"length too large", huge, true},
		{"bad cookie", badCookie, true},
	}
	for _, tt := range tests {
		for _, split := range []int{1, 3, 7, len(tt.in)} {
			g := &turnGuard{}
			var err error
			for b := tt.in; len(b) > 0 && err == nil; {
				k := min(split, len(b))
				err = g.feed(b[:k])
				b = b[k:]
			}
			if (err != nil) != tt.garbage {
				t.Errorf("%s (split %d): %v, garbage %v", tt.name, split, err, tt.garbage)
			}
		}
	}
}

// TestTURNGarbageClosed: bytes that are not STUN on the TURN port close
// the connection at once (not at the pre-authentication deadline).
func TestTURNGarbageClosed(t *testing.T) {
	h := newRelayHarness(t, nil)
	c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("garbage on the TURN port: read %v, want the connection closed", err)
	}
}

// FuzzTURNGuard: any bytes, split anywhere, neither panic the guard nor
// let it pass a frame it cannot account for.
func FuzzTURNGuard(f *testing.F) {
	f.Add(stunFrame(f), 5)
	f.Add([]byte{0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0}, 2)
	f.Add(bytes.Repeat([]byte{0}, 40), 20)
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		split = max(split%64, 1)
		g := &turnGuard{key: func(string) []byte { return []byte("k") }}
		for len(in) > 0 {
			k := min(split, len(in))
			if g.feed(in[:k]) != nil {
				return
			}
			in = in[k:]
		}
		if len(g.buf) > maxTURNMessage {
			t.Fatalf("buffered %d bytes", len(g.buf))
		}
		g.outgoing(stunFrame(t))
	})
}

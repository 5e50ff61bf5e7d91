package resume

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzHello: any input decodes to a hello that encodes back to the same
// bytes, or is refused with ErrBadHello.
func FuzzHello(f *testing.F) {
	for _, h := range []Hello{{}, {Resume: true, Received: 1 << 40}} {
		b, _ := h.MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte("PPR1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Hello
		if err := h.UnmarshalBinary(b); err != nil {
			if !errors.Is(err, ErrBadHello) {
				t.Fatalf("error %v is not ErrBadHello", err)
			}
			return
		}
		out, err := h.MarshalBinary()
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("hello %+v re-encodes to %x (%v), read from %x", h, out, err, b)
		}
	})
}

// FuzzFrame: a stream of frames decodes frame by frame, each re-encoding
// to the bytes it came from, until a clean end or one error.
func FuzzFrame(f *testing.F) {
	seed, _ := AppendFrame(nil, FrameData, []byte("hello"))
	seed, _ = AppendCount(seed, FrameAck, 5)
	seed, _ = AppendFrame(seed, FrameClose, []byte("bye"))
	f.Add(seed)
	f.Add([]byte{byte(FrameData), 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, buf := bytes.NewReader(b), make([]byte, MaxData)
		off := 0
		for {
			fr, err := ReadFrame(r, buf)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrBadFrame) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			enc, err := AppendFrame(nil, fr.Type, fr.Body)
			if err != nil {
				t.Fatalf("decoded frame does not encode: %v", err)
			}
			if !bytes.Equal(enc, b[off:off+len(enc)]) {
				t.Fatalf("frame at %d re-encodes differently", off)
			}
			off += len(enc)
		}
	})
}

package resume

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
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

// scriptConn is a carrier that plays back b and swallows what is written.
type scriptConn struct {
	net.Conn // nil: only the methods below are used
	r        *bytes.Reader
}

func (s *scriptConn) Read(p []byte) (int, error)         { return s.r.Read(p) }
func (s *scriptConn) Write(p []byte) (int, error)        { return len(p), nil }
func (s *scriptConn) Close() error                       { return nil }
func (s *scriptConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (s *scriptConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (s *scriptConn) SetDeadline(time.Time) error        { return nil }
func (s *scriptConn) SetReadDeadline(t time.Time) error  { return nil }
func (s *scriptConn) SetWriteDeadline(t time.Time) error { return nil }

// FuzzAccept: whatever a carrier sends, the accepting side takes it as a
// hello and frames, or refuses it with one error, and a session it started
// ends cleanly.
func FuzzAccept(f *testing.F) {
	known := SessionID{7}
	newHello, _ := Hello{Session: SessionID{9}}.MarshalBinary()
	resumeHello, _ := Hello{Session: known, Resume: true}.MarshalBinary()
	withFrames, _ := AppendFrame(bytes.Clone(newHello), FrameData, []byte("data"))
	withFrames, _ = AppendCount(withFrames, FramePing, 1)
	withFrames, _ = AppendCount(withFrames, FrameAck, 0)
	withFrames, _ = AppendFrame(withFrames, FrameClose, []byte(reasonClosed))
	f.Add(newHello)
	f.Add(resumeHello)
	f.Add(withFrames)
	f.Add(append(bytes.Clone(resumeHello), byte(FrameAck), 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 9))
	f.Fuzz(func(t *testing.T, b []byte) {
		tab := NewTable(Config{})
		defer tab.Close()
		tab.conns[known] = tableEntry{c: newConn(tab.cfg, known, false), peer: "peer"}
		tab.conns[known].c.startWriter()
		c, _, err := tab.Accept(context.Background(), &scriptConn{r: bytes.NewReader(b)}, "peer")
		if err != nil {
			if c != nil && !errors.Is(err, ErrStaleResume) {
				t.Fatalf("a session and an error: %v", err)
			}
			return
		}
		select { // the script ends: the carrier is lost, or the frames ended the session
		case <-c.Lost():
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("the session neither lost its carrier nor ended")
		}
		c.Close()
	})
}

// FuzzAnswer: the dialing side reads any answer as a hello, a refusal, or
// one error.
func FuzzAnswer(f *testing.F) {
	h, _ := Hello{Session: SessionID{1}, Resume: true, Received: 5}.MarshalBinary()
	refused, _ := AppendFrame(nil, FrameClose, []byte(reasonStale))
	f.Add(h)
	f.Add(refused)
	f.Add([]byte{byte(FrameData), 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		ans, err := readAnswer(bytes.NewReader(b))
		switch {
		case err == nil:
			if out, _ := ans.MarshalBinary(); !bytes.Equal(out, b[:helloLen]) {
				t.Fatalf("answer %+v from %x", ans, b)
			}
		case errors.Is(err, ErrBadHello), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
			errors.Is(err, ErrUnknownSession), errors.Is(err, ErrWrongPeer), errors.Is(err, ErrStaleResume), errors.Is(err, ErrPeerClosed):
		default:
			t.Fatalf("unexpected error %v", err)
		}
	})
}

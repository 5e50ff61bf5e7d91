package resume

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestHelloRoundTrip(t *testing.T) {
	id := SessionID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	for _, h := range []Hello{{Session: id}, {Session: id, Resume: true}, {Session: id, Resume: true, Received: 1<<64 - 1}} {
		b, err := h.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ReadHello(bytes.NewReader(b))
		if err != nil || got != h {
			t.Errorf("%+v: got %+v, %v", h, got, err)
		}
	}
}

func TestHelloRefused(t *testing.T) {
	good, _ := Hello{Resume: true, Received: 7}.MarshalBinary()
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name string
		b    []byte
	}{
		{"short", good[:helloLen-1]},
		{"long", append(bytes.Clone(good), 0)},
		{"magic", mut(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"flags 0", mut(func(b []byte) []byte { b[4] = 0; return b })},
		{"flags both", mut(func(b []byte) []byte { b[4] = flagNew | flagResume; return b })},
		{"new with a count", mut(func(b []byte) []byte { b[4] = flagNew; return b })},
		{"TLS instead", append([]byte{0x16, 0x03, 0x01}, make([]byte, helloLen-3)...)},
	}
	for _, tt := range tests {
		var h Hello
		if err := h.UnmarshalBinary(tt.b); !errors.Is(err, ErrBadHello) {
			t.Errorf("%s: %v, want ErrBadHello", tt.name, err)
		}
	}
	if _, err := (Hello{Received: 1}).MarshalBinary(); !errors.Is(err, ErrBadHello) {
		t.Errorf("new hello with a count encoded: %v", err)
	}
	if _, err := ReadHello(bytes.NewReader(good[:10])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated hello: %v", err)
	}
}

func TestFrames(t *testing.T) {
	var b []byte
	var err error
	b, err = AppendFrame(b, FrameData, bytes.Repeat([]byte{'x'}, MaxData))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		t FrameType
		v uint64
	}{{FrameAck, 42}, {FramePing, 7}, {FramePong, 7}} {
		if b, err = AppendCount(b, f.t, f.v); err != nil {
			t.Fatal(err)
		}
	}
	if b, err = AppendFrame(b, FrameClose, []byte("resume timeout")); err != nil {
		t.Fatal(err)
	}
	r, buf := bytes.NewReader(b), make([]byte, MaxData)
	want := []FrameType{FrameData, FrameAck, FramePing, FramePong, FrameClose}
	for i, wt := range want {
		f, err := ReadFrame(r, buf)
		if err != nil || f.Type != wt {
			t.Fatalf("frame %d: %v %v, want type %d", i, f.Type, err, wt)
		}
		switch wt {
		case FrameData:
			if len(f.Body) != MaxData {
				t.Errorf("data body %d bytes", len(f.Body))
			}
		case FrameAck:
			if f.Count() != 42 {
				t.Errorf("ack %d", f.Count())
			}
		case FrameClose:
			if string(f.Body) != "resume timeout" {
				t.Errorf("close %q", f.Body)
			}
		}
	}
	if _, err := ReadFrame(r, buf); err != io.EOF {
		t.Errorf("after the last frame: %v, want io.EOF", err)
	}
}

func TestFramesRefused(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"unknown type", []byte{9, 0, 0, 1, 0}, ErrBadFrame},
		{"type 0", []byte{0, 0, 0, 0}, ErrBadFrame},
		{"empty data", []byte{byte(FrameData), 0, 0, 0}, ErrBadFrame},
		{"data too long", []byte{byte(FrameData), 0, 0x80, 1}, ErrBadFrame},
		{"huge length", []byte{byte(FrameData), 0xff, 0xff, 0xff}, ErrBadFrame},
		{"short ack", []byte{byte(FrameAck), 0, 0, 4, 1, 2, 3, 4}, ErrBadFrame},
		{"long reason", []byte{byte(FrameClose), 0, 1, 1}, ErrBadFrame},
		{"cut body", []byte{byte(FrameAck), 0, 0, 8, 1, 2}, io.ErrUnexpectedEOF},
		{"no body", []byte{byte(FramePing), 0, 0, 8}, io.ErrUnexpectedEOF},
		{"cut header", []byte{byte(FramePing), 0}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		if _, err := ReadFrame(bytes.NewReader(tt.b), make([]byte, MaxData)); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	if _, err := AppendFrame(nil, FrameData, make([]byte, MaxData+1)); !errors.Is(err, ErrBadFrame) {
		t.Errorf("oversized data encoded: %v", err)
	}
}

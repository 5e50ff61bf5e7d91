package mux

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// countingWriter counts Write calls: a header must go out in one, so it
// travels in one yamux frame.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (w *countingWriter) Write(b []byte) (int, error) { w.writes++; return w.Buffer.Write(b) }

func TestHeaderRoundTrip(t *testing.T) {
	proof := bytes.Repeat([]byte{0x5a}, 32)
	for _, h := range []Header{
		{Share: "web", Proof: proof},
		{Share: "web"},
		{Share: "a", Proof: []byte{0}},
		{Share: strings.Repeat("s", 255), Proof: bytes.Repeat([]byte{0xff}, 255)},
	} {
		var w countingWriter
		if err := WriteHeader(&w, h); err != nil {
			t.Fatalf("WriteHeader(%q): %v", h.Share, err)
		}
		if w.writes != 1 {
			t.Errorf("WriteHeader made %d writes, want 1", w.writes)
		}
		if want := 3 + len(h.Share) + len(h.Proof); w.Len() != want {
			t.Errorf("header of %d bytes, want %d", w.Len(), want)
		}
		w.WriteString("payload")
		got, err := ReadHeader(&w)
		if err != nil {
			t.Fatalf("ReadHeader: %v", err)
		}
		if got.Share != h.Share || !bytes.Equal(got.Proof, h.Proof) {
			t.Errorf("ReadHeader = %+v, want %+v", got, h)
		}
		// ReadHeader must not read past the header: the rest is the payload.
		if rest := w.String(); rest != "payload" {
			t.Errorf("after the header: %q, want %q", rest, "payload")
		}
	}
}

// TestHeaderWireFormat pins the layout of the package doc.
func TestHeaderWireFormat(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHeader(&b, Header{Share: "web", Proof: []byte{0xaa, 0xbb}}); err != nil {
		t.Fatal(err)
	}
	if want := []byte{1, 3, 'w', 'e', 'b', 2, 0xaa, 0xbb}; !bytes.Equal(b.Bytes(), want) {
		t.Errorf("header % x, want % x", b.Bytes(), want)
	}
}

func TestWriteHeaderInvalid(t *testing.T) {
	for _, h := range []Header{
		{},
		{Proof: []byte{1}},
		{Share: strings.Repeat("s", 256)},
		{Share: "web", Proof: make([]byte, 256)},
	} {
		var b bytes.Buffer
		if err := WriteHeader(&b, h); !errors.Is(err, ErrHeader) {
			t.Errorf("WriteHeader(share %d bytes, proof %d) = %v, want ErrHeader", len(h.Share), len(h.Proof), err)
		}
		if b.Len() != 0 {
			t.Errorf("a refused header wrote %d bytes", b.Len())
		}
	}
}

func TestReadHeaderErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   []byte
		want error
	}{
		{"version 0", []byte{0, 3, 'w', 'e', 'b', 0}, ErrHeaderVersion},
		{"version 2", []byte{2, 3, 'w', 'e', 'b', 0}, ErrHeaderVersion},
		{"version 255", []byte{255, 0}, ErrHeaderVersion},
		{"empty share", []byte{1, 0, 0}, ErrHeader},
		{"empty input", nil, ErrHeader},
	} {
		if _, err := ReadHeader(bytes.NewReader(tt.in)); !errors.Is(err, tt.want) {
			t.Errorf("%s: ReadHeader = %v, want %v", tt.name, err, tt.want)
		}
	}

	var full bytes.Buffer
	if err := WriteHeader(&full, Header{Share: "web", Proof: []byte{1, 2, 3}}); err != nil {
		t.Fatal(err)
	}
	for n := range full.Len() {
		_, err := ReadHeader(bytes.NewReader(full.Bytes()[:n]))
		if !errors.Is(err, ErrHeader) || !(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			t.Errorf("header cut to %d of %d bytes: %v, want ErrHeader wrapping EOF", n, full.Len(), err)
		}
	}
}

func TestStatusRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		s   Status
		msg string
	}{
		{StatusOK, ""},
		{StatusDenied, ""},
		{StatusDenied, "no such share"},
		{StatusUnreachable, "dial 127.0.0.1:8080: connection refused"},
		{StatusBadHeader, strings.Repeat("m", 255)},
		{Status(200), "from a newer sharer"},
	} {
		var b bytes.Buffer
		if err := WriteStatus(&b, tt.s, tt.msg); err != nil {
			t.Fatal(err)
		}
		b.WriteString("payload")
		err := ReadStatus(&b)
		if tt.s == StatusOK {
			if err != nil {
				t.Errorf("ReadStatus(ok) = %v", err)
			}
		} else {
			var se *StatusError
			if !errors.As(err, &se) || se.Status != tt.s || se.Message != tt.msg {
				t.Errorf("ReadStatus = %#v, want StatusError{%v, %q}", err, tt.s, tt.msg)
			} else if !strings.Contains(se.Error(), tt.s.String()) || !strings.Contains(se.Error(), tt.msg) {
				t.Errorf("Error() = %q lacks status or message", se.Error())
			}
		}
		if rest := b.String(); rest != "payload" {
			t.Errorf("after the status: %q, want %q", rest, "payload")
		}
	}
}

func TestStatusLongMessageCut(t *testing.T) {
	var b bytes.Buffer
	if err := WriteStatus(&b, StatusDenied, strings.Repeat("x", 1000)); err != nil {
		t.Fatal(err)
	}
	var se *StatusError
	if err := ReadStatus(&b); !errors.As(err, &se) || len(se.Message) != 255 {
		t.Errorf("ReadStatus = %v, want a 255-byte message", err)
	}
	if b.Len() != 0 {
		t.Errorf("%d bytes left after the status", b.Len())
	}
}

func TestReadStatusTruncated(t *testing.T) {
	var full bytes.Buffer
	if err := WriteStatus(&full, StatusDenied, "nope"); err != nil {
		t.Fatal(err)
	}
	for n := range full.Len() {
		err := ReadStatus(bytes.NewReader(full.Bytes()[:n]))
		var se *StatusError
		if err == nil || errors.As(err, &se) {
			t.Errorf("status cut to %d of %d bytes: %v, want a read error", n, full.Len(), err)
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("status cut to %d of %d bytes: %v, want it to wrap EOF", n, full.Len(), err)
		}
	}
}

func TestStatusString(t *testing.T) {
	for s, want := range map[Status]string{
		StatusOK: "ok", StatusDenied: "denied", StatusUnreachable: "target unreachable",
		StatusBadHeader: "bad header", Status(9): "status 9",
	} {
		if s.String() != want {
			t.Errorf("Status(%d).String() = %q, want %q", s, s.String(), want)
		}
	}
}

// FuzzReadHeader: ReadHeader never panics, fails only with a header error,
// and whatever it reads writes back as the same bytes.
func FuzzReadHeader(f *testing.F) {
	f.Add([]byte{1, 3, 'w', 'e', 'b', 0})
	f.Add([]byte{1, 3, 'w', 'e', 'b', 2, 0xaa, 0xbb, 'x'})
	f.Add([]byte{2, 3, 'w', 'e', 'b', 0})
	f.Add([]byte{1, 0, 0})
	f.Add([]byte{1, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadHeader(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrHeader) && !errors.Is(err, ErrHeaderVersion) {
				t.Fatalf("ReadHeader(%q): error %v wraps no header sentinel", b, err)
			}
			return
		}
		var w bytes.Buffer
		if err := WriteHeader(&w, h); err != nil {
			t.Fatalf("ReadHeader(%q) = %+v, which WriteHeader refuses: %v", b, h, err)
		}
		if !bytes.HasPrefix(b, w.Bytes()) {
			t.Fatalf("ReadHeader(%q) = %+v, written back as %q", b, h, w.Bytes())
		}
	})
}

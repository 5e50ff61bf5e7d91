package mux

import (
	"errors"
	"fmt"
	"io"
)

// HeaderVersion is the stream header version this build writes.
const HeaderVersion = 1

// Errors of the stream header.
var (
	ErrHeaderVersion = errors.New("unsupported stream header version")
	ErrHeader        = errors.New("malformed stream header")
)

// Header opens a stream.
type Header struct {
	Share string
	Proof []byte
}

// WriteHeader writes h in one write.
func WriteHeader(w io.Writer, h Header) error {
	if len(h.Share) == 0 || len(h.Share) > 255 || len(h.Proof) > 255 {
		return fmt.Errorf("%w: share of %d bytes, proof of %d", ErrHeader, len(h.Share), len(h.Proof))
	}
	b := make([]byte, 0, 3+len(h.Share)+len(h.Proof))
	b = append(b, HeaderVersion, byte(len(h.Share)))
	b = append(b, h.Share...)
	b = append(b, byte(len(h.Proof)))
	b = append(b, h.Proof...)
	_, err := w.Write(b)
	return err
}

// ReadHeader reads a stream header.
func ReadHeader(r io.Reader) (Header, error) {
	var h Header
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return h, fmt.Errorf("%w: %w", ErrHeader, err)
	}
	if b[0] != HeaderVersion {
		return h, fmt.Errorf("%w: %d", ErrHeaderVersion, b[0])
	}
	share, err := readBytes(r, int(b[1]))
	if err != nil {
		return h, err
	}
	if len(share) == 0 {
		return h, fmt.Errorf("%w: empty share", ErrHeader)
	}
	if _, err := io.ReadFull(r, b[:1]); err != nil {
		return h, fmt.Errorf("%w: %w", ErrHeader, err)
	}
	proof, err := readBytes(r, int(b[0]))
	if err != nil {
		return h, err
	}
	h.Share, h.Proof = string(share), proof
	return h, nil
}

func readBytes(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHeader, err)
	}
	return b, nil
}

// Status is the sharer's answer to a stream header.
type Status byte

// Statuses.
const (
	StatusOK          Status = 0
	StatusDenied      Status = 1 // unknown share, or not allowed
	StatusUnreachable Status = 2 // the target refused or timed out
	StatusBadHeader   Status = 3
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusDenied:
		return "denied"
	case StatusUnreachable:
		return "target unreachable"
	case StatusBadHeader:
		return "bad header"
	}
	return fmt.Sprintf("status %d", byte(s))
}

// StatusError is a non-OK status received from the sharer.
type StatusError struct {
	Status  Status
	Message string
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return "sharer: " + e.Status.String()
	}
	return "sharer: " + e.Status.String() + ": " + e.Message
}

// WriteStatus answers a stream header. msg is cut to 255 bytes.
func WriteStatus(w io.Writer, s Status, msg string) error {
	if len(msg) > 255 {
		msg = msg[:255]
	}
	b := append([]byte{byte(s), byte(len(msg))}, msg...)
	_, err := w.Write(b)
	return err
}

// ReadStatus reads the sharer's answer; a non-OK status is a *StatusError.
func ReadStatus(r io.Reader) error {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("read stream status: %w", err)
	}
	msg, err := readBytes(r, int(b[1]))
	if err != nil {
		return err
	}
	if Status(b[0]) != StatusOK {
		return &StatusError{Status: Status(b[0]), Message: string(msg)}
	}
	return nil
}

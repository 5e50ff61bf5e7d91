// Package mux owns peer sessions: one multiplexed session (yamux) per pair of
// agents over their TLS peer channel, its tuning and keepalive, and the small
// header that opens every stream.
//
// A stream starts with a header from the connector, answered by one status
// from the sharer before any forwarded byte:
//
//	connector -> sharer                      sharer -> connector
//	+-----+------+-------+------+-------+    +--------+------+---------+
//	| ver | nlen | share | plen | proof |    | status | mlen | message |
//	| 1 B | 1 B  | nlen  | 1 B  | plen  |    | 1 B    | 1 B  | mlen B  |
//	+-----+------+-------+------+-------+    +--------+------+---------+
//
// The header names a share, never an address: the sharer alone maps the
// name to its target, so a connector can reach nothing else. proof is the
// connector's ticket proof (see package secure), empty when the connector is
// allowed by identity.
package mux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"
)

// Tuning. yamux's default 256 KiB window caps one stream at window/RTT, about
// 40 Mbit/s on a 50 ms path; 16 MiB fills a gigabit path at 100 ms. The window
// is a ceiling: yamux buffers only what the reader has not yet consumed.
const (
	StreamWindow      = 16 << 20
	MaxStreams        = 4096 // accept backlog per session
	KeepAliveInterval = 15 * time.Second
	WriteTimeout      = 20 * time.Second
	OpenTimeout       = 30 * time.Second
)

// Session and Stream are the multiplexer's types as the agent uses them;
// only this package names the implementation.
type (
	Session = yamux.Session
	Stream  = yamux.Stream
)

// Config returns the yamux configuration of every peer session, logging to log.
func Config(log logrus.FieldLogger) *yamux.Config {
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = l
	}
	c := yamux.DefaultConfig()
	c.AcceptBacklog = MaxStreams
	c.EnableKeepAlive = true
	c.KeepAliveInterval = KeepAliveInterval
	c.ConnectionWriteTimeout = WriteTimeout
	c.MaxStreamWindowSize = StreamWindow
	c.StreamOpenTimeout = OpenTimeout
	c.StreamCloseTimeout = 5 * time.Minute
	c.LogOutput = nil
	c.Logger = logAdapter{log}
	return c
}

// logAdapter feeds yamux's printf logger into logrus at debug level: yamux
// logs every broken session, which the agent reports itself at info.
type logAdapter struct{ l logrus.FieldLogger }

func (a logAdapter) Print(v ...any)            { a.l.Debug(v...) }
func (a logAdapter) Println(v ...any)          { a.l.Debug(v...) }
func (a logAdapter) Printf(f string, v ...any) { a.l.Debugf(f, v...) }

// Client starts the connector's side of a session over conn.
func Client(conn net.Conn, log logrus.FieldLogger) (*Session, error) {
	return yamux.Client(conn, Config(log))
}

// Server starts the sharer's side of a session over conn.
func Server(conn net.Conn, log logrus.FieldLogger) (*Session, error) {
	return yamux.Server(conn, Config(log))
}

// Closed returns a context that ends when sess does.
func Closed(sess *Session) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-sess.CloseChan()
		cancel()
	}()
	return ctx
}

// ReleaseReads makes a read blocked on st return once closed (see Closed)
// ends. hashicorp/yamux v0.1.2 wakes such readers when the session shuts
// down but lets them loop until it has marked each stream closed; with
// thousands of readers that loop starves the marking for minutes (upstream
// PR #176). A read deadline in the past sends each reader out at its next
// turn. stop unregisters it, for a stream that ended by itself.
func ReleaseReads(closed context.Context, st *Stream) (stop func() bool) {
	return context.AfterFunc(closed, func() { st.SetReadDeadline(time.Unix(1, 0)) })
}

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

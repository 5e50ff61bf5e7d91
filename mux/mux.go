// Package mux owns peer sessions: one multiplexed session per pair of agents
// over their TLS peer channel, its tuning and keepalive, and the small header
// that opens every stream.
//
// A session speaks yamux (hashicorp/yamux's spec.md), so it interoperates
// with any yamux peer. Every frame starts with a 12-byte header; data frames
// carry up to 64 KiB, window updates grant the peer more to send on a stream:
//
//	+-----+------+-------+-----------+--------+---------------+
//	| ver | type | flags | stream ID | length | body (data)   |
//	| 1 B | 1 B  | 2 B   | 4 B       | 4 B    | length B      |
//	+-----+------+-------+-----------+--------+---------------+
//	type: data, window update, ping, go away; flags: SYN, ACK, FIN, RST
//
// The implementation is libp2p/go-yamux, chosen over hashicorp/yamux by the
// benchmarks (bench_test.go here, bench/RESULTS.md); only this package names
// it. It writes each frame, header and body, to the TLS conn in one write,
// so a small frame is one TLS record and one TCP segment; a dying session
// wakes each blocked read once; receive windows grow with the measured
// round trip, within a per-session budget.
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
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/libp2p/go-yamux/v5"
	"github.com/sirupsen/logrus"
)

// Tuning.
const (
	// InitialWindow is a stream's receive window to begin with: what the
	// peer may send before the reader has consumed any. It must cover the
	// bandwidth-delay product of the paths we expect, because growing it
	// later does not make up for a window-limited start (the TCP
	// connection beneath, held back early, did not catch up within 10 s).
	// Measured (bench/RESULTS.md, history): on loopback yamux's 256 KiB
	// held one stream to 0.6-0.87x of 1 MiB; on the NAT lab's 50 ms path
	// (TCP about 50 MB/s) 1 and 2 MiB gave 0.7-0.87x of raw TCP and 4 MiB
	// 1.0x on the punched path; the TURN relay's path, whose relay holds
	// data in flight too, needed 8 MiB for 0.9x of hashicorp/yamux's
	// 16 MiB. An idle stream costs nothing for it; a stream whose reader
	// stalls holds at most its window.
	InitialWindow = 8 << 20
	// StreamWindow is the most a stream's receive window grows to: it
	// doubles whenever the reader consumes half of it within four round
	// trips, so a stream on a longer, fatter path gets what it needs
	// (16 MiB fills a gigabit path at 100 ms).
	StreamWindow = 16 << 20
	// WindowBudget bounds the growth beyond InitialWindow of all receive
	// windows of one session together: a window is a promise to buffer
	// what the reader has not consumed yet, so this bounds what a peer can
	// make us hold across many streams.
	WindowBudget = 128 << 20
	// FrameSize is the most a data frame takes on the wire, header
	// included: four full TLS records, so bulk data never leaves a small
	// record (and its syscall) behind.
	FrameSize = 64 << 10
	// MaxPayload is the most data one frame carries; writers that size
	// their writes in multiples of it make only full frames.
	MaxPayload = FrameSize - 12
	// MaxStreams is the accept backlog per session, and the number of
	// streams this side may have opened without the peer's answer yet.
	MaxStreams = 4096
	// MaxIncomingStreams is the most streams a peer may have open to us
	// at once; the agent admits fewer (per connector) above this.
	MaxIncomingStreams = 1 << 16
	KeepAliveInterval  = 15 * time.Second
	WriteTimeout       = 20 * time.Second
	OpenTimeout        = 30 * time.Second
	// CloseTimeout is how long a stream closed on our side waits for the
	// peer to close its side before it is reset.
	CloseTimeout = 5 * time.Minute
	// RetireTimeout is how long a retired session waits for the peer to
	// close it after the go away, which the peer does on reading it.
	RetireTimeout = 30 * time.Second
	retirePoll    = 100 * time.Millisecond
)

// ErrSessionClosed is what OpenStream, AcceptStream and Ping return once
// the session was closed on this side.
var ErrSessionClosed = errors.New("mux session closed")

// sessionErr names yamux's "sent go away, code 0", its error for a session
// closed on this side, as ErrSessionClosed.
func sessionErr(err error) error {
	if errors.Is(err, yamux.ErrSessionShutdown) {
		return ErrSessionClosed
	}
	return err
}

// errWindowBudget is why a stream's receive window did not grow.
var errWindowBudget = errors.New("mux: session window budget spent")

// config returns the yamux configuration of every peer session.
func config(log logrus.FieldLogger) *yamux.Config {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = MaxStreams
	c.MaxIncomingStreams = MaxIncomingStreams
	c.EnableKeepAlive = true
	c.KeepAliveInterval = KeepAliveInterval
	c.MeasureRTTInterval = KeepAliveInterval // the RTT steers window growth
	c.ConnectionWriteTimeout = WriteTimeout
	c.InitialStreamWindowSize = InitialWindow
	c.MaxStreamWindowSize = StreamWindow
	c.MaxMessageSize = FrameSize
	c.LogOutput = logWriter{log}
	return c
}

// Session is one multiplexed session over a peer channel. Both sides may
// open streams; closing the session, or losing its connection, ends every
// stream at once: blocked reads and writes return an error.
type Session struct {
	ys       *yamux.Session
	budget   budget
	parked   parked // streams whose reader waits in the session (park.go)
	retiring atomic.Bool
	// ended is done once the session has ended, for OnSessionEnd: one
	// goroutine per session waits for that, none per stream.
	ended context.Context
}

// Client starts the connector's side of a session over conn.
func Client(conn net.Conn, log logrus.FieldLogger) (*Session, error) {
	return newSession(conn, log, true)
}

// Server starts the sharer's side of a session over conn.
func Server(conn net.Conn, log logrus.FieldLogger) (*Session, error) {
	return newSession(conn, log, false)
}

// A Pauser is a conn that finds dead paths itself and may pause, writes
// blocked, for up to MaxPause while it moves to a new one (resume.Conn).
// A session over one sends no keepalives of its own and gives its writes
// that long and WriteTimeout more.
type Pauser interface {
	net.Conn
	MaxPause() time.Duration
}

func newSession(conn net.Conn, log logrus.FieldLogger, client bool) (*Session, error) {
	if log == nil {
		l := logrus.New()
		l.SetLevel(logrus.PanicLevel)
		log = l
	}
	s := &Session{budget: budget{max: WindowBudget}}
	mm := func() (yamux.MemoryManager, error) { return &span{b: &s.budget}, nil }
	start := yamux.Server
	if client {
		start = yamux.Client
	}
	cfg := config(log)
	if p, ok := conn.(Pauser); ok {
		cfg.EnableKeepAlive = false
		cfg.ConnectionWriteTimeout = p.MaxPause() + WriteTimeout
	}
	ys, err := start(&parkConn{Conn: conn, p: &s.parked}, cfg, mm)
	if err != nil {
		return nil, fmt.Errorf("start mux session: %w", err)
	}
	s.ys = ys
	ctx, cancel := context.WithCancel(context.Background())
	s.ended = ctx
	go func() {
		<-ys.CloseChan()
		cancel()
		s.parked.close()
	}()
	return s, nil
}

// OpenStream opens a stream to the peer. It waits (up to OpenTimeout) only
// while MaxStreams opens are still unanswered.
func (s *Session) OpenStream() (*Stream, error) {
	ctx, cancel := context.WithTimeout(context.Background(), OpenTimeout)
	defer cancel()
	st, err := s.ys.OpenStream(ctx)
	if err != nil {
		return nil, sessionErr(err)
	}
	return &Stream{ys: st, sess: s}, nil
}

// AcceptStream waits for the peer to open a stream.
func (s *Session) AcceptStream() (*Stream, error) {
	st, err := s.ys.AcceptStream()
	if err != nil {
		return nil, sessionErr(err)
	}
	return &Stream{ys: st, sess: s}, nil
}

// Accept is AcceptStream as a net.Listener.
func (s *Session) Accept() (net.Conn, error) {
	st, err := s.AcceptStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

// Addr is the local address of the session's connection.
func (s *Session) Addr() net.Addr { return s.ys.LocalAddr() }

// Ping measures a round trip to the peer; it fails after WriteTimeout.
func (s *Session) Ping() (time.Duration, error) {
	d, err := s.ys.Ping()
	return d, sessionErr(err)
}

// IsClosed tells whether the session has ended.
func (s *Session) IsClosed() bool { return s.ys.IsClosed() }

// Close ends the session, its connection and every stream.
func (s *Session) Close() error { return s.ys.Close() }

// Retire ends the session without losing a byte: it waits until the last
// stream has ended (or ctx ends), then sends yamux's go away, which goes
// out behind every frame still queued (Close would drop those: yamux's
// writes return before the frame is written), and waits, up to
// RetireTimeout, for the peer to close the session on reading it.
func (s *Session) Retire(ctx context.Context) {
	if s.retiring.Swap(true) { // retiring already: wait for that one
		select {
		case <-ctx.Done():
			s.Close()
		case <-s.CloseChan():
		}
		return
	}
	defer s.Close()
	t := time.NewTicker(retirePoll)
	defer t.Stop()
	for s.ys.NumStreams() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-s.CloseChan():
			return
		case <-t.C:
		}
	}
	if s.ys.GoAway() != nil {
		return
	}
	select {
	case <-ctx.Done():
	case <-s.CloseChan():
	case <-time.After(RetireTimeout):
	}
}

// Retiring tells whether Retire was called: new streams belong elsewhere.
func (s *Session) Retiring() bool { return s.retiring.Load() }

// CloseChan is closed when the session ends.
func (s *Session) CloseChan() <-chan struct{} { return s.ys.CloseChan() }

// NumStreams is the number of streams open now.
func (s *Session) NumStreams() int { return s.ys.NumStreams() }

// Stream is one stream of a session, a net.Conn whose Close is a half-close.
type Stream struct {
	ys   *yamux.Stream
	sess *Session

	rmu sync.Mutex // held by reads that consume, which Kick must not reach
	// kmu keeps kicked and the read deadline in step: set apart, a Kick
	// between a clear's two steps left a passed deadline with kicked
	// false, and the next read failed with a timeout (or lost its window
	// update) instead of the wait ending with ErrQuiet.
	kmu    sync.Mutex
	kicked bool // Kick's deadline is set: WaitRead's timeout is ErrQuiet

	mu    sync.Mutex
	ended bool        // our reads saw the peer's side end
	reset *time.Timer // after Close: resets the stream if the peer never closes
}

// Read reads what the peer wrote; io.EOF once the peer closed its side.
func (s *Stream) Read(b []byte) (int, error) {
	if len(b) > 0 {
		// Kick's deadline must not reach a read that consumes: yamux
		// sends that read's window update under the read deadline, and
		// one that has passed drops it, and the window with it.
		s.rmu.Lock()
		defer s.rmu.Unlock()
		s.unkick()
	}
	n, err := s.ys.Read(b)
	if n > 0 && err != nil && (isTimeout(err) || s.sess.IsClosed()) {
		// yamux returns the bytes it read with the error of the window
		// update it then sends, and neither error is the bytes': they are
		// the stream's, and the next Read tells its end. A session that
		// has ended (the peer retired it) has nobody to grant more to. A
		// timeout is a deadline of Kick's (or readable's) set while the
		// stream was open, which yamux no longer clears once the peer's
		// FIN has come: the peer sends nothing more, so no update is due.
		err = nil
	}
	if err != nil && !isTimeout(err) {
		s.readEnded()
	}
	return n, err
}

// WaitRead blocks until the stream has data to read, or returns the error
// the next Read would (io.EOF once the peer closed its side), taking
// nothing: a forwarder waits with it so that an idle stream holds no
// buffer.
// After Kick it returns ErrQuiet instead of waiting.
func (s *Stream) WaitRead() error {
	_, err := s.Read(nil) // yamux blocks an empty read until data is there
	if err != nil && isTimeout(err) && s.unkick() {
		return ErrQuiet
	}
	return err
}

func (s *Stream) readEnded() {
	s.mu.Lock()
	s.ended = true
	if s.reset != nil {
		s.reset.Stop()
	}
	s.mu.Unlock()
}

// Write writes b, waiting while the peer's window is full.
func (s *Stream) Write(b []byte) (int, error) { return s.ys.Write(b) }

// Close closes our side: the peer reads EOF after what we wrote, and we
// keep reading until the peer closes its side, or reset the stream after
// CloseTimeout.
func (s *Stream) Close() error {
	err := s.ys.CloseWrite()
	s.mu.Lock()
	if !s.ended && s.reset == nil {
		// Weak: a stream that ends meanwhile (its session drops it) and
		// that its owner dropped is not kept for CloseTimeout by the timer.
		ys := weak.Make(s.ys)
		s.reset = time.AfterFunc(closeTimeout, func() {
			if st := ys.Value(); st != nil {
				st.Reset()
			}
		})
	}
	s.mu.Unlock()
	return err
}

var closeTimeout = CloseTimeout // tests shorten it

// CloseWrite is a half-close for an owner that reads the stream until it
// ends (EOF or an error) whatever happens: the peer reads EOF after what
// we wrote, and no reset is armed, so a peer may go on sending for as long
// as it likes (a download after the request's FIN).
func (s *Stream) CloseWrite() error { return s.ys.CloseWrite() }

// OnSessionEnd calls f, in a goroutine of its own, once the stream's
// session ends (at once if it has), unless stop is called first; stop
// reports whether it stopped f. It lets an owner that waits on something
// else (a half-closed stream's local side) learn of the session's death.
func (s *Stream) OnSessionEnd(f func()) (stop func() bool) {
	return context.AfterFunc(s.sess.ended, f)
}

// StreamID is the stream's yamux ID, for logs and tests.
func (s *Stream) StreamID() uint32 { return s.ys.StreamID() }

// Reset ends both sides at once; the peer's reads and writes fail.
func (s *Stream) Reset() error {
	err := s.ys.Reset()
	s.readEnded()
	s.sess.parked.wake([]uint32{s.ys.StreamID()})
	return err
}

func (s *Stream) SetDeadline(t time.Time) error      { return s.ys.SetDeadline(t) }
func (s *Stream) SetReadDeadline(t time.Time) error  { return s.ys.SetReadDeadline(t) }
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.ys.SetWriteDeadline(t) }
func (s *Stream) LocalAddr() net.Addr                { return s.ys.LocalAddr() }
func (s *Stream) RemoteAddr() net.Addr               { return s.ys.RemoteAddr() }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// budget is a session's WindowBudget; span is one stream's share of it.
// yamux reserves yamux's initial 256 KiB of a new stream at priority 255,
// which is always granted (the rest of InitialWindow it grants without
// asking), and each growth at a lower priority, which the budget may refuse.
type budget struct {
	used atomic.Int64
	max  int64
}

type span struct {
	b     *budget
	grown atomic.Int64
}

func (s *span) ReserveMemory(size int, prio uint8) error {
	if prio == 255 {
		return nil
	}
	if s.b.used.Add(int64(size)) > s.b.max {
		s.b.used.Add(-int64(size))
		return errWindowBudget
	}
	s.grown.Add(int64(size))
	return nil
}

func (s *span) ReleaseMemory(size int) {
	n := min(int64(size), s.grown.Load())
	s.grown.Add(-n)
	s.b.used.Add(-n)
}

func (s *span) Done() { s.b.used.Add(-s.grown.Swap(0)) }

// logWriter feeds yamux's log lines into logrus at debug level: yamux logs
// every broken session, which the agent reports itself at info.
type logWriter struct{ l logrus.FieldLogger }

func (w logWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	// yamux's log.Logger starts each line with "2006/01/02 15:04:05 ".
	if len(msg) > 20 && msg[4] == '/' && msg[13] == ':' {
		msg = msg[20:]
	}
	w.l.Debug(msg)
	return len(p), nil
}

package resume

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// refuseTimeout bounds the write of a refusal to a carrier we are closing.
const refuseTimeout = time.Second

// Dial starts a new session over carrier, whose other end hands it to a
// Table. The carrier must already be authenticated: the session's name is
// no secret.
func Dial(ctx context.Context, carrier net.Conn, cfg Config) (*Conn, error) {
	var id SessionID
	if _, err := rand.Read(id[:]); err != nil {
		carrier.Close()
		return nil, fmt.Errorf("resume: session id: %w", err)
	}
	c := newConn(cfg, id, true)
	start := time.Now()
	ans, err := exchange(ctx, carrier, Hello{Session: id})
	if err == nil && (ans.Resume || ans.Session != id) {
		err = fmt.Errorf("%w: a new session answered with %+v", ErrProtocol, ans)
	}
	if err != nil {
		carrier.Close()
		return nil, err
	}
	c.mu.Lock()
	c.srtt = time.Since(start)
	c.attachLocked(carrier)
	c.mu.Unlock()
	c.startWriter()
	return c, nil
}

func (c *Conn) startWriter() {
	c.wg.Add(1)
	go c.writeLoop()
}

// Resume moves the session onto carrier, a new authenticated channel to
// the same peer: after its path was lost, or to move to a better one (the
// carrier in use, if any, makes way). Both sides say what they have
// received and send the rest again. The session ends if the peer no longer
// knows it (ErrUnknownSession) or its count does not fit (ErrStaleResume);
// after other errors the session stays, detached, for another try.
func (c *Conn) Resume(ctx context.Context, carrier net.Conn) error {
	if !c.dialer {
		carrier.Close()
		return fmt.Errorf("%w: the accepting side does not resume, it accepts", ErrProtocol)
	}
	c.resumeMu.Lock()
	defer c.resumeMu.Unlock()
	c.mu.Lock()
	if c.finished {
		err := c.writeErr
		c.mu.Unlock()
		carrier.Close()
		return err
	}
	c.detachLocked(nil, false)
	received := c.received
	c.mu.Unlock()

	start := time.Now()
	ans, err := exchange(ctx, carrier, Hello{Session: c.id, Resume: true, Received: received})
	if err == nil && (!ans.Resume || ans.Session != c.id) {
		err = fmt.Errorf("%w: a resume answered with %+v", ErrProtocol, ans)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil && !c.finished {
		err = c.resumeAtLocked(ans.Received)
	}
	switch {
	case c.finished:
		carrier.Close()
		return c.writeErr
	case err != nil:
		carrier.Close()
		if isFatal(err) {
			c.failLocked(err)
		} else {
			c.markLostLocked()
		}
		return err
	}
	c.srtt = time.Since(start)
	c.resumes++
	c.attachLocked(carrier)
	return nil
}

// isFatal: errors after which the session cannot go on on any carrier.
func isFatal(err error) bool {
	for _, e := range []error{ErrUnknownSession, ErrStaleResume, ErrProtocol, ErrPeerClosed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// exchange writes h on carrier and reads the answer: the peer's hello, or
// a close frame refusing it. ctx bounds both.
func exchange(ctx context.Context, carrier net.Conn, h Hello) (Hello, error) {
	defer watch(ctx, carrier)()
	if err := writeHello(carrier, h); err != nil {
		return Hello{}, ctxErr(ctx, err)
	}
	ans, err := readAnswer(carrier)
	return ans, ctxErr(ctx, err)
}

// watch makes carrier's blocked reads and writes give up when ctx ends,
// until the returned func runs.
func watch(ctx context.Context, carrier net.Conn) func() {
	stop := context.AfterFunc(ctx, func() { carrier.SetDeadline(time.Unix(1, 0)) })
	return func() {
		if !stop() {
			carrier.SetDeadline(time.Time{}) // it ran: a late reset is harmless, the carrier is closed
		}
	}
}

func ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("resume: handshake: %w", ctx.Err())
	}
	return err
}

func writeHello(w io.Writer, h Hello) error {
	b, err := h.MarshalBinary()
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("resume: write hello: %w", err)
	}
	return nil
}

// readAnswer reads a hello, or the close frame a refusal is.
func readAnswer(r io.Reader) (Hello, error) {
	var b [helloLen]byte
	if _, err := io.ReadFull(r, b[:frameHeaderLen]); err != nil {
		return Hello{}, fmt.Errorf("resume: read answer: %w", err)
	}
	if string(b[:len(helloMagic)]) != helloMagic {
		f, err := ReadFrame(io.MultiReader(bytes.NewReader(b[:frameHeaderLen]), r), make([]byte, MaxReason))
		if err != nil || f.Type != FrameClose {
			return Hello{}, fmt.Errorf("%w: the answer is neither a hello nor a refusal (%x, %v)", ErrBadHello, b[:frameHeaderLen], err)
		}
		return Hello{}, refusal(string(f.Body))
	}
	if _, err := io.ReadFull(r, b[frameHeaderLen:]); err != nil {
		return Hello{}, fmt.Errorf("resume: read answer: %w", err)
	}
	var h Hello
	return h, h.UnmarshalBinary(b[:])
}

// refuse answers a hello with a close frame giving reason, and closes the
// carrier.
func refuse(carrier net.Conn, reason string) {
	b, _ := AppendFrame(nil, FrameClose, []byte(reason))
	carrier.SetWriteDeadline(time.Now().Add(refuseTimeout))
	carrier.Write(b)
	carrier.Close()
}

// Table is the accepting side's sessions, by name, each with the identity
// of the peer that started it: only that peer may resume it.
type Table struct {
	cfg   Config
	mu    sync.Mutex
	conns map[SessionID]tableEntry
}

type tableEntry struct {
	c    *Conn
	peer string
}

// NewTable returns a Table whose sessions use cfg.
func NewTable(cfg Config) *Table { return &Table{cfg: cfg, conns: map[SessionID]tableEntry{}} }

// Accept reads carrier's hello. A new session is returned with resumed
// false, for the caller to serve; a known one is moved onto carrier and
// returned with resumed true, its reader and writer untouched. peer is the
// carrier's authenticated identity: a resume from another is refused with
// ErrWrongPeer, the session left as it is.
func (t *Table) Accept(ctx context.Context, carrier net.Conn, peer string) (c *Conn, resumed bool, err error) {
	stop := watch(ctx, carrier)
	h, err := ReadHello(carrier)
	stop()
	if err != nil {
		carrier.Close()
		return nil, false, ctxErr(ctx, err)
	}
	t.mu.Lock()
	for id, e := range t.conns {
		select {
		case <-e.c.Done():
			delete(t.conns, id)
		default:
		}
	}
	e, known := t.conns[h.Session]
	if !h.Resume && !known {
		e = tableEntry{c: newConn(t.cfg, h.Session, false), peer: peer}
		t.conns[h.Session] = e
	}
	t.mu.Unlock()
	switch {
	case !h.Resume && known:
		refuse(carrier, "session name in use")
		return nil, false, fmt.Errorf("%w: a new session under a name in use", ErrProtocol)
	case h.Resume && !known:
		refuse(carrier, reasonUnknown)
		return nil, true, ErrUnknownSession
	case e.peer != peer:
		refuse(carrier, reasonWrong)
		return nil, true, ErrWrongPeer
	case !h.Resume:
		if err := e.c.accept(ctx, carrier, h); err != nil {
			e.c.Close()
			return nil, false, err
		}
		e.c.startWriter()
		return e.c, false, nil
	}
	return e.c, true, e.c.accept(ctx, carrier, h)
}

// accept moves the session onto carrier, whose hello h says what the peer
// has received, and answers with what we have.
func (c *Conn) accept(ctx context.Context, carrier net.Conn, h Hello) error {
	c.resumeMu.Lock()
	defer c.resumeMu.Unlock()
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		refuse(carrier, reasonUnknown)
		return ErrUnknownSession
	}
	c.detachLocked(nil, false)
	if err := c.resumeAtLocked(h.Received); err != nil {
		c.failLocked(err)
		c.mu.Unlock()
		refuse(carrier, reasonStale)
		return err
	}
	received := c.received
	c.mu.Unlock()

	stop := watch(ctx, carrier)
	err := writeHello(carrier, Hello{Session: c.id, Resume: h.Resume, Received: received})
	stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.finished:
		carrier.Close()
		return c.writeErr
	case err != nil:
		carrier.Close()
		c.markLostLocked()
		return ctxErr(ctx, err)
	}
	if h.Resume {
		c.resumes++
	}
	c.attachLocked(carrier)
	return nil
}

// Close ends every session in the table.
func (t *Table) Close() {
	t.mu.Lock()
	conns := t.conns
	t.conns = map[SessionID]tableEntry{}
	t.mu.Unlock()
	for _, e := range conns {
		e.c.Close()
	}
}
